"""Wire contracts: typed models for every message that crosses a Kafka topic.

The JSON Schema files beside this module are generated from these models by
``python -m schemas.export`` and checked against them by the test suite, so the
two never drift apart.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION = 1

EventKind = Literal["click", "search", "order"]
Trigger = Literal["order", "every_n", "idle"]
FeedbackLabel = Literal["fraud", "legitimate"]

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
"""An id of printable ASCII without spaces, as Kafka keys and log fields carry it."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _EventBase(_Message):
    event_id: Identifier
    user_id: Identifier
    event_time: AwareDatetime = Field(description="When the user acted, with a UTC offset.")
    device_id: Identifier | None = None
    ip_address: str | None = Field(default=None, max_length=45, description="IPv4 or IPv6 text.")


class ClickEvent(_EventBase):
    """One page view."""

    kind: Literal["click"] = "click"
    page: str = Field(min_length=1, max_length=2048, description="Path of the page viewed.")
    referrer: str | None = Field(default=None, max_length=2048)
    user_agent: str | None = Field(default=None, max_length=1024)
    http_status: int | None = Field(default=None, ge=100, le=599)


class SearchEvent(_EventBase):
    """One search the user ran on the shop."""

    kind: Literal["search"] = "search"
    query: str = Field(min_length=1, max_length=512)
    results_count: int | None = Field(default=None, ge=0)


class AccountContext(_Message):
    """Account details the shop has recorded for the account that placed an order."""

    signup_time: AwareDatetime | None = None
    device_id: Identifier | None = None
    ip_address: str | None = Field(default=None, max_length=45)
    browser: str | None = Field(default=None, max_length=64)
    traffic_source: str | None = Field(default=None, max_length=64, description="SEO, Ads, Direct, ...")
    country: str | None = Field(default=None, max_length=64)


class OrderEvent(_EventBase):
    """One placed order, with the account context when the shop has it."""

    kind: Literal["order"] = "order"
    order_id: Identifier
    amount: float = Field(ge=0, description="Order value in `currency` units.")
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    item_count: int | None = Field(default=None, ge=1)
    payment_status: Literal["approved", "declined"] | None = None
    payment_method_id: Identifier | None = Field(default=None, description="Opaque id of the card or wallet used.")
    account: AccountContext | None = None


Event = Annotated[ClickEvent | SearchEvent | OrderEvent, Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[ClickEvent | SearchEvent | OrderEvent] = TypeAdapter(Event)


class WindowCounts(_Message):
    """How many events of each kind a scored window contains."""

    clicks: int = Field(ge=0)
    searches: int = Field(ge=0)
    orders: int = Field(ge=0)
    dropped: int = Field(ge=0, description="Events left out of the text to fit the token limit.")


class ScoreRequest(_Message):
    """A rendered window the scorer should classify."""

    user_id: Identifier
    window_id: Identifier
    text: str = Field(min_length=1)
    template_version: str
    event_ids: list[Identifier] = Field(min_length=1)
    trigger: Trigger
    counts: WindowCounts
    window_start: AwareDatetime
    window_end: AwareDatetime
    requested_time: AwareDatetime


class Alert(_Message):
    """A window scored at or above the model's threshold."""

    alert_id: Identifier
    user_id: Identifier
    window_id: Identifier
    score: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    model_version: str
    template_version: str
    text: str
    evidence_event_ids: list[Identifier] = Field(min_length=1)
    trigger: Trigger
    counts: WindowCounts
    window_start: AwareDatetime
    window_end: AwareDatetime
    created_time: AwareDatetime


class Feedback(_Message):
    """A labeler's verdict on one alert, the training signal for the next model."""

    alert_id: Identifier
    label: FeedbackLabel
    labeler: str = Field(min_length=1, max_length=128)
    note: str = Field(default="", max_length=4096)
    closed_time: AwareDatetime
    text: str = Field(description="The behaviour text that was scored.")
    template_version: str


class DeadLetter(_Message):
    """An input record that could not be accepted, kept whole with the reason."""

    source_topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = Field(description="Original key bytes, base64.")
    value_b64: str | None = Field(description="Original value bytes, base64.")
    reason: str
    received_time: AwareDatetime

    @classmethod
    def from_record(
        cls,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        received_time: datetime,
    ) -> DeadLetter:
        """Build a dead letter that carries the original key and value bytes."""
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=None if key is None else base64.b64encode(key).decode("ascii"),
            value_b64=None if value is None else base64.b64encode(value).decode("ascii"),
            reason=reason,
            received_time=received_time,
        )

    def original_value(self) -> bytes | None:
        """Return the original value bytes."""
        return None if self.value_b64 is None else base64.b64decode(self.value_b64)


class ModelUpdate(_Message):
    """Announcement that a model version was promoted."""

    version: str
    location: str
    metrics: dict[str, float]
    promoted_time: AwareDatetime


class InvalidEventError(ValueError):
    """An input record is not a valid event for its topic."""


def parse_event(raw: bytes | None, expected_kind: EventKind) -> ClickEvent | SearchEvent | OrderEvent:
    """Decode and validate one event from its JSON bytes.

    Args:
        raw: the record value as received.
        expected_kind: the kind the source topic carries.

    Returns:
        The validated event.

    Raises:
        InvalidEventError: the bytes are not JSON, fail the schema, or carry another kind;
            the message names the failing fields.
    """
    if raw is None or raw == b"":
        raise InvalidEventError("empty record value: expected one JSON event")

    try:
        event = EVENT_ADAPTER.validate_json(raw)
    except ValidationError as error:
        raise InvalidEventError(_describe(error)) from None

    if event.kind != expected_kind:
        msg = f"event kind {event.kind!r} on a topic for {expected_kind!r} events"
        raise InvalidEventError(msg)
    return event


def _describe(error: ValidationError) -> str:
    """Render a validation error as one line that names each failing field."""
    parts = []
    for item in error.errors(include_url=False)[:5]:
        path = list(item["loc"])
        if path and path[0] in ("click", "search", "order"):
            path = path[1:]  # the union member's tag, not a field of the event
        location = ".".join(str(part) for part in path) or "value"
        parts.append(f"{location}: {item['msg']}")
    more = error.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more errors")
    return "invalid event: " + "; ".join(parts)
