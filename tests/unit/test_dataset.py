"""Tests of the training examples: windows to labeled text, shortcuts, sampling and the time split."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from schemas import AccountContext, ClickEvent, OrderEvent
from stream_detector.datasets import AnyEvent, LabeledStream, UserLabel
from stream_detector.render import render_window
from stream_detector.scoring import default_base_model, load_tokenizer
from stream_detector.window import WindowPolicy, iter_windows
from trainer.dataset import (
    SAME_MINUTE_SIGNUP,
    SHARED_DEVICE,
    Example,
    build_examples,
    find_shortcut_users,
    sample_examples,
    split_by_time,
)

START = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
POLICY = WindowPolicy(max_events=10, max_age_s=600, every_n=2, idle_s=20)


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def click(event_id: str, user_id: str, seconds: float, page: str = "/content/home.php") -> ClickEvent:
    return ClickEvent(
        event_id=event_id, user_id=user_id, event_time=at(seconds), page=page, user_agent="Mozilla/5.0 Firefox"
    )


def order(event_id: str, user_id: str, seconds: float, *, device_id: str, signup_before_s: float) -> OrderEvent:
    return OrderEvent(
        event_id=event_id,
        user_id=user_id,
        event_time=at(seconds),
        device_id=device_id,
        order_id=f"o-{event_id}",
        amount=42.0,
        payment_status="approved",
        account=AccountContext(signup_time=at(seconds - signup_before_s), device_id=device_id, browser="Chrome"),
    )


def tiny_stream() -> LabeledStream:
    """Four users: a fast fraudster, a browsing human, a buyer on the fraudster's device, and an unlabeled bot."""
    events: list[AnyEvent] = [
        order("e1", "fraudster", 0, device_id="DEV1", signup_before_s=10),
        click("e2", "human", 1),
        click("e3", "human", 5, page="/content/machine_learning.php"),
        click("e4", "unlabeled", 6),
        order("e5", "buyer", 30, device_id="DEV1", signup_before_s=86_400),
        click("e6", "human", 50),
        order("e7", "fraudster", 52, device_id="DEV1", signup_before_s=62),
    ]
    labels = {
        "fraudster": UserLabel(label="fraud", source="ecommerce-fraud", detail="class_1", split="train"),
        "human": UserLabel(label="legitimate", source="web-bot", detail="human", split="train"),
        "buyer": UserLabel(label="legitimate", source="ecommerce-fraud", detail="class_0", split="test"),
    }
    return LabeledStream(events=events, labels=labels)


def test_examples_match_renderer_and_labels() -> None:
    stream = tiny_stream()

    examples = build_examples(stream, POLICY, max_tokens=96, tokenizer=None)

    windows = [window for window in iter_windows(stream.events, POLICY) if window.user_id != "unlabeled"]
    assert [(example.user_id, example.label) for example in examples] == [
        ("fraudster", 1),
        ("human", 0),
        ("buyer", 0),
        ("fraudster", 1),
        ("human", 0),
    ]
    assert len(windows) == len(examples)
    for window, example in zip(windows, examples, strict=True):
        rendered = render_window(
            window.events, device_accounts=window.device_accounts, ip_accounts=window.ip_accounts, max_tokens=96
        )
        assert example.text == rendered.text
        assert example.window_id == window.window_id
        assert example.closed_at == window.closed_at


def test_example_fields_come_from_user_label() -> None:
    examples = build_examples(tiny_stream(), POLICY, max_tokens=96, tokenizer=None)

    buyer = next(example for example in examples if example.user_id == "buyer")

    assert buyer.source == "ecommerce-fraud"
    assert buyer.detail == "class_0"
    assert buyer.split == "test"
    assert buyer.closed_at == at(30)
    assert "device shared by two accounts" in buyer.text


def test_splits_filter_keeps_one_split() -> None:
    examples = build_examples(tiny_stream(), POLICY, max_tokens=96, tokenizer=None, splits={"test"})

    assert [example.user_id for example in examples] == ["buyer"]


def test_token_budget_uses_tokenizer() -> None:
    tokenizer = load_tokenizer(default_base_model())
    stream = tiny_stream()

    examples = build_examples(stream, POLICY, max_tokens=40, tokenizer=tokenizer)

    human_window = next(window for window in iter_windows(stream.events, POLICY) if window.user_id == "human")
    expected = render_window(
        human_window.events,
        count_tokens=lambda text: len(tokenizer(text)["input_ids"]),
        max_tokens=40,
    )
    assert next(example.text for example in examples if example.user_id == "human") == expected.text
    assert expected.counts.dropped > 0


def test_invalid_max_tokens_rejected() -> None:
    with pytest.raises(ValueError, match="max_tokens must be at least 1, got 0"):
        build_examples(tiny_stream(), POLICY, max_tokens=0, tokenizer=None)


def test_shortcut_users_found() -> None:
    shortcuts = find_shortcut_users(tiny_stream())

    assert shortcuts == {
        "fraudster": frozenset({SAME_MINUTE_SIGNUP, SHARED_DEVICE}),
        "buyer": frozenset({SHARED_DEVICE}),
    }


def test_shortcuts_attached_to_examples() -> None:
    stream = tiny_stream()

    examples = build_examples(stream, POLICY, max_tokens=96, tokenizer=None, shortcuts=find_shortcut_users(stream))

    assert {example.user_id: example.shortcuts for example in examples} == {
        "fraudster": frozenset({SAME_MINUTE_SIGNUP, SHARED_DEVICE}),
        "human": frozenset(),
        "buyer": frozenset({SHARED_DEVICE}),
    }


def make_examples(source: str, fraud: int, legitimate: int, *, start_s: float = 0) -> list[Example]:
    """Make one example per user, a second apart, fraud users first."""
    examples = []
    for index in range(fraud + legitimate):
        label = 1 if index < fraud else 0
        examples.append(
            Example(
                text=f"{source} text {index}",
                label=label,
                user_id=f"{source}-{index}",
                source=source,
                detail="class_1" if label else "class_0",
                closed_at=at(start_s + index),
                window_id=f"w-{source}-{index}",
            )
        )
    return examples


def candidates() -> list[Example]:
    return (
        make_examples("ecommerce-fraud", fraud=100, legitimate=900)
        + make_examples("web-bot", fraud=20, legitimate=10, start_s=0.5)
        + make_examples("synthetic", fraud=15, legitimate=15, start_s=0.25)
    )


def test_sample_keeps_small_sources_whole() -> None:
    sample = sample_examples(candidates(), 300, seed=1)

    counts = Counter((example.source, example.label) for example in sample)
    assert len(sample) <= 300
    assert counts[("web-bot", 1)] == 20
    assert counts[("web-bot", 0)] == 10
    assert counts[("synthetic", 1)] == 15
    assert counts[("synthetic", 0)] == 15
    assert counts[("ecommerce-fraud", 1)] > 0
    assert counts[("ecommerce-fraud", 0)] > 0


def test_sample_caps_legitimate_share() -> None:
    sample = sample_examples(candidates(), 300, seed=1)

    legitimate = sum(1 for example in sample if example.label == 0)
    assert legitimate / len(sample) <= 0.65


def test_sample_keeps_every_source_when_tight() -> None:
    sample = sample_examples(candidates(), 12, seed=3)

    pairs = {(example.source, example.label) for example in sample}
    assert len(sample) <= 12
    assert pairs == {(source, label) for source in ("ecommerce-fraud", "web-bot", "synthetic") for label in (0, 1)}


def test_sample_is_deterministic() -> None:
    examples = candidates()

    first = sample_examples(examples, 200, seed=7)
    again = sample_examples(list(reversed(examples)), 200, seed=7)
    other = sample_examples(examples, 200, seed=8)

    assert first == again
    assert first != other


def test_sample_is_time_ordered() -> None:
    sample = sample_examples(candidates(), 200, seed=7)

    assert [example.closed_at for example in sample] == sorted(example.closed_at for example in sample)


def test_sample_returns_all_when_they_fit() -> None:
    examples = make_examples("web-bot", fraud=5, legitimate=5)

    assert sample_examples(examples, 100, seed=0) == examples


def test_sample_rejects_invalid_limits() -> None:
    with pytest.raises(ValueError, match="max_examples must be at least 1, got 0"):
        sample_examples(candidates(), 0, seed=0)
    with pytest.raises(ValueError, match="max_legitimate_share must be between 0 and 1, got 1.0"):
        sample_examples(candidates(), 10, seed=0, max_legitimate_share=1.0)


def test_time_split_holds_out_newest_users_per_source() -> None:
    examples = make_examples("ecommerce-fraud", fraud=10, legitimate=10) + make_examples(
        "web-bot", fraud=5, legitimate=5, start_s=100
    )

    train, validation = split_by_time(examples, validation_fraction=0.2)

    assert len(validation) == 6
    assert {example.user_id for example in validation} == {
        "ecommerce-fraud-16",
        "ecommerce-fraud-17",
        "ecommerce-fraud-18",
        "ecommerce-fraud-19",
        "web-bot-8",
        "web-bot-9",
    }
    assert len(train) + len(validation) == len(examples)


def test_time_split_keeps_user_windows_together() -> None:
    examples = []
    for user_index in range(5):
        for window_index in range(3):
            examples.append(
                Example(
                    text=f"user {user_index} window {window_index}",
                    label=user_index % 2,
                    user_id=f"user-{user_index}",
                    source="synthetic",
                    detail="scraping",
                    closed_at=at(user_index * 10 + window_index * 30),
                    window_id=f"w-{user_index}-{window_index}",
                )
            )

    train, validation = split_by_time(examples, validation_fraction=0.2)

    assert {example.user_id for example in train}.isdisjoint({example.user_id for example in validation})
    assert {example.user_id for example in validation} == {"user-4"}


def test_time_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="validation_fraction must be between 0 and 1, got 0"):
        split_by_time(candidates(), validation_fraction=0)
    with pytest.raises(ValueError, match="at least two examples are needed"):
        split_by_time(candidates()[:1])
