"""Tests of the model registry: version folders, metadata, promotion and its errors."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from trainer.registry import (
    CURRENT_FILE,
    METADATA_FILE,
    ModelRegistry,
    ModelVersion,
    NoCurrentModelError,
    RegistryError,
    SampleSizes,
    VersionNotFoundError,
    read_version,
)

CREATED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_version(registry: ModelRegistry, *, threshold: float = 0.4, now: datetime = CREATED) -> ModelVersion:
    """Create a complete version whose weights are only a config.json, enough for the registry."""
    folder = registry.new_version_dir(now=now)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    version = ModelVersion(
        version=folder.name,
        base_model="/models/base",
        template_version="v1",
        threshold=threshold,
        max_length=96,
        metrics={"roc_auc": 0.9, "f1": 0.7},
        label_names=["legitimate", "fraud"],
        created_time=now,
        sample_sizes=SampleSizes(
            train=80, validation=20, train_fraud=30, validation_fraud=8, by_source={"web-bot": 100}
        ),
        training={"epochs": 2.0, "batch_size": 16},
        path=folder,
    )
    return registry.save_version(version)


def test_new_version_dirs_sort_by_creation(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")

    first = registry.new_version_dir(now=datetime(2025, 3, 2, tzinfo=UTC))
    second = registry.new_version_dir(now=datetime(2025, 3, 1, tzinfo=UTC))

    assert first.name == "v0001-20250302000000"
    assert second.name == "v0002-20250301000000"
    assert sorted([second.name, first.name]) == [first.name, second.name]


def test_same_second_gets_distinct_dirs(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)

    folders = {registry.new_version_dir(now=CREATED) for _ in range(3)}

    assert len(folders) == 3


def test_metadata_round_trip(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    saved = make_version(registry)

    stored = json.loads((saved.path / METADATA_FILE).read_text(encoding="utf-8"))
    loaded = read_version(saved.path)

    assert "path" not in stored
    assert stored["threshold"] == 0.4
    assert stored["sample_sizes"]["train_fraud"] == 30
    assert loaded == saved


def test_versions_skip_incomplete_folders(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    complete = make_version(registry)
    registry.new_version_dir(now=CREATED)  # training still running: no model.json yet
    (tmp_path / "notes").mkdir()

    assert [version.version for version in registry.versions()] == [complete.version]


def test_empty_registry_has_no_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "missing")

    assert registry.versions() == []
    assert registry.current() is None


def test_require_current_names_root_and_fix(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)

    with pytest.raises(NoCurrentModelError) as raised:
        registry.require_current()

    assert str(raised.value) == f"no current model in {tmp_path}: run `stream-detector train`"


def test_promote_writes_current(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    old = make_version(registry, threshold=0.3)
    new = make_version(registry, threshold=0.6)

    registry.promote(old)
    assert registry.require_current().version == old.version

    registry.promote(new.version)
    current = registry.current()

    assert current is not None
    assert current.version == new.version
    assert current.threshold == 0.6
    assert (tmp_path / CURRENT_FILE).read_text(encoding="utf-8") == new.version + "\n"


def test_promote_leaves_no_temporary_files(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    version = make_version(registry)

    registry.promote(version)

    assert sorted(path.name for path in tmp_path.iterdir()) == [CURRENT_FILE, version.version]
    assert sorted(path.name for path in version.path.iterdir()) == ["config.json", METADATA_FILE]


def test_failed_promote_keeps_old_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry(tmp_path)
    old = make_version(registry)
    new = make_version(registry)
    registry.promote(old)

    def fail_replace(source: str, target: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(new)

    assert (tmp_path / CURRENT_FILE).read_text(encoding="utf-8") == old.version + "\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [CURRENT_FILE, old.version, new.version]


def test_promote_unknown_version_lists_known(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    known = make_version(registry)

    with pytest.raises(VersionNotFoundError) as raised:
        registry.promote("v0009-20250101000000")

    assert str(raised.value) == f"version 'v0009-20250101000000' not found in {tmp_path} (versions: {known.version})"


def test_promote_incomplete_version_fails(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    folder = registry.new_version_dir(now=CREATED)

    with pytest.raises(VersionNotFoundError, match="is not a complete model version"):
        registry.promote(folder.name)

    assert not (tmp_path / CURRENT_FILE).exists()


def test_invalid_version_name_rejected(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)

    with pytest.raises(VersionNotFoundError, match="expected the form v0001-YYYYmmddHHMMSS"):
        registry.get("../elsewhere")


def test_current_naming_missing_version_fails(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    (tmp_path / CURRENT_FILE).write_text("v0003-20250101000000\n", encoding="utf-8")

    with pytest.raises(VersionNotFoundError) as raised:
        registry.current()

    message = str(raised.value)
    assert message.startswith(f"{tmp_path / CURRENT_FILE} names 'v0003-20250101000000', which is not usable")
    assert message.endswith("promote another version")


def test_save_version_requires_weights(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    folder = registry.new_version_dir(now=CREATED)
    version = ModelVersion.model_validate(
        {
            "version": folder.name,
            "base_model": "/models/base",
            "template_version": "v1",
            "threshold": 0.5,
            "max_length": 96,
            "label_names": ["legitimate", "fraud"],
            "created_time": CREATED,
            "sample_sizes": {"train": 1, "validation": 1, "train_fraud": 1, "validation_fraud": 0},
            "path": folder,
        }
    )

    with pytest.raises(RegistryError, match="has no config.json: save the model with save_pretrained"):
        registry.save_version(version)


def test_invalid_metadata_names_file(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    version = make_version(registry)
    (version.path / METADATA_FILE).write_text('{"version": "x"}', encoding="utf-8")

    with pytest.raises(RegistryError, match=f"invalid metadata in {version.path / METADATA_FILE}"):
        registry.get(version.version)
