"""The stream-detector command's dispatch and help."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from stream_detector.cli import COMMANDS, main


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo the logging set-up that the worker command does, since it binds pytest's captured stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0

    output = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in output


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: stream-detector COMMAND" in capsys.readouterr().out


def test_unknown_command_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuch"]) == 2
    assert "stream-detector: unknown command 'nosuch'" in capsys.readouterr().err


def test_worker_rejects_invalid_setting(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_DETECTOR_SCORE_EVERY_N", "0")

    assert main(["worker"]) == 2
    assert "score_every_n" in capsys.readouterr().err


def test_worker_without_model_names_the_fix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["worker", "--registry", str(tmp_path)]) == 1
    assert "run `stream-detector train`" in capsys.readouterr().err
