"""Tests of fine-tuning: thresholds, metrics, a short training run into a registry, and the command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream_detector.scoring import Classifier
from tests.tiny_model import build_tiny_bert, build_tiny_gpt2
from trainer.cli import main
from trainer.dataset import Example
from trainer.registry import CURRENT_FILE, METADATA_FILE, ModelRegistry
from trainer.train import TrainSettings, choose_threshold, evaluate_scores, train_classifier

START = datetime(2025, 1, 1, tzinfo=UTC)
FRAUD_TEXT = "twelve events over an instant. twelve orders, value tiny, declined most, five payment methods."
LEGITIMATE_TEXT = "four events over a few minutes. three page views of three pages. one order, value medium."


def make_examples(count: int, *, start_index: int = 0) -> list[Example]:
    """Alternate fraud and legitimate examples, one user each, a minute apart."""
    examples = []
    for index in range(start_index, start_index + count):
        label = index % 2
        examples.append(
            Example(
                text=(FRAUD_TEXT if label else LEGITIMATE_TEXT) + f" recent: view page {index % 7}.",
                label=label,
                user_id=f"user-{index}",
                source="synthetic" if index % 3 else "web-bot",
                detail="card_testing" if label else "repeat_buyer",
                closed_at=START + timedelta(minutes=index),
                window_id=f"w-{index}",
            )
        )
    return examples


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("base"), as_base=True)


def tiny_settings(base: Path, **changes: object) -> TrainSettings:
    fields: dict[str, object] = {
        "base_model": base,
        "max_length": 48,
        "batch_size": 8,
        "epochs": 2,
        "learning_rate": 1e-3,
        "log_every_steps": 2,
    }
    fields.update(changes)
    return TrainSettings.model_validate(fields)


def test_threshold_maximizes_f1() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.55, 0.7, 0.9]

    assert choose_threshold(labels, scores) == pytest.approx(0.55)


def test_threshold_clipped_to_range() -> None:
    assert choose_threshold([0, 1], [0.001, 0.01]) == 0.05
    assert choose_threshold([0, 1], [0.98, 0.999]) == 0.95


def test_threshold_single_class_falls_back() -> None:
    assert choose_threshold([0, 0, 0], [0.1, 0.2, 0.3]) == 0.5


def test_evaluation_at_threshold() -> None:
    evaluation = evaluate_scores([0, 0, 1, 1], [0.2, 0.7, 0.6, 0.9], threshold=0.5)

    assert evaluation.examples == 4
    assert evaluation.positives == 2
    assert evaluation.precision == pytest.approx(2 / 3)
    assert evaluation.recall == 1.0
    assert evaluation.f1 == pytest.approx(0.8)
    assert evaluation.roc_auc == pytest.approx(0.75)
    assert evaluation.average_precision == pytest.approx(5 / 6)


def test_evaluation_single_class_has_no_auc() -> None:
    evaluation = evaluate_scores([0, 0], [0.2, 0.7], threshold=0.5)

    assert evaluation.roc_auc is None
    assert evaluation.average_precision is None
    assert evaluation.as_metrics() == {
        "examples": 2.0,
        "positives": 0.0,
        "threshold": 0.5,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


def test_evaluation_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="got 2 labels but 1 scores"):
        evaluate_scores([0, 1], [0.5], threshold=0.5)


def test_training_writes_and_promotes_version(tiny_base: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    train, validation = make_examples(48), make_examples(12, start_index=48)

    result = train_classifier(train, validation, tiny_settings(tiny_base), registry)

    version = result.version
    stored = json.loads((version.path / METADATA_FILE).read_text(encoding="utf-8"))
    assert (tmp_path / "models" / CURRENT_FILE).read_text(encoding="utf-8") == version.version + "\n"
    assert registry.require_current() == version
    assert 0.05 <= version.threshold <= 0.95
    assert stored["threshold"] == version.threshold
    assert stored["label_names"] == ["legitimate", "fraud"]
    assert stored["template_version"] == "v1"
    assert stored["max_length"] == 48
    assert stored["sample_sizes"] == {
        "train": 48,
        "validation": 12,
        "train_fraud": 24,
        "validation_fraud": 6,
        "by_source": {"synthetic": 40, "web-bot": 20},
    }
    for name in ("roc_auc", "average_precision", "precision", "recall", "f1", "train_loss", "train_texts_per_s"):
        assert name in stored["metrics"]
    assert stored["training"]["epochs"] == 2
    assert result.train_texts_per_s > 0


def test_trained_version_scores(tiny_base: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    result = train_classifier(make_examples(48), make_examples(12, start_index=48), tiny_settings(tiny_base), registry)

    classifier = Classifier.load(registry.root, device="cpu")
    scores = classifier.score([FRAUD_TEXT, LEGITIMATE_TEXT])

    assert classifier.version == result.version.version
    assert classifier.threshold == result.version.threshold
    assert classifier.model.config.id2label == {0: "legitimate", 1: "fraud"}
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert scores[0] > scores[1]


def test_no_promote_leaves_current_alone(tiny_base: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)

    result = train_classifier(
        make_examples(16), make_examples(8, start_index=16), tiny_settings(tiny_base, promote=False), registry
    )

    assert registry.current() is None
    assert [version.version for version in registry.versions()] == [result.version.version]


def test_decoder_base_trains(tmp_path: Path) -> None:
    base = build_tiny_gpt2(tmp_path / "gpt2")
    registry = ModelRegistry(tmp_path / "models")

    result = train_classifier(
        make_examples(16), make_examples(8, start_index=16), tiny_settings(base, epochs=1), registry
    )

    classifier = Classifier.load(result.version)
    assert classifier.model.config.pad_token_id == 0
    assert len(classifier.score([FRAUD_TEXT, LEGITIMATE_TEXT, "order"])) == 3


def test_training_without_fraud_rejected(tiny_base: Path, tmp_path: Path) -> None:
    legitimate_only = [example for example in make_examples(20) if example.label == 0]

    with pytest.raises(ValueError, match="the training set has no fraud examples"):
        train_classifier(legitimate_only, make_examples(4), tiny_settings(tiny_base), ModelRegistry(tmp_path))


def test_cli_if_empty_skips_trained_registry(
    tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(tmp_path / "models")
    version = train_classifier(
        make_examples(16), make_examples(8, start_index=16), tiny_settings(tiny_base, epochs=1), registry
    ).version
    capsys.readouterr()

    status = main(["train", "--registry", str(registry.root), "--if-empty", "--log-level", "warning"])

    assert status == 0
    assert capsys.readouterr().out == (
        f"training skipped: {registry.root} already has current version {version.version} (--if-empty)\n"
    )


def test_cli_reports_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["train", "--max-examples", "1"])

    assert status == 2
    assert "invalid settings" in capsys.readouterr().err
