"""Create the worker's topics up front and check that the inputs are co-partitioned."""

from __future__ import annotations

import time
from collections.abc import Iterable

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream_detector.config import WorkerSettings

log = structlog.get_logger("stream_detector.topics")


class TopicError(RuntimeError):
    """A topic could not be created or has the wrong layout."""


def worker_topics(settings: WorkerSettings) -> list[str]:
    """Return every topic the worker reads or writes, inputs first."""
    return [
        *settings.event_topics(),
        settings.tick_topic,
        settings.score_request_topic,
        settings.anomalies_topic,
        settings.deadletter_topic,
    ]


def ensure_topics(
    bootstrap_servers: str, names: Iterable[str], partitions: int, *, timeout_s: float = 30.0
) -> dict[str, int]:
    """Create the topics that do not exist and return the partition count of each.

    Raises:
        TopicError: a topic could not be created, or the broker did not respond in time.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    requested = list(dict.fromkeys(names))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in requested],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("topic_created", topic=name, partitions=partitions)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicError(f"failed to create topic {name!r} on {bootstrap_servers}: {error}") from error

    return _wait_for_leaders(admin, bootstrap_servers, requested, timeout_s)


def _wait_for_leaders(admin: AdminClient, bootstrap_servers: str, names: list[str], timeout_s: float) -> dict[str, int]:
    """Wait until every partition of the topics has a leader, and return their partition counts.

    A topic that was just created returns "not leader for partition" for a moment.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        counts = {name: len(metadata.topics[name].partitions) for name in names if name in metadata.topics}
        leaderless = [
            name
            for name in names
            if name not in counts
            or metadata.topics[name].error is not None
            or any(partition.leader < 0 for partition in metadata.topics[name].partitions.values())
        ]
        if not leaderless:
            return counts
        if time.monotonic() >= deadline:
            raise TopicError(f"topics {leaderless} on {bootstrap_servers} have no leader after {timeout_s:g} s")
        time.sleep(0.2)


def ensure_worker_topics(settings: WorkerSettings, *, timeout_s: float = 30.0) -> None:
    """Create the worker's topics and check that all inputs have ``topic_partitions`` partitions.

    Raises:
        TopicError: creation failed, or an input topic has another partition count, which
            would split a user's events across windows.
    """
    counts = ensure_topics(
        settings.bootstrap_servers, worker_topics(settings), settings.topic_partitions, timeout_s=timeout_s
    )
    inputs = [*settings.event_topics(), settings.tick_topic]
    wrong = {name: counts[name] for name in inputs if counts[name] != settings.topic_partitions}
    if wrong:
        msg = (
            f"input topics {wrong} do not have {settings.topic_partitions} partitions: every input topic "
            "must have the same count; set STREAM_DETECTOR_TOPIC_PARTITIONS to match or recreate the topics"
        )
        raise TopicError(msg)
