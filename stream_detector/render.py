"""Render a user's window as behaviour text, the input the classifier reads.

Numbers become words and buckets that a WordPiece tokenizer splits into a few
common tokens ("seven", "under a minute", "value high"). Absolute dates and
times of day are never rendered: they leak when the data was recorded, not how
the user behaved. The text is versioned by ``TEMPLATE_VERSION``; change the
version whenever the output for the same window changes, because models are
trained on one version.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from schemas import ClickEvent, OrderEvent, SearchEvent, WindowCounts

AnyEvent = ClickEvent | SearchEvent | OrderEvent

TEMPLATE_VERSION = "v1"

_NUMBER_WORDS = (
    "no one two three four five six seven eight nine ten "
    "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
).split()


@dataclass(frozen=True)
class RenderedText:
    """Behaviour text with the counts of what it covers."""

    text: str
    template_version: str
    counts: WindowCounts


def count_words(count: int) -> str:
    """Render a count as a word up to twenty, then as a bucket."""
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    if count < len(_NUMBER_WORDS):
        return _NUMBER_WORDS[count]
    if count <= 50:
        return "dozens of"
    return "hundreds of" if count >= 100 else "many"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """Render a count with its noun, singular for one: "one order", "five orders"."""
    if count == 1:
        return f"one {noun}"
    return f"{count_words(count)} {plural or noun + 's'}"


def duration_words(seconds: float) -> str:
    """Render a duration as a coarse bucket."""
    if seconds < 2:
        return "an instant"
    if seconds < 10:
        return "a few seconds"
    if seconds < 60:
        return "under a minute"
    if seconds < 300:
        return "a few minutes"
    if seconds < 1800:
        return "under half an hour"
    if seconds < 86400:
        return "hours"
    return "days"


def amount_words(amount: float) -> str:
    """Render an order value in USD as a bucket."""
    if amount < 5:
        return "tiny"
    if amount < 20:
        return "low"
    if amount < 60:
        return "medium"
    if amount < 150:
        return "high"
    return "very high"


def share_words(part: int, whole: int) -> str:
    """Render part/whole as none, few, some, most or all."""
    if whole <= 0 or part <= 0:
        return "none"
    if part >= whole:
        return "all"
    ratio = part / whole
    if ratio < 0.25:
        return "few"
    if ratio < 0.75:
        return "some"
    return "most"


def render_window(
    events: Sequence[AnyEvent],
    *,
    device_accounts: int = 0,
    ip_accounts: int = 0,
    max_words: int = 90,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> RenderedText:
    """Render a window's events, oldest first, as one line of behaviour text.

    The text is a summary of the whole window followed by the newest events, one
    phrase each. Older event phrases are dropped until the text fits ``max_words``
    (and ``max_tokens`` when a token counter is given); ``counts.dropped`` reports
    how many were left out.

    Args:
        events: the window's events in event-time order; at least one.
        device_accounts: distinct accounts seen on the window's device, 0 if unknown.
        ip_accounts: distinct accounts seen on the window's IP address, 0 if unknown.
        max_words: word budget of the whole text.
        count_tokens: returns the token count of a text, e.g. from the model's tokenizer.
        max_tokens: token budget, used with ``count_tokens``.

    Returns:
        The text, the template version and the counts.

    Raises:
        ValueError: ``events`` is empty.
    """
    if not events:
        raise ValueError("cannot render an empty window: expected at least one event")

    clicks = [event for event in events if isinstance(event, ClickEvent)]
    searches = [event for event in events if isinstance(event, SearchEvent)]
    orders = [event for event in events if isinstance(event, OrderEvent)]

    summary = [_span_phrase(events)]
    if clicks:
        summary.append(_clicks_phrase(clicks))
    if searches:
        summary.append(_searches_phrase(searches))
    if orders:
        summary.append(_orders_phrase(orders))
        account = _account_phrase(orders[-1])
        if account:
            summary.append(account)
    summary.append(_sharing_phrase(device_accounts, ip_accounts))
    head = ". ".join(summary) + "."

    recent = [_event_phrase(event) for event in reversed(events)]
    kept = len(recent)
    text = _join(head, recent[:kept])
    while kept > 0 and not _fits(text, max_words, count_tokens, max_tokens):
        kept -= 1
        text = _join(head, recent[:kept])

    counts = WindowCounts(clicks=len(clicks), searches=len(searches), orders=len(orders), dropped=len(events) - kept)
    return RenderedText(text=text, template_version=TEMPLATE_VERSION, counts=counts)


def _join(head: str, phrases: list[str]) -> str:
    if not phrases:
        return head
    return f"{head} recent: " + "; ".join(phrases) + "."


def _fits(text: str, max_words: int, count_tokens: Callable[[str], int] | None, max_tokens: int | None) -> bool:
    if len(text.split()) > max_words:
        return False
    return count_tokens is None or max_tokens is None or count_tokens(text) <= max_tokens


def _span_phrase(events: Sequence[AnyEvent]) -> str:
    span_s = (events[-1].event_time - events[0].event_time).total_seconds()
    return f"{counted(len(events), 'event')} over {duration_words(span_s)}"


def _gaps_s(times: Sequence[datetime]) -> list[float]:
    return [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:], strict=False)]


def _regularity_words(gaps_s: list[float]) -> str:
    """Render how even the gaps between actions are, by their coefficient of variation."""
    if len(gaps_s) < 2:
        return "gaps unknown"
    mean_s = statistics.fmean(gaps_s)
    if mean_s <= 0:
        return "gaps none"
    variation = statistics.pstdev(gaps_s) / mean_s
    if variation < 0.3:
        return "gaps very regular"
    if variation < 0.8:
        return "gaps regular"
    if variation < 1.5:
        return "gaps irregular"
    return "gaps very irregular"


def _clicks_phrase(clicks: list[ClickEvent]) -> str:
    pages = [click.page for click in clicks]
    distinct = len(set(pages))
    gaps_s = _gaps_s([click.event_time for click in clicks])
    median_gap = duration_words(statistics.median(gaps_s)) if gaps_s else "none"
    no_referrer = sum(1 for click in clicks if click.referrer in (None, "", "-"))
    errors = sum(1 for click in clicks if click.http_status is not None and click.http_status >= 400)
    agent = _agent_words(clicks[-1].user_agent)
    return (
        f"{counted(len(clicks), 'page view')} of {counted(distinct, 'page')}, "
        f"revisits {share_words(len(clicks) - distinct, len(clicks))}, "
        f"median gap {median_gap}, {_regularity_words(gaps_s)}, "
        f"referrer missing {share_words(no_referrer, len(clicks))}, "
        f"errors {share_words(errors, len(clicks))}, agent {agent}"
    )


def _searches_phrase(searches: list[SearchEvent]) -> str:
    queries = [search.query.strip().lower() for search in searches]
    empty = sum(1 for search in searches if search.results_count == 0)
    gaps_s = _gaps_s([search.event_time for search in searches])
    median_gap = duration_words(statistics.median(gaps_s)) if gaps_s else "none"
    return (
        f"{counted(len(searches), 'search', 'searches')}, {count_words(len(set(queries)))} distinct, "
        f"no results {share_words(empty, len(searches))}, median gap {median_gap}"
    )


def _orders_phrase(orders: list[OrderEvent]) -> str:
    declined = sum(1 for order in orders if order.payment_status == "declined")
    methods = {order.payment_method_id for order in orders if order.payment_method_id}
    values = [order.amount for order in orders]
    phrase = (
        f"{counted(len(orders), 'order')}, value {amount_words(statistics.median(values))}, "
        f"declined {share_words(declined, len(orders))}"
    )
    if methods:
        phrase += f", {counted(len(methods), 'payment method')}"
    return phrase


def _account_phrase(order: OrderEvent) -> str:
    account = order.account
    if account is None:
        return ""
    parts = []
    if account.signup_time is not None:
        age_s = max(0.0, (order.event_time - account.signup_time).total_seconds())
        parts.append(f"account age {duration_words(age_s)}")
    if account.traffic_source:
        parts.append(f"source {account.traffic_source.lower()}")
    if account.browser:
        parts.append(f"browser {account.browser.lower()}")
    if account.country:
        parts.append(f"country {account.country.lower()}")
    return ", ".join(parts)


def _sharing_phrase(device_accounts: int, ip_accounts: int) -> str:
    return f"device shared by {counted(device_accounts, 'account')}, ip shared by {counted(ip_accounts, 'account')}"


def _agent_words(user_agent: str | None) -> str:
    """Reduce a user agent to its browser family and platform."""
    if not user_agent or user_agent == "-":
        return "missing"
    agent = user_agent.lower()
    family = "other"
    for name in ("headless", "edg", "opr", "firefox", "chromium", "chrome", "safari", "curl", "python", "bot"):
        if name in agent:
            family = {"edg": "edge", "opr": "opera"}.get(name, name)
            break
    platform = "other"
    for name in ("android", "iphone", "windows", "mac os", "linux"):
        if name in agent:
            platform = name.replace("mac os", "mac")
            break
    return f"{family} on {platform}"


def _event_phrase(event: AnyEvent) -> str:
    if isinstance(event, ClickEvent):
        return f"view {_page_words(event.page)}"
    if isinstance(event, SearchEvent):
        results = "no results" if event.results_count == 0 else "results"
        return f"search {' '.join(event.query.lower().split()[:4])} {results}"
    status = f" {event.payment_status}" if event.payment_status else ""
    return f"order {amount_words(event.amount)}{status}"


def _page_words(page: str) -> str:
    path = urlsplit(page).path.strip("/")
    if not path:
        return "home"
    last = path.rsplit("/", 1)[-1]
    return last.rsplit(".", 1)[0].replace("_", " ").replace("-", " ")[:40]
