"""Model registry: a folder of trained versions and a ``CURRENT`` file naming the promoted one.

Layout::

    <root>/
        CURRENT                       one line: the promoted version's name
        v0001-20250301120000/
            model.json                metadata, written last: a folder without it is incomplete
            config.json, model.safetensors, tokenizer files ...
        v0002-20250302093015/
            ...

Version names sort in creation order. ``CURRENT`` and ``model.json`` are replaced
atomically (a temporary file in the same folder, then ``os.replace``), so a reader sees
either the old or the new content, never a partial file. This module imports no torch,
so the stream workers can read the registry cheaply.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

CURRENT_FILE = "CURRENT"
METADATA_FILE = "model.json"

_VERSION_PATTERN = re.compile(r"^v(\d{4,})-(\d{14})$")

log = structlog.get_logger(__name__)


class RegistryError(Exception):
    """The model registry is missing, incomplete or asked for something it does not contain."""


class NoCurrentModelError(RegistryError):
    """The registry has no promoted version."""


class VersionNotFoundError(RegistryError):
    """A named version is not in the registry, or its folder has no ``model.json``."""


class SampleSizes(BaseModel):
    """How many labeled windows a version was trained and validated on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: int = Field(ge=0)
    validation: int = Field(ge=0)
    train_fraud: int = Field(ge=0)
    validation_fraud: int = Field(ge=0)
    by_source: dict[str, int] = Field(default_factory=dict, description="Train plus validation windows per source.")


class ModelVersion(BaseModel):
    """Metadata of one trained version, as stored in its ``model.json``, plus its folder."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    version: str
    base_model: str = Field(description="Folder of the checkpoint the version was fine-tuned from.")
    template_version: str = Field(description="Behaviour text template the version was trained on.")
    threshold: float = Field(ge=0.0, le=1.0, description="Scores at or above this raise an alert.")
    max_length: int = Field(ge=1, description="Tokens per text; longer texts are truncated.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Validation metrics.")
    label_names: list[str] = Field(min_length=2, description="Class names in output order.")
    created_time: AwareDatetime
    sample_sizes: SampleSizes
    training: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Settings of the training run: epochs, batch size, seed, ..."
    )
    path: Path = Field(exclude=True, description="Folder that contains the weights, the tokenizer and model.json.")


def read_version(path: str | Path) -> ModelVersion:
    """Read the ``model.json`` of one version folder.

    Args:
        path: the version folder.

    Returns:
        The version's metadata, with ``path`` set to the folder.

    Raises:
        VersionNotFoundError: the folder has no ``model.json``.
        RegistryError: ``model.json`` is not valid metadata.
    """
    folder = Path(path)
    metadata_path = folder / METADATA_FILE
    try:
        raw = metadata_path.read_bytes()
    except FileNotFoundError:
        msg = f"{metadata_path} not found: {folder} is not a complete model version; train a new one"
        raise VersionNotFoundError(msg) from None

    try:
        fields = json.loads(raw)
    except json.JSONDecodeError as error:
        raise RegistryError(f"invalid JSON in {metadata_path}: {error}") from error
    if not isinstance(fields, dict):
        raise RegistryError(f"invalid metadata in {metadata_path}: expected a JSON object")

    try:
        return ModelVersion.model_validate({**fields, "path": folder})
    except ValidationError as error:
        msg = f"invalid metadata in {metadata_path}: {error.error_count()} errors, first: {error.errors()[0]['msg']}"
        raise RegistryError(msg) from error


class ModelRegistry:
    """A folder of model versions with a ``CURRENT`` file naming the promoted one."""

    def __init__(self, root: str | Path) -> None:
        """Open the registry at ``root``; the folder is created on the first write."""
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    def versions(self) -> list[ModelVersion]:
        """Return the complete versions, oldest first; folders without ``model.json`` are left out."""
        if not self.root.is_dir():
            return []

        found = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and _VERSION_PATTERN.match(folder.name) and (folder / METADATA_FILE).is_file():
                found.append(read_version(folder))
        return found

    def get(self, version: str) -> ModelVersion:
        """Return one complete version by name.

        Raises:
            VersionNotFoundError: no complete version of that name is in the registry.
        """
        if not _VERSION_PATTERN.match(version):
            msg = f"invalid version name {version!r}: expected the form v0001-YYYYmmddHHMMSS"
            raise VersionNotFoundError(msg)

        folder = self.root / version
        if not folder.is_dir():
            known = ", ".join(item.version for item in self.versions()) or "none"
            msg = f"version {version!r} not found in {self.root} (versions: {known})"
            raise VersionNotFoundError(msg)
        return read_version(folder)

    def current(self) -> ModelVersion | None:
        """Return the promoted version, or None when nothing was promoted yet.

        Raises:
            VersionNotFoundError: ``CURRENT`` names a version that is missing or incomplete.
        """
        current_path = self.root / CURRENT_FILE
        try:
            name = current_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None

        try:
            return self.get(name)
        except VersionNotFoundError as error:
            msg = f"{current_path} names {name!r}, which is not usable ({error}): promote another version"
            raise VersionNotFoundError(msg) from error

    def require_current(self) -> ModelVersion:
        """Return the promoted version.

        Raises:
            NoCurrentModelError: nothing was promoted yet.
            VersionNotFoundError: ``CURRENT`` names a version that is missing or incomplete.
        """
        version = self.current()
        if version is None:
            msg = f"no current model in {self.root}: run `stream-detector train`"
            raise NoCurrentModelError(msg)
        return version

    def new_version_dir(self, now: datetime | None = None) -> Path:
        """Create and return the empty folder of the next version.

        The name is ``v<number>-<UTC time>``, numbered one past the highest folder
        present, complete or not. Two trainers that start at once get different folders.

        Args:
            now: creation time used in the name; the current UTC time by default.

        Returns:
            The new folder; its name is the version name.
        """
        created = (now or datetime.now(UTC)).astimezone(UTC)
        self.root.mkdir(parents=True, exist_ok=True)
        number = self._highest_number() + 1
        while True:
            folder = self.root / f"v{number:04d}-{created:%Y%m%d%H%M%S}"
            try:
                folder.mkdir()
            except FileExistsError:
                number += 1
                continue
            log.info("model_version_created", version=folder.name, registry=str(self.root))
            return folder

    def save_version(self, version: ModelVersion) -> ModelVersion:
        """Write the version's ``model.json`` atomically, which marks its folder complete.

        Write the weights and tokenizer into ``version.path`` first.

        Raises:
            RegistryError: the folder is not in this registry or has no ``config.json``.
        """
        if version.path.resolve().parent != self.root.resolve() or version.path.name != version.version:
            msg = f"version {version.version!r} at {version.path} is not a folder of {self.root}: use new_version_dir()"
            raise RegistryError(msg)
        if not (version.path / "config.json").is_file():
            msg = f"{version.path} has no config.json: save the model with save_pretrained() before its metadata"
            raise RegistryError(msg)

        _write_atomically(version.path / METADATA_FILE, version.model_dump_json(indent=2) + "\n")
        return version

    def promote(self, version: str | ModelVersion) -> ModelVersion:
        """Make a complete version the current one by replacing ``CURRENT`` atomically.

        Raises:
            VersionNotFoundError: the version is not in the registry or is incomplete.
        """
        name = version.version if isinstance(version, ModelVersion) else version
        promoted = self.get(name)
        _write_atomically(self.root / CURRENT_FILE, promoted.version + "\n")
        log.info("model_version_promoted", version=promoted.version, registry=str(self.root))
        return promoted

    def _highest_number(self) -> int:
        numbers = [0]
        for folder in self.root.iterdir():
            match = _VERSION_PATTERN.match(folder.name)
            if match:
                numbers.append(int(match.group(1)))
        return max(numbers)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers never see a partial file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
