"""Window bounds, triggers and ids, driven by fixed UTC times and an explicit clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import ClickEvent, OrderEvent
from stream_detector.window import (
    UserWindow,
    WindowPolicy,
    add_event,
    is_idle,
    iter_windows,
    mark_scored,
    window_id,
)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def click(index: int, seconds: float, user_id: str = "u1") -> ClickEvent:
    return ClickEvent(
        event_id=f"c{index}", user_id=user_id, event_time=T0 + timedelta(seconds=seconds), page=f"/p{index}"
    )


def order(index: int, seconds: float, user_id: str = "u1") -> OrderEvent:
    return OrderEvent(
        event_id=f"o{index}",
        user_id=user_id,
        event_time=T0 + timedelta(seconds=seconds),
        order_id=f"o{index}",
        amount=10.0,
    )


def feed(events: list, policy: WindowPolicy) -> tuple[UserWindow, list]:
    window = UserWindow(user_id="u1")
    triggers = []
    for event in events:
        update = add_event(window, event, policy, arrival_s=event.event_time.timestamp())
        window = update.window
        triggers.append(update.trigger)
    return window, triggers


def test_every_n_trigger_fires_on_nth_event() -> None:
    policy = WindowPolicy(every_n=3)

    window, triggers = feed([click(i, i) for i in range(7)], policy)

    assert triggers == [None, None, "every_n", None, None, "every_n", None]
    assert window.unscored_count == 1


def test_order_triggers_at_once() -> None:
    window, triggers = feed([click(0, 0), order(1, 5)], WindowPolicy(every_n=10))

    assert triggers == [None, "order"]
    assert window.unscored_count == 0


def test_count_bound_evicts_oldest() -> None:
    window, _ = feed([click(i, i) for i in range(5)], WindowPolicy(max_events=3, every_n=100))

    assert window.event_ids() == ["c2", "c3", "c4"]


def test_age_bound_follows_event_time() -> None:
    events = [click(0, 0), click(1, 50), click(2, 100), click(3, 161)]

    window, _ = feed(events, WindowPolicy(max_age_s=60, every_n=100))

    # c3 closes the window at 161 s, so everything before 101 s is evicted.
    assert window.event_ids() == ["c3"]


def test_late_event_is_placed_in_time_order() -> None:
    window, _ = feed([click(0, 0), click(2, 20), click(1, 10)], WindowPolicy(every_n=100))

    assert window.event_ids() == ["c0", "c1", "c2"]


def test_duplicate_event_leaves_window_unchanged() -> None:
    policy = WindowPolicy(every_n=100)
    window, _ = feed([click(0, 0), click(1, 1)], policy)

    update = add_event(window, click(0, 0), policy, arrival_s=T0.timestamp() + 5)

    assert update.duplicate is True
    assert update.window == window
    assert update.trigger is None


def test_redelivered_trigger_event_triggers_again() -> None:
    policy = WindowPolicy(every_n=100)
    window, triggers = feed([click(0, 0), order(1, 1)], policy)

    update = add_event(window, order(1, 1), policy, arrival_s=T0.timestamp() + 5)

    assert triggers[-1] == "order"
    assert update.duplicate is True
    assert update.trigger == "order"


def test_event_of_other_user_is_rejected() -> None:
    with pytest.raises(ValueError, match="is for user 'u2', not 'u1'"):
        add_event(UserWindow(user_id="u1"), click(0, 0, user_id="u2"), WindowPolicy(), arrival_s=0.0)


def test_idle_uses_injected_clock() -> None:
    policy = WindowPolicy(idle_s=20, every_n=100)
    window, _ = feed([click(0, 0)], policy)
    arrival_s = T0.timestamp()

    assert is_idle(window, policy, now_s=arrival_s + 19.9) is False
    assert is_idle(window, policy, now_s=arrival_s + 20) is True
    assert is_idle(mark_scored(window), policy, now_s=arrival_s + 60) is False


def test_window_id_is_deterministic() -> None:
    first = window_id("u1", ["c0", "c1"])

    assert first == window_id("u1", ["c0", "c1"])
    assert first != window_id("u1", ["c0", "c2"])
    assert first != window_id("u2", ["c0", "c1"])
    assert first.startswith("w-")
    assert len(first) == 26


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_events", 0, "max_events must be at least 1, got 0"),
        ("max_age_s", 0, "max_age_s must be positive, got 0"),
        ("every_n", 0, "every_n must be at least 1, got 0"),
        ("idle_s", -1, "idle_s must be positive, got -1"),
    ],
)
def test_policy_rejects_invalid_bounds(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowPolicy(**{field: value})


def test_iter_windows_closes_idle_and_trailing_windows() -> None:
    policy = WindowPolicy(every_n=100, idle_s=30)
    # u1 goes idle for 40 s before c2; u2 still has an unscored event at the end of the stream.
    events = [click(0, 0), click(1, 5), click(9, 10, user_id="u2"), click(2, 45)]

    closed = list(iter_windows(events, policy))

    assert [(item.user_id, item.trigger, [e.event_id for e in item.events]) for item in closed] == [
        ("u1", "idle", ["c0", "c1"]),
        ("u1", "idle", ["c0", "c1", "c2"]),
        ("u2", "idle", ["c9"]),
    ]
    assert closed[0].window_id == window_id("u1", ["c0", "c1"])


def test_iter_windows_counts_shared_devices() -> None:
    shared = [
        order(1, 0, user_id="a").model_copy(update={"device_id": "d1"}),
        order(2, 10, user_id="b").model_copy(update={"device_id": "d1"}),
    ]

    closed = list(iter_windows(shared, WindowPolicy()))

    assert [(item.user_id, item.device_accounts, item.ip_accounts) for item in closed] == [("a", 1, 0), ("b", 2, 0)]
