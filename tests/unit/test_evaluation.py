"""User-level precision and recall of alerts against labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import AccountContext, Alert, ClickEvent, OrderEvent, WindowCounts
from stream_detector.datasets import LabeledStream, UserLabel
from stream_detector.evaluation import GroupScore, score_users

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def order(user_id: str, minutes_after_signup: float, device_id: str) -> OrderEvent:
    return OrderEvent(
        event_id=f"{user_id}-o",
        user_id=user_id,
        event_time=T0,
        order_id=f"{user_id}-o",
        amount=10.0,
        account=AccountContext(signup_time=T0 - timedelta(minutes=minutes_after_signup), device_id=device_id),
    )


def click(user_id: str) -> ClickEvent:
    return ClickEvent(event_id=f"{user_id}-c", user_id=user_id, event_time=T0, page="/")


def alert_for(user_id: str) -> Alert:
    return Alert(
        alert_id=f"a-{user_id}",
        user_id=user_id,
        window_id="w-1",
        score=0.9,
        threshold=0.5,
        model_version="v1",
        template_version="v1",
        text="text",
        evidence_event_ids=["e"],
        trigger="order",
        counts=WindowCounts(clicks=0, searches=0, orders=1, dropped=0),
        window_start=T0,
        window_end=T0,
        created_time=T0,
    )


def stream() -> LabeledStream:
    def label(kind: str, source: str) -> UserLabel:
        return UserLabel(label=kind, source=source, detail="-", split="test")  # type: ignore[arg-type]

    return LabeledStream(
        events=[
            order("acct-fast", 0, "D1"),  # the same-minute shortcut
            order("acct-a", 600, "D2"),
            order("acct-b", 900, "D3"),
            order("acct-c", 900, "D4"),
            click("sess-bot"),
            click("sess-human"),
            click("sess-unlabeled"),
        ],
        labels={
            "acct-fast": label("fraud", "ecommerce-fraud"),
            "acct-a": label("fraud", "ecommerce-fraud"),
            "acct-b": label("legitimate", "ecommerce-fraud"),
            "acct-c": label("legitimate", "ecommerce-fraud"),
            "sess-bot": label("fraud", "web-bot"),
            "sess-human": label("legitimate", "web-bot"),
        },
    )


def test_scores_count_users_not_alerts() -> None:
    alerts = [alert_for("acct-fast"), alert_for("acct-fast"), alert_for("acct-b"), alert_for("sess-bot")]

    scores = score_users(stream(), alerts)

    assert scores.group("all") == GroupScore("all", users=6, fraud_users=3, true_positives=2, false_positives=1)
    assert scores.group("web-bot") == GroupScore("web-bot", users=2, fraud_users=1, true_positives=1, false_positives=0)


def test_scores_leave_out_shortcut_accounts() -> None:
    scores = score_users(stream(), [alert_for("acct-fast"), alert_for("acct-b")])

    plain = scores.group("ecommerce-fraud without shortcuts")

    assert plain.users == 3
    assert plain.fraud_users == 1
    assert plain.true_positives == 0
    assert plain.false_positives == 1


def test_group_ratios() -> None:
    group = GroupScore("g", users=10, fraud_users=4, true_positives=3, false_positives=1)

    assert group.alerted == 4
    assert group.precision == 0.75
    assert group.recall == 0.75
    assert group.chance_precision == 0.4


def test_group_ratios_without_alerts_are_none() -> None:
    group = GroupScore("g", users=5, fraud_users=0, true_positives=0, false_positives=0)

    assert group.precision is None
    assert group.recall is None


def test_table_shows_dash_for_missing_ratio() -> None:
    table = score_users(stream(), []).table()

    assert "precision" in table.splitlines()[0]
    assert "  all " in table
    assert " - " in table


def test_unknown_group_is_rejected() -> None:
    with pytest.raises(KeyError, match="no group named 'nope'"):
        score_users(stream(), []).group("nope")
