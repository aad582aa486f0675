"""Pytest fixture that provides a running Kafka broker to tests.

Load it from tests/conftest.py with ``pytest_plugins = ["tests.kafka_fixture"]``.

Environment variables:
    STREAM_DETECTOR_TEST_BOOTSTRAP: bootstrap address of an existing broker to use.
        The fixture fails, and never skips, when that broker is unreachable.
    STREAM_DETECTOR_TEST_KAFKA_VERSION: Kafka release for the broker that the
        fixture starts when no bootstrap address is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from deploy.kafka_local import (
    DEFAULT_KAFKA_VERSION,
    BrokerError,
    BrokerUnreachableError,
    LocalKafka,
    check_reachable,
    find_free_ports,
)

BOOTSTRAP_ENV = "STREAM_DETECTOR_TEST_BOOTSTRAP"
VERSION_ENV = "STREAM_DETECTOR_TEST_KAFKA_VERSION"
REACHABLE_TIMEOUT_S = 15.0


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a Kafka broker shared by the whole test session.

    Uses the broker named by $STREAM_DETECTOR_TEST_BOOTSTRAP if set. Otherwise it
    starts a broker on free 127.0.0.1 ports in a temporary data dir and stops it
    when the session ends.
    """
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        failure = _check_external_broker(external)
        if failure:
            pytest.fail(failure, pytrace=False)
        yield external
        return

    version = os.environ.get(VERSION_ENV) or DEFAULT_KAFKA_VERSION
    port, controller_port = find_free_ports(2)
    broker = LocalKafka(
        version=version,
        port=port,
        controller_port=controller_port,
        data_dir=tmp_path_factory.mktemp("kafka"),
    )
    failure = _start_broker(broker)
    if failure:
        pytest.fail(failure, pytrace=False)
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


# The helpers return a message instead of calling pytest.fail in their except
# blocks, so that the failure report shows the message without a chained traceback.


def _check_external_broker(bootstrap_servers: str) -> str | None:
    """Return why the broker at ``bootstrap_servers`` is unusable, or None if it responds."""
    try:
        check_reachable(bootstrap_servers, timeout=REACHABLE_TIMEOUT_S)
    except BrokerUnreachableError as error:
        return f"{BOOTSTRAP_ENV}={bootstrap_servers} is set, but {error}"
    return None


def _start_broker(broker: LocalKafka) -> str | None:
    """Start ``broker`` and return None, or the reason it did not start."""
    try:
        broker.start()
    except BrokerError as error:
        return f"could not start a Kafka {broker.version} broker for the tests: {error}"
    return None
