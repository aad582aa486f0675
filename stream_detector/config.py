"""Settings of the stream worker, read from ``STREAM_DETECTOR_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_detector.window import WindowPolicy


class WorkerSettings(BaseSettings):
    """Configuration of one stream worker process (windower and scorer agents)."""

    model_config = SettingsConfigDict(env_prefix="STREAM_DETECTOR_", frozen=True, extra="ignore")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"  # host:port list of the Kafka brokers
    app_id: str = "stream-detector"  # Faust app id: the consumer group and the prefix of table topics
    topic_partitions: int = Field(default=4, ge=1)  # partitions of every topic the worker creates
    # Seconds without heartbeats before the broker drops a worker from the group; the broker
    # accepts 6 to 300 by default. A killed worker's partitions wait this long for a new owner.
    session_timeout_s: float = Field(default=30.0, ge=6.0, le=300.0)
    # Seconds the group coordinator waits for every member to rejoin in a rebalance. A member that
    # crashed during one can hold the others back this long.
    rebalance_timeout_s: float = Field(default=60.0, ge=1.0)

    # Topics
    click_topic: str = "events.click"
    search_topic: str = "events.search"
    order_topic: str = "events.order"
    deadletter_topic: str = "events.deadletter"
    score_request_topic: str = "score-requests"
    anomalies_topic: str = "anomalies"
    tick_topic: str = "window-ticks"  # idle checks, keyed by user and co-partitioned with the events

    # Windows
    window_max_events: int = Field(default=50, ge=1)  # events kept per user
    window_max_age_s: float = Field(default=1800.0, gt=0)  # event-time span kept per user, seconds
    score_every_n: int = Field(default=10, ge=1)  # score after this many new events
    idle_s: float = Field(default=20.0, gt=0)  # score pending events after this many seconds without one
    idle_check_interval_s: float = Field(default=2.0, gt=0)  # how often the idle timer runs, seconds
    max_context_accounts: int = Field(default=100, ge=1)  # accounts remembered per device and per IP

    # Scoring
    model_registry: Path = Path("models")  # folder of model versions, with a CURRENT file
    model_path: Path | None = None  # a checkpoint folder to use instead of the registry's current version
    max_batch: int = Field(default=64, ge=1)  # score requests per classifier batch
    max_batch_wait_ms: int = Field(default=200, ge=1)  # maximum wait to fill a batch, milliseconds
    max_length: int | None = Field(default=None, ge=8)  # tokens per text; None uses the model version's
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where the classifier runs
    quantize: bool = False  # dynamic int8 on the CPU: faster, scores differ slightly from fp32

    # Process
    state_dir: Path = Path(".stream-detector")  # Faust data folder
    web_port: int | None = None  # Faust web server port; None turns the server off
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _check_topics(self) -> WorkerSettings:
        inputs = [self.click_topic, self.search_topic, self.order_topic, self.tick_topic]
        if len(set(inputs)) != len(inputs):
            msg = f"click, search, order and tick topics must differ, got {inputs}"
            raise ValueError(msg)
        return self

    def window_policy(self) -> WindowPolicy:
        """Return the window bounds and trigger rules these settings describe."""
        return WindowPolicy(
            max_events=self.window_max_events,
            max_age_s=self.window_max_age_s,
            every_n=self.score_every_n,
            idle_s=self.idle_s,
        )

    def event_topics(self) -> dict[str, Literal["click", "search", "order"]]:
        """Return the event kind each input topic carries."""
        return {self.click_topic: "click", self.search_topic: "search", self.order_topic: "order"}
