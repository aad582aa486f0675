"""Prometheus metrics of a stream worker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class WorkerMetrics:
    """Counters and histograms of one worker, in a registry of their own so tests can make several."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events_in = Counter(
            "stream_detector_events_total", "Valid events accepted, by kind.", ["kind"], registry=self.registry
        )
        self.dead_letters = Counter(
            "stream_detector_dead_letters_total",
            "Records sent to the dead-letter topic, by source topic.",
            ["topic"],
            registry=self.registry,
        )
        self.duplicate_events = Counter(
            "stream_detector_duplicate_events_total", "Redelivered events already in a window.", registry=self.registry
        )
        self.score_requests = Counter(
            "stream_detector_score_requests_total",
            "Windows sent for scoring, by trigger.",
            ["trigger"],
            registry=self.registry,
        )
        self.windows_scored = Counter(
            "stream_detector_windows_scored_total", "Windows the classifier scored.", registry=self.registry
        )
        self.alerts = Counter("stream_detector_alerts_total", "Alerts published.", registry=self.registry)
        self.duplicate_alerts = Counter(
            "stream_detector_duplicate_alerts_total",
            "Alerts not published again because this process already sent their id.",
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "stream_detector_batch_seconds", "Wall time to score one batch, in seconds.", registry=self.registry
        )
