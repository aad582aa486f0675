"""Precision and recall of alerted users against the labels of a replayed stream."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas import Alert
from stream_detector.datasets import LabeledStream


@dataclass(frozen=True)
class GroupScore:
    """Confusion counts of one group of labeled users, where a user counts as flagged after any alert."""

    name: str
    users: int
    fraud_users: int
    true_positives: int
    false_positives: int

    @property
    def alerted(self) -> int:
        """Users with at least one alert."""
        return self.true_positives + self.false_positives

    @property
    def precision(self) -> float | None:
        """Share of alerted users that are fraud; None without alerts."""
        return self.true_positives / self.alerted if self.alerted else None

    @property
    def recall(self) -> float | None:
        """Share of fraud users that were alerted; None without fraud users."""
        return self.true_positives / self.fraud_users if self.fraud_users else None

    @property
    def chance_precision(self) -> float | None:
        """Precision of alerting on users at random: the share of fraud users."""
        return self.fraud_users / self.users if self.users else None


@dataclass(frozen=True)
class UserScores:
    """Scores of all labeled users and of each source."""

    groups: list[GroupScore]

    def group(self, name: str) -> GroupScore:
        """Return the group of this name.

        Raises:
            KeyError: no group has that name.
        """
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"no group named {name!r}: expected one of {[group.name for group in self.groups]}")

    def table(self) -> str:
        """Render the scores as an aligned text table."""
        header = (
            f"  {'users':<34} {'labeled':>7} {'fraud':>6} {'alerted':>7} {'precision':>9} {'recall':>6} {'chance':>6}"
        )
        rows = [header]
        for group in self.groups:
            rows.append(
                f"  {group.name:<34} {group.users:>7} {group.fraud_users:>6} {group.alerted:>7} "
                f"{_ratio(group.precision):>9} {_ratio(group.recall):>6} {_ratio(group.chance_precision):>6}"
            )
        rows.append("  (chance: the precision of alerting on users at random, the share of fraud users)")
        return "\n".join(rows)


def score_users(stream: LabeledStream, alerts: Iterable[Alert]) -> UserScores:
    """Compare the users that got alerts with the labels of the users that were replayed.

    Users without a label (unannotated web sessions) are left out. The e-commerce
    accounts are scored twice: all of them, and without the accounts that the data's
    two known shortcuts give away (an order in the same minute as the signup, a device
    shared by several accounts).
    """
    # Imported here: trainer imports torch, which the demo's summary does not otherwise need.
    from trainer.dataset import find_shortcut_users

    alerted_users = {alert.user_id for alert in alerts}
    labeled = {user_id: stream.labels[user_id] for user_id in stream.users() if user_id in stream.labels}
    shortcuts = find_shortcut_users(stream)

    selections: list[tuple[str, set[str]]] = [("all", set(labeled))]
    for source in sorted({label.source for label in labeled.values()}):
        selections.append((source, {user for user, label in labeled.items() if label.source == source}))
    plain_orders = {
        user for user, label in labeled.items() if label.source == "ecommerce-fraud" and user not in shortcuts
    }
    selections.append(("ecommerce-fraud without shortcuts", plain_orders))

    groups = []
    for name, users in selections:
        fraud = {user for user in users if labeled[user].label == "fraud"}
        flagged = users & alerted_users
        groups.append(
            GroupScore(
                name=name,
                users=len(users),
                fraud_users=len(fraud),
                true_positives=len(flagged & fraud),
                false_positives=len(flagged - fraud),
            )
        )
    return UserScores(groups=groups)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
