"""Run a stream worker: the windower and scorer agents in one process."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from faust.worker import Worker

from stream_detector.app import ScoringModel, create_app
from stream_detector.config import WorkerSettings
from stream_detector.logs import configure_logging
from stream_detector.topics import ensure_worker_topics

log = structlog.get_logger("stream_detector.worker")


def run_worker(settings: WorkerSettings, model_factory: Callable[[], ScoringModel] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT, then finish the batch in flight and commit.

    Args:
        settings: worker settings.
        model_factory: loads the classifier; by default the registry's current version
            or ``settings.model_path``.

    Returns:
        The process exit code.
    """
    configure_logging(settings.log_format, settings.log_level)
    if model_factory is None:
        from stream_detector.model_loader import registry_model_factory

        model_factory = registry_model_factory(settings)

    # Loaded before Faust starts, so a missing or broken model fails with its own message.
    model = model_factory()
    check_broker(settings.bootstrap_servers)
    ensure_worker_topics(settings)
    context = create_app(settings, lambda: model)
    log.info(
        "worker_starting",
        app_id=settings.app_id,
        bootstrap_servers=settings.bootstrap_servers,
        topics=sorted(settings.event_topics()),
        anomalies_topic=settings.anomalies_topic,
    )
    worker = Worker(context.app, loglevel=settings.log_level.upper(), override_logging=False, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        log.info("worker_stopped", app_id=settings.app_id)
    return 0


class BrokerUnreachableError(RuntimeError):
    """No Kafka broker responded at the configured bootstrap address."""


def check_broker(bootstrap_servers: str, timeout_s: float = 15.0) -> None:
    """Fetch cluster metadata once, so an unreachable broker fails with one clear message.

    Raises:
        BrokerUnreachableError: no broker responded within ``timeout_s`` seconds.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as error:
        msg = (
            f"no Kafka broker responded at {bootstrap_servers} within {timeout_s:g} s ({error.args[0].str()}): "
            "start one with `stream-detector broker start` or pass --bootstrap HOST:PORT"
        )
        raise BrokerUnreachableError(msg) from None
