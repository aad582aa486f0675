"""The Faust app: a windower agent that turns events into score requests and a scorer agent that turns them into alerts.

The two agents are connected by the score-request topic, because a Faust table
cannot be written from inside a ``take()`` batch and because it lets CPU
windowers and GPU scorers scale apart.

Delivery is at least once. Faust commits an input offset only after the broker
acknowledged every record the agent sent while handling it. Alert ids are
derived from the scored window, so a redelivered event yields the same alert id,
never a different alert.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import faust
import orjson
import structlog
from faust.types import EventT, StreamT
from pydantic import BaseModel, ValidationError

from schemas import Alert, DeadLetter, InvalidEventError, ScoreRequest, Trigger, parse_event
from stream_detector.alerts import alert_id
from stream_detector.config import WorkerSettings
from stream_detector.metrics import WorkerMetrics
from stream_detector.render import render_window
from stream_detector.window import (
    AnyEvent,
    UserWindow,
    WindowPolicy,
    add_event,
    context_keys,
    is_idle,
    mark_scored,
    window_id,
)

log = structlog.get_logger("stream_detector.app")


class StoredWindow(BaseModel):
    """A table value: the user's window, its partition and its cross-user context counts."""

    window: UserWindow
    partition: int  # input partition of the newest event; idle ticks go to the same partition
    device_accounts: int = 0
    ip_accounts: int = 0


class ScoringModel(Protocol):
    """Interface of the classifier that the scorer agent calls."""

    version: str
    threshold: float

    def score(self, texts: Sequence[str]) -> list[float]:
        """Return the anomaly probability of each text."""
        ...


@dataclass
class WorkerContext:
    """The app and its parts, returned by :func:`create_app` for the worker and tests."""

    app: faust.App
    settings: WorkerSettings
    metrics: WorkerMetrics


def utc_now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def create_app(
    settings: WorkerSettings,
    model_factory: Callable[[], ScoringModel],
    metrics: WorkerMetrics | None = None,
) -> WorkerContext:
    """Build the Faust app with its topics, tables, agents and idle timer.

    Args:
        settings: worker settings.
        model_factory: loads the classifier; called once when the scorer agent starts.
        metrics: counters to update; a fresh set when omitted.

    Returns:
        The app with the settings and metrics it uses.
    """
    metrics = metrics or WorkerMetrics()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        datadir=str(settings.state_dir / settings.app_id),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        web_enabled=settings.web_port is not None,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        table_standby_replicas=0,
    )

    def raw_topic(name: str) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.topic_partitions,
        )

    kind_by_topic = settings.event_topics()
    input_channel = app.topic(
        *kind_by_topic,
        settings.tick_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    tick_topic = raw_topic(settings.tick_topic)
    deadletter_topic = raw_topic(settings.deadletter_topic)
    score_topic = raw_topic(settings.score_request_topic)
    anomalies_topic = raw_topic(settings.anomalies_topic)

    windows = app.Table("windows", default=None, partitions=settings.topic_partitions)
    device_accounts = app.Table("device-accounts", default=None, partitions=settings.topic_partitions)
    ip_accounts = app.Table("ip-accounts", default=None, partitions=settings.topic_partitions)

    windower = _Windower(
        settings=settings,
        policy=settings.window_policy(),
        kind_by_topic=kind_by_topic,
        windows=windows,
        device_accounts=device_accounts,
        ip_accounts=ip_accounts,
        score_topic=score_topic,
        deadletter_topic=deadletter_topic,
        metrics=metrics,
    )
    scorer = _Scorer(
        settings=settings,
        model_factory=model_factory,
        anomalies_topic=anomalies_topic,
        deadletter_topic=deadletter_topic,
        metrics=metrics,
    )

    @app.agent(input_channel, name="windower")
    async def windower_agent(stream: StreamT[bytes]) -> None:
        async for event in stream.events():
            await windower.handle(event, tick_topic_name=settings.tick_topic)

    @app.agent(score_topic, name="scorer")
    async def scorer_agent(stream: StreamT[bytes]) -> None:
        # take_events acks a batch only after the loop body finished it; Faust's StreamT stub lacks it.
        batches = stream.take_events(settings.max_batch, within=settings.max_batch_wait_ms / 1000)  # type: ignore[attr-defined]
        async for events in batches:
            await scorer.handle_batch(events)

    @app.timer(interval=settings.idle_check_interval_s)
    async def idle_timer() -> None:
        await windower.send_idle_ticks(tick_topic)

    @app.task
    async def load_model() -> None:
        await scorer.start()

    return WorkerContext(app=app, settings=settings, metrics=metrics)


class _Windower:
    """Handles one input record at a time: validate, update the window, maybe request a score."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        policy: WindowPolicy,
        kind_by_topic: dict[str, Any],
        windows: Any,
        device_accounts: Any,
        ip_accounts: Any,
        score_topic: faust.TopicT,
        deadletter_topic: faust.TopicT,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.kind_by_topic = kind_by_topic
        self.windows = windows
        self.device_accounts = device_accounts
        self.ip_accounts = ip_accounts
        self.score_topic = score_topic
        self.deadletter_topic = deadletter_topic
        self.metrics = metrics
        # Ticks already sent, by user, with the newest event id they were sent for.
        self._ticked: dict[str, str] = {}

    async def handle(self, event: EventT, *, tick_topic_name: str) -> None:
        message = event.message
        if message.topic == tick_topic_name:
            await self._handle_tick(event.value)
            return

        kind = self.kind_by_topic[message.topic]
        try:
            parsed = parse_event(event.value, kind)
            _check_key(message.key, parsed.user_id)
        except InvalidEventError as error:
            reason = str(error)
            await send_dead_letter(self.deadletter_topic, message, reason, self.metrics)
            log.warning(
                "event_dead_lettered",
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                reason=reason,
            )
            return

        self.metrics.events_in.labels(kind=kind).inc()
        await self._add(parsed, partition=message.partition)

    async def _add(self, event: AnyEvent, *, partition: int) -> None:
        stored = self._load(event.user_id)
        window = stored.window if stored else UserWindow(user_id=event.user_id)
        device_count, ip_count = self._observe_context(event)
        update = add_event(window, event, self.policy, arrival_s=time.time())

        if update.duplicate:
            self.metrics.duplicate_events.inc()
            log.info("duplicate_event", user_id=event.user_id, event_id=event.event_id)
        else:
            stored = StoredWindow(
                window=update.window, partition=partition, device_accounts=device_count, ip_accounts=ip_count
            )
            self.windows[event.user_id] = stored.model_dump(mode="json")

        if update.trigger is not None and stored is not None:
            await self._request_score(stored, update.trigger)

    def _load(self, user_id: str) -> StoredWindow | None:
        value = self.windows.get(user_id)
        return None if value is None else StoredWindow.model_validate(value)

    def _observe_context(self, event: AnyEvent) -> tuple[int, int]:
        """Record the event's device and IP and return how many accounts use each."""
        # NOTE: the device and IP tables live on the partitions of the user-keyed input, so with
        # several workers each counts only the accounts whose events it consumed. Exact counts need
        # a repartition by device and IP, which this worker does not do yet.
        device_id, ip_address = context_keys(event)
        return (
            _add_account(self.device_accounts, device_id, event.user_id, self.settings.max_context_accounts),
            _add_account(self.ip_accounts, ip_address, event.user_id, self.settings.max_context_accounts),
        )

    async def _request_score(self, stored: StoredWindow, trigger: Trigger) -> None:
        window = stored.window
        rendered = render_window(window.events, device_accounts=stored.device_accounts, ip_accounts=stored.ip_accounts)
        event_ids = window.event_ids()
        request = ScoreRequest(
            user_id=window.user_id,
            window_id=window_id(window.user_id, event_ids),
            text=rendered.text,
            template_version=rendered.template_version,
            event_ids=event_ids,
            trigger=trigger,
            counts=rendered.counts,
            window_start=window.events[0].event_time,
            window_end=window.events[-1].event_time,
            requested_time=utc_now(),
        )
        await self.score_topic.send(key=window.user_id.encode(), value=request.model_dump_json().encode())
        self.metrics.score_requests.labels(trigger=trigger).inc()

    async def _handle_tick(self, value: bytes | None) -> None:
        try:
            tick = orjson.loads(value or b"")
            user_id, newest_event_id = str(tick["user_id"]), str(tick["newest_event_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as error:
            log.warning("invalid_tick_dropped", error=str(error))
            return

        stored = self._load(user_id)
        if stored is None or not stored.window.events:
            return
        if stored.window.events[-1].event_id != newest_event_id:
            return  # newer events arrived after the tick was sent
        if not is_idle(stored.window, self.policy, time.time()):
            return

        scored = stored.model_copy(update={"window": mark_scored(stored.window)})
        self.windows[user_id] = scored.model_dump(mode="json")
        await self._request_score(stored, "idle")

    async def send_idle_ticks(self, tick_topic: faust.TopicT) -> None:
        """Send a tick for every local window that went idle, to its own partition."""
        now_s = time.time()
        for user_id, value in list(self.windows.items()):
            # Plain dict access: validating every stored window on each timer run costs too much.
            window = (value or {}).get("window") or {}
            events = window.get("events") or []
            if not events or window.get("unscored_count", 0) == 0:
                continue
            newest_event_id = events[-1]["event_id"]
            if self._ticked.get(user_id) == newest_event_id:
                continue
            if now_s - window.get("last_arrival_s", now_s) < self.policy.idle_s:
                continue
            tick = orjson.dumps({"user_id": user_id, "newest_event_id": newest_event_id})
            await tick_topic.send(key=user_id.encode(), value=tick, partition=value["partition"])
            self._ticked[user_id] = newest_event_id


def _check_key(key: bytes | None, user_id: str) -> None:
    """Reject a record whose key is not its user id, since windows are partitioned by that key."""
    if key is None:
        raise InvalidEventError(f"record has no key: producers must key each event by its user_id {user_id!r}")
    if key != user_id.encode("utf-8"):
        shown = key[:64].decode("utf-8", errors="replace")
        raise InvalidEventError(f"record key {shown!r} does not match user_id {user_id!r}: key events by user_id")


def _add_account(table: Any, key: str | None, user_id: str, max_accounts: int) -> int:
    if key is None:
        return 0
    accounts: list[str] = list(table.get(key) or [])
    if user_id not in accounts and len(accounts) < max_accounts:
        accounts.append(user_id)
        table[key] = accounts
    return len(accounts)


class _Scorer:
    """Scores batches of requests in a dedicated thread and publishes alerts."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        model_factory: Callable[[], ScoringModel],
        anomalies_topic: faust.TopicT,
        deadletter_topic: faust.TopicT,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.model_factory = model_factory
        self.anomalies_topic = anomalies_topic
        self.deadletter_topic = deadletter_topic
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self._model: ScoringModel | None = None
        self._model_ready = asyncio.Event()
        # Alert ids sent by this process; a redelivered score request is not published twice.
        self._sent_alert_ids: OrderedDict[str, None] = OrderedDict()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._model = await loop.run_in_executor(self._executor, self.model_factory)
        self._model_ready.set()
        log.info("model_loaded", model_version=self._model.version, threshold=self._model.threshold)

    async def handle_batch(self, events: Sequence[EventT]) -> None:
        await self._model_ready.wait()
        model = self._model
        if model is None:
            raise RuntimeError("the scorer started without a model")

        requests: list[tuple[EventT, ScoreRequest]] = []
        for event in events:
            try:
                requests.append((event, ScoreRequest.model_validate_json(event.value)))
            except ValidationError as error:
                reason = f"invalid score request: {error}"
                await send_dead_letter(self.deadletter_topic, event.message, reason, self.metrics)
                log.warning("score_request_dead_lettered", offset=event.message.offset, reason=reason)
        if not requests:
            return

        started = time.perf_counter()
        texts = [request.text for _, request in requests]
        loop = asyncio.get_running_loop()
        try:
            scores = await loop.run_in_executor(self._executor, model.score, texts)
        except Exception as error:  # a failed batch is data: every request goes to the dead-letter topic
            log.exception("scoring_failed", batch_size=len(texts), model_version=model.version)
            for event, _ in requests:
                reason = f"scoring failed: {type(error).__name__}: {error}"
                await send_dead_letter(self.deadletter_topic, event.message, reason, self.metrics)
            return

        latency_ms = (time.perf_counter() - started) * 1000
        self.metrics.windows_scored.inc(len(texts))
        self.metrics.batch_latency.observe(latency_ms / 1000)
        log.debug("batch_scored", batch_size=len(texts), latency_ms=round(latency_ms, 1))

        for (_, request), score in zip(requests, scores, strict=True):
            if score >= model.threshold:
                await self._publish_alert(request, score, model)

    async def _publish_alert(self, request: ScoreRequest, score: float, model: ScoringModel) -> None:
        identifier = alert_id(request.user_id, request.window_id, model.version)
        if identifier in self._sent_alert_ids:
            self.metrics.duplicate_alerts.inc()
            return
        alert = Alert(
            alert_id=identifier,
            user_id=request.user_id,
            window_id=request.window_id,
            score=round(float(score), 6),
            threshold=model.threshold,
            model_version=model.version,
            template_version=request.template_version,
            text=request.text,
            evidence_event_ids=request.event_ids,
            trigger=request.trigger,
            counts=request.counts,
            window_start=request.window_start,
            window_end=request.window_end,
            created_time=utc_now(),
        )
        await self.anomalies_topic.send(key=request.user_id.encode(), value=alert.model_dump_json().encode())
        self._remember(identifier)
        self.metrics.alerts.inc()

    def _remember(self, identifier: str, max_ids: int = 100_000) -> None:
        self._sent_alert_ids[identifier] = None
        if len(self._sent_alert_ids) > max_ids:
            self._sent_alert_ids.popitem(last=False)


async def send_dead_letter(topic: faust.TopicT, message: Any, reason: str, metrics: WorkerMetrics) -> None:
    """Publish a record that could not be handled, with its original bytes and the reason."""
    letter = DeadLetter.from_record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        reason=reason,
        received_time=utc_now(),
    )
    await topic.send(key=message.key, value=letter.model_dump_json().encode())
    metrics.dead_letters.labels(topic=message.topic).inc()
