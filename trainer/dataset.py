"""Training examples: the behaviour text of every window a labeled stream sends for scoring.

The windows come from :func:`stream_detector.window.iter_windows` and the text from
:func:`stream_detector.render.render_window`, the same code the stream workers run, so a
model is trained on exactly the text it will score.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from transformers import PreTrainedTokenizerBase

from schemas import OrderEvent
from stream_detector.datasets import LabeledStream
from stream_detector.render import render_window
from stream_detector.window import WindowPolicy, context_keys, iter_windows

LABEL_IDS = {"legitimate": 0, "fraud": 1}
LABEL_NAMES = ["legitimate", "fraud"]  # class names by label id

SAME_MINUTE_SIGNUP = "same_minute_signup"  # an order placed within a minute of the account's signup
SHARED_DEVICE = "shared_device"  # the user's device is used by more than one account in the stream

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Example:
    """One labeled window, rendered as the text the classifier reads."""

    text: str
    label: int  # 1 for fraud, 0 for legitimate
    user_id: str
    source: str  # data set the user came from: web-bot, ecommerce-fraud or synthetic
    detail: str  # finer class within the source, e.g. advanced_bot or card_testing
    closed_at: datetime  # event time of the window's newest event
    split: str = "train"
    window_id: str = ""
    shortcuts: frozenset[str] = field(default_factory=frozenset)  # known shortcuts that hold for the user


def find_shortcut_users(stream: LabeledStream) -> dict[str, frozenset[str]]:
    """Find the users that the two known shortcuts of the fraud table would give away.

    The fraud table flags fraud almost perfectly in two ways that a real shop cannot rely
    on: a purchase in the same minute as the signup, and a device shared by several
    accounts. Quality is reported with and without the windows of these users.

    Args:
        stream: the stream before re-timing, so that signup and purchase times are the recorded ones.

    Returns:
        For each affected user, the names of the shortcuts that hold
        (:data:`SAME_MINUTE_SIGNUP`, :data:`SHARED_DEVICE`); other users are absent.
    """
    accounts_by_device: dict[str, set[str]] = defaultdict(set)
    devices_by_user: dict[str, set[str]] = defaultdict(set)
    flags: dict[str, set[str]] = defaultdict(set)

    for event in stream.events:
        device_id, _ = context_keys(event)
        if device_id is not None:
            accounts_by_device[device_id].add(event.user_id)
            devices_by_user[event.user_id].add(device_id)
        if isinstance(event, OrderEvent) and event.account is not None and event.account.signup_time is not None:
            if (event.event_time - event.account.signup_time).total_seconds() < 60:
                flags[event.user_id].add(SAME_MINUTE_SIGNUP)

    for user_id, devices in devices_by_user.items():
        if any(len(accounts_by_device[device_id]) > 1 for device_id in devices):
            flags[user_id].add(SHARED_DEVICE)
    return {user_id: frozenset(names) for user_id, names in flags.items()}


def build_examples(
    stream: LabeledStream,
    policy: WindowPolicy,
    *,
    max_tokens: int,
    tokenizer: PreTrainedTokenizerBase | None,
    splits: Collection[str] | None = None,
    shortcuts: Mapping[str, frozenset[str]] | None = None,
) -> list[Example]:
    """Render every window the stream sends for scoring as a labeled example.

    The windows of all users are built together, so cross-user context (accounts per
    device and per IP) counts every user of the stream, as a worker would. Windows of
    users without a label are skipped.

    Args:
        stream: the labeled events, re-timed as the replay sends them.
        policy: window bounds and scoring triggers, as the workers use them.
        max_tokens: token budget of a text, the model's ``max_length``.
        tokenizer: counts tokens while rendering; None renders to the word budget only.
        splits: keep the examples of users in these splits only; None keeps all.
        shortcuts: shortcut names per user, from :func:`find_shortcut_users`.

    Returns:
        The examples in the order the windows closed.

    Raises:
        ValueError: ``max_tokens`` is less than 1, or a label is neither fraud nor legitimate.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")

    count_tokens = None
    if tokenizer is not None:
        token_counter = tokenizer

        def count_tokens(text: str) -> int:
            return len(token_counter(text, add_special_tokens=True)["input_ids"])

    examples = []
    for window in iter_windows(stream.events, policy):
        user_label = stream.labels.get(window.user_id)
        if user_label is None or (splits is not None and user_label.split not in splits):
            continue
        if user_label.label not in LABEL_IDS:
            msg = f"user {window.user_id!r} has label {user_label.label!r}: expected one of {sorted(LABEL_IDS)}"
            raise ValueError(msg)

        rendered = render_window(
            window.events,
            device_accounts=window.device_accounts,
            ip_accounts=window.ip_accounts,
            count_tokens=count_tokens,
            max_tokens=max_tokens,
        )
        examples.append(
            Example(
                text=rendered.text,
                label=LABEL_IDS[user_label.label],
                user_id=window.user_id,
                source=user_label.source,
                detail=user_label.detail,
                closed_at=window.closed_at,
                split=user_label.split,
                window_id=window.window_id,
                shortcuts=(shortcuts or {}).get(window.user_id, frozenset()),
            )
        )
    return examples


def sample_examples(
    examples: Sequence[Example],
    max_examples: int,
    seed: int,
    *,
    max_legitimate_share: float = 0.65,
) -> list[Example]:
    """Draw at most ``max_examples`` examples that keep every source and both classes.

    The budget is shared among sources by water-filling. Sources are served smallest
    first, each up to an equal share of what is left. Small sources (synthetic users,
    web-bot sessions) are so kept whole when they fit, and the largest source gets the rest.
    Within a source that does not fit, fraud examples are drawn first, up to
    ``1 - max_legitimate_share`` of its share or all there are. Legitimate examples are
    then dropped at random until they make up at most ``max_legitimate_share`` of the
    sample, except where a source would lose its last legitimate example.

    Args:
        examples: candidates, e.g. from :func:`build_examples`.
        max_examples: size limit of the sample.
        seed: random seed; the same input and seed give the same sample.
        max_legitimate_share: maximum share of legitimate examples, in (0, 1).

    Returns:
        The sample, ordered by ``closed_at`` then window id.

    Raises:
        ValueError: ``max_examples`` is less than 1 or the share is outside (0, 1).
    """
    if max_examples < 1:
        raise ValueError(f"max_examples must be at least 1, got {max_examples}")
    if not 0.0 < max_legitimate_share < 1.0:
        raise ValueError(f"max_legitimate_share must be between 0 and 1, got {max_legitimate_share}")

    rng = random.Random(f"sample-examples:{seed}")
    by_source: dict[str, list[Example]] = defaultdict(list)
    for example in sorted(examples, key=_order_key):
        by_source[example.source].append(example)

    quotas = _water_fill({source: len(items) for source, items in by_source.items()}, max_examples)
    sample: list[Example] = []
    for source in sorted(by_source):
        sample.extend(_draw_source(by_source[source], quotas[source], max_legitimate_share, rng))

    sample = _cap_legitimate(sample, max_legitimate_share, rng)
    return sorted(sample, key=_order_key)


def split_by_time(examples: Sequence[Example], validation_fraction: float = 0.2) -> tuple[list[Example], list[Example]]:
    """Hold out the newest users of each source for validation.

    Within each source, users are ordered by the time their first window closed, and
    the newest users go to validation until they hold at least ``validation_fraction``
    of that source's examples. Splitting per source keeps the mix of sources alike in
    both sets, although the sources span different times after re-timing. Keeping each
    user's windows together stops near-identical windows of one user from landing on
    both sides.

    Args:
        examples: the examples to split.
        validation_fraction: share of each source's examples held out, in (0, 1).

    Returns:
        (train, validation), each ordered by ``closed_at``.

    Raises:
        ValueError: the fraction is outside (0, 1) or fewer than two examples are given.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    if len(examples) < 2:
        raise ValueError(f"at least two examples are needed for a train/validation split, got {len(examples)}")

    by_user: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for example in sorted(examples, key=_order_key):
        by_user[(example.source, example.user_id)].append(example)
    source_sizes = Counter(example.source for example in examples)

    validation_users: set[tuple[str, str]] = set()
    held_out: Counter[str] = Counter()
    newest_first = sorted(by_user, key=lambda key: (by_user[key][0].closed_at, key), reverse=True)
    for key in newest_first:
        source = key[0]
        remaining_after = source_sizes[source] - held_out[source] - len(by_user[key])
        if held_out[source] < validation_fraction * source_sizes[source] and remaining_after > 0:
            validation_users.add(key)
            held_out[source] += len(by_user[key])

    train = [example for key, items in by_user.items() if key not in validation_users for example in items]
    validation = [example for key in validation_users for example in by_user[key]]
    return sorted(train, key=_order_key), sorted(validation, key=_order_key)


def describe(examples: Iterable[Example]) -> dict[str, int]:
    """Count examples by ``<source>/<label name>``, e.g. ``web-bot/fraud``."""
    counts = Counter(f"{example.source}/{LABEL_NAMES[example.label]}" for example in examples)
    return dict(sorted(counts.items()))


def _order_key(example: Example) -> tuple[datetime, str, str]:
    return (example.closed_at, example.window_id, example.user_id)


def _water_fill(sizes: Mapping[str, int], budget: int) -> dict[str, int]:
    """Share ``budget`` among groups, smallest first, each up to an equal share of what is left."""
    quotas: dict[str, int] = {}
    remaining = budget
    ordered = sorted(sizes, key=lambda key: (sizes[key], key))
    for position, key in enumerate(ordered):
        share = remaining // (len(ordered) - position)
        quotas[key] = min(sizes[key], max(share, 1 if remaining > 0 else 0))
        remaining -= quotas[key]
    return quotas


def _draw_source(items: list[Example], quota: int, max_legitimate_share: float, rng: random.Random) -> list[Example]:
    """Draw ``quota`` examples of one source, fraud first up to the minimum fraud share."""
    if quota >= len(items):
        return list(items)

    fraud = [example for example in items if example.label == 1]
    legitimate = [example for example in items if example.label == 0]
    fraud_quota = min(len(fraud), max(math.ceil(quota * (1 - max_legitimate_share)), quota - len(legitimate)))
    legitimate_quota = min(len(legitimate), quota - fraud_quota)
    if legitimate_quota == 0 and legitimate and fraud_quota > 1:
        fraud_quota -= 1
        legitimate_quota = 1
    return rng.sample(fraud, fraud_quota) + rng.sample(legitimate, legitimate_quota)


def _cap_legitimate(sample: list[Example], max_legitimate_share: float, rng: random.Random) -> list[Example]:
    """Drop random legitimate examples until their share is at most ``max_legitimate_share``.

    The source with the most legitimate examples loses them first, so small sources stay
    whole where possible. No source loses its last legitimate example.
    """
    fraud_count = sum(1 for example in sample if example.label == 1)
    if fraud_count == 0:
        return sample

    # legitimate / (legitimate + fraud) <= share  <=>  legitimate <= share * fraud / (1 - share)
    allowed = math.floor(max_legitimate_share * fraud_count / (1 - max_legitimate_share) + 1e-9)
    legitimate_by_source: dict[str, list[Example]] = defaultdict(list)
    for example in sample:
        if example.label == 0:
            legitimate_by_source[example.source].append(example)
    excess = sum(len(items) for items in legitimate_by_source.values()) - allowed

    dropped: set[int] = set()
    for source in sorted(legitimate_by_source, key=lambda key: (-len(legitimate_by_source[key]), key)):
        if excess <= 0:
            break
        items = legitimate_by_source[source]
        count = min(excess, len(items) - 1)
        dropped.update(id(example) for example in rng.sample(items, count))
        excess -= count
    return [example for example in sample if id(example) not in dropped]
