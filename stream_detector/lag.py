"""Consumer-group lag: how many records a group has not yet committed, per topic."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


def group_lag(bootstrap_servers: str, group_id: str, topics: Iterable[str], *, timeout_s: float = 10.0) -> dict[str, int]:
    """Return, per topic, the records past the group's committed offsets.

    A partition the group never committed counts from the start of the log, so a
    group that has not consumed anything yet shows the whole topic as lag.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    metadata = admin.list_topics(timeout=timeout_s)
    partitions = [
        TopicPartition(topic, partition)
        for topic in topics
        if topic in metadata.topics
        for partition in metadata.topics[topic].partitions
    ]
    if not partitions:
        return {topic: 0 for topic in topics}

    request = ConsumerGroupTopicPartitions(group_id, partitions)
    committed = admin.list_consumer_group_offsets([request], request_timeout=timeout_s)[group_id].result(
        timeout=timeout_s
    )
    committed_by_tp = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions}

    watermarks = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"{group_id}-lag-probe"})
    try:
        lag = {topic: 0 for topic in topics}
        for tp in partitions:
            low, high = watermarks.get_watermark_offsets(tp, timeout=timeout_s)
            position = committed_by_tp.get((tp.topic, tp.partition), -1)
            position = low if position < 0 else position
            lag[tp.topic] += max(0, high - position)
        return lag
    finally:
        watermarks.close()
