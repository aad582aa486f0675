"""Alert ids: one per (user, window, model version)."""

from __future__ import annotations

import pytest

from stream_detector.alerts import alert_id


def test_alert_id_is_deterministic() -> None:
    assert alert_id("u1", "w-1", "v0001") == alert_id("u1", "w-1", "v0001")


@pytest.mark.parametrize("changed", [("u2", "w-1", "v0001"), ("u1", "w-2", "v0001"), ("u1", "w-1", "v0002")])
def test_alert_id_changes_with_each_part(changed: tuple[str, str, str]) -> None:
    assert alert_id(*changed) != alert_id("u1", "w-1", "v0001")


def test_alert_id_parts_cannot_run_together() -> None:
    assert alert_id("u1", "w-12", "v1") != alert_id("u1w", "-12", "v1")


def test_alert_id_format() -> None:
    identifier = alert_id("u1", "w-1", "v0001")

    assert identifier.startswith("a-")
    assert len(identifier) == 34


def test_alert_id_rejects_empty_part() -> None:
    with pytest.raises(ValueError, match="model_version must not be empty"):
        alert_id("u1", "w-1", "")
