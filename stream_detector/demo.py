"""The main job in one command: broker, bootstrap model, workers, replay of real data, and a summary.

Steps, each logged with its wall time:

1. start a local Kafka broker (or use the one given with ``--bootstrap``);
2. train a bootstrap model when the registry has no current version;
3. start a stream worker process (windower and scorer agents);
4. replay the test split of the public data, re-timed to the present;
5. wait until the worker has committed every input and idle window;
6. read the alerts and print events in, windows scored, alerts out, and precision
   and recall of the alerted users against the labels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from confluent_kafka import Consumer, TopicPartition

from deploy.kafka_local import (
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    LocalKafka,
    check_reachable,
    is_port_free,
    stop_command_for,
)
from schemas import Alert, EventKind
from stream_detector.config import WorkerSettings
from stream_detector.datasets import DataNotFoundError, check_data_dir, default_data_dir
from stream_detector.evaluation import UserScores, score_users
from stream_detector.lag import group_assigned_partitions, group_lag, partition_offsets
from stream_detector.logs import configure_logging
from stream_detector.replay import (
    DEFAULT_MAX_GAP_S,
    DEFAULT_SPEED,
    DEFAULT_SPREAD_S,
    build_replay_stream,
    publish,
    retime,
)
from stream_detector.topics import ensure_worker_topics

log = structlog.get_logger("stream_detector.demo")

DEMO_DIR = Path(".stream-detector")


class DemoError(RuntimeError):
    """A step of the demo failed; the message names the step and the fix."""


@dataclass(frozen=True)
class DemoOptions:
    """Options of one demo run."""

    bootstrap: str | None  # an existing broker to use; None starts a local one
    port: int  # client port of the local broker
    kafka_version: str | None  # Kafka release of the local broker; None for the launcher's default
    data_dir: Path
    registry: Path
    speed: float
    spread_s: float
    seed: int
    limit_users: int | None
    drain_timeout_s: float
    keep_running: bool


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``stream-detector demo``."""
    parser = argparse.ArgumentParser(
        prog="stream-detector demo",
        description=(
            "Run the whole pipeline on the public data: start a local Kafka broker, train a bootstrap "
            "model if the registry is empty, start a worker, replay the test split, and print a summary."
        ),
    )
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="host:port of a running Kafka broker to use instead of starting a local one",
    )
    parser.add_argument("--port", type=int, default=9092, help="client port of the local broker (default: 9092)")
    parser.add_argument("--kafka-version", default=None, help="Kafka release of the local broker (default: 4.4.0)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with web-bot-phase1/ and ecommerce-fraud/ (default: $STREAM_DETECTOR_DATA_DIR or ../shared/data)",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        default=Path(os.environ.get("STREAM_DETECTOR_MODEL_REGISTRY", "models")),
        help="model registry folder (default: ./models)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=DEFAULT_SPEED,
        help=f"replay speed: gaps between one user's events are divided by this (default: {DEFAULT_SPEED:g})",
    )
    parser.add_argument(
        "--spread-s",
        type=float,
        default=DEFAULT_SPREAD_S,
        help=f"seconds over which users' first events are spread (default: {DEFAULT_SPREAD_S:g})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic users and re-timing (default: 0)")
    parser.add_argument(
        "--limit-users", type=int, default=None, help="replay at most this many users, sampled per source and label"
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=300.0,
        help="seconds to wait after the replay for the worker to finish (default: 300)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the broker and the worker running after the summary, for subscribing from another shell",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo from command-line arguments and return the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging("console", os.environ.get("STREAM_DETECTOR_LOG_LEVEL", "info"))
    options = DemoOptions(
        bootstrap=args.bootstrap,
        port=args.port,
        kafka_version=args.kafka_version,
        data_dir=args.data_dir or default_data_dir(),
        registry=args.registry,
        speed=args.speed,
        spread_s=args.spread_s,
        seed=args.seed,
        limit_users=args.limit_users,
        drain_timeout_s=args.drain_timeout_s,
        keep_running=args.keep_running,
    )
    try:
        check_data_dir(options.data_dir)
        summary = run_demo(options)
    except (DemoError, BrokerError, DataNotFoundError) as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def run_demo(options: DemoOptions) -> str:
    """Run every step of the demo and return the printed summary.

    Raises:
        DemoError: a step failed; the message names it.
        BrokerError: the local broker could not start.
    """
    started_s = time.monotonic()
    DEMO_DIR.mkdir(exist_ok=True)
    with _broker(options) as bootstrap:
        app_id = "stream-detector" if options.bootstrap is None else f"stream-detector-demo-{int(time.time())}"
        settings = WorkerSettings(
            bootstrap_servers=bootstrap,
            app_id=app_id,
            model_registry=options.registry,
            state_dir=DEMO_DIR / "state",
        )
        ensure_worker_topics(settings)
        start_offsets = _end_offsets(
            bootstrap, [settings.anomalies_topic, settings.score_request_topic, settings.deadletter_topic]
        )

        with _step("bootstrap_model"):
            _bootstrap_model(options)

        with _worker(settings, keep_running=options.keep_running):
            _wait_for_group(settings)
            with _step("load_replay"):
                stream = build_replay_stream(options.data_dir, "test", options.seed, limit_users=options.limit_users)
                replay_start = datetime.now(UTC) + timedelta(seconds=5)
                stream = retime(stream, replay_start, options.speed, options.spread_s, DEFAULT_MAX_GAP_S, options.seed)
                span_s = (stream.events[-1].event_time - replay_start).total_seconds()
                log.info("replay_ready", events=len(stream.events), users=len(stream.users()), span_s=round(span_s))
            with _step("replay"):
                report = publish(stream, bootstrap, _topics(settings), pace=True)
            if not report.ok:
                raise DemoError(
                    f"replay lost events: {report.failed} failed, {report.undelivered} undelivered "
                    f"(first error: {report.first_error})"
                )
            with _step("drain"):
                _wait_for_drain(settings, options.drain_timeout_s)

            end_offsets = _end_offsets(
                bootstrap, [settings.anomalies_topic, settings.score_request_topic, settings.deadletter_topic]
            )
            alerts = _read_alerts(bootstrap, settings.anomalies_topic, start_offsets, end_offsets)
            windows_scored = _count(settings.score_request_topic, start_offsets, end_offsets)
            dead_letters = _count(settings.deadletter_topic, start_offsets, end_offsets)

    scores = score_users(stream, alerts)
    return format_summary(
        events_in=report.sent,
        events_by_kind=report.sent_by_kind,
        windows_scored=windows_scored,
        dead_letters=dead_letters,
        alerts=alerts,
        scores=scores,
        settings=settings,
        wall_s=time.monotonic() - started_s,
        kept_running=options.keep_running,
    )


@contextmanager
def _step(name: str) -> Iterator[None]:
    log.info(f"{name}_started")
    started_s = time.monotonic()
    yield
    log.info(f"{name}_finished", wall_s=round(time.monotonic() - started_s, 1))


@contextmanager
def _broker(options: DemoOptions) -> Iterator[str]:
    """Yield the bootstrap address of the broker the demo uses, starting a local one if needed."""
    if options.bootstrap is not None:
        check_reachable(options.bootstrap, timeout=15.0)
        yield options.bootstrap
        return

    if not is_port_free(options.port):
        raise DemoError(
            f"port {options.port} on 127.0.0.1 is in use: pass --bootstrap 127.0.0.1:{options.port} to use the "
            "broker listening there, or --port to start a local one on another port"
        )
    data_dir = DEMO_DIR / "broker"
    shutil.rmtree(data_dir, ignore_errors=True)  # a fresh log each run, so old windows cannot mix in
    broker = LocalKafka(version=options.kafka_version or DEFAULT_KAFKA_VERSION, port=options.port, data_dir=data_dir)
    with _step("start_broker"):
        broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        if options.keep_running:
            log.info(
                "broker_left_running",
                bootstrap_servers=broker.bootstrap_servers,
                pid=broker.pid,
                stop_command=stop_command_for(data_dir.absolute()),
            )
        else:
            broker.stop()


def _bootstrap_model(options: DemoOptions) -> None:
    # Imported here: torch and transformers take seconds to import and the worker loads them itself.
    from trainer.cli import TrainerSettings, run_bootstrap

    result = run_bootstrap(
        TrainerSettings(model_registry=options.registry, data_dir=options.data_dir, seed=options.seed, if_empty=True)
    )
    if result.trained is None:
        log.info("bootstrap_skipped", version=result.version.version, registry=str(options.registry))


@contextmanager
def _worker(settings: WorkerSettings, *, keep_running: bool) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``stream-detector worker`` as a child process with the demo's settings."""
    environment = {
        **os.environ,
        "STREAM_DETECTOR_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "STREAM_DETECTOR_APP_ID": settings.app_id,
        "STREAM_DETECTOR_MODEL_REGISTRY": str(settings.model_registry),
        "STREAM_DETECTOR_STATE_DIR": str(settings.state_dir),
    }
    log_path = DEMO_DIR / "worker.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_detector", "worker"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log.info("worker_started", pid=process.pid, log=str(log_path))
    try:
        yield process
        if process.poll() is not None:
            raise DemoError(f"the worker exited with code {process.returncode}: see {log_path}")
    finally:
        if keep_running and process.poll() is None:
            log.info("worker_left_running", pid=process.pid, stop_command=f"kill {process.pid}")
        else:
            _stop_worker(process)


def _stop_worker(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("worker_killed", pid=process.pid, reason=f"no exit {timeout_s:g} s after SIGTERM")
        process.kill()
        process.wait()


def _wait_for_group(settings: WorkerSettings, timeout_s: float = 120.0) -> None:
    """Wait until the worker's consumer group is stable with partitions assigned."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assigned = group_assigned_partitions(settings.bootstrap_servers, settings.app_id)
        if assigned > 0:
            log.info("worker_ready", app_id=settings.app_id, partitions=assigned)
            return
        time.sleep(1.0)
    raise DemoError(
        f"the worker did not join consumer group {settings.app_id!r} within {timeout_s:g} s: "
        f"see {DEMO_DIR / 'worker.log'}"
    )


def _wait_for_drain(settings: WorkerSettings, timeout_s: float) -> None:
    """Wait until the worker committed every input, then every idle window it scored after that.

    Idle windows are sent once a user is quiet for ``idle_s``, so the wait lasts at
    least that long after the last event, and ends when the lag has stayed zero while
    no new score request appeared.
    """
    topics = [*settings.event_topics(), settings.tick_topic, settings.score_request_topic]
    quiet_s = settings.idle_s + 2 * settings.idle_check_interval_s + 2.0
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    last_requests = -1
    next_report_s = 0.0
    while time.monotonic() < deadline:
        lag = group_lag(settings.bootstrap_servers, settings.app_id, topics)
        total = sum(lag.values())
        requests = sum(_end_offsets(settings.bootstrap_servers, [settings.score_request_topic]).values())
        now_s = time.monotonic()
        if total == 0 and requests == last_requests:
            quiet_since = quiet_since or now_s
            if now_s - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        last_requests = requests
        if now_s >= next_report_s:
            log.info("draining", records_behind=total, score_requests=requests)
            next_report_s = now_s + 10.0
        time.sleep(1.0)
    raise DemoError(
        f"the worker still had records to process {timeout_s:g} s after the replay: "
        f"see {DEMO_DIR / 'worker.log'} or raise --drain-timeout-s"
    )


def _topics(settings: WorkerSettings) -> dict[EventKind, str]:
    return {kind: topic for topic, kind in settings.event_topics().items()}


def _end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Return the high watermark of every partition of the topics."""
    return {key: high for key, (_, high) in partition_offsets(bootstrap, topics).items()}


def _count(topic: str, start: dict[tuple[str, int], int], end: dict[tuple[str, int], int]) -> int:
    return sum(end[key] - start.get(key, 0) for key in end if key[0] == topic)


def _read_alerts(
    bootstrap: str, topic: str, start: dict[tuple[str, int], int], end: dict[tuple[str, int], int]
) -> list[Alert]:
    """Read the alerts published between two sets of offsets, one per alert id."""
    end_by_partition = {key: offset for key, offset in end.items() if key[0] == topic and offset > start.get(key, 0)}
    if not end_by_partition:
        return []
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "stream-detector-demo-reader",
            "enable.auto.commit": False,
        }
    )
    consumer.assign(
        [TopicPartition(topic, partition, start.get((topic, partition), 0)) for _, partition in end_by_partition]
    )
    alerts: dict[str, Alert] = {}
    remaining = dict(end_by_partition)
    deadline = time.monotonic() + 60.0
    try:
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            alert = Alert.model_validate_json(message.value() or b"")
            alerts.setdefault(alert.alert_id, alert)
            key = (message.topic(), message.partition())
            offset = message.offset() or 0
            if key in remaining and offset + 1 >= remaining[key]:
                del remaining[key]
    finally:
        consumer.close()
    if remaining:
        raise DemoError(f"timed out reading alerts from {topic}: partitions {sorted(remaining)} not read to the end")
    return list(alerts.values())


def format_summary(
    *,
    events_in: int,
    events_by_kind: dict[str, int],
    windows_scored: int,
    dead_letters: int,
    alerts: list[Alert],
    scores: UserScores,
    settings: WorkerSettings,
    wall_s: float,
    kept_running: bool,
) -> str:
    """Render the demo's closing summary for a person to read."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(events_by_kind.items()))
    alerted_users = len({alert.user_id for alert in alerts})
    lines = [
        "",
        "stream-detector demo summary",
        "=" * 28,
        f"events in          {events_in} ({kinds})",
        f"dead letters       {dead_letters}",
        f"windows scored     {windows_scored}",
        f"alerts out         {len(alerts)} on topic '{settings.anomalies_topic}' "
        f"({alerted_users} users, {alerted_users - scores.group('all').alerted} of them without a label)",
        "",
        "alerted users against the labels (users the bootstrap model never trained on):",
        scores.table(),
        "",
        f"wall time          {wall_s / 60:.1f} minutes",
        "",
    ]
    if kept_running:
        lines.append(f"subscribe from another shell:  {_cli_path()} alerts --bootstrap {settings.bootstrap_servers}")
    else:
        lines.append("to watch alerts live, run the demo with --keep-running and then, from another shell:")
        lines.append(f"  {_cli_path()} alerts --bootstrap {settings.bootstrap_servers}")
    return "\n".join(lines)


def _cli_path() -> str:
    """Return how to call ``stream-detector`` from another shell: the script beside this interpreter if any."""
    script = Path(sys.executable).parent / "stream-detector"
    return os.path.relpath(script) if script.is_file() else "stream-detector"
