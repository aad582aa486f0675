"""Turn the public data sets into labeled click, search and order events.

Two real data sets feed the detector, and neither covers all three event kinds:

- ``web-bot-phase1/``: Apache access logs of a test site visited by humans and two kinds
  of web bots (CERTH-ITI "Web Bot Detection Dataset", phase 1). Page views become
  click events keyed by the PHP session id.
- ``ecommerce-fraud/``: first purchases of new accounts on a clothing shop ("Fraud_Data"
  and "IpAddress_to_Country"). Each row becomes an order event with its account context.

``generate_synthetic`` adds search events for some of those users and labeled synthetic
attackers (scraping, card testing) and hard negatives, so that all three topics carry traffic.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal, TypeAlias

import structlog
from pydantic import ValidationError

from schemas import AccountContext, ClickEvent, OrderEvent, SearchEvent

AnyEvent: TypeAlias = ClickEvent | SearchEvent | OrderEvent
Label = Literal["fraud", "legitimate"]
Split = Literal["train", "test"]
Source = Literal["web-bot", "ecommerce-fraud", "synthetic"]

DATA_DIR_ENV = "STREAM_DETECTOR_DATA_DIR"
WEB_BOT_FOLDER = "web-bot-phase1"
FRAUD_FOLDER = "ecommerce-fraud"
FRAUD_ORDERS_FILE = "fraud_orders.csv"
IP_COUNTRY_FILE = "ip_to_country.csv"

TEST_SHARE = 0.3
"""Share of users that go to the test split, by user hash or by time."""

_SPLIT_SALT = "stream-detector-split-v1"

_log = structlog.get_logger(__name__)


# --------------------------------------------------------------------------- data folder


class DataNotFoundError(FileNotFoundError):
    """A data folder or file is missing. The message names the path and the data sets to download."""


def default_data_dir() -> Path:
    """Return the folder that contains the data sets.

    The first of these wins: the path in ``STREAM_DETECTOR_DATA_DIR`` when that variable
    is set, ``../shared/data`` beside the repository root (the folder above the
    ``stream_detector`` package) when it exists, and ``./data``.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured)

    repository_root = Path(__file__).resolve().parent.parent
    shared = repository_root.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path("data")


def _missing_data(path: Path, description: str) -> DataNotFoundError:
    message = (
        f"{description} not found: {path}. Point {DATA_DIR_ENV} (or --data-dir) at a folder that "
        f"contains {WEB_BOT_FOLDER}/ and {FRAUD_FOLDER}/, or download the public data sets there: "
        f"the CERTH-ITI 'Web Bot Detection Dataset' phase 1 web logs and annotations into "
        f"{WEB_BOT_FOLDER}/ (web_logs/ and annotations/), and the 'Fraud_Data' and "
        f"'IpAddress_to_Country' tables of the e-commerce fraud data set into {FRAUD_FOLDER}/ "
        f"as {FRAUD_ORDERS_FILE} and {IP_COUNTRY_FILE}."
    )
    return DataNotFoundError(message)


def _require_dir(path: Path, description: str) -> Path:
    if not path.is_dir():
        raise _missing_data(path, description)
    return path


def _require_file(path: Path, description: str) -> Path:
    if not path.is_file():
        raise _missing_data(path, description)
    return path


def check_data_dir(data_dir: Path) -> None:
    """Check that the data folder contains every folder and file the loaders read.

    Raises:
        DataNotFoundError: a folder or file is missing; the message names it and the data sets to download.
    """
    _require_dir(data_dir / WEB_BOT_FOLDER / "web_logs", "web-bot log folder")
    _require_dir(data_dir / WEB_BOT_FOLDER / "annotations", "web-bot annotations folder")
    _require_file(data_dir / FRAUD_FOLDER / FRAUD_ORDERS_FILE, "fraud orders table")
    _require_file(data_dir / FRAUD_FOLDER / IP_COUNTRY_FILE, "IP-to-country table")


# --------------------------------------------------------------------------- labeled streams


@dataclass(frozen=True)
class UserLabel:
    """Ground truth for one user, with where it came from and which split it belongs to."""

    label: Label
    source: Source
    detail: str
    """Finer class, e.g. ``human``, ``advanced_bot``, ``class_1``, ``scraping``."""
    split: Split


def event_order_key(event: AnyEvent) -> tuple[datetime, str]:
    """Return the sort key of the streams: event time, then event id."""
    return (event.event_time, event.event_id)


def stable_fraction(text: str) -> float:
    """Map a text to a number in [0, 1) that is the same on every machine and run."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(user_id: str, test_share: float = TEST_SHARE) -> Split:
    """Assign a user to a split by a salted hash of the id, so a user never changes split."""
    return "test" if stable_fraction(f"{_SPLIT_SALT}:{user_id}") < test_share else "train"


@dataclass(frozen=True)
class LabeledStream:
    """Events of many users, sorted by event time then event id, with the users' labels.

    Users without ground truth (web-bot sessions that have no annotation) may appear in
    ``events`` with no entry in ``labels``. Construction sorts a copy of ``events``.
    """

    events: list[AnyEvent]
    labels: dict[str, UserLabel]
    skipped_counts: dict[str, int] = field(default_factory=dict)
    """Input records that were not turned into events, by reason."""

    def __post_init__(self) -> None:
        # Frozen dataclass: replace the fields with a sorted copy and a private dict.
        object.__setattr__(self, "events", sorted(self.events, key=event_order_key))
        object.__setattr__(self, "labels", dict(self.labels))
        object.__setattr__(self, "skipped_counts", dict(self.skipped_counts))

    def split_of(self, user_id: str) -> Split:
        """Return the user's split: from the label, or by user hash for unlabeled users."""
        label = self.labels.get(user_id)
        return label.split if label is not None else hash_split(user_id)

    def users(self, split: Split | None = None) -> list[str]:
        """Return the sorted ids of the users that have events, optionally of one split only."""
        user_ids = sorted({event.user_id for event in self.events})
        if split is None:
            return user_ids
        return [user_id for user_id in user_ids if self.split_of(user_id) == split]

    def events_by_user(self) -> dict[str, list[AnyEvent]]:
        """Group the events by user, each user's list in stream order."""
        grouped: dict[str, list[AnyEvent]] = {}
        for event in self.events:
            grouped.setdefault(event.user_id, []).append(event)
        return grouped

    def select_users(self, user_ids: Iterable[str]) -> LabeledStream:
        """Return the events and labels of the given users only."""
        keep = set(user_ids)
        return LabeledStream(
            events=[event for event in self.events if event.user_id in keep],
            labels={user_id: label for user_id, label in self.labels.items() if user_id in keep},
            skipped_counts=self.skipped_counts,
        )

    def filter_split(self, split: Split) -> LabeledStream:
        """Return the users of one split, with their events and labels."""
        return self.select_users(self.users(split))

    def limit_users(self, max_users: int, seed: int) -> LabeledStream:
        """Return a random sample of at most ``max_users`` users that is fair to the small sources.

        The budget is shared among sources (web-bot, ecommerce-fraud, synthetic, and the
        unlabeled users as one more) by water-filling: sources smaller than an equal share
        keep all their users, and the rest share what is left equally. Within a source, each
        label keeps a share proportional to its size, at least one user where the source's
        share allows, so the source's fraud rate stays about the same.

        Raises:
            ValueError: ``max_users`` is less than 1.
        """
        if max_users < 1:
            raise ValueError(f"max_users must be at least 1, got {max_users}")
        user_ids = self.users()
        if len(user_ids) <= max_users:
            return self

        by_source: dict[str, dict[str, list[str]]] = {}
        for user_id in user_ids:
            label = self.labels.get(user_id)
            source, label_name = ("unlabeled", "none") if label is None else (label.source, label.label)
            by_source.setdefault(source, {}).setdefault(label_name, []).append(user_id)

        source_sizes = {
            source: sum(len(members) for members in labels.values()) for source, labels in by_source.items()
        }
        source_quotas = _water_fill_quotas(source_sizes, max_users)
        rng = random.Random(f"limit-users:{seed}")
        selected: list[str] = []
        for source in sorted(by_source):
            groups = by_source[source]
            label_quotas = _proportional_quotas(
                {name: len(members) for name, members in groups.items()}, source_quotas[source]
            )
            for name in sorted(groups):
                selected.extend(rng.sample(groups[name], label_quotas[name]))
        return self.select_users(selected)

    def label_counts(self) -> Counter[tuple[Split, str, str, str]]:
        """Count labeled users by (split, source, label, detail)."""
        return Counter((label.split, label.source, label.label, label.detail) for label in self.labels.values())

    def kind_counts(self) -> Counter[str]:
        """Count events by kind."""
        return Counter(event.kind for event in self.events)


def merge(*streams: LabeledStream) -> LabeledStream:
    """Combine streams into one, sorted again; skipped counts add up.

    Raises:
        ValueError: two streams label the same user differently, or share an event id.
    """
    events: list[AnyEvent] = []
    labels: dict[str, UserLabel] = {}
    skipped: Counter[str] = Counter()
    for stream in streams:
        events.extend(stream.events)
        skipped.update(stream.skipped_counts)
        for user_id, label in stream.labels.items():
            known = labels.get(user_id)
            if known is not None and known != label:
                raise ValueError(f"conflicting labels for user {user_id!r}: {known} and {label}")
            labels[user_id] = label

    duplicates = [event_id for event_id, count in Counter(e.event_id for e in events).items() if count > 1]
    if duplicates:
        raise ValueError(f"{len(duplicates)} event ids occur in more than one stream, e.g. {duplicates[0]!r}")
    return LabeledStream(events=events, labels=labels, skipped_counts=dict(skipped))


def _water_fill_quotas(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Share ``total`` so that small groups are kept whole and the rest split what is left evenly."""
    quotas: dict[str, int] = {}
    remaining = total
    pending = sorted(sizes, key=lambda key: (sizes[key], key))
    while pending:
        equal_share = remaining // len(pending)
        smallest = pending[0]
        if sizes[smallest] <= equal_share:
            quotas[smallest] = sizes[smallest]
            remaining -= sizes[smallest]
            pending.pop(0)
            continue
        # Every pending group is larger than the equal share, so each can take one more.
        extra = remaining - equal_share * len(pending)
        for index, key in enumerate(sorted(pending)):
            quotas[key] = equal_share + (1 if index < extra else 0)
        break
    return quotas


def _proportional_quotas(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Share ``total`` in proportion to the sizes by largest remainder, at least one each if possible."""
    population = sum(sizes.values())
    total = min(total, population)
    if total <= 0:
        return {key: 0 for key in sizes}

    exact = {key: total * size / population for key, size in sizes.items()}
    quotas = {key: int(value) for key, value in exact.items()}
    if total >= len(sizes):
        quotas = {key: max(quota, 1 if sizes[key] > 0 else 0) for key, quota in quotas.items()}
    while sum(quotas.values()) > total:
        largest = max(quotas, key=lambda key: (quotas[key], key))
        quotas[largest] -= 1

    by_remainder = sorted(sizes, key=lambda key: (quotas[key] - exact[key], key))
    for key in by_remainder:
        if sum(quotas.values()) >= total:
            break
        if quotas[key] < sizes[key]:
            quotas[key] += 1
    return quotas


# --------------------------------------------------------------------------- web-bot logs

ACCESS_LOG_PATTERN = re.compile(r'^(\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\d{3}) (\S+) "([^"]*)" (\S+) "([^"]*)"$')
"""Apache combined log format with the PHP session id between referrer and user agent."""

PAGE_VIEW_PATTERN = re.compile(r"^GET (/|/index\.php|/content/[A-Za-z0-9_/-]+\.php) HTTP/1\.[01]$")
"""Requests that are page views: the home page (``/`` or ``/index.php``) and the article pages.

Static assets, favicon requests, the site's ``POST /storage/*mousemv*`` mouse-telemetry beacons
and scanner probes are not user actions and are left out.
"""

_IDENTIFIER_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_WEB_BOT_LABELS: dict[str, tuple[Label, str]] = {
    "human": ("legitimate", "human"),
    "moderate_bot": ("fraud", "moderate_bot"),
    "advanced_bot": ("fraud", "advanced_bot"),
}


@dataclass(frozen=True)
class AccessLogRecord:
    """One parsed line of the web-bot access logs."""

    time: datetime
    request: str
    status: int
    referrer: str | None
    session_id: str
    user_agent: str | None


def parse_apache_time(text: str) -> datetime:
    """Parse an Apache log time such as ``28/Oct/2019:09:40:42 +0000``.

    Month names are read from a fixed English table, so the result does not depend on the locale.

    Raises:
        ValueError: the text is not in that format.
    """
    match = re.fullmatch(r"(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})", text)
    if match is None or match.group(2) not in _MONTHS:
        raise ValueError(f"invalid Apache log time {text!r}: expected e.g. '28/Oct/2019:09:40:42 +0000'")
    day, month_name, year, hour, minute, second, sign, offset_hours, offset_minutes = match.groups()
    offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
    zone = timezone(offset if sign == "+" else -offset)
    local = datetime(int(year), _MONTHS[month_name], int(day), int(hour), int(minute), int(second), tzinfo=zone)
    return local.astimezone(UTC)


def parse_access_log_line(line: str) -> AccessLogRecord | None:
    """Parse one access log line, or return None when it does not match the log format."""
    match = ACCESS_LOG_PATTERN.match(line.rstrip("\r\n"))
    if match is None:
        return None
    _, _, time_text, request, status, _, referrer, session_id, user_agent = match.groups()
    try:
        time = parse_apache_time(time_text)
    except ValueError:
        return None
    return AccessLogRecord(
        time=time,
        request=request,
        status=int(status),
        referrer=None if referrer in ("", "-") else referrer,
        session_id=session_id,
        user_agent=None if user_agent in ("", "-") else user_agent,
    )


def page_view_path(record: AccessLogRecord) -> str | None:
    """Return the page path when the request is a page view, else None."""
    match = PAGE_VIEW_PATTERN.match(record.request)
    return None if match is None else match.group(1)


def click_from_record(record: AccessLogRecord, event_id: str) -> ClickEvent:
    """Build the click event of a page-view record.

    Raises:
        ValueError: the session id is ``-`` or not a printable ASCII id, or the request is
            not a page view.
        pydantic.ValidationError: a field breaks the click event schema (e.g. a user agent
            longer than 1024 characters).
    """
    page = page_view_path(record)
    if page is None:
        raise ValueError(f"request {record.request!r} is not a page view")
    if not _IDENTIFIER_PATTERN.match(record.session_id) or record.session_id == "-":
        raise ValueError(f"invalid session id {record.session_id!r}: expected a PHP session id")
    return ClickEvent(
        event_id=event_id,
        user_id=record.session_id,
        event_time=record.time,
        page=page,
        referrer=record.referrer,
        user_agent=record.user_agent,
        http_status=record.status,
    )


def web_bot_event_id(file_name: str, line_number: int) -> str:
    """Return the event id of a log line: ``wb-`` + a short hash of the file name + the line number."""
    file_hash = hashlib.sha256(file_name.encode("utf-8")).hexdigest()[:8]
    return f"wb-{file_hash}-{line_number}"


def load_web_bot(data_dir: Path | None = None) -> LabeledStream:
    """Load the web-bot page views as click events, labeled per session.

    Every log line under ``web-bot-phase1/web_logs/`` is parsed. Three kinds of lines are
    left out and counted in ``skipped_counts``: lines that do not match the log format,
    requests that are not page views, and page views without a session id. The session
    id is ``-`` on the first request of a visit, before the site has set its cookie.

    Labels come from ``annotations/*/{train,test}``: human is legitimate, moderate_bot and
    advanced_bot are fraud. The annotation files' own split is ignored because the copies
    of the logs are incomplete. Users are split by session hash instead (about 70% train).

    Args:
        data_dir: folder that contains ``web-bot-phase1/``; defaults to ``default_data_dir()``.

    Returns:
        Click events of every session with at least one page view, and labels of the
        annotated ones.

    Raises:
        DataNotFoundError: the logs or annotations folder is missing or has no files.
        ValueError: the annotations give one session two different labels.
    """
    root = _require_dir((data_dir or default_data_dir()) / WEB_BOT_FOLDER, "web-bot data folder")
    logs_dir = _require_dir(root / "web_logs", "web-bot log folder")
    log_files = sorted(path for path in logs_dir.rglob("*.log") if path.is_file())
    if not log_files:
        raise _missing_data(logs_dir / "*.log", "web-bot log files")

    skipped: Counter[str] = Counter()
    events: list[AnyEvent] = []
    for path in log_files:
        file_name = path.relative_to(logs_dir).as_posix()
        events.extend(_read_page_views(path, file_name, skipped))

    annotations = _read_annotations(root, skipped)
    labels: dict[str, UserLabel] = {}
    for user_id in sorted({event.user_id for event in events}):
        annotation = annotations.get(user_id)
        if annotation is None:
            continue
        label, detail = _WEB_BOT_LABELS[annotation]
        labels[user_id] = UserLabel(label=label, source="web-bot", detail=detail, split=hash_split(user_id))

    stream = LabeledStream(events=events, labels=labels, skipped_counts=dict(skipped))
    _log.info(
        "web-bot data loaded",
        click_events=len(stream.events),
        sessions=len(stream.users()),
        labeled_sessions=len(labels),
        skipped=dict(skipped),
    )
    return stream


def _read_page_views(path: Path, file_name: str, skipped: Counter[str]) -> Iterator[ClickEvent]:
    # Scanner requests in the logs contain bytes that are not UTF-8; replace them.
    with path.open(encoding="utf-8", errors="replace", newline="") as lines:
        for line_number, line in enumerate(lines, start=1):
            record = parse_access_log_line(line)
            if record is None:
                skipped["web-bot: line not in log format"] += 1
                continue
            if page_view_path(record) is None:
                skipped["web-bot: not a page view"] += 1
                continue
            if record.session_id == "-":
                skipped["web-bot: page view without session id"] += 1
                continue
            try:
                yield click_from_record(record, web_bot_event_id(file_name, line_number))
            except (ValueError, ValidationError):
                skipped["web-bot: page view with invalid fields"] += 1


def _read_annotations(root: Path, skipped: Counter[str]) -> dict[str, str]:
    annotations_dir = _require_dir(root / "annotations", "web-bot annotations folder")
    files = sorted(path for path in annotations_dir.glob("*/*") if path.is_file())
    if not files:
        raise _missing_data(annotations_dir / "*/train", "web-bot annotation files")

    annotations: dict[str, str] = {}
    for path in files:
        # The files have no line break after the last line; split() copes with that.
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in _WEB_BOT_LABELS:
                skipped["web-bot: invalid annotation line"] += 1
                continue
            session_id, annotation = parts
            known = annotations.get(session_id)
            if known is not None and known != annotation:
                raise ValueError(
                    f"session {session_id!r} is annotated as both {known!r} and {annotation!r} "
                    f"(in {path}): fix the annotation files"
                )
            annotations[session_id] = annotation
    return annotations


# --------------------------------------------------------------------------- e-commerce fraud orders

_SHOP_TIME_PATTERN = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2})$")


def parse_shop_time(text: str) -> datetime:
    """Parse a fraud-table timestamp ``M/D/YYYY H:MM`` (minutes, no seconds) as UTC.

    Raises:
        ValueError: the text is not in that format or not a valid date.
    """
    match = _SHOP_TIME_PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"invalid timestamp {text!r}: expected M/D/YYYY H:MM, e.g. '1/31/2015 9:05'")
    month, day, year, hour, minute = (int(part) for part in match.groups())
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def parse_ip_number(text: str) -> int:
    """Parse an IPv4 address stored as a number, truncating the decimals a spreadsheet added.

    Raises:
        ValueError: the text is not a number or lies outside 0 .. 2**32 - 1.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid IP address number {text!r}: expected e.g. '686082863.1'") from None
    if not math.isfinite(value) or not 0 <= value < 2**32:
        raise ValueError(f"IP address number {text!r} is outside the IPv4 range 0 .. 4294967295")
    return int(value)


def ipv4_text(number: int) -> str:
    """Return the dotted IPv4 text of an address number, e.g. 16777216 -> ``1.0.0.0``.

    Raises:
        ValueError: the number lies outside 0 .. 2**32 - 1.
    """
    if not 0 <= number < 2**32:
        raise ValueError(f"IP address number {number} is outside the IPv4 range 0 .. 4294967295")
    # Formatting by hand is about five times faster than ipaddress.IPv4Address for 24k rows.
    return f"{number >> 24}.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"


class IpCountryTable:
    """Country lookup by IPv4 number over sorted address ranges."""

    def __init__(self, ranges: Sequence[tuple[int, int, str]]) -> None:
        """Build the table from ``(lower, upper, country)`` ranges, bounds inclusive."""
        ordered = sorted(ranges)
        self._lowers = [lower for lower, _, _ in ordered]
        self._uppers = [upper for _, upper, _ in ordered]
        self._countries = [country for _, _, country in ordered]

    def __len__(self) -> int:
        return len(self._lowers)

    def country(self, ip_number: int) -> str | None:
        """Return the country of the range that contains the address, or None."""
        index = bisect.bisect_right(self._lowers, ip_number) - 1
        if index < 0 or ip_number > self._uppers[index]:
            return None
        return self._countries[index]


def load_ip_countries(path: Path) -> IpCountryTable:
    """Read ``lower_bound_ip_address, upper_bound_ip_address, country`` ranges.

    The spreadsheet that saved the table wrote some round lower bounds in exponent form
    (``1.02E+09`` for 1024000000), which loses digits. Such a bound is replaced by the
    previous row's upper bound + 1 when that is not above the row's upper bound, because
    the ranges are contiguous at those rows. Rows that cannot be read are skipped.

    Raises:
        DataNotFoundError: the file is missing.
    """
    _require_file(path, "IP-to-country table")
    ranges: list[tuple[int, int, str]] = []
    repaired = 0
    unreadable = 0
    previous_upper: int | None = None
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            if len(row) != 3 or not row[2]:
                unreadable += 1
                continue
            try:
                lower = parse_ip_number(row[0])
                upper = parse_ip_number(row[1])
            except ValueError:
                unreadable += 1
                continue
            rounded = "e" in row[0].lower()
            if rounded and previous_upper is not None and previous_upper < upper and lower != previous_upper + 1:
                lower = previous_upper + 1
                repaired += 1
            ranges.append((lower, upper, row[2]))
            previous_upper = upper
    _log.debug("IP-to-country table loaded", ranges=len(ranges), repaired_bounds=repaired, unreadable=unreadable)
    return IpCountryTable(ranges)


def load_fraud_orders(data_dir: Path | None = None) -> LabeledStream:
    """Load the fraud table as order events with account context, one per account.

    ``user_id`` becomes ``acct-<user_id>``, the order id ``fo-<user_id>``; ``class`` 1 is
    fraud. The earliest 70% of rows by purchase time form the train split and the rest the
    test split, because fraud is not spread evenly over the months. Rows that cannot be read
    are counted in ``skipped_counts`` and left out.

    Args:
        data_dir: folder that contains ``ecommerce-fraud/``; defaults to ``default_data_dir()``.

    Raises:
        DataNotFoundError: the folder or one of its two files is missing.
        ValueError: the orders file lacks a required column.
    """
    root = _require_dir((data_dir or default_data_dir()) / FRAUD_FOLDER, "e-commerce fraud data folder")
    orders_path = _require_file(root / FRAUD_ORDERS_FILE, "fraud orders table")
    countries = load_ip_countries(root / IP_COUNTRY_FILE)

    skipped: Counter[str] = Counter()
    rows: list[tuple[OrderEvent, Label]] = []
    with orders_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = sorted(_FRAUD_COLUMNS - set(reader.fieldnames or ()))
        if missing:
            raise ValueError(f"{orders_path} lacks the columns {missing}: expected the Fraud_Data table")
        for row in reader:
            try:
                rows.append(_order_from_row(row, countries))
            except (ValueError, ValidationError):
                skipped["ecommerce-fraud: invalid row"] += 1

    # Stable sort keeps the file order among purchases of the same minute.
    rows.sort(key=lambda item: item[0].event_time)
    train_rows = round(len(rows) * (1 - TEST_SHARE))
    labels: dict[str, UserLabel] = {}
    events: list[AnyEvent] = []
    for index, (order, label) in enumerate(rows):
        split: Split = "train" if index < train_rows else "test"
        detail = "class_1" if label == "fraud" else "class_0"
        labels[order.user_id] = UserLabel(label=label, source="ecommerce-fraud", detail=detail, split=split)
        events.append(order)

    stream = LabeledStream(events=events, labels=labels, skipped_counts=dict(skipped))
    _log.info("fraud orders loaded", orders=len(events), skipped=dict(skipped))
    return stream


_FRAUD_COLUMNS = frozenset(
    {
        "user_id",
        "signup_time",
        "purchase_time",
        "purchase_value",
        "device_id",
        "source",
        "browser",
        "ip_address",
        "class",
    }
)


def _order_from_row(row: dict[str, str], countries: IpCountryTable) -> tuple[OrderEvent, Label]:
    if row["class"] not in ("0", "1"):
        raise ValueError(f"invalid class {row['class']!r}: expected 0 or 1")
    ip_number = parse_ip_number(row["ip_address"])
    ip_address = ipv4_text(ip_number)
    device_id = row["device_id"] or None
    account = AccountContext(
        signup_time=parse_shop_time(row["signup_time"]),
        device_id=device_id,
        ip_address=ip_address,
        browser=row["browser"] or None,
        traffic_source=row["source"] or None,
        country=countries.country(ip_number),
    )
    user_number = row["user_id"].strip()
    order = OrderEvent(
        event_id=f"fo-{user_number}",
        user_id=f"acct-{user_number}",
        event_time=parse_shop_time(row["purchase_time"]),
        device_id=device_id,
        ip_address=ip_address,
        order_id=f"fo-{user_number}",
        amount=float(row["purchase_value"]),
        currency="USD",
        account=account,
    )
    return order, ("fraud" if row["class"] == "1" else "legitimate")


# --------------------------------------------------------------------------- synthetic traffic

_ITEMS = (
    "scarf", "beanie", "sweater", "cardigan", "mittens", "socks", "shawl", "poncho", "dress", "tunic",
    "skirt", "vest", "tote bag", "headband", "blanket", "gloves", "hoodie", "kimono", "apron", "baby booties",
)  # fmt: skip
_MATERIALS = ("wool", "merino", "alpaca", "cotton", "linen", "silk", "cashmere", "mohair", "bamboo", "hemp")
_COLOURS = ("red", "navy", "grey", "cream", "mustard", "forest green", "black", "rust", "lavender", "teal")
_STYLES = ("chunky", "cable knit", "hand dyed", "oversized", "crochet", "embroidered", "vintage", "boho")
_SIZES = ("xs", "s", "m", "l", "xl")
_BROWSERS = ("Chrome", "IE", "Safari", "FireFox", "Opera")
_TRAFFIC_SOURCES = ("SEO", "Ads", "Direct")
_COUNTRIES = ("United States", "United Kingdom", "Germany", "Canada", "France", "Australia", "Brazil", "Japan")
_BROWSER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
_SCRIPT_AGENTS = (
    "python-requests/2.31.0",
    "Scrapy/2.11.0 (+https://scrapy.org)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
)

SYNTHETIC_DETAILS: dict[str, Label] = {
    "scraping": "fraud",
    "card_testing": "fraud",
    "heavy_searcher": "legitimate",
    "repeat_buyer": "legitimate",
}
"""Kinds of synthetic users and their labels."""


class _UserBuilder:
    """Collects one user's events at offsets from the user's first event, with stable ids."""

    def __init__(self, user_id: str, first_time: datetime, seed: int) -> None:
        self.user_id = user_id
        self.first_time = first_time
        self.seed = seed
        self.events: list[AnyEvent] = []

    def _next_id(self, prefix: str) -> str:
        digest = hashlib.sha256(f"{self.seed}:{self.user_id}:{len(self.events)}".encode()).hexdigest()[:16]
        return f"{prefix}-{digest}"

    def search(self, offset_s: float, query: str, results_count: int) -> None:
        self.events.append(
            SearchEvent(
                event_id=self._next_id("syn"),
                user_id=self.user_id,
                event_time=self.first_time + timedelta(seconds=offset_s),
                query=query,
                results_count=results_count,
            )
        )

    def click(self, offset_s: float, page: str, user_agent: str, referrer: str | None = None) -> None:
        self.events.append(
            ClickEvent(
                event_id=self._next_id("syn"),
                user_id=self.user_id,
                event_time=self.first_time + timedelta(seconds=offset_s),
                page=page,
                referrer=referrer,
                user_agent=user_agent,
                http_status=200,
            )
        )

    def order(
        self,
        offset_s: float,
        amount: float,
        payment_method_id: str,
        payment_status: Literal["approved", "declined"],
        account: AccountContext,
        item_count: int,
    ) -> None:
        event_id = self._next_id("syn")
        self.events.append(
            OrderEvent(
                event_id=event_id,
                user_id=self.user_id,
                event_time=self.first_time + timedelta(seconds=offset_s),
                device_id=account.device_id,
                ip_address=account.ip_address,
                order_id="so" + event_id.removeprefix("syn"),
                amount=round(amount, 2),
                currency="USD",
                item_count=item_count,
                payment_status=payment_status,
                payment_method_id=payment_method_id,
                account=account,
            )
        )


def human_query(rng: random.Random) -> str:
    """Draw a search query as a shopper would type it, sometimes with a typo."""
    item = rng.choice(_ITEMS)
    form = rng.randrange(6)
    if form == 0:
        query = item
    elif form == 1:
        query = f"{rng.choice(_MATERIALS)} {item}"
    elif form == 2:
        query = f"{rng.choice(_COLOURS)} {item}"
    elif form == 3:
        query = f"{rng.choice(_STYLES)} {rng.choice(_MATERIALS)} {item}"
    elif form == 4:
        query = f"{item} size {rng.choice(_SIZES)}"
    else:
        query = f"{rng.choice(_COLOURS)} {rng.choice(_MATERIALS)} {item}"
    if rng.random() < 0.08 and len(query) > 4:
        position = rng.randrange(len(query) - 1)
        query = query[:position] + query[position + 1] + query[position] + query[position + 2 :]
    return query


def human_results_count(rng: random.Random) -> int:
    """Draw the result count of a shopper's search: about 7% find nothing."""
    if rng.random() < 0.07:
        return 0
    return min(int(rng.lognormvariate(3.0, 1.0)) + 1, 500)


def _random_token(rng: random.Random, length: int = 13) -> str:
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(length))


def _random_ipv4(rng: random.Random) -> str:
    # First octets 11..223 avoid 0/8, 10/8, 127/8 and the multicast and reserved blocks.
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _random_account(rng: random.Random, first_time: datetime, signup_before_s: float) -> AccountContext:
    return AccountContext(
        signup_time=first_time - timedelta(seconds=signup_before_s),
        device_id=_random_token(rng),
        ip_address=_random_ipv4(rng),
        browser=rng.choice(_BROWSERS),
        traffic_source=rng.choice(_TRAFFIC_SOURCES),
        country=rng.choice(_COUNTRIES),
    )


def _product_page(rng: random.Random) -> str:
    return f"/product/{rng.randint(1000, 9999)}"


def _scraping_queries(rng: random.Random, count: int) -> list[tuple[str, int]]:
    """Systematic queries of a scraper with their result counts: many find nothing."""
    pattern = rng.randrange(3)
    queries: list[tuple[str, int]] = []
    if pattern == 0:
        first_sku = rng.randint(10_000, 90_000)
        for index in range(count):
            found = rng.random() < 0.35
            queries.append((f"sku {first_sku + index}", 1 if found else 0))
    elif pattern == 1:
        grid = [f"{item} {size}" for item in sorted(_ITEMS) for size in _SIZES]
        start = rng.randrange(len(grid))
        for index in range(count):
            found = rng.random() < 0.5
            queries.append((grid[(start + index) % len(grid)], rng.randint(1, 30) if found else 0))
    else:
        letters = "abcdefghijklmnopqrstuvwxyz"
        start = rng.randrange(len(letters) ** 2)
        for index in range(count):
            position = (start + index) % len(letters) ** 2
            prefix = letters[position // len(letters)] + letters[position % len(letters)]
            found = rng.random() < 0.4
            queries.append((prefix, rng.randint(1, 200) if found else 0))
    return queries


def _add_scraper(builder: _UserBuilder, rng: random.Random) -> None:
    """Dozens of systematic searches one to two seconds apart; some fetch product pages."""
    agent = rng.choice(_SCRIPT_AGENTS) if rng.random() < 0.4 else rng.choice(_BROWSER_AGENTS)
    fetches_pages = rng.random() < 0.5
    offset_s = 0.0
    for query, results_count in _scraping_queries(rng, rng.randint(30, 70)):
        builder.search(offset_s, query, results_count)
        if fetches_pages and results_count > 0 and rng.random() < 0.3:
            builder.click(offset_s + rng.uniform(0.2, 0.8), _product_page(rng), agent)
        offset_s += rng.uniform(0.5, 2.0)


def _add_card_tester(builder: _UserBuilder, rng: random.Random) -> None:
    """Many orders of 1-5 USD seconds apart, over several cards, most of them declined."""
    new_account = rng.random() < 0.7
    signup_before_s = rng.uniform(120, 7200) if new_account else rng.uniform(5, 200) * 86_400
    account = _random_account(rng, builder.first_time, signup_before_s)
    agent = rng.choice(_BROWSER_AGENTS)
    cards = [f"pm-{_random_token(rng, 10).lower()}" for _ in range(rng.randint(3, 8))]
    decline_share = rng.uniform(0.5, 0.85)

    offset_s = 0.0
    for _ in range(rng.randint(0, 2)):
        builder.click(offset_s, _product_page(rng), agent)
        offset_s += rng.uniform(2, 10)
    for _ in range(rng.randint(8, 25)):
        status: Literal["approved", "declined"] = "declined" if rng.random() < decline_share else "approved"
        builder.order(offset_s, rng.uniform(1, 5), rng.choice(cards), status, account, item_count=1)
        offset_s += rng.uniform(3, 15)


def _add_heavy_searcher(builder: _UserBuilder, rng: random.Random) -> None:
    """Many searches at a human pace that refine one item at a time, with product views."""
    agent = rng.choice(_BROWSER_AGENTS)
    query = human_query(rng)
    offset_s = 0.0
    for _ in range(rng.randint(15, 35)):
        results_count = human_results_count(rng)
        builder.search(offset_s, query, results_count)
        if results_count > 0 and rng.random() < 0.5:
            builder.click(offset_s + rng.uniform(3, 15), _product_page(rng), agent)
        offset_s += min(max(rng.lognormvariate(math.log(20), 0.6), 4.0), 120.0)
        query = f"{query} {rng.choice(_COLOURS + _MATERIALS)}" if rng.random() < 0.4 else human_query(rng)
        query = query if len(query) <= 60 else human_query(rng)

    if rng.random() < 0.25:
        account = _random_account(rng, builder.first_time, rng.uniform(10, 700) * 86_400)
        card = f"pm-{_random_token(rng, 10).lower()}"
        builder.order(offset_s, rng.uniform(15, 140), card, "approved", account, item_count=rng.randint(1, 3))


def _add_repeat_buyer(builder: _UserBuilder, rng: random.Random) -> None:
    """Several orders minutes apart, some small, rarely one decline that a second card fixes."""
    new_account = rng.random() < 0.2
    signup_before_s = rng.uniform(300, 7200) if new_account else rng.uniform(10, 700) * 86_400
    account = _random_account(rng, builder.first_time, signup_before_s)
    agent = rng.choice(_BROWSER_AGENTS)
    cards = [f"pm-{_random_token(rng, 10).lower()}" for _ in range(rng.choice((1, 1, 2)))]
    declines_once = rng.random() < 0.2

    offset_s = 0.0
    for order_index in range(rng.randint(3, 6)):
        for _ in range(rng.randint(0, 2)):
            builder.search(offset_s, human_query(rng), human_results_count(rng))
            offset_s += rng.uniform(5, 40)
        for _ in range(rng.randint(1, 3)):
            builder.click(offset_s, _product_page(rng), agent)
            offset_s += rng.uniform(8, 60)

        amount = rng.uniform(2, 9) if rng.random() < 0.4 else rng.uniform(12, 140)
        item_count = rng.randint(1, 4)
        if declines_once and order_index == 1:
            builder.order(offset_s, amount, cards[0], "declined", account, item_count)
            offset_s += rng.uniform(20, 90)
            backup_card = cards[-1] if len(cards) > 1 else f"pm-{_random_token(rng, 10).lower()}"
            builder.order(offset_s, amount, backup_card, "approved", account, item_count)
        else:
            builder.order(offset_s, amount, rng.choice(cards), "approved", account, item_count)
        offset_s += rng.uniform(20, 60)


_SYNTHETIC_BUILDERS = {
    "scraping": _add_scraper,
    "card_testing": _add_card_tester,
    "heavy_searcher": _add_heavy_searcher,
    "repeat_buyer": _add_repeat_buyer,
}


def generate_synthetic(
    start: datetime,
    seed: int,
    *,
    base: LabeledStream | None = None,
    search_share: float = 0.3,
    attackers: int = 40,
    hard_negatives: int = 40,
    spread_s: float = 3600.0,
) -> LabeledStream:
    """Generate search events for real users and labeled synthetic users.

    The output has three parts:

    - searches for about ``search_share`` of the users in ``base``: one to four searches in
      the five minutes before each chosen user's first event. Users are chosen and
      searches drawn the same way whatever the user's label, so searches alone do not
      reveal it. These users get no new labels (``merge`` with ``base`` brings theirs).
    - ``attackers`` fraud users, half "scraping" (30-70 systematic searches 0.5-2 s apart,
      most finding nothing) and half "card_testing" (8-25 orders of 1-5 USD seconds apart
      over 3-8 cards, mostly declined).
    - ``hard_negatives`` legitimate users, half "heavy_searcher" (15-35 searches at a human
      pace with product views) and half "repeat_buyer" (3-6 orders minutes apart, some
      small, sometimes a decline that a second card fixes).

    Synthetic users start at random times within ``spread_s`` seconds after ``start`` and
    are split by user hash. The output depends only on the arguments.

    Args:
        start: aware datetime of the earliest synthetic user start.
        seed: random seed.
        base: stream whose users get searches; None adds none.
        search_share: share of base users that get searches, 0 to 1.
        attackers: number of synthetic fraud users.
        hard_negatives: number of synthetic legitimate users that look busy.
        spread_s: seconds over which synthetic users' first events are spread.

    Returns:
        The new events, and labels for the synthetic users only.

    Raises:
        ValueError: ``start`` has no UTC offset, or a count or share is out of range.
    """
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(f"start {start.isoformat()} has no UTC offset: pass an aware datetime")
    if not 0.0 <= search_share <= 1.0:
        raise ValueError(f"search_share must be between 0 and 1, got {search_share}")
    if attackers < 0 or hard_negatives < 0:
        raise ValueError(f"attackers and hard_negatives must not be negative, got {attackers} and {hard_negatives}")
    if spread_s < 0:
        raise ValueError(f"spread_s must not be negative, got {spread_s}")

    events: list[AnyEvent] = []
    if base is not None:
        events.extend(_searches_for_base_users(base, seed, search_share))

    rng = random.Random(f"synthetic-users:{seed}")
    labels: dict[str, UserLabel] = {}
    roles = _role_plan(attackers, ("scraping", "card_testing")) + _role_plan(
        hard_negatives, ("heavy_searcher", "repeat_buyer")
    )
    for index, role in enumerate(roles):
        user_id = "syn-" + hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:12]
        first_time = start + timedelta(seconds=rng.uniform(0, spread_s))
        builder = _UserBuilder(user_id, first_time, seed)
        _SYNTHETIC_BUILDERS[role](builder, rng)
        events.extend(builder.events)
        labels[user_id] = UserLabel(
            label=SYNTHETIC_DETAILS[role], source="synthetic", detail=role, split=hash_split(user_id)
        )
    return LabeledStream(events=events, labels=labels)


def _role_plan(count: int, roles: tuple[str, str]) -> list[str]:
    return [roles[index % 2] for index in range(count)]


def _searches_for_base_users(base: LabeledStream, seed: int, share: float) -> list[AnyEvent]:
    """Draw one to four searches before the first event of a random share of base users."""
    rng = random.Random(f"base-searches:{seed}")
    events: list[AnyEvent] = []
    for user_id, user_events in sorted(base.events_by_user().items()):
        if rng.random() >= share:
            continue
        first = user_events[0]
        count = rng.randint(1, 4)
        lead_s = sorted((rng.uniform(3, 300) for _ in range(count)), reverse=True)
        for index, seconds_before in enumerate(lead_s):
            digest = hashlib.sha256(f"{seed}:{user_id}:search:{index}".encode()).hexdigest()[:16]
            events.append(
                SearchEvent(
                    event_id=f"srch-{digest}",
                    user_id=user_id,
                    event_time=first.event_time - timedelta(seconds=seconds_before),
                    device_id=first.device_id,
                    ip_address=first.ip_address,
                    query=human_query(rng),
                    results_count=human_results_count(rng),
                )
            )
    return events
