"""Workers, topics and Kafka clients for the integration tests, against the broker the harness starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from stream_detector.config import WorkerSettings
from stream_detector.lag import group_assigned_partitions, group_lag, group_member_ids
from tests.tiny_model import build_tiny_bert
from trainer.registry import ModelRegistry, ModelVersion, SampleSizes

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_READY_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def always_alert_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose current version is a tiny model with threshold 0, so every scored window alerts."""
    registry = ModelRegistry(tmp_path_factory.mktemp("registry"))
    folder = registry.new_version_dir()
    build_tiny_bert(folder)
    version = ModelVersion(
        version=folder.name,
        base_model="tiny-bert",
        template_version="v1",
        threshold=0.0,
        max_length=64,
        label_names=["legitimate", "fraud"],
        created_time=datetime.now(UTC),
        sample_sizes=SampleSizes(train=0, validation=0, train_fraud=0, validation_fraud=0),
        path=folder,
    )
    registry.save_version(version)
    registry.promote(version)
    return registry.root


class WorkerProcess:
    """A ``stream-detector worker`` child process with its own app id and topics."""

    def __init__(self, settings: WorkerSettings, environment: dict[str, str], log_path: Path) -> None:
        self.settings = settings
        self.environment = environment
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Members of the group before this start, e.g. a killed worker whose session has not expired.
        previous = group_member_ids(self.settings.bootstrap_servers, self.settings.app_id) or {}
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream_detector", "worker"],
                cwd=REPO_ROOT,
                env=self.environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_assigned(frozenset(previous))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until_assigned(self, previous_members: frozenset[str]) -> None:
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            assigned = group_assigned_partitions(
                self.settings.bootstrap_servers, self.settings.app_id, exclude_members=previous_members
            )
            if assigned > 0:
                return
            time.sleep(0.5)
        pytest.fail(
            f"worker did not join group {self.settings.app_id} in {WORKER_READY_TIMEOUT_S:g} s:\n{self.log_tail()}"
        )


@pytest.fixture
def worker_factory(
    kafka_bootstrap: str, always_alert_registry: Path, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Create workers with a unique app id and topic names for this test; stops them at the end."""
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    made: list[WorkerProcess] = []

    def make(**overrides: object) -> WorkerProcess:
        values: dict[str, object] = {
            "bootstrap_servers": kafka_bootstrap,
            "app_id": prefix,
            "click_topic": f"{prefix}.click",
            "search_topic": f"{prefix}.search",
            "order_topic": f"{prefix}.order",
            "tick_topic": f"{prefix}.ticks",
            "score_request_topic": f"{prefix}.score-requests",
            "anomalies_topic": f"{prefix}.anomalies",
            "deadletter_topic": f"{prefix}.deadletter",
            "model_registry": always_alert_registry,
            "state_dir": tmp_path / "state",
            "topic_partitions": 2,
            "session_timeout_s": 10.0,
            "rebalance_timeout_s": 15.0,
            "max_batch_wait_ms": 50,
            **overrides,
        }
        settings = WorkerSettings(**values)  # type: ignore[arg-type]
        environment = {**os.environ}
        for key, value in values.items():
            environment[f"STREAM_DETECTOR_{key.upper()}"] = str(value)
        worker = WorkerProcess(settings, environment, tmp_path / f"worker-{len(made)}.log")
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop(signal.SIGKILL, timeout_s=10)


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Send (key, value) records and wait until the broker acknowledged all of them."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    failures: list[str] = []

    def on_delivery(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not delivered to {topic}"
    assert failures == [], f"delivery to {topic} failed: {failures}"


def consume(bootstrap: str, topic: str, *, expected: int, timeout_s: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the start until ``expected`` records arrived or the timeout passed; return them all."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            records.append((message.key(), message.value()))
        # Read a little longer to see records that should not be there.
        extra_deadline = time.monotonic() + 2.0
        while time.monotonic() < extra_deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                records.append((message.key(), message.value()))
    finally:
        consumer.close()
    return records


def wait_for_commit(settings: WorkerSettings, topics: list[str], timeout_s: float = 60.0) -> None:
    """Wait until the worker's group committed every record of the topics."""
    deadline = time.monotonic() + timeout_s
    lag: dict[str, int] = {}
    while time.monotonic() < deadline:
        lag = group_lag(settings.bootstrap_servers, settings.app_id, topics)
        if sum(lag.values()) == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"group {settings.app_id} still has lag {lag} after {timeout_s:g} s")
