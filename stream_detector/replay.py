"""Re-time labeled event streams to the present and publish them to Kafka on schedule.

The data sets were recorded years ago and over months, and the web-bot classes on
different days. ``retime`` moves every user's events to start within a few minutes of
now, keeping each user's own order and gaps (divided by the replay speed), so that the
stream worker's event-time windows see the behaviour and not the recording date.
``publish`` then sends each event when its new event time comes round on the wall clock.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schemas import EventKind, OrderEvent
from stream_detector.datasets import (
    AnyEvent,
    DataNotFoundError,
    LabeledStream,
    Split,
    default_data_dir,
    generate_synthetic,
    load_fraud_orders,
    load_web_bot,
    merge,
    stable_fraction,
)
from stream_detector.logs import configure_logging

DEFAULT_TOPICS: dict[EventKind, str] = {
    "click": "events.click",
    "search": "events.search",
    "order": "events.order",
}
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_SPEED = 10.0
DEFAULT_SPREAD_S = 150.0
DEFAULT_MAX_GAP_S = 900.0
DEFAULT_START_DELAY_S = 5.0

CHRONOLOGICAL_SOURCES = frozenset({"ecommerce-fraud"})
"""Sources whose users keep their relative order in time when re-timed.

The fraud orders keep it because shared devices and bursts of fraud are spread over
neighbouring minutes. Web-bot sessions do not, because their recording days reveal the
class; they and the synthetic users start at random offsets instead.
"""

SYNTHETIC_ANCHOR = datetime(2024, 1, 1, tzinfo=UTC)
"""Start given to the synthetic generator; ``retime`` moves its events anyway."""

_LOGGED_REJECTIONS = 5
"""Rejected events logged one by one; the final report counts all of them."""

_log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- re-timing


def retime(
    stream: LabeledStream,
    start: datetime,
    speed: float = DEFAULT_SPEED,
    spread_s: float = DEFAULT_SPREAD_S,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    seed: int = 0,
    *,
    chronological_sources: frozenset[str] = CHRONOLOGICAL_SOURCES,
) -> LabeledStream:
    """Move every user's events to start within ``spread_s`` seconds after ``start``.

    Each user's events keep their order. A gap between two of them is first cut to
    ``max_gap_s`` and then divided by ``speed``. A user's first event goes to
    ``start`` + an offset in [0, ``spread_s``]: for users whose label source is in
    ``chronological_sources`` the offset follows their real first-event time, with the
    whole span of those users mapped onto ``spread_s``. Every other user gets an offset
    drawn from a hash of ``seed`` and the user id, so a user's offset does not depend on
    which other users are replayed. An order's ``account.signup_time`` moves with the
    order and keeps the real signup-to-order gap, not divided by ``speed``.

    Args:
        stream: events to re-time.
        start: aware datetime of the earliest possible first event.
        speed: replay speed; 1 keeps the real gaps, 10 makes them ten times shorter.
        spread_s: seconds over which users' first events are spread.
        max_gap_s: maximum gap, in real seconds, between two events of one user; longer
            gaps are cut to it before the speed-up.
        seed: seed of the random start offsets.
        chronological_sources: label sources whose users keep their order in time.

    Returns:
        A new stream with new event objects and the same labels.

    Raises:
        ValueError: ``start`` has no UTC offset, ``speed`` is not positive, or
            ``spread_s`` or ``max_gap_s`` is negative.
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"start {start.isoformat()} has no UTC offset: pass an aware datetime")
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    if spread_s < 0 or max_gap_s < 0:
        raise ValueError(f"spread_s and max_gap_s must not be negative, got {spread_s} and {max_gap_s}")

    by_user = stream.events_by_user()
    start_offsets_s = _start_offsets_s(stream, by_user, spread_s, seed, chronological_sources)

    retimed: list[AnyEvent] = []
    for user_id, events in by_user.items():
        elapsed_s = 0.0
        previous_time = events[0].event_time
        for event in events:
            gap_s = (event.event_time - previous_time).total_seconds()
            elapsed_s += min(gap_s, max_gap_s) / speed
            previous_time = event.event_time
            new_time = start + timedelta(seconds=start_offsets_s[user_id] + elapsed_s)
            retimed.append(_moved(event, new_time))

    return LabeledStream(events=retimed, labels=stream.labels, skipped_counts=stream.skipped_counts)


def _start_offsets_s(
    stream: LabeledStream,
    by_user: Mapping[str, list[AnyEvent]],
    spread_s: float,
    seed: int,
    chronological_sources: frozenset[str],
) -> dict[str, float]:
    chronological: dict[str, datetime] = {}
    offsets_s: dict[str, float] = {}
    for user_id, events in by_user.items():
        label = stream.labels.get(user_id)
        if label is not None and label.source in chronological_sources:
            chronological[user_id] = events[0].event_time
        else:
            offsets_s[user_id] = spread_s * stable_fraction(f"retime:{seed}:{user_id}")

    if chronological:
        earliest = min(chronological.values())
        span_s = (max(chronological.values()) - earliest).total_seconds()
        for user_id, first_time in chronological.items():
            position = (first_time - earliest).total_seconds() / span_s if span_s > 0 else 0.0
            offsets_s[user_id] = spread_s * position
    return offsets_s


def _moved(event: AnyEvent, new_time: datetime) -> AnyEvent:
    if isinstance(event, OrderEvent) and event.account is not None and event.account.signup_time is not None:
        signup_gap = event.event_time - event.account.signup_time
        account = event.account.model_copy(update={"signup_time": new_time - signup_gap})
        return event.model_copy(update={"event_time": new_time, "account": account})
    return event.model_copy(update={"event_time": new_time})


def replay_span_s(stream: LabeledStream, start: datetime) -> float:
    """Return the seconds from ``start`` to the last event, the length of a paced replay."""
    if not stream.events:
        return 0.0
    return (stream.events[-1].event_time - start).total_seconds()


# --------------------------------------------------------------------------- publishing


DeliveryCallback = Callable[[KafkaError | None, Message], None]


class EventProducer(Protocol):
    """The part of ``confluent_kafka.Producer`` that ``publish`` uses; tests pass a fake."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        timestamp: int = 0,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...


@dataclass(frozen=True)
class ReplayProgress:
    """Snapshot of a running replay, passed to the progress callback."""

    sent: int
    total: int
    failed: int
    elapsed_s: float
    behind_s: float
    """How late the last event was sent after its event time (0 without pacing or when on time)."""

    @property
    def rate_per_s(self) -> float:
        """Events sent per wall-clock second so far."""
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class ReplayReport:
    """Outcome of one replay."""

    sent_by_kind: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    failed: int = 0
    """Events that the producer rejected or the broker did not acknowledge."""
    undelivered: int = 0
    """Events still queued when the final flush timed out."""
    wall_s: float = 0.0
    first_error: str | None = None

    @property
    def sent(self) -> int:
        """Events handed to the producer."""
        return sum(self.sent_by_kind.values())

    @property
    def ok(self) -> bool:
        """True when every event was acknowledged by the broker."""
        return self.failed == 0 and self.undelivered == 0


def log_progress(progress: ReplayProgress) -> None:
    """Log one progress line: events sent of total, rate, failures and lag."""
    _log.info(
        "replay progress",
        sent=progress.sent,
        total=progress.total,
        rate_per_s=round(progress.rate_per_s, 1),
        failed=progress.failed,
        behind_s=round(progress.behind_s, 1),
    )


class BrokerUnavailableError(ConnectionError):
    """No Kafka broker responded at the bootstrap address."""


PRODUCER_MESSAGE_TIMEOUT_MS = 30_000
"""Delivery timeout per message; librdkafka's default of 5 minutes hides a lost broker."""


def connect_producer(bootstrap_servers: str, connect_timeout_s: float = 10.0) -> Producer:
    """Create a producer and check that the broker responds to a metadata request.

    Raises:
        BrokerUnavailableError: no broker responded within ``connect_timeout_s`` seconds.
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "client.id": "stream-detector-replay",
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": PRODUCER_MESSAGE_TIMEOUT_MS,
            # The Java client's key hashing, which aiokafka and Faust use too, so a user's
            # events land in the same partition whichever of these clients produced them.
            "partitioner": "murmur2_random",
        }
    )
    try:
        producer.list_topics(timeout=connect_timeout_s)
    except KafkaException as error:
        message = (
            f"no Kafka broker responded at {bootstrap_servers} within {connect_timeout_s:g} s ({error}): "
            "start the broker or pass its address"
        )
        raise BrokerUnavailableError(message) from None
    return producer


def _utc_now() -> datetime:
    return datetime.now(UTC)


def publish(
    stream: LabeledStream,
    bootstrap_servers: str = DEFAULT_BOOTSTRAP,
    topics: Mapping[EventKind, str] = DEFAULT_TOPICS,
    *,
    pace: bool = True,
    progress: Callable[[ReplayProgress], None] | None = log_progress,
    progress_interval_s: float = 5.0,
    producer: EventProducer | None = None,
    connect_timeout_s: float = 10.0,
    flush_timeout_s: float = 30.0,
    clock: Callable[[], datetime] = _utc_now,
) -> ReplayReport:
    """Send every event of the stream to its kind's topic, in event-time order.

    The key is the user id in UTF-8 and the value the event's JSON, so a user's events of
    one kind land in one partition in order. The Kafka message timestamp is the event time.
    With ``pace``, each event waits until its event time on the wall clock, serving
    delivery callbacks while it waits. Events whose time has passed go out at once.

    Args:
        stream: events to send, usually the output of ``retime``.
        bootstrap_servers: Kafka ``host:port`` list; ignored when ``producer`` is given.
        topics: topic name for each event kind.
        pace: wait for each event's time; False sends as fast as the producer allows.
        progress: called about every ``progress_interval_s`` seconds and once at the end;
            None for silence.
        progress_interval_s: seconds between progress calls.
        producer: producer to use instead of a new ``confluent_kafka.Producer``.
        connect_timeout_s: seconds a new producer waits for the broker before the first event.
        flush_timeout_s: seconds to wait for outstanding deliveries at the end.
        clock: returns the current aware time; tests replace it.

    Returns:
        Counts of events sent per kind, delivered and failed, and the wall time.

    Raises:
        ValueError: ``topics`` lacks a kind that occurs in the stream.
        BrokerUnavailableError: no broker responded at ``bootstrap_servers`` within
            ``connect_timeout_s`` seconds.
    """
    missing = sorted({event.kind for event in stream.events} - set(topics))
    if missing:
        raise ValueError(f"no topic given for event kinds {missing}: add them to topics")

    if producer is None:
        producer = connect_producer(bootstrap_servers, connect_timeout_s)

    report = ReplayReport()
    sent_by_kind: Counter[str] = Counter()

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            report.delivered += 1
            return
        report.failed += 1
        if report.first_error is None:
            report.first_error = str(error)

    started = clock()
    total = len(stream.events)
    next_progress_s = progress_interval_s
    behind_s = 0.0
    for event in stream.events:
        if pace:
            behind_s = _wait_until(event.event_time, producer, clock)
        sent = _produce(producer, topics[event.kind], event, on_delivery, report)
        if sent:
            sent_by_kind[event.kind] += 1
        producer.poll(0)

        elapsed_s = (clock() - started).total_seconds()
        if progress is not None and elapsed_s >= next_progress_s:
            progress(ReplayProgress(sum(sent_by_kind.values()), total, report.failed, elapsed_s, behind_s))
            next_progress_s = elapsed_s + progress_interval_s

    report.undelivered = producer.flush(flush_timeout_s)
    report.sent_by_kind = dict(sent_by_kind)
    report.wall_s = (clock() - started).total_seconds()
    if progress is not None:
        progress(ReplayProgress(report.sent, total, report.failed, report.wall_s, behind_s))
    if report.first_error is not None:
        _log.warning("replay delivery failed", failed=report.failed, first_error=report.first_error)
    return report


def _wait_until(target: datetime, producer: EventProducer, clock: Callable[[], datetime]) -> float:
    """Serve delivery callbacks until ``target``; return how late it is afterwards, in seconds."""
    while True:
        remaining_s = (target - clock()).total_seconds()
        if remaining_s <= 0:
            return max(0.0, -remaining_s)
        producer.poll(min(remaining_s, 0.5))


def _produce(
    producer: EventProducer,
    topic: str,
    event: AnyEvent,
    on_delivery: DeliveryCallback,
    report: ReplayReport,
) -> bool:
    """Hand one event to the producer, waiting while its queue is full; False if rejected."""
    value = event.model_dump_json().encode("utf-8")
    key = event.user_id.encode("utf-8")
    timestamp_ms = int(event.event_time.timestamp() * 1000)
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery, timestamp=timestamp_ms)
            return True
        except BufferError:
            # The local queue is full: let the producer deliver, then retry.
            producer.poll(0.5)
        except KafkaException as error:
            report.failed += 1
            if report.first_error is None:
                report.first_error = str(error)
            if report.failed <= _LOGGED_REJECTIONS:
                _log.warning("replay produce failed", event_id=event.event_id, topic=topic, error=str(error))
            return False


# --------------------------------------------------------------------------- building a replay


def build_replay_stream(
    data_dir: Path,
    split: Split | None,
    seed: int,
    *,
    search_share: float = 0.3,
    attackers: int = 40,
    hard_negatives: int = 40,
    limit_users: int | None = None,
) -> LabeledStream:
    """Load both data sets, add synthetic traffic, and keep one split.

    Args:
        data_dir: folder that contains ``web-bot-phase1/`` and ``ecommerce-fraud/``.
        split: "train", "test", or None for both.
        seed: seed of the synthetic traffic and of the user sample.
        search_share: share of real users that get searches before their first event.
        attackers: number of synthetic fraud users (before the split).
        hard_negatives: number of synthetic legitimate users (before the split).
        limit_users: keep at most this many users, sampled per source and label.

    Returns:
        The events at their original (not re-timed) times, with labels.

    Raises:
        DataNotFoundError: a data file is missing.
    """
    real = merge(load_web_bot(data_dir), load_fraud_orders(data_dir))
    synthetic = generate_synthetic(
        SYNTHETIC_ANCHOR,
        seed,
        base=real,
        search_share=search_share,
        attackers=attackers,
        hard_negatives=hard_negatives,
    )
    stream = merge(real, synthetic)
    if split is not None:
        stream = stream.filter_split(split)
    if limit_users is not None:
        stream = stream.limit_users(limit_users, seed)
    return stream


def write_labels(stream: LabeledStream, path: Path) -> int:
    """Write the labels of the users that have events as JSON lines; return the number written.

    Each line has ``user_id``, ``label``, ``source``, ``detail`` and ``split``.
    """
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for user_id in stream.users():
            label = stream.labels.get(user_id)
            if label is None:
                continue
            record = {
                "user_id": user_id,
                "label": label.label,
                "source": label.source,
                "detail": label.detail,
                "split": label.split,
            }
            handle.write(json.dumps(record) + "\n")
            count += 1
    return count


def summarize(stream: LabeledStream) -> list[str]:
    """Return table lines with users and events per source and label."""
    users: Counter[tuple[str, str]] = Counter()
    for user_id in stream.users():
        label = stream.labels.get(user_id)
        users[("unlabeled", "-") if label is None else (label.source, label.label)] += 1

    events: Counter[tuple[str, str]] = Counter()
    for event in stream.events:
        label = stream.labels.get(event.user_id)
        events[("unlabeled", "-") if label is None else (label.source, label.label)] += 1

    lines = [f"{'source':<16} {'label':<11} {'users':>6} {'events':>7}"]
    for key in sorted(users):
        lines.append(f"{key[0]:<16} {key[1]:<11} {users[key]:>6} {events[key]:>7}")
    kinds = stream.kind_counts()
    lines.append(f"events by kind: click {kinds['click']}, search {kinds['search']}, order {kinds['order']}")
    return lines


# --------------------------------------------------------------------------- command line


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 0, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``stream-detector replay``."""
    parser = argparse.ArgumentParser(
        prog="stream-detector replay",
        description=(
            "Replay the labeled data sets to Kafka as click, search and order events, "
            "re-timed to start now and sent on schedule."
        ),
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with web-bot-phase1/ and ecommerce-fraud/ (default: $STREAM_DETECTOR_DATA_DIR, "
        "else ../shared/data beside the repository, else ./data)",
    )
    data.add_argument(
        "--split",
        choices=("train", "test", "all"),
        default="test",
        help="replay the users of this split (default: %(default)s)",
    )
    data.add_argument(
        "--limit-users",
        type=_positive_int,
        default=None,
        help="replay at most this many users; small sources are kept whole and each source keeps "
        "its fraud share (default: all users)",
    )
    data.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic traffic, the user sample and the start offsets (default: %(default)s)",
    )
    data.add_argument(
        "--search-share",
        type=_share,
        default=0.3,
        help="share of real users, 0 to 1, that get synthetic searches before their first event (default: %(default)s)",
    )
    data.add_argument(
        "--attackers",
        type=_non_negative_int,
        default=40,
        help="number of synthetic fraud users, before the split (default: %(default)s)",
    )
    data.add_argument(
        "--hard-negatives",
        type=_non_negative_int,
        default=40,
        help="number of synthetic busy but legitimate users, before the split (default: %(default)s)",
    )

    timing = parser.add_argument_group("timing")
    timing.add_argument(
        "--speed",
        type=_positive_float,
        default=DEFAULT_SPEED,
        help="speed-up factor that divides the gaps between a user's events; 1 keeps real gaps (default: %(default)s)",
    )
    timing.add_argument(
        "--spread-s",
        type=_non_negative_float,
        default=DEFAULT_SPREAD_S,
        help="seconds after the start over which users' first events are spread (default: %(default)s)",
    )
    timing.add_argument(
        "--max-gap-s",
        type=_non_negative_float,
        default=DEFAULT_MAX_GAP_S,
        help="maximum gap between two events of one user, in real seconds before the speed-up; "
        "longer gaps are cut to it (default: %(default)s)",
    )
    timing.add_argument(
        "--start-delay-s",
        type=_non_negative_float,
        default=DEFAULT_START_DELAY_S,
        help="seconds from now to the first possible event, time for the producer to connect (default: %(default)s)",
    )
    timing.add_argument(
        "--no-pace",
        action="store_true",
        help="send every event at once instead of at its event time",
    )

    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument(
        "--bootstrap",
        default=DEFAULT_BOOTSTRAP,
        help="Kafka bootstrap servers as host:port[,host:port] (default: %(default)s)",
    )
    kafka.add_argument(
        "--click-topic", default=DEFAULT_TOPICS["click"], help="topic for click events (default: %(default)s)"
    )
    kafka.add_argument(
        "--search-topic", default=DEFAULT_TOPICS["search"], help="topic for search events (default: %(default)s)"
    )
    kafka.add_argument(
        "--order-topic", default=DEFAULT_TOPICS["order"], help="topic for order events (default: %(default)s)"
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--labels-out",
        type=Path,
        default=None,
        help="write the labels of the replayed users to this file as JSON lines "
        "(user_id, label, source, detail, split)",
    )
    output.add_argument(
        "--dry-run",
        action="store_true",
        help="build, summarize and optionally write the labels, but send nothing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``stream-detector replay``; return the exit status.

    Returns:
        0 when every event was delivered (or on ``--dry-run``), 1 when some failed, 2 when
        the data is missing.
    """
    args = build_parser().parse_args(argv)
    configure_logging()
    data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
    split: Split | None = None if args.split == "all" else args.split

    try:
        original = build_replay_stream(
            data_dir,
            split,
            args.seed,
            search_share=args.search_share,
            attackers=args.attackers,
            hard_negatives=args.hard_negatives,
            limit_users=args.limit_users,
        )
    except DataNotFoundError as error:
        print(f"stream-detector replay: {error}", file=sys.stderr)
        return 2

    start = _utc_now() + timedelta(seconds=args.start_delay_s)
    stream = retime(original, start, args.speed, args.spread_s, args.max_gap_s, args.seed)
    span_s = replay_span_s(stream, start)
    for line in summarize(stream):
        print(line, file=sys.stderr)
    print(
        f"replay: {len(stream.events)} events of {len(stream.users())} users over {span_s:.0f} s "
        f"(speed {args.speed:g}, spread {args.spread_s:g} s, max gap {args.max_gap_s:g} s), "
        f"starting {start.isoformat(timespec='seconds')}",
        file=sys.stderr,
    )

    if args.labels_out is not None:
        written = write_labels(stream, args.labels_out)
        print(f"replay: wrote {written} labels to {args.labels_out}", file=sys.stderr)
    if args.dry_run:
        return 0

    topics: dict[EventKind, str] = {"click": args.click_topic, "search": args.search_topic, "order": args.order_topic}
    try:
        report = publish(stream, args.bootstrap, topics, pace=not args.no_pace)
    except BrokerUnavailableError as error:
        print(f"stream-detector replay: {error}", file=sys.stderr)
        return 1
    print(
        f"replay: sent {report.sent} events ({report.sent_by_kind}), delivered {report.delivered}, "
        f"failed {report.failed}, undelivered {report.undelivered}, in {report.wall_s:.1f} s",
        file=sys.stderr,
    )
    if not report.ok:
        reason = report.first_error or f"{report.undelivered} events were still queued when the final flush timed out"
        print(f"replay: delivery failed: {reason}; check that Kafka runs at {args.bootstrap}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
