"""Behaviour text rendering: fixed windows in, exact text out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import AccountContext, ClickEvent, OrderEvent, SearchEvent, WindowCounts
from stream_detector.render import TEMPLATE_VERSION, amount_words, count_words, counted, duration_words, render_window

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/77.0.3865.90 Safari/537.36"


def mixed_window() -> list:
    return [
        ClickEvent(event_id="c0", user_id="u1", event_time=T0, page="/", user_agent=AGENT),
        ClickEvent(
            event_id="c1",
            user_id="u1",
            event_time=T0 + timedelta(seconds=4),
            page="/content/computer_security.php",
            referrer="https://shop/",
            user_agent=AGENT,
        ),
        SearchEvent(
            event_id="s0", user_id="u1", event_time=T0 + timedelta(seconds=9), query="Red  Dress", results_count=0
        ),
        ClickEvent(
            event_id="c2",
            user_id="u1",
            event_time=T0 + timedelta(seconds=12),
            page="/content/computer_security.php",
            referrer="https://shop/",
            user_agent=AGENT,
            http_status=404,
        ),
        OrderEvent(
            event_id="o0",
            user_id="u1",
            event_time=T0 + timedelta(seconds=70),
            order_id="o0",
            amount=42.0,
            payment_status="declined",
            payment_method_id="pm1",
            account=AccountContext(
                signup_time=T0 - timedelta(seconds=30), browser="Chrome", traffic_source="SEO", country="Japan"
            ),
        ),
    ]


SUMMARY = (
    "five events over a few minutes. "
    "three page views of two pages, revisits some, median gap a few seconds, gaps regular, "
    "referrer missing some, errors some, agent chrome on linux. "
    "one search, one distinct, no results all, median gap none. "
    "one order, value medium, declined all, one payment method. "
    "account age a few minutes, source seo, browser chrome, country japan. "
    "device shared by three accounts, ip shared by one account."
)


def test_render_mixed_window_exact_text() -> None:
    rendered = render_window(mixed_window(), device_accounts=3, ip_accounts=1)

    assert rendered.text == (
        SUMMARY + " recent: order medium declined; view computer security; search red dress no results; "
        "view computer security; view home."
    )
    assert rendered.template_version == TEMPLATE_VERSION == "v1"
    assert rendered.counts == WindowCounts(clicks=3, searches=1, orders=1, dropped=0)


def test_render_drops_oldest_events_to_fit() -> None:
    rendered = render_window(mixed_window(), device_accounts=3, ip_accounts=1, max_words=77)

    assert rendered.text == SUMMARY + " recent: order medium declined; view computer security."
    assert rendered.counts.dropped == 3


def test_render_respects_token_budget() -> None:
    def count_tokens(text: str) -> int:
        return len(text)

    rendered = render_window(mixed_window(), count_tokens=count_tokens, max_tokens=len(SUMMARY) + 30)

    assert rendered.counts.dropped == 4
    assert rendered.text.endswith("recent: order medium declined.")


def test_render_never_shows_dates_or_times() -> None:
    text = render_window(mixed_window()).text

    for leak in ("2026", "12:00", "january", "monday"):
        assert leak not in text.lower()


def test_render_rejects_empty_window() -> None:
    with pytest.raises(ValueError, match="cannot render an empty window"):
        render_window([])


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, "no"), (1, "one"), (20, "twenty"), (21, "dozens of"), (60, "many"), (100, "hundreds of")],
)
def test_count_words_buckets(count: int, expected: str) -> None:
    assert count_words(count) == expected


def test_counted_uses_singular_for_one() -> None:
    assert counted(1, "search", "searches") == "one search"
    assert counted(2, "search", "searches") == "two searches"
    assert counted(0, "order") == "no orders"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "an instant"), (5, "a few seconds"), (30, "under a minute"), (120, "a few minutes"), (3600, "hours")],
)
def test_duration_words_buckets(seconds: float, expected: str) -> None:
    assert duration_words(seconds) == expected


@pytest.mark.parametrize(
    ("amount", "expected"), [(1, "tiny"), (10, "low"), (40, "medium"), (100, "high"), (500, "very high")]
)
def test_amount_words_buckets(amount: float, expected: str) -> None:
    assert amount_words(amount) == expected
