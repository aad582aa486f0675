"""Tests of the data set loaders and the synthetic traffic generator."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import ClickEvent, OrderEvent, SearchEvent, parse_event
from stream_detector import datasets
from stream_detector.datasets import (
    DATA_DIR_ENV,
    AnyEvent,
    DataNotFoundError,
    IpCountryTable,
    Label,
    LabeledStream,
    UserLabel,
    click_from_record,
    generate_synthetic,
    hash_split,
    ipv4_text,
    load_fraud_orders,
    load_ip_countries,
    load_web_bot,
    merge,
    parse_access_log_line,
    parse_apache_time,
    parse_ip_number,
    parse_shop_time,
)

AGENT = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/70.0"
PAGE_VIEW_LINE = (
    '- - [28/Oct/2019:09:40:42 +0000] "GET /content/computer_security.php HTTP/1.1" 200 3086 '
    f'"https://160.40.52.164/" r0e98rtqr6192k5b8gl4ndlmha "{AGENT}"'
)


def _log_line(time_text: str, request: str, session_id: str, referrer: str = "-") -> str:
    return f'- - [{time_text} +0000] "{request}" 200 1200 "{referrer}" {session_id} "{AGENT}"'


def _write_web_bot(root: Path) -> Path:
    """Write a tiny web-bot folder: three sessions, each kind of skipped line once."""
    logs = root / "web-bot-phase1" / "web_logs"
    (logs / "humans").mkdir(parents=True)
    (logs / "bots").mkdir(parents=True)
    (logs / "humans" / "access_1.log").write_text(
        "\n".join(
            [
                _log_line("28/Oct/2019:09:40:31", "GET / HTTP/1.1", "-"),
                _log_line("28/Oct/2019:09:40:32", "GET / HTTP/1.1", "humansession1"),
                _log_line("28/Oct/2019:09:40:33", "GET /css/main.css HTTP/1.1", "humansession1"),
                _log_line("28/Oct/2019:09:40:34", "POST /storage/mousemv_1.txt HTTP/1.1", "humansession1"),
                "this line is not in the log format",
                _log_line("28/Oct/2019:09:41:00", "GET /content/big_data/rdbms.php HTTP/1.1", "humansession1"),
                _log_line("28/Oct/2019:09:42:00", "GET /index.php HTTP/1.1", "unlabeledsession"),
            ]
        )
        + "\n"
    )
    (logs / "bots" / "access_bots.log").write_text(
        "\n".join(
            [
                _log_line("30/Oct/2019:10:00:00", "GET /content/web_bots.php HTTP/1.1", "moderatesession"),
                _log_line("01/Nov/2019:11:00:00", "GET /content/web_bots.php HTTP/1.1", "advancedsession"),
                _log_line("01/Nov/2019:11:00:05", "GET /index.php?s=index/think HTTP/1.1", "advancedsession"),
            ]
        )
    )
    annotations = root / "web-bot-phase1" / "annotations"
    (annotations / "humans_and_moderate_bots").mkdir(parents=True)
    (annotations / "humans_and_advanced_bots").mkdir(parents=True)
    # Like the published files: no line break after the last line.
    (annotations / "humans_and_moderate_bots" / "train").write_text("humansession1 human\nmoderatesession moderate_bot")
    (annotations / "humans_and_advanced_bots" / "test").write_text("humansession1 human\nadvancedsession advanced_bot")
    (annotations / "humans_and_advanced_bots" / "train").write_text("nosuchsession human\nbadline")
    return root


FRAUD_HEADER = "user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,ip_address,class\n"


def _write_fraud(root: Path, rows: list[str]) -> Path:
    folder = root / "ecommerce-fraud"
    folder.mkdir(parents=True)
    (folder / "fraud_orders.csv").write_text(FRAUD_HEADER + "".join(row + "\n" for row in rows))
    (folder / "ip_to_country.csv").write_text(
        "lower_bound_ip_address,upper_bound_ip_address,country\n"
        "16777216,16777471,Australia\n"
        "686082000,686083000,Japan\n"
        "1023999000,1023999999,Singapore\n"
        "1.02E+09,1024032767,Philippines\n"
    )
    return root


def _fraud_rows(count: int) -> list[str]:
    """Rows one hour apart; every third row is fraud."""
    rows = []
    for index in range(count):
        hour = index % 24
        day = 1 + index // 24
        fraud = 1 if index % 3 == 0 else 0
        rows.append(
            f"{1000 + index},1/{day}/2015 {hour}:00,1/{day}/2015 {hour}:30,{10 + index},DEVICE{index:07d},"
            f"SEO,Chrome,F,30,686082863.{index % 10},{fraud}"
        )
    return rows


# --------------------------------------------------------------------------- web-bot parsing


def test_log_line_becomes_exact_click() -> None:
    record = parse_access_log_line(PAGE_VIEW_LINE + "\n")
    assert record is not None

    event = click_from_record(record, "wb-test-1")

    assert event == ClickEvent(
        event_id="wb-test-1",
        user_id="r0e98rtqr6192k5b8gl4ndlmha",
        event_time=datetime(2019, 10, 28, 9, 40, 42, tzinfo=UTC),
        page="/content/computer_security.php",
        referrer="https://160.40.52.164/",
        user_agent=AGENT,
        http_status=200,
    )


def test_log_line_malformed_returns_none() -> None:
    assert parse_access_log_line("") is None
    assert parse_access_log_line("garbage") is None
    assert parse_access_log_line(PAGE_VIEW_LINE.replace("[28/Oct/2019", "[28/Foo/2019")) is None


def test_apache_time_offset_converted_to_utc() -> None:
    assert parse_apache_time("28/Oct/2019:09:40:42 +0200") == datetime(2019, 10, 28, 7, 40, 42, tzinfo=UTC)
    with pytest.raises(ValueError, match="invalid Apache log time"):
        parse_apache_time("2019-10-28T09:40:42Z")


def test_click_rejects_non_page_view() -> None:
    record = parse_access_log_line(_log_line("28/Oct/2019:09:40:33", "GET /css/main.css HTTP/1.1", "abc"))
    assert record is not None
    with pytest.raises(ValueError, match="not a page view"):
        click_from_record(record, "wb-test-2")


def test_web_bot_loader_skips_and_counts(tmp_path: Path) -> None:
    stream = load_web_bot(_write_web_bot(tmp_path))

    assert [event.page for event in stream.events if isinstance(event, ClickEvent)] == [
        "/",
        "/content/big_data/rdbms.php",
        "/index.php",
        "/content/web_bots.php",
        "/content/web_bots.php",
    ]
    assert stream.skipped_counts == {
        "web-bot: page view without session id": 1,
        "web-bot: line not in log format": 1,
        "web-bot: not a page view": 3,
        "web-bot: invalid annotation line": 1,
    }


def test_web_bot_label_mapping(tmp_path: Path) -> None:
    stream = load_web_bot(_write_web_bot(tmp_path))

    assert stream.labels["humansession1"].label == "legitimate"
    assert stream.labels["humansession1"].detail == "human"
    assert stream.labels["moderatesession"].label == "fraud"
    assert stream.labels["moderatesession"].detail == "moderate_bot"
    assert stream.labels["advancedsession"].label == "fraud"
    assert stream.labels["advancedsession"].detail == "advanced_bot"
    assert "unlabeledsession" not in stream.labels
    assert "unlabeledsession" in stream.users()
    assert "nosuchsession" not in stream.labels
    assert {label.source for label in stream.labels.values()} == {"web-bot"}


def test_web_bot_event_ids_deterministic(tmp_path: Path) -> None:
    root = _write_web_bot(tmp_path)
    first = [event.event_id for event in load_web_bot(root).events]
    second = [event.event_id for event in load_web_bot(root).events]

    assert first == second
    assert len(set(first)) == len(first)
    assert all(event_id.startswith("wb-") for event_id in first)


def test_web_bot_conflicting_annotation_raises(tmp_path: Path) -> None:
    root = _write_web_bot(tmp_path)
    conflict = root / "web-bot-phase1" / "annotations" / "humans_and_advanced_bots" / "test"
    conflict.write_text("moderatesession human\n")

    with pytest.raises(ValueError, match="moderatesession"):
        load_web_bot(root)


# --------------------------------------------------------------------------- fraud orders


def test_ip_number_truncates_spreadsheet_decimals() -> None:
    assert parse_ip_number("686082863.1") == 686082863
    assert parse_ip_number("941869724.9") == 941869724
    assert parse_ip_number("2001426400") == 2001426400
    assert ipv4_text(686082863) == "40.228.203.47"
    assert ipv4_text(0) == "0.0.0.0"
    assert ipv4_text(2**32 - 1) == "255.255.255.255"


@pytest.mark.parametrize("text", ["", "abc", "-1", "4294967296", "nan", "inf"])
def test_ip_number_invalid_raises(text: str) -> None:
    with pytest.raises(ValueError, match="IP address number"):
        parse_ip_number(text)


def test_shop_time_parses_minutes() -> None:
    assert parse_shop_time("1/1/2015 0:00") == datetime(2015, 1, 1, 0, 0, tzinfo=UTC)
    assert parse_shop_time("12/31/2015 23:59") == datetime(2015, 12, 31, 23, 59, tzinfo=UTC)
    assert parse_shop_time("8/5/2015 6:07") == datetime(2015, 8, 5, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2015-01-01 00:00", "1/1/2015", "1/1/2015 0:00:00", "13/1/2015 0:00"])
def test_shop_time_invalid_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_shop_time(text)


def test_country_lookup_hit_and_miss() -> None:
    table = IpCountryTable([(100, 199, "Japan"), (16777216, 16777471, "Australia"), (300, 399, "Chile")])

    assert table.country(16777216) == "Australia"
    assert table.country(16777471) == "Australia"
    assert table.country(150) == "Japan"
    assert table.country(99) is None
    assert table.country(250) is None
    assert table.country(16777472) is None


def test_country_table_repairs_rounded_bound(tmp_path: Path) -> None:
    table = load_ip_countries(_write_fraud(tmp_path, []) / "ecommerce-fraud" / "ip_to_country.csv")

    # "1.02E+09" read as is would start the range at 1020000000, inside Singapore's range.
    assert table.country(1023999500) == "Singapore"
    assert table.country(1024000000) == "Philippines"
    assert table.country(1024032768) is None


def test_fraud_rows_become_orders(tmp_path: Path) -> None:
    stream = load_fraud_orders(_write_fraud(tmp_path, _fraud_rows(10)))
    first = stream.events[0]

    assert isinstance(first, OrderEvent)
    assert first.user_id == "acct-1000"
    assert first.order_id == "fo-1000"
    assert first.amount == 10.0
    assert first.currency == "USD"
    assert first.event_time == datetime(2015, 1, 1, 0, 30, tzinfo=UTC)
    assert first.device_id == "DEVICE0000000"
    assert first.ip_address == "40.228.203.47"
    assert first.account is not None
    assert first.account.signup_time == datetime(2015, 1, 1, 0, 0, tzinfo=UTC)
    assert first.account.browser == "Chrome"
    assert first.account.traffic_source == "SEO"
    assert first.account.country == "Japan"
    assert first.account.ip_address == "40.228.203.47"


def test_fraud_labels_and_time_split(tmp_path: Path) -> None:
    stream = load_fraud_orders(_write_fraud(tmp_path, _fraud_rows(10)))

    assert stream.labels["acct-1000"] == UserLabel("fraud", "ecommerce-fraud", "class_1", "train")
    assert stream.labels["acct-1001"] == UserLabel("legitimate", "ecommerce-fraud", "class_0", "train")
    splits = [stream.labels[event.user_id].split for event in stream.events]
    assert splits == ["train"] * 7 + ["test"] * 3


def test_fraud_invalid_rows_counted(tmp_path: Path) -> None:
    rows = [
        *_fraud_rows(3),
        "2000,notatime,1/1/2015 0:00,10,DEV,SEO,Chrome,F,30,1,0",
        "2001,1/1/2015 0:00,1/1/2015 0:00,10,DEV,SEO,Chrome,F,30,not-an-ip,0",
        "2002,1/1/2015 0:00,1/1/2015 0:00,10,DEV,SEO,Chrome,F,30,1,7",
    ]
    stream = load_fraud_orders(_write_fraud(tmp_path, rows))

    assert len(stream.events) == 3
    assert stream.skipped_counts == {"ecommerce-fraud: invalid row": 3}


def test_missing_data_error_names_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as raised:
        load_fraud_orders(tmp_path)

    message = str(raised.value)
    assert str(tmp_path / "ecommerce-fraud") in message
    assert DATA_DIR_ENV in message
    assert "Web Bot Detection Dataset" in message
    assert "Fraud_Data" in message


def test_default_data_dir_prefers_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert datasets.default_data_dir() == tmp_path

    monkeypatch.delenv(DATA_DIR_ENV)
    assert datasets.default_data_dir() != tmp_path


# --------------------------------------------------------------------------- streams and splits


def test_hash_split_deterministic() -> None:
    user_ids = [f"user-{index}" for index in range(2000)]
    first = [hash_split(user_id) for user_id in user_ids]

    assert first == [hash_split(user_id) for user_id in user_ids]
    assert 0.25 < first.count("test") / len(first) < 0.35


def test_filter_split_disjoint(tmp_path: Path) -> None:
    stream = merge(load_web_bot(_write_web_bot(tmp_path)), load_fraud_orders(_write_fraud(tmp_path, _fraud_rows(20))))
    train = stream.filter_split("train")
    test = stream.filter_split("test")

    assert set(train.users()).isdisjoint(test.users())
    assert set(train.users()) | set(test.users()) == set(stream.users())
    assert len(train.events) + len(test.events) == len(stream.events)
    assert all(label.split == "train" for label in train.labels.values())
    assert all(label.split == "test" for label in test.labels.values())


def test_stream_sorted_by_time_then_id() -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    events = [
        SearchEvent(event_id="b", user_id="u", event_time=moment, query="scarf"),
        SearchEvent(event_id="c", user_id="u", event_time=moment - timedelta(seconds=1), query="scarf"),
        SearchEvent(event_id="a", user_id="u", event_time=moment, query="scarf"),
    ]

    stream = LabeledStream(events=list(events), labels={})

    assert [event.event_id for event in stream.events] == ["c", "a", "b"]


def test_merge_rejects_conflicting_labels() -> None:
    first = LabeledStream(events=[], labels={"u": UserLabel("fraud", "synthetic", "scraping", "train")})
    second = LabeledStream(events=[], labels={"u": UserLabel("legitimate", "synthetic", "repeat_buyer", "train")})

    with pytest.raises(ValueError, match="conflicting labels"):
        merge(first, second)


def _orders_stream(count: int, fraud_every: int) -> LabeledStream:
    moment = datetime(2020, 6, 1, tzinfo=UTC)
    events: list[AnyEvent] = []
    labels: dict[str, UserLabel] = {}
    for index in range(count):
        user_id = f"acct-{index}"
        event_id = f"o{index}"
        events.append(OrderEvent(event_id=event_id, user_id=user_id, event_time=moment, order_id=event_id, amount=9))
        label: Label = "fraud" if index % fraud_every == 0 else "legitimate"
        labels[user_id] = UserLabel(label, "ecommerce-fraud", f"class_{int(label == 'fraud')}", "train")
    return LabeledStream(events=events, labels=labels)


def test_limit_users_keeps_small_sources_whole() -> None:
    synthetic = generate_synthetic(datetime(2024, 1, 1, tzinfo=UTC), seed=3, attackers=40, hard_negatives=40)
    stream = merge(_orders_stream(400, fraud_every=10), synthetic)

    limited = stream.limit_users(200, seed=1)
    sources = Counter((label.source, label.label) for label in limited.labels.values())

    assert len(limited.users()) == 200
    assert sources[("synthetic", "fraud")] == 40
    assert sources[("synthetic", "legitimate")] == 40
    assert sources[("ecommerce-fraud", "fraud")] == 12
    assert sources[("ecommerce-fraud", "legitimate")] == 108
    assert limited.users() == stream.limit_users(200, seed=1).users()
    assert limited.users() != stream.limit_users(200, seed=2).users()


def test_limit_users_splits_budget_evenly() -> None:
    synthetic = generate_synthetic(datetime(2024, 1, 1, tzinfo=UTC), seed=3, attackers=40, hard_negatives=40)
    stream = merge(_orders_stream(400, fraud_every=10), synthetic)

    limited = stream.limit_users(20, seed=1)
    sources = Counter(label.source for label in limited.labels.values())
    labels = Counter(label.label for label in limited.labels.values() if label.source == "ecommerce-fraud")

    assert sources == {"synthetic": 10, "ecommerce-fraud": 10}
    assert labels == {"fraud": 1, "legitimate": 9}
    assert stream.limit_users(1000, seed=1) is stream
    with pytest.raises(ValueError, match="max_users"):
        stream.limit_users(0, seed=1)


# --------------------------------------------------------------------------- synthetic traffic

START = datetime(2024, 1, 1, tzinfo=UTC)


def test_synthetic_deterministic_for_seed() -> None:
    first = generate_synthetic(START, seed=7)
    second = generate_synthetic(START, seed=7)
    other = generate_synthetic(START, seed=8)

    assert first == second
    assert first.events != other.events


def test_synthetic_events_round_trip_schema() -> None:
    stream = generate_synthetic(START, seed=1)

    assert Counter(event.kind for event in stream.events).keys() == {"click", "search", "order"}
    for event in stream.events:
        decoded = parse_event(event.model_dump_json().encode(), event.kind)
        assert decoded == event


def test_synthetic_label_counts() -> None:
    stream = generate_synthetic(START, seed=1, attackers=40, hard_negatives=40)
    details = Counter(label.detail for label in stream.labels.values())

    assert details == {"scraping": 20, "card_testing": 20, "heavy_searcher": 20, "repeat_buyer": 20}
    assert all(label.source == "synthetic" for label in stream.labels.values())
    assert {label.label for label in stream.labels.values() if label.detail in ("scraping", "card_testing")} == {
        "fraud"
    }
    assert {label.split for label in stream.labels.values()} == {"train", "test"}


def test_synthetic_scrapers_search_fast() -> None:
    stream = generate_synthetic(START, seed=2)
    by_user = stream.events_by_user()

    for user_id, label in stream.labels.items():
        if label.detail != "scraping":
            continue
        searches = [event for event in by_user[user_id] if isinstance(event, SearchEvent)]
        duration_s = (searches[-1].event_time - searches[0].event_time).total_seconds()
        zero_share = sum(event.results_count == 0 for event in searches) / len(searches)
        assert len(searches) >= 30
        assert duration_s <= 150
        assert zero_share >= 0.3


def test_synthetic_card_testers_order_small() -> None:
    stream = generate_synthetic(START, seed=2)
    by_user = stream.events_by_user()

    for user_id, label in stream.labels.items():
        if label.detail != "card_testing":
            continue
        orders = [event for event in by_user[user_id] if isinstance(event, OrderEvent)]
        duration_s = (orders[-1].event_time - orders[0].event_time).total_seconds()
        assert len(orders) >= 8
        assert all(1 <= order.amount <= 5 for order in orders)
        assert len({order.payment_method_id for order in orders}) >= 2
        assert sum(order.payment_status == "declined" for order in orders) >= 2
        assert duration_s <= 600


def test_synthetic_base_searches_ignore_label() -> None:
    moment = datetime(2020, 6, 1, tzinfo=UTC)
    base = _orders_stream(400, fraud_every=2)
    labels = base.labels

    stream = generate_synthetic(START, seed=4, base=base, attackers=0, hard_negatives=0, search_share=0.5)
    searched = {event.user_id for event in stream.events}
    searched_by_label = Counter(labels[user_id].label for user_id in searched)

    assert stream.labels == {}
    assert all(isinstance(event, SearchEvent) for event in stream.events)
    assert all(moment - timedelta(seconds=300) <= event.event_time < moment for event in stream.events)
    assert 160 <= len(searched) <= 240
    assert abs(searched_by_label["fraud"] - searched_by_label["legitimate"]) <= 40


def test_synthetic_rejects_naive_start() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        generate_synthetic(datetime(2024, 1, 1), seed=0)


# --------------------------------------------------------------------------- real data

REAL_DATA = datasets.default_data_dir()
needs_real_data = pytest.mark.skipif(
    not (REAL_DATA / "ecommerce-fraud").is_dir() or not (REAL_DATA / "web-bot-phase1").is_dir(),
    reason=f"real data sets not found in {REAL_DATA}; set {DATA_DIR_ENV}",
)


@pytest.fixture(scope="module")
def real_web_bot() -> LabeledStream:
    return load_web_bot(REAL_DATA)


@needs_real_data
def test_real_fraud_orders_counts() -> None:
    # CPU time, not wall time, so that other processes on a busy machine do not fail the test.
    started = time.process_time()
    stream = load_fraud_orders(REAL_DATA)
    cpu_s = time.process_time() - started
    labels = Counter(label.label for label in stream.labels.values())
    splits = Counter(label.split for label in stream.labels.values())

    assert len(stream.events) == 24_151
    assert labels["fraud"] == 2_585
    assert stream.skipped_counts == {}
    assert splits == {"train": 16_906, "test": 7_245}
    assert cpu_s < 2.0
    countries = [event.account.country for event in stream.events if isinstance(event, OrderEvent) and event.account]
    assert sum(country is not None for country in countries) > 0.7 * len(stream.events)
    first = stream.events[0]
    assert isinstance(first, OrderEvent) and first.account is not None
    assert first.user_id == "acct-356414"
    assert first.ip_address == "119.75.87.224"
    assert first.account.country == "Korea Republic of"


@needs_real_data
def test_real_web_bot_counts(real_web_bot: LabeledStream) -> None:
    details = Counter(label.detail for label in real_web_bot.labels.values())

    assert 1_900 <= len(real_web_bot.events) <= 2_500
    assert details == {"human": 35, "moderate_bot": 50, "advanced_bot": 30}
    assert real_web_bot.skipped_counts.get("web-bot: line not in log format", 0) == 0


@needs_real_data
def test_real_web_bot_test_split_has_every_class(real_web_bot: LabeledStream) -> None:
    test_details = Counter(label.detail for label in real_web_bot.labels.values() if label.split == "test")
    print(f"web-bot test split: {dict(test_details)}")

    assert test_details["human"] >= 5
    assert test_details["moderate_bot"] >= 5
    assert test_details["advanced_bot"] >= 5
