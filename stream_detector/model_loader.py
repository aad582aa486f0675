"""Load the classifier a worker scores with: a checkpoint folder or the registry's current version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from stream_detector.config import WorkerSettings
from stream_detector.scoring import Classifier
from trainer.registry import ModelRegistry, ModelVersion


def registry_model_factory(settings: WorkerSettings) -> Callable[[], Classifier]:
    """Return a function that loads ``settings.model_path``, or else the registry's current version.

    The returned function raises ``NoCurrentModelError``, which names the training
    command, when the registry has no current version.
    """

    def load() -> Classifier:
        source: Path | ModelVersion = settings.model_path or ModelRegistry(settings.model_registry).require_current()
        return Classifier.load(
            source,
            device=settings.device,
            max_length=settings.max_length,
            batch_size=settings.max_batch,
            quantize=settings.quantize,
        )

    return load
