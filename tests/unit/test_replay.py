"""Tests of re-timing, publishing through a fake producer, and the replay command line."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from schemas import AccountContext, ClickEvent, EventKind, OrderEvent, SearchEvent, parse_event
from stream_detector import replay
from stream_detector.datasets import AnyEvent, LabeledStream, UserLabel, generate_synthetic, stable_fraction
from stream_detector.replay import (
    DEFAULT_TOPICS,
    BrokerUnavailableError,
    ReplayProgress,
    build_parser,
    connect_producer,
    publish,
    replay_span_s,
    retime,
    write_labels,
)

RECORDED = datetime(2019, 10, 28, 9, 0, tzinfo=UTC)
START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _click(event_id: str, user_id: str, seconds: float) -> ClickEvent:
    return ClickEvent(event_id=event_id, user_id=user_id, event_time=RECORDED + timedelta(seconds=seconds), page="/")


def _order(event_id: str, user_id: str, time: datetime, signup_time: datetime | None = None) -> OrderEvent:
    return OrderEvent(
        event_id=event_id,
        user_id=user_id,
        event_time=time,
        order_id=event_id,
        amount=20,
        account=AccountContext(signup_time=signup_time),
    )


def _times(stream: LabeledStream, user_id: str) -> list[datetime]:
    return [event.event_time for event in stream.events if event.user_id == user_id]


# --------------------------------------------------------------------------- retime


def test_retime_keeps_gaps_divided_by_speed() -> None:
    stream = LabeledStream(
        events=[_click("a1", "bot", 0), _click("a2", "bot", 10), _click("a3", "bot", 2010), _click("a4", "bot", 2030)],
        labels={"bot": UserLabel("fraud", "web-bot", "moderate_bot", "test")},
    )

    retimed = retime(stream, START, speed=10, spread_s=0, max_gap_s=900, seed=0)

    # Gaps 10 s, 2000 s (cut to 900 s) and 20 s, each divided by 10.
    assert _times(retimed, "bot") == [
        START,
        START + timedelta(seconds=1),
        START + timedelta(seconds=91),
        START + timedelta(seconds=93),
    ]
    assert [event.event_id for event in retimed.events] == ["a1", "a2", "a3", "a4"]
    assert retimed.labels == stream.labels


def test_retime_speed_one_keeps_real_gaps() -> None:
    stream = LabeledStream(events=[_click("a1", "u", 0), _click("a2", "u", 37.5)], labels={})

    retimed = retime(stream, START, speed=1, spread_s=0, max_gap_s=900, seed=0)

    assert _times(retimed, "u") == [START, START + timedelta(seconds=37.5)]


def test_retime_chronological_users_keep_order() -> None:
    labels = {f"acct-{index}": UserLabel("legitimate", "ecommerce-fraud", "class_0", "test") for index in range(3)}
    stream = LabeledStream(
        events=[
            _order("o0", "acct-0", RECORDED),
            _order("o1", "acct-1", RECORDED + timedelta(hours=1)),
            _order("o2", "acct-2", RECORDED + timedelta(hours=4)),
        ],
        labels=labels,
    )

    retimed = retime(stream, START, speed=10, spread_s=80, max_gap_s=900, seed=0)

    assert [event.event_time for event in retimed.events] == [
        START,
        START + timedelta(seconds=20),
        START + timedelta(seconds=80),
    ]


def test_retime_random_offsets_stable_per_user() -> None:
    labels = {f"s{index}": UserLabel("legitimate", "web-bot", "human", "test") for index in range(20)}
    events: list[AnyEvent] = [_click(f"e{index}", f"s{index}", index * 86_400.0) for index in range(20)]
    stream = LabeledStream(events=events, labels=labels)

    retimed = retime(stream, START, speed=10, spread_s=100, max_gap_s=900, seed=5)
    alone = retime(stream.select_users(["s7"]), START, speed=10, spread_s=100, max_gap_s=900, seed=5)
    reseeded = retime(stream, START, speed=10, spread_s=100, max_gap_s=900, seed=6)

    offsets_s = [(_times(retimed, f"s{index}")[0] - START).total_seconds() for index in range(20)]
    assert all(0 <= offset_s <= 100 for offset_s in offsets_s)
    assert offsets_s[7] == pytest.approx(100 * stable_fraction("retime:5:s7"), abs=1e-6)
    assert _times(alone, "s7") == _times(retimed, "s7")
    assert _times(reseeded, "s7") != _times(retimed, "s7")
    # Recording days one day apart must not survive as an order in time.
    assert offsets_s != sorted(offsets_s)


def test_retime_keeps_signup_gap() -> None:
    order_time = RECORDED + timedelta(seconds=600)
    signup_time = order_time - timedelta(days=3, minutes=7)
    stream = LabeledStream(
        events=[_click("c1", "acct-9", 0), _order("o1", "acct-9", order_time, signup_time)],
        labels={"acct-9": UserLabel("fraud", "ecommerce-fraud", "class_1", "test")},
    )

    retimed = retime(stream, START, speed=10, spread_s=0, max_gap_s=900, seed=0)
    order = retimed.events[-1]

    assert isinstance(order, OrderEvent)
    assert order.event_time == START + timedelta(seconds=60)
    assert order.account is not None
    assert order.account.signup_time == START + timedelta(seconds=60) - timedelta(days=3, minutes=7)
    original = stream.events[-1]
    assert isinstance(original, OrderEvent)
    assert original.event_time == order_time


def test_retime_keeps_per_user_order_on_synthetic() -> None:
    stream = generate_synthetic(datetime(2024, 1, 1, tzinfo=UTC), seed=11, attackers=10, hard_negatives=10)

    retimed = retime(stream, START, speed=10, spread_s=150, max_gap_s=900, seed=11)

    before = stream.events_by_user()
    after = retimed.events_by_user()
    assert before.keys() == after.keys()
    for user_id, events in before.items():
        assert [event.event_id for event in after[user_id]] == [event.event_id for event in events]
    assert replay_span_s(retimed, START) <= 150 + max(
        (events[-1].event_time - events[0].event_time).total_seconds() / 10 for events in before.values()
    )


@pytest.mark.parametrize(
    ("start", "speed", "spread_s", "max_gap_s", "message"),
    [
        (datetime(2030, 1, 1), 10.0, 10.0, 900.0, "no UTC offset"),
        (START, 0.0, 10.0, 900.0, "speed"),
        (START, 10.0, -1.0, 900.0, "spread_s"),
        (START, 10.0, 10.0, -1.0, "max_gap_s"),
    ],
)
def test_retime_invalid_arguments_raise(
    start: datetime, speed: float, spread_s: float, max_gap_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        retime(LabeledStream(events=[], labels={}), start, speed, spread_s, max_gap_s, seed=0)


# --------------------------------------------------------------------------- publish


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Produced:
    topic: str
    value: bytes
    key: bytes
    timestamp: int
    sent_at: datetime


@dataclass
class FakeProducer:
    """Records produced messages; delivers on poll and flush; can fail chosen events."""

    clock: FakeClock
    fail_delivery_of: set[str] = field(default_factory=set)
    reject_event_ids: set[str] = field(default_factory=set)
    buffer_errors: int = 0
    seconds_per_produce: float = 0.0
    produced: list[Produced] = field(default_factory=list)
    pending: list[tuple[Callable[[KafkaError | None, Message], None], KafkaError | None]] = field(default_factory=list)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
        timestamp: int = 0,
    ) -> None:
        assert value is not None
        assert key is not None
        assert on_delivery is not None
        if self.buffer_errors > 0:
            self.buffer_errors -= 1
            raise BufferError("Local: Queue full")
        event_id = json.loads(value)["event_id"]
        if event_id in self.reject_event_ids:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.produced.append(Produced(topic, value, key, timestamp, self.clock.now))
        error = KafkaError(KafkaError._MSG_TIMED_OUT) if event_id in self.fail_delivery_of else None
        self.pending.append((on_delivery, error))
        self.clock.advance(self.seconds_per_produce)

    def poll(self, timeout: float = -1) -> int:
        served = self._deliver()
        if served == 0 and timeout > 0:
            self.clock.advance(timeout)
        return served

    def flush(self, timeout: float = -1) -> int:
        self._deliver()
        return 0

    def _deliver(self) -> int:
        pending, self.pending = self.pending, []
        for callback, error in pending:
            callback(error, cast(Message, None))
        return len(pending)


def _replay_stream() -> LabeledStream:
    stream = generate_synthetic(datetime(2024, 1, 1, tzinfo=UTC), seed=3, attackers=4, hard_negatives=4)
    return retime(stream, START, speed=10, spread_s=20, max_gap_s=900, seed=3)


def test_publish_sends_every_event_in_order() -> None:
    stream = _replay_stream()
    producer = FakeProducer(FakeClock(START))

    report = publish(stream, topics=DEFAULT_TOPICS, pace=False, producer=producer, progress=None)

    assert report.ok
    assert report.sent == len(stream.events)
    assert report.delivered == len(stream.events)
    assert report.sent_by_kind == dict(stream.kind_counts())
    assert [json.loads(item.value)["event_id"] for item in producer.produced] == [e.event_id for e in stream.events]
    for item, event in zip(producer.produced, stream.events, strict=True):
        assert item.topic == DEFAULT_TOPICS[event.kind]
        assert item.key == event.user_id.encode()
        assert item.timestamp == int(event.event_time.timestamp() * 1000)
        assert parse_event(item.value, event.kind) == event


def test_publish_paces_to_event_time() -> None:
    stream = _replay_stream()
    producer = FakeProducer(FakeClock(START - timedelta(seconds=2)))

    report = publish(stream, pace=True, producer=producer, progress=None, clock=producer.clock)

    assert report.ok
    for item, event in zip(producer.produced, stream.events, strict=True):
        assert item.sent_at >= event.event_time
        assert item.sent_at - event.event_time <= timedelta(seconds=0.5)
    assert report.wall_s == pytest.approx(2 + replay_span_s(stream, START), abs=0.5)


def test_publish_counts_delivery_failures() -> None:
    stream = _replay_stream()
    failing = {stream.events[0].event_id, stream.events[5].event_id}
    producer = FakeProducer(FakeClock(START), fail_delivery_of=failing)

    report = publish(stream, pace=False, producer=producer, progress=None)

    assert not report.ok
    assert report.failed == 2
    assert report.delivered == len(stream.events) - 2
    assert report.first_error is not None


def test_publish_counts_rejected_events() -> None:
    stream = _replay_stream()
    producer = FakeProducer(FakeClock(START), reject_event_ids={stream.events[1].event_id})

    report = publish(stream, pace=False, producer=producer, progress=None)

    assert report.failed == 1
    assert report.sent == len(stream.events) - 1
    assert report.first_error is not None


def test_publish_retries_full_queue() -> None:
    stream = _replay_stream()
    producer = FakeProducer(FakeClock(START), buffer_errors=3)

    report = publish(stream, pace=False, producer=producer, progress=None)

    assert report.ok
    assert len(producer.produced) == len(stream.events)


def test_publish_reports_progress() -> None:
    stream = _replay_stream()
    producer = FakeProducer(FakeClock(START), seconds_per_produce=1.0)
    updates: list[ReplayProgress] = []

    publish(
        stream, pace=False, producer=producer, progress=updates.append, progress_interval_s=10, clock=producer.clock
    )

    assert len(updates) >= len(stream.events) // 10
    assert updates[-1].sent == updates[-1].total == len(stream.events)
    assert updates[-1].rate_per_s == pytest.approx(1.0, rel=0.05)


def test_publish_missing_topic_raises() -> None:
    topics: dict[EventKind, str] = {"click": "events.click"}

    with pytest.raises(ValueError, match="no topic given"):
        publish(_replay_stream(), topics=topics, pace=False, producer=FakeProducer(FakeClock(START)), progress=None)


# --------------------------------------------------------------------------- labels and command line


def test_write_labels_json_lines(tmp_path: Path) -> None:
    stream = LabeledStream(
        events=[
            SearchEvent(event_id="s1", user_id="u1", event_time=START, query="scarf"),
            SearchEvent(event_id="s2", user_id="nolabel", event_time=START, query="scarf"),
        ],
        labels={
            "u1": UserLabel("fraud", "synthetic", "scraping", "test"),
            "absent": UserLabel("legitimate", "synthetic", "repeat_buyer", "test"),
        },
    )
    path = tmp_path / "labels.jsonl"

    written = write_labels(stream, path)

    assert written == 1
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"user_id": "u1", "label": "fraud", "source": "synthetic", "detail": "scraping", "split": "test"}
    ]


def test_parser_defaults() -> None:
    args = build_parser().parse_args([])

    assert args.bootstrap == "127.0.0.1:9092"
    assert args.split == "test"
    assert args.speed == 10.0
    assert args.spread_s == 150.0
    assert args.max_gap_s == 900.0
    assert args.limit_users is None
    assert args.no_pace is False
    assert (args.click_topic, args.search_topic, args.order_topic) == (
        "events.click",
        "events.search",
        "events.order",
    )


@pytest.mark.parametrize("option", [["--speed", "0"], ["--spread-s", "-1"], ["--limit-users", "0"]])
def test_parser_rejects_invalid_values(option: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(option)


def test_main_missing_data_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(replay, "configure_logging", lambda: None)

    status = replay.main(["--data-dir", str(tmp_path), "--dry-run"])

    assert status == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_main_dry_run_writes_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(replay, "configure_logging", lambda: None)
    data_dir = _write_tiny_data(tmp_path / "data")
    labels_path = tmp_path / "labels.jsonl"

    status = replay.main(
        ["--data-dir", str(data_dir), "--split", "all", "--dry-run", "--labels-out", str(labels_path), "--seed", "2"]
    )

    assert status == 0
    records = [json.loads(line) for line in labels_path.read_text().splitlines()]
    sources = {record["source"] for record in records}
    assert sources == {"web-bot", "ecommerce-fraud", "synthetic"}
    assert "replay:" in capsys.readouterr().err


def _write_tiny_data(root: Path) -> Path:
    logs = root / "web-bot-phase1" / "web_logs" / "humans"
    logs.mkdir(parents=True)
    agent = "Mozilla/5.0 (X11; Linux x86_64)"
    (logs / "access_1.log").write_text(
        f'- - [28/Oct/2019:09:40:32 +0000] "GET / HTTP/1.1" 200 1200 "-" humansession1 "{agent}"\n'
        f'- - [28/Oct/2019:09:41:32 +0000] "GET /content/big_data.php HTTP/1.1" 200 1200 "-" humansession1 "{agent}"\n'
    )
    annotations = root / "web-bot-phase1" / "annotations" / "humans_and_moderate_bots"
    annotations.mkdir(parents=True)
    (annotations / "train").write_text("humansession1 human")

    fraud = root / "ecommerce-fraud"
    fraud.mkdir(parents=True)
    (fraud / "fraud_orders.csv").write_text(
        "user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,ip_address,class\n"
        "1,1/1/2015 0:00,1/1/2015 0:00,14,BBPACGBUVJUXF,Ads,Chrome,F,38,2001426400,1\n"
        "2,1/1/2015 0:12,1/2/2015 0:12,63,DXWTAJVQOEZTC,SEO,Chrome,M,31,686082863.1,0\n"
    )
    (fraud / "ip_to_country.csv").write_text(
        "lower_bound_ip_address,upper_bound_ip_address,country\n16777216,16777471,Australia\n"
    )
    return root


def test_connect_producer_unreachable_raises() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
        connect_producer(f"127.0.0.1:{port}", connect_timeout_s=1.0)
