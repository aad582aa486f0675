"""Event validation against the Python models and the generated JSON Schema files."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import orjson
import pytest

from schemas import DeadLetter, InvalidEventError, OrderEvent, parse_event
from schemas.export import SCHEMA_DIR, SCHEMA_FILES, render_schema

VALID_ORDER = {
    "kind": "order",
    "event_id": "e-1",
    "user_id": "acct-42",
    "event_time": "2026-01-05T12:00:00+00:00",
    "order_id": "o-1",
    "amount": 19.5,
    "currency": "USD",
    "account": {
        "signup_time": "2026-01-05T11:59:10+00:00",
        "device_id": "DEV1",
        "ip_address": "10.0.0.1",
        "browser": "Chrome",
        "traffic_source": "Ads",
    },
}
VALID_CLICK = {
    "kind": "click",
    "event_id": "e-2",
    "user_id": "sess-1",
    "event_time": "2026-01-05T12:00:00Z",
    "page": "/content/a.php",
}
VALID_SEARCH = {
    "kind": "search",
    "event_id": "e-3",
    "user_id": "sess-1",
    "event_time": "2026-01-05T12:00:00Z",
    "query": "red dress",
    "results_count": 3,
}


@pytest.mark.parametrize(
    ("document", "kind"), [(VALID_ORDER, "order"), (VALID_CLICK, "click"), (VALID_SEARCH, "search")]
)
def test_valid_events_parse(document: dict, kind: str) -> None:
    event = parse_event(orjson.dumps(document), kind)  # type: ignore[arg-type]

    assert event.kind == kind
    assert event.event_id == document["event_id"]


def test_order_keeps_account_context() -> None:
    event = parse_event(orjson.dumps(VALID_ORDER), "order")

    assert isinstance(event, OrderEvent)
    assert event.account is not None
    assert event.account.signup_time == datetime(2026, 1, 5, 11, 59, 10, tzinfo=UTC)
    assert event.account.traffic_source == "Ads"


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (b"", "order", "empty record value: expected one JSON event"),
        (b"not json", "order", "invalid event: value: Invalid JSON"),
        (
            orjson.dumps({**VALID_ORDER, "amount": -1}),
            "order",
            "invalid event: amount: Input should be greater than or equal to 0",
        ),
        (
            orjson.dumps({**VALID_ORDER, "event_time": "2026-01-05T12:00:00"}),
            "order",
            "invalid event: event_time: Input should have timezone info",
        ),
        (
            orjson.dumps({k: v for k, v in VALID_CLICK.items() if k != "page"}),
            "click",
            "invalid event: page: Field required",
        ),
        (
            orjson.dumps({**VALID_CLICK, "user_id": "has space"}),
            "click",
            "invalid event: user_id: String should match pattern",
        ),
        (
            orjson.dumps({**VALID_CLICK, "colour": "red"}),
            "click",
            "invalid event: colour: Extra inputs are not permitted",
        ),
        (orjson.dumps(VALID_CLICK), "order", "event kind 'click' on a topic for 'order' events"),
        (
            orjson.dumps({**VALID_CLICK, "kind": "refund"}),
            "click",
            "invalid event: value: Input tag 'refund' found using 'kind' does not match",
        ),
    ],
)
def test_invalid_events_are_rejected_with_reason(raw: bytes, kind: str, message: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(raw, kind)  # type: ignore[arg-type]

    assert str(caught.value).startswith(message)


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schema_files_match_models(name: str) -> None:
    on_disk = (SCHEMA_DIR / name).read_text(encoding="utf-8")

    assert on_disk == render_schema(SCHEMA_FILES[name]), f"{name} is stale: run python -m schemas.export"


@pytest.mark.parametrize(
    ("document", "name"),
    [
        (VALID_ORDER, "order_event.schema.json"),
        (VALID_CLICK, "click_event.schema.json"),
        (VALID_SEARCH, "search_event.schema.json"),
    ],
)
def test_json_schema_accepts_valid_events(document: dict, name: str) -> None:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))

    jsonschema.validate(document, schema)


def test_json_schema_rejects_missing_field() -> None:
    schema = json.loads((SCHEMA_DIR / "click_event.schema.json").read_text(encoding="utf-8"))
    document = {k: v for k, v in VALID_CLICK.items() if k != "page"}

    with pytest.raises(jsonschema.ValidationError, match="'page' is a required property"):
        jsonschema.validate(document, schema)


def test_dead_letter_keeps_original_bytes() -> None:
    letter = DeadLetter.from_record(
        topic="events.order",
        partition=2,
        offset=7,
        key=b"acct-1",
        value=b"\xff\x00not json",
        reason="invalid event",
        received_time=datetime(2026, 1, 5, tzinfo=UTC),
    )

    restored = DeadLetter.model_validate_json(letter.model_dump_json())

    assert restored.original_value() == b"\xff\x00not json"
    assert restored.key_b64 == "YWNjdC0x"
    assert (restored.source_topic, restored.partition, restored.offset) == ("events.order", 2, 7)
