"""docker-compose.yml is checked with a parser, since no Docker engine runs the tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from stream_detector.cli import COMMANDS

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def test_compose_has_the_stack() -> None:
    services = load_compose()["services"]

    assert set(services) == {"kafka", "trainer", "worker", "replay"}


def test_compose_commands_are_real_subcommands() -> None:
    services = load_compose()["services"]

    for name in ("trainer", "worker", "replay"):
        command = services[name]["command"]
        assert command[0] in COMMANDS, f"{name} runs unknown subcommand {command[0]!r}"


def test_compose_builds_an_existing_dockerfile() -> None:
    services = load_compose()["services"]

    for name in ("trainer", "worker", "replay"):
        build = services[name]["build"]
        assert (REPO_ROOT / build["context"] / build["dockerfile"]).is_file()


def test_compose_worker_waits_for_broker_and_model() -> None:
    worker = load_compose()["services"]["worker"]

    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert worker["environment"]["STREAM_DETECTOR_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_compose_kafka_is_single_node_kraft() -> None:
    environment = load_compose()["services"]["kafka"]["environment"]

    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert environment["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert all(port.startswith("127.0.0.1:") for port in load_compose()["services"]["kafka"]["ports"])
