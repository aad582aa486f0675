"""Per-user event windows: bounds, scoring triggers and deterministic window ids.

The functions here are pure: the Faust windower keeps a :class:`UserWindow` per
user in a table and calls them, and the trainer calls :func:`iter_windows` over
a recorded stream, so both see exactly the same windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas import ClickEvent, OrderEvent, SearchEvent, Trigger

AnyEvent = ClickEvent | SearchEvent | OrderEvent


@dataclass(frozen=True)
class WindowPolicy:
    """Bounds of a window and the rules that send it for scoring."""

    max_events: int = 50  # oldest events are evicted past this count
    max_age_s: float = 1800.0  # seconds of event time kept before the newest event; older ones are evicted
    every_n: int = 10  # score after this many new events without a score
    idle_s: float = 20.0  # seconds without a new event after which unscored events are scored
    score_on_order: bool = True  # score at once when an order arrives

    def __post_init__(self) -> None:
        if self.max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {self.max_events}")
        if self.max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {self.max_age_s}")
        if self.every_n < 1:
            raise ValueError(f"every_n must be at least 1, got {self.every_n}")
        if self.idle_s <= 0:
            raise ValueError(f"idle_s must be positive, got {self.idle_s}")


class UserWindow(BaseModel):
    """The recent events of one user, as stored in the windows table."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    events: list[AnyEvent] = Field(default_factory=list)
    unscored_count: int = 0  # events added since the last score request
    last_arrival_s: float = 0.0  # wall-clock time, in epoch seconds, the newest event arrived

    def event_ids(self) -> list[str]:
        """Return the ids of the events in the window, oldest first."""
        return [event.event_id for event in self.events]

    def contains(self, event_id: str) -> bool:
        """Return whether an event with this id is in the window."""
        return any(event.event_id == event_id for event in self.events)


@dataclass(frozen=True)
class WindowUpdate:
    """Result of adding one event to a window."""

    window: UserWindow
    trigger: Trigger | None  # the reason to score now, or None
    duplicate: bool = False  # the event id was already in the window
    evicted: int = 0  # events removed to keep the bounds


def add_event(window: UserWindow, event: AnyEvent, policy: WindowPolicy, arrival_s: float) -> WindowUpdate:
    """Add one event to a user's window, enforce the bounds and decide whether to score.

    A redelivered event (its id is already in the window) changes nothing. When it was
    the newest event and triggered a score, the trigger is returned again, so a score
    request lost in a crash is sent once more. The window id is the same, and so is the
    alert id.

    Args:
        window: the user's current window; not modified.
        event: the validated event, whose ``user_id`` must match the window's.
        policy: bounds and trigger rules.
        arrival_s: wall-clock time of arrival, in epoch seconds.

    Returns:
        The new window, the trigger if any, and whether the event was a duplicate.

    Raises:
        ValueError: the event belongs to another user.
    """
    if event.user_id != window.user_id:
        raise ValueError(f"event {event.event_id!r} is for user {event.user_id!r}, not {window.user_id!r}")

    if window.contains(event.event_id):
        redelivered_trigger = None
        if window.events[-1].event_id == event.event_id and window.unscored_count == 0:
            redelivered_trigger = _trigger_for(event, policy, unscored_count=policy.every_n)
        return WindowUpdate(window=window, trigger=redelivered_trigger, duplicate=True)

    events = sorted([*window.events, event], key=lambda item: (item.event_time, item.event_id))
    kept = _within_bounds(events, policy)
    unscored_count = window.unscored_count + 1
    trigger = _trigger_for(event, policy, unscored_count)
    if trigger is not None:
        unscored_count = 0

    updated = UserWindow(
        user_id=window.user_id,
        events=kept,
        unscored_count=unscored_count,
        last_arrival_s=max(window.last_arrival_s, arrival_s),
    )
    return WindowUpdate(window=updated, trigger=trigger, evicted=len(events) - len(kept))


def is_idle(window: UserWindow, policy: WindowPolicy, now_s: float) -> bool:
    """Return whether the window has unscored events and no arrival for ``policy.idle_s``."""
    return window.unscored_count > 0 and now_s - window.last_arrival_s >= policy.idle_s


def mark_scored(window: UserWindow) -> UserWindow:
    """Return the window with no unscored events left."""
    return window.model_copy(update={"unscored_count": 0})


def window_id(user_id: str, event_ids: Iterable[str]) -> str:
    """Derive a window id from the user and the exact events the window contains.

    The same events always give the same id, whether the window was rebuilt from a
    changelog, replayed, or scored again after a restart.
    """
    digest = hashlib.sha256(user_id.encode("utf-8"))
    for event_id in event_ids:
        digest.update(b"\x1f")
        digest.update(event_id.encode("utf-8"))
    return "w-" + digest.hexdigest()[:24]


def _within_bounds(events: list[AnyEvent], policy: WindowPolicy) -> list[AnyEvent]:
    """Drop events older than the age bound, then the oldest past the count bound."""
    newest_time = events[-1].event_time
    recent = [event for event in events if (newest_time - event.event_time).total_seconds() <= policy.max_age_s]
    return recent[-policy.max_events :]


def _trigger_for(event: AnyEvent, policy: WindowPolicy, unscored_count: int) -> Trigger | None:
    if policy.score_on_order and isinstance(event, OrderEvent):
        return "order"
    if unscored_count >= policy.every_n:
        return "every_n"
    return None


@dataclass
class ContextCounter:
    """Distinct accounts seen per device id and per IP address, for cross-user context.

    Each set is bounded so one popular address cannot grow without limit; past the
    bound the count stays at ``max_accounts``.
    """

    max_accounts: int = 100
    accounts_by_device: dict[str, set[str]] = field(default_factory=dict)
    accounts_by_ip: dict[str, set[str]] = field(default_factory=dict)

    def observe(self, event: AnyEvent) -> tuple[int, int]:
        """Record the event's device and IP and return (device accounts, IP accounts)."""
        device_id, ip_address = context_keys(event)
        device_count = _add_bounded(self.accounts_by_device, device_id, event.user_id, self.max_accounts)
        ip_count = _add_bounded(self.accounts_by_ip, ip_address, event.user_id, self.max_accounts)
        return device_count, ip_count


def context_keys(event: AnyEvent) -> tuple[str | None, str | None]:
    """Return the device id and IP address an event carries, from the account context if needed."""
    device_id = event.device_id
    ip_address = event.ip_address
    if isinstance(event, OrderEvent) and event.account is not None:
        device_id = device_id or event.account.device_id
        ip_address = ip_address or event.account.ip_address
    return device_id, ip_address


def _add_bounded(table: dict[str, set[str]], key: str | None, user_id: str, max_accounts: int) -> int:
    if key is None:
        return 0
    accounts = table.setdefault(key, set())
    if len(accounts) < max_accounts:
        accounts.add(user_id)
    return len(accounts)


@dataclass(frozen=True)
class ClosedWindow:
    """A window that a recorded stream sent for scoring, as the trainer receives it."""

    user_id: str
    window_id: str
    trigger: Trigger
    events: list[AnyEvent]
    device_accounts: int
    ip_accounts: int
    closed_at: datetime


def iter_windows(events: Iterable[AnyEvent], policy: WindowPolicy) -> Iterator[ClosedWindow]:
    """Yield every window a stream of events sends for scoring, using event time as the clock.

    The events must be in event-time order. Idle triggers fire when a user's next event
    comes ``policy.idle_s`` or more after the previous one, and for every user with
    unscored events at the end of the stream.
    """
    windows: dict[str, UserWindow] = {}
    context = ContextCounter()
    device_counts: dict[str, tuple[int, int]] = {}

    for event in events:
        now_s = event.event_time.timestamp()
        window = windows.get(event.user_id) or UserWindow(user_id=event.user_id)
        if window.events and is_idle(window, policy, now_s):
            yield _close(window, "idle", device_counts.get(event.user_id, (0, 0)))
            window = mark_scored(window)

        device_counts[event.user_id] = _max_pair(device_counts.get(event.user_id, (0, 0)), context.observe(event))
        update = add_event(window, event, policy, arrival_s=now_s)
        windows[event.user_id] = update.window
        if update.trigger is not None and not update.duplicate:
            yield _close(update.window, update.trigger, device_counts[event.user_id])

    for window in windows.values():
        if window.unscored_count > 0:
            yield _close(window, "idle", device_counts.get(window.user_id, (0, 0)))


def _max_pair(left: tuple[int, int], right: tuple[int, int]) -> tuple[int, int]:
    return max(left[0], right[0]), max(left[1], right[1])


def _close(window: UserWindow, trigger: Trigger, counts: tuple[int, int]) -> ClosedWindow:
    return ClosedWindow(
        user_id=window.user_id,
        window_id=window_id(window.user_id, window.event_ids()),
        trigger=trigger,
        events=list(window.events),
        device_accounts=counts[0],
        ip_accounts=counts[1],
        closed_at=window.events[-1].event_time,
    )
