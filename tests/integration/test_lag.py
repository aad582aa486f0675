"""Consumer-group lag against a real broker, for known and unknown groups."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer

from stream_detector.lag import group_lag, partition_offsets
from stream_detector.topics import ensure_topics
from tests.integration.conftest import produce

pytestmark = pytest.mark.integration


def test_lag_of_unknown_group_is_whole_topic(kafka_bootstrap: str) -> None:
    topic = f"lag-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], 2)
    produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"v") for i in range(5)])

    lag = group_lag(kafka_bootstrap, f"never-{uuid.uuid4().hex[:8]}", [topic, "no-such-topic"])

    assert lag == {topic: 5, "no-such-topic": 0}
    assert sum(high for _, high in partition_offsets(kafka_bootstrap, [topic]).values()) == 5


def test_lag_drops_after_commit(kafka_bootstrap: str) -> None:
    topic = f"lag-{uuid.uuid4().hex[:8]}"
    group_id = f"group-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], 1)
    produce(kafka_bootstrap, topic, [(b"k", b"v")] * 3)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 30
    message = None
    while message is None and time.monotonic() < deadline:
        polled = consumer.poll(0.5)
        message = polled if polled is not None and not polled.error() else None
    assert message is not None, "no record consumed within 30 s"

    consumer.commit(message=message, asynchronous=False)
    consumer.close()

    assert group_lag(kafka_bootstrap, group_id, [topic]) == {topic: 2}
