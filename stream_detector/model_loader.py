"""Load the classifier a worker scores with: a checkpoint folder or the registry's current version."""

from __future__ import annotations

from collections.abc import Callable

from stream_detector.config import WorkerSettings
from stream_detector.scoring import Classifier


def registry_model_factory(settings: WorkerSettings) -> Callable[[], Classifier]:
    """Return a function that loads ``settings.model_path``, or else the registry's current version."""
    source = settings.model_path or settings.model_registry

    def load() -> Classifier:
        return Classifier.load(
            source,
            device=settings.device,
            max_length=settings.max_length,
            batch_size=settings.max_batch,
            quantize=settings.quantize,
        )

    return load
