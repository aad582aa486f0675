"""Tests of the local Kafka launcher against real brokers on 127.0.0.1.

The Kafka release comes from $STREAM_DETECTOR_TEST_KAFKA_VERSION (default
DEFAULT_KAFKA_VERSION). The first run downloads its jars with Maven.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from deploy.kafka_local import (
    DEFAULT_KAFKA_VERSION,
    BrokerStartError,
    BrokerUnreachableError,
    LocalKafka,
    PortInUseError,
    check_reachable,
    find_free_port,
    find_free_ports,
    is_port_free,
    read_state,
    server_properties,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VERSION = os.environ.get("STREAM_DETECTOR_TEST_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION
CLI_TIMEOUT_S = 180.0
ROUND_TRIP_TIMEOUT_S = 60.0


def round_trip(bootstrap_servers: str, count: int = 3) -> list[bytes]:
    """Produce ``count`` messages to a new topic and return the values consumed from it."""
    topic = f"round-trip-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap_servers})
    for index in range(count):
        producer.produce(topic, key=b"key", value=f"message {index}".encode())
    unsent = producer.flush(ROUND_TRIP_TIMEOUT_S)
    assert unsent == 0, f"{unsent} messages were not delivered to {topic} within {ROUND_TRIP_TIMEOUT_S} s"

    consumer = Consumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": f"group-{topic}", "auto.offset.reset": "earliest"}
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + ROUND_TRIP_TIMEOUT_S
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            values.append(message.value() or b"")
    finally:
        consumer.close()
    return values


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m deploy.kafka_local`` with ``args`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.kafka_local", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A socket listening on a free 127.0.0.1 port, closed after the test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def new_broker(data_dir: Path, overrides: dict[str, str] | None = None) -> LocalKafka:
    """Return a LocalKafka of the tested version on free ports in ``data_dir``."""
    port, controller_port = find_free_ports(2)
    return LocalKafka(
        version=VERSION, port=port, controller_port=controller_port, data_dir=data_dir, overrides=overrides
    )


# -- without a broker ---------------------------------------------------------


def test_find_free_ports_distinct_and_free() -> None:
    ports = find_free_ports(3)

    assert len(set(ports)) == 3
    for port in ports:
        assert is_port_free(port)


def test_server_properties_share_group_keys_only_on_4x(tmp_path: Path) -> None:
    for version, expected in (("4.4.0", True), ("3.9.1", False)):
        text = server_properties(version, 9092, 9093, tmp_path, {})

        assert ("share.coordinator.state.topic.replication.factor=1" in text) is expected, version
        assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text
        assert "controller.quorum.voters=1@127.0.0.1:9093" in text
        assert "offsets.topic.replication.factor=1" in text


def test_local_kafka_rejects_listener_override(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="listeners"):
        LocalKafka(data_dir=tmp_path, overrides={"listeners": "PLAINTEXT://0.0.0.0:9092"})


def test_local_kafka_rejects_invalid_heap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="512 MB"):
        LocalKafka(data_dir=tmp_path, heap="512 MB")


def test_check_reachable_fails_without_broker() -> None:
    address = f"127.0.0.1:{find_free_port()}"

    with pytest.raises(BrokerUnreachableError, match=address):
        check_reachable(address, timeout=2.0)


def test_start_rejects_port_in_use(tmp_path: Path, listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    broker = LocalKafka(version=VERSION, port=port, data_dir=tmp_path)

    with pytest.raises(PortInUseError, match=f"port {port} ") as raised:
        broker.start()

    assert raised.value.port == port
    assert raised.value.role == "broker"
    assert not broker.is_running()


# -- with real brokers --------------------------------------------------------


def test_local_kafka_start_round_trip_stop(tmp_path: Path) -> None:
    broker = new_broker(tmp_path)
    try:
        broker.start()

        assert broker.is_running()
        assert round_trip(broker.bootstrap_servers) == [b"message 0", b"message 1", b"message 2"]
        state = read_state(tmp_path)
        assert state is not None
        assert state.pid == broker.pid
        assert state.version == VERSION
        assert state.bootstrap_servers == broker.bootstrap_servers
    finally:
        broker.stop()

    assert not broker.is_running()
    assert read_state(tmp_path) is None
    assert is_port_free(broker.port)
    assert is_port_free(broker.controller_port)


def test_context_manager_stops_broker(tmp_path: Path) -> None:
    with new_broker(tmp_path) as broker:
        pid = broker.pid
        assert check_reachable(broker.bootstrap_servers, timeout=10.0)

    assert pid is not None
    assert not broker.is_running()
    assert not Path(f"/proc/{pid}").exists()
    assert is_port_free(broker.port)


def test_broker_exit_on_taken_port_reports_log(
    tmp_path: Path, listening_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skips the port check of start(), as if another program bound the port
    # between that check and the broker's own bind.
    monkeypatch.setattr(LocalKafka, "_check_can_start", lambda self: None)
    port = listening_socket.getsockname()[1]
    broker = LocalKafka(version=VERSION, port=port, controller_port=find_free_port(), data_dir=tmp_path)

    with pytest.raises(BrokerStartError) as raised:
        broker.start()

    message = str(raised.value)
    assert isinstance(raised.value, PortInUseError)
    assert raised.value.port == port
    assert raised.value.exit_code not in (None, 0)
    assert f"exited with code {raised.value.exit_code}" in message
    assert f"Socket server failed to bind to 127.0.0.1:{port}: Address already in use" in message
    assert str(broker.server_log) in message
    assert raised.value.log_tail.strip()
    assert not broker.is_running()
    assert read_state(tmp_path) is None


def test_broker_exit_at_start_reports_first_error(tmp_path: Path) -> None:
    broker = new_broker(tmp_path, overrides={"authorizer.class.name": "org.example.MissingAuthorizer"})

    with pytest.raises(BrokerStartError) as raised:
        broker.start()

    message = str(raised.value)
    assert raised.value.exit_code not in (None, 0)
    assert "First error in" in message
    assert "ClassNotFoundException: org.example.MissingAuthorizer" in message
    assert f"Last 40 lines of {broker.server_log}" in message
    assert not broker.is_running()


def test_kafka_bootstrap_fixture_round_trip(kafka_bootstrap: str) -> None:
    assert round_trip(kafka_bootstrap, count=2) == [b"message 0", b"message 1"]


# -- command line -------------------------------------------------------------


def test_cli_start_status_stop(tmp_path: Path) -> None:
    port = find_free_port()
    data_dir = str(tmp_path / "broker")
    try:
        started = run_cli("start", "--version", VERSION, "--port", str(port), "--data-dir", data_dir)
        assert started.returncode == 0, started.stderr
        assert f"ready at 127.0.0.1:{port}" in started.stdout
        assert f"stop --data-dir {data_dir}" in started.stdout

        again = run_cli("start", "--version", VERSION, "--port", str(port), "--data-dir", data_dir)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stdout

        status = run_cli("status", "--data-dir", data_dir)
        state = read_state(Path(data_dir))
        assert status.returncode == 0, status.stderr
        assert state is not None
        assert f"running: Kafka {VERSION} at 127.0.0.1:{port}, pid {state.pid}" in status.stdout

        assert round_trip(f"127.0.0.1:{port}", count=1) == [b"message 0"]

        stopped = run_cli("stop", "--data-dir", data_dir)
        assert stopped.returncode == 0, stopped.stderr
        assert f"Stopped Kafka {VERSION} (pid {state.pid})" in stopped.stdout
    finally:
        LocalKafka(version=VERSION, port=port, data_dir=data_dir).stop()

    status = run_cli("status", "--data-dir", data_dir)
    assert status.returncode == 1
    assert "stopped" in status.stdout
    assert is_port_free(port)


def test_cli_stop_without_broker(tmp_path: Path) -> None:
    stopped = run_cli("stop", "--data-dir", str(tmp_path))

    assert stopped.returncode == 0, stopped.stderr
    assert "No Kafka broker is running" in stopped.stdout


def test_cli_start_port_in_use_names_flag(tmp_path: Path, listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]

    started = run_cli("start", "--version", VERSION, "--port", str(port), "--data-dir", str(tmp_path))

    assert started.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in started.stderr
    assert "--port" in started.stderr
