"""Consumer-group lag: how many records a group has not yet committed, per topic."""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

# Errors a partition reports for a moment after its topic was created or its leader moved.
_RETRIABLE = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
)

# Errors a group lookup returns while the coordinator is still loading or does not know the group yet.
_GROUP_NOT_READY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.GROUP_ID_NOT_FOUND,
    }
)


def watermarks(consumer: Consumer, partition: TopicPartition, *, timeout_s: float = 30.0) -> tuple[int, int]:
    """Return the (low, high) offsets of a partition, retrying while it has no leader yet.

    Raises:
        KafkaException: the broker kept failing past ``timeout_s``, or failed for another reason.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=min(10.0, timeout_s))
            return low, high
        except KafkaException as error:
            if error.args[0].code() not in _RETRIABLE or time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def partition_offsets(
    bootstrap_servers: str, topics: Iterable[str], *, timeout_s: float = 10.0
) -> dict[tuple[str, int], tuple[int, int]]:
    """Return the (low, high) watermarks of every partition of the topics that exist, by (topic, partition)."""
    probe = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "stream-detector-offset-probe"})
    try:
        metadata = probe.list_topics(timeout=timeout_s)
        offsets = {}
        for topic in topics:
            if topic not in metadata.topics:
                continue
            for partition in metadata.topics[topic].partitions:
                offsets[(topic, partition)] = watermarks(probe, TopicPartition(topic, partition), timeout_s=timeout_s)
        return offsets
    finally:
        probe.close()


def group_lag(
    bootstrap_servers: str, group_id: str, topics: Iterable[str], *, timeout_s: float = 10.0
) -> dict[str, int]:
    """Return, per topic, the records past the group's committed offsets.

    A partition the group never committed counts from the start of the log, so a
    group that has not consumed anything yet shows the whole topic as lag.
    """
    topics = list(topics)
    lag = {topic: 0 for topic in topics}
    offsets = partition_offsets(bootstrap_servers, topics, timeout_s=timeout_s)
    if not offsets:
        return lag

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    committed_by_tp: dict[tuple[str, int], int] = {}
    # NOTE: confluent-kafka 2.16.1 crashes the process (SIGSEGV) when it lists the offsets of a
    # group the broker does not know, so that call is made only for a known group.
    known = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout=timeout_s)
    if any(listing.group_id == group_id for listing in known.valid):
        request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, part) for topic, part in offsets])
        committed = admin.list_consumer_group_offsets([request], request_timeout=timeout_s)[group_id].result(
            timeout=timeout_s
        )
        committed_by_tp = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions}

    for (topic, partition), (low, high) in offsets.items():
        position = committed_by_tp.get((topic, partition), -1)
        position = low if position < 0 else position
        lag[topic] += max(0, high - position)
    return lag


def group_assigned_partitions(
    bootstrap_servers: str, group_id: str, *, exclude_members: frozenset[str] = frozenset(), timeout_s: float = 10.0
) -> int:
    """Return how many partitions the members of a stable consumer group hold, 0 while it is not stable.

    A group the coordinator does not know yet, one in a rebalance, and one that still
    lists a member of ``exclude_members`` (say, a worker that was killed) count as 0.
    """
    members = group_member_ids(bootstrap_servers, group_id, timeout_s=timeout_s)
    if members is None or members.keys() & exclude_members:
        return 0
    return sum(members.values())


def group_member_ids(bootstrap_servers: str, group_id: str, *, timeout_s: float = 10.0) -> dict[str, int] | None:
    """Return the partitions held by each member of a stable consumer group, or None while it is not stable."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    try:
        group = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id].result(
            timeout=timeout_s
        )
    except KafkaException as error:
        if error.args[0].retriable() or error.args[0].code() in _GROUP_NOT_READY:
            return None
        raise
    if group.state != ConsumerGroupState.STABLE:
        return None
    return {member.member_id: len(member.assignment.topic_partitions) for member in group.members}
