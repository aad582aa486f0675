"""Fine-tune a sequence classifier on behaviour text, evaluate it and write it to the registry."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import structlog
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from stream_detector.render import TEMPLATE_VERSION
from stream_detector.scoring import Classifier, align_pad_token, load_classifier_model, load_tokenizer
from trainer.dataset import LABEL_NAMES, Example, describe
from trainer.registry import ModelRegistry, ModelVersion, SampleSizes

MIN_THRESHOLD = 0.05  # the chosen threshold is clipped to [MIN_THRESHOLD, MAX_THRESHOLD]
MAX_THRESHOLD = 0.95
FALLBACK_THRESHOLD = 0.5  # used when the validation set lacks one of the classes

log = structlog.get_logger(__name__)


class TrainSettings(BaseModel):
    """Hyperparameters and options of one fine-tuning run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_model: Path  # checkpoint folder to fine-tune from
    max_length: int = Field(default=96, ge=8)  # tokens per text; longer texts are truncated
    batch_size: int = Field(default=16, ge=1)  # texts per optimizer step
    epochs: float = Field(default=2.0, gt=0)  # passes over the training set; a fraction stops early
    learning_rate: float = Field(default=5e-5, gt=0)  # peak AdamW learning rate
    weight_decay: float = Field(default=0.01, ge=0)  # AdamW weight decay, not applied to biases and norms
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)  # share of steps with a rising learning rate
    max_grad_norm: float = Field(default=1.0, gt=0)  # gradients are clipped to this L2 norm
    eval_batch_size: int = Field(default=64, ge=1)  # texts per forward pass when scoring the validation set
    log_every_steps: int = Field(default=20, ge=1)  # a progress line every this many optimizer steps
    seed: int = 0
    promote: bool = True  # make the new version current once it is written


class Evaluation(BaseModel):
    """Quality of scores against labels at one threshold."""

    model_config = ConfigDict(frozen=True)

    examples: int
    positives: int
    threshold: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None = None  # None when the labels contain one class only
    average_precision: float | None = None  # None when the labels contain no fraud

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Return the defined values as a flat mapping, names prefixed with ``prefix``."""
        values = self.model_dump(exclude_none=True)
        return {f"{prefix}{name}": float(value) for name, value in values.items()}


@dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run: the registered version, its validation quality and the throughput."""

    version: ModelVersion
    validation: Evaluation
    train_loss: float
    train_texts_per_s: float
    wall_s: float


def choose_threshold(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Return the score threshold with the best F1, clipped to [0.05, 0.95].

    Returns 0.5 when the labels do not contain both classes.
    """
    if len(set(labels)) < 2:
        return FALLBACK_THRESHOLD

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    # The last precision/recall pair has no threshold.
    best = int(np.argmax(f1[:-1]))
    return float(np.clip(thresholds[best], MIN_THRESHOLD, MAX_THRESHOLD))


def evaluate_scores(labels: Sequence[int], scores: Sequence[float], threshold: float) -> Evaluation:
    """Compute ROC AUC, average precision and precision/recall/F1 at ``threshold``.

    A score at or above the threshold counts as a fraud prediction, as in the scorer.

    Raises:
        ValueError: labels and scores differ in length or are empty.
    """
    if len(labels) != len(scores):
        raise ValueError(f"got {len(labels)} labels but {len(scores)} scores: expected one score per label")
    if not labels:
        raise ValueError("cannot evaluate an empty set: expected at least one example")

    truth = np.asarray(labels, dtype=int)
    predicted = (np.asarray(scores, dtype=float) >= threshold).astype(int)
    precision = float(precision_score(truth, predicted, zero_division=0))
    recall = float(recall_score(truth, predicted, zero_division=0))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    both_classes = len(set(truth.tolist())) == 2
    return Evaluation(
        examples=len(truth),
        positives=int(truth.sum()),
        threshold=threshold,
        precision=precision,
        recall=recall,
        f1=f1,
        roc_auc=float(roc_auc_score(truth, scores)) if both_classes else None,
        average_precision=float(average_precision_score(truth, scores)) if both_classes else None,
    )


def train_classifier(
    train: Sequence[Example],
    validation: Sequence[Example],
    settings: TrainSettings,
    registry: ModelRegistry,
) -> TrainResult:
    """Fine-tune the base model, pick the threshold on the validation set and register the version.

    The validation set is scored through :class:`~stream_detector.scoring.Classifier`
    loaded from the saved folder, the same path the workers use. The threshold is the
    one with the best validation F1, clipped to [0.05, 0.95].

    Args:
        train: training examples.
        validation: held-out examples, newer than the training examples.
        settings: hyperparameters and options.
        registry: where the version is written and, unless ``settings.promote`` is off, promoted.

    Returns:
        The registered version with its validation metrics and training throughput.

    Raises:
        ValueError: the training set is empty or lacks a class, or the validation set is empty.
        ModelLoadError: the base model cannot be loaded.
    """
    _check_sets(train, validation)
    started_s = time.perf_counter()
    set_seed(settings.seed)

    accelerator = Accelerator(mixed_precision=_mixed_precision())
    tokenizer = load_tokenizer(settings.base_model)
    model = load_classifier_model(
        settings.base_model,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: index for index, name in enumerate(LABEL_NAMES)},
        ignore_mismatched_sizes=True,
    )
    align_pad_token(model, tokenizer)

    loss, texts_per_s = _fit(model, tokenizer, train, settings, accelerator)

    version_dir = registry.new_version_dir()
    accelerator.unwrap_model(model).save_pretrained(version_dir)
    tokenizer.save_pretrained(version_dir)

    classifier = Classifier.load(
        version_dir, device=accelerator.device, max_length=settings.max_length, batch_size=settings.eval_batch_size
    )
    labels = [example.label for example in validation]
    scores = classifier.score([example.text for example in validation])
    threshold = choose_threshold(labels, scores)
    evaluation = evaluate_scores(labels, scores, threshold)
    if evaluation.roc_auc is None:
        log.warning("validation_single_class", examples=len(validation), threshold=threshold)

    version = registry.save_version(
        ModelVersion(
            version=version_dir.name,
            base_model=str(settings.base_model),
            template_version=TEMPLATE_VERSION,
            threshold=threshold,
            max_length=settings.max_length,
            metrics={**evaluation.as_metrics(), "train_loss": loss, "train_texts_per_s": texts_per_s},
            label_names=list(LABEL_NAMES),
            created_time=datetime.now(UTC),
            sample_sizes=_sample_sizes(train, validation),
            training=settings.model_dump(mode="json", exclude={"base_model", "promote"}),
            path=version_dir,
        )
    )
    if settings.promote:
        version = registry.promote(version)

    wall_s = time.perf_counter() - started_s
    log.info(
        "training_finished",
        version=version.version,
        threshold=round(threshold, 4),
        roc_auc=None if evaluation.roc_auc is None else round(evaluation.roc_auc, 4),
        f1=round(evaluation.f1, 4),
        promoted=settings.promote,
        wall_s=round(wall_s, 1),
    )
    return TrainResult(version, evaluation, loss, texts_per_s, wall_s)


def _check_sets(train: Sequence[Example], validation: Sequence[Example]) -> None:
    if not train:
        raise ValueError("the training set is empty: lower the validation share or add labeled data")
    if not validation:
        raise ValueError("the validation set is empty: raise the validation share or add labeled data")
    missing = sorted({0, 1} - {example.label for example in train})
    if missing:
        names = ", ".join(LABEL_NAMES[label] for label in missing)
        raise ValueError(f"the training set has no {names} examples: add labeled data of every class")


def _mixed_precision() -> str:
    """Return the accelerate mixed-precision mode: bf16 or fp16 on CUDA, none on the CPU."""
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _class_weights(train: Sequence[Example]) -> torch.Tensor:
    """Weight each class by the inverse of its frequency, so both classes add equally to the loss."""
    counts = np.bincount([example.label for example in train], minlength=len(LABEL_NAMES))
    weights = len(train) / (len(LABEL_NAMES) * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def _fit(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: Sequence[Example],
    settings: TrainSettings,
    accelerator: Accelerator,
) -> tuple[float, float]:
    """Run the optimizer over the training set and return (mean loss of the last steps, texts/s)."""

    def collate(batch: list[Example]) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            [example.text for example in batch],
            padding="longest",
            truncation=True,
            max_length=settings.max_length,
            return_tensors="pt",
        )
        features = dict(encoded)
        features["labels"] = torch.tensor([example.label for example in batch], dtype=torch.long)
        return features

    encoded = tokenizer([example.text for example in train], truncation=True, max_length=settings.max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    batches = LengthGroupedBatches(lengths, settings.batch_size, seed=settings.seed)
    # A list is a map-style dataset: it has __getitem__ and __len__.
    loader: DataLoader[Example] = DataLoader(
        cast(Dataset[Example], list(train)), batch_sampler=batches, collate_fn=collate
    )
    steps_per_epoch = len(loader)
    total_steps = max(1, math.ceil(steps_per_epoch * settings.epochs))

    optimizer = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(total_steps * settings.warmup_fraction), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    loss_function = torch.nn.CrossEntropyLoss(weight=_class_weights(train).to(accelerator.device))

    log.info(
        "training_started",
        base_model=str(settings.base_model),
        examples=len(train),
        classes=describe(train),
        steps=total_steps,
        batch_size=settings.batch_size,
        device=str(accelerator.device),
        mixed_precision=accelerator.mixed_precision,
    )
    model.train()
    step = 0
    texts_seen = 0
    recent_losses: list[float] = []
    started_s = time.perf_counter()
    while step < total_steps:
        for batch in loader:
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss = loss_function(logits.float(), labels)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()

            step += 1
            texts_seen += len(labels)
            recent_losses = [*recent_losses[-(settings.log_every_steps - 1) :], float(loss.detach())]
            if step % settings.log_every_steps == 0 or step == total_steps:
                _log_progress(step, total_steps, steps_per_epoch, recent_losses, texts_seen, started_s)
            if step >= total_steps:
                break

    model.eval()
    elapsed_s = max(time.perf_counter() - started_s, 1e-9)
    return float(np.mean(recent_losses)), texts_seen / elapsed_s


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of texts of similar token length, so that little of each batch is padding.

    Each epoch shuffles the indices, cuts them into pools of ``pool_batches`` batches,
    sorts each pool by length, cuts it into batches and shuffles the batch order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int, pool_batches: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.pool_size = batch_size * pool_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.pool_size):
            pool = sorted(order[start : start + self.pool_size], key=lambda index: self.lengths[index])
            batches.extend(pool[offset : offset + self.batch_size] for offset in range(0, len(pool), self.batch_size))
        for position in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[position]


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Split parameters into those with weight decay and biases and norm weights without it."""
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or "norm" in name.lower():
            plain.append(parameter)
        else:
            decayed.append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _log_progress(
    step: int, total_steps: int, steps_per_epoch: int, losses: list[float], texts_seen: int, started_s: float
) -> None:
    elapsed_s = time.perf_counter() - started_s
    log.info(
        "training_progress",
        step=step,
        steps=total_steps,
        epoch=round(step / steps_per_epoch, 2),
        loss=round(float(np.mean(losses)), 4),
        texts_per_s=round(texts_seen / elapsed_s, 1),
        eta_s=round(elapsed_s / step * (total_steps - step)),
    )


def _sample_sizes(train: Sequence[Example], validation: Sequence[Example]) -> SampleSizes:
    by_source: dict[str, int] = {}
    for example in [*train, *validation]:
        by_source[example.source] = by_source.get(example.source, 0) + 1
    return SampleSizes(
        train=len(train),
        validation=len(validation),
        train_fraud=sum(example.label for example in train),
        validation_fraud=sum(example.label for example in validation),
        by_source=dict(sorted(by_source.items())),
    )
