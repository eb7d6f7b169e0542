"""The one feature path: event arrays + as-of instants -> (weekly sequence tensor, static matrix).

Training, HTTP scoring and batch scoring all call ``build_raw_features`` and then
``FeatureSpec.transform`` — there is no second implementation to drift. The module needs only
numpy (no pandas, no TensorFlow) so it runs in the API Lambda.

Inside, ``build_raw_features`` is three steps: ``observe_events`` (the events that count),
``accumulate`` (per-user, as-of-free accumulators: counts, first / last timestamps, spend, items,
largest order, distinct order days) and ``raw_features_from_accumulators`` (the weekly tensor and every
static formula). ``churnguard.customer_state`` calls the same last step with accumulators kept per
customer (merged with ``merge_accumulators``), so real-time scoring shares every formula.

Time rules (each tested):

* ``as_of`` is the exclusive end of the observation window: only events strictly before it count.
  Events at or after ``as_of`` are ignored (they are the future for that customer).
* Week ``W-1`` of the sequence is the 7 days right before ``as_of`` (ages in (0, 7] days), week
  ``W-2`` the 7 days before that, and so on; a 39-week window ending 1997-10-01 starts 1997-01-01.
* Order *days* (UTC calendar days) drive frequency and inter-purchase times, so several orders on one
  day are one purchase occasion (as in BG/NBD) while counts and spend still add up every order.
* A customer with no events gets all-zero activity, recency imputed as "as long ago as the training
  data allows" (the upper clip bound), and is scored like that; events of a type that the model was
  not trained on are ignored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from churnguard.event_types import BY_NAME, EVENT_TYPE_ORDER, EVENT_TYPE_TABLE
from churnguard.event_types import EVENT_TYPES as EVENT_TYPES  # re-exported (events.py and callers)

SPEC_FORMAT = "churnguard-feature-spec"
SPEC_VERSION = 1
SECONDS_PER_DAY = 86_400.0
# Upper bounds of the canonical schema (API and files alike): far above any real order, far below
# where the float32 model inputs overflow (an amount of 1e39 became inf, then a NaN score).
MAX_AMOUNT = 1e9
MAX_QUANTITY = 1e6
# Longest user id (API and files alike): ids are keys, not text; a 1 MB id multiplied memory per row.
MAX_USER_ID_LENGTH = 256
# What is stripped around a user id, in files and in the API alike: JSON Schema's (ECMAScript's)
# whitespace, so the published schema (pattern "\S") and the server agree on what a blank id is.
ID_BLANKS = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
MISSING_CATEGORY = "__missing__"
OTHER_CATEGORY = "__other__"
# A profile column is numeric when this share of its non-missing values parses as a number; the
# rest (typos like "n/a") then count as missing rather than turning the column categorical.
NUMERIC_PROFILE_SHARE = 0.95


class FeatureSpecError(ValueError):
    """The feature spec is malformed, or does not fit the model / input it is used with."""


@dataclass(frozen=True)
class FeatureConfig:
    weeks: int = 39
    recent_windows: tuple[int, ...] = (4, 13, 26)
    trend_weeks: int = 13
    decay_half_lives: tuple[int, ...] = (4, 13)

    def __post_init__(self) -> None:
        # tuples, so a config is hashable: names and constants are cached per config
        object.__setattr__(self, "recent_windows", tuple(self.recent_windows))
        object.__setattr__(self, "decay_half_lives", tuple(self.decay_half_lives))
        if self.weeks < 2 * self.trend_weeks or max(self.recent_windows) > self.weeks:
            raise FeatureSpecError(
                f"weeks={self.weeks} must cover the recent windows {self.recent_windows} and "
                f"two trend windows of {self.trend_weeks}"
            )


@dataclass(frozen=True)
class EventArrays:
    """A batch of events as flat arrays; ``user_index`` points into ``0..n_users-1``."""

    user_index: np.ndarray  # int64
    n_users: int
    timestamp_s: np.ndarray  # float64, seconds since the Unix epoch, UTC
    event_type: np.ndarray  # object/str array of canonical event types
    amount: np.ndarray  # float64
    quantity: np.ndarray  # float64

    def __post_init__(self) -> None:
        n = len(self.user_index)
        for name in ("timestamp_s", "event_type", "amount", "quantity"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"EventArrays.{name} has {len(getattr(self, name))} rows, expected {n}")


@dataclass(frozen=True)
class RawFeatures:
    """Untransformed features: counts/amounts per week and static values with NaN where undefined."""

    sequence: np.ndarray  # float32 [n_users, weeks, channels]
    sequence_channels: tuple[str, ...]
    static: np.ndarray  # float64 [n_users, n_static]
    static_names: tuple[str, ...]
    profile: dict[str, np.ndarray] = field(default_factory=dict)  # column -> per-user values

    @property
    def n_users(self) -> int:
        return int(self.sequence.shape[0])


# ---------------------------------------------------------------------------------------------
# raw features
# ---------------------------------------------------------------------------------------------


def sequence_channel_names(event_types: Sequence[str]) -> tuple[str, ...]:
    return _sequence_channel_names(tuple(event_types))


# Names and constants that depend only on the (immutable) vocabulary and config are built once per
# distinct vocabulary / config, not once per call: a one-customer request paid for them every time.
@functools.lru_cache(maxsize=64)
def _sequence_channel_names(event_types: tuple[str, ...]) -> tuple[str, ...]:
    names: list[str] = []
    for t in event_types:
        names += [f"{t}_count", f"{t}_amount"]
        if t == EVENT_TYPE_ORDER:
            names.append(f"{t}_quantity")
    return (*names, "any_activity", "is_customer")


def static_feature_names(event_types: Sequence[str], config: FeatureConfig) -> tuple[str, ...]:
    return _static_feature_names(tuple(event_types), config)


@functools.lru_cache(maxsize=64)
def _static_feature_names(event_types: tuple[str, ...], config: FeatureConfig) -> tuple[str, ...]:
    names = [
        "recency_days",
        "tenure_days",
        "first_order_age_days",
        "n_orders",
        "n_order_days",
        "total_spend",
        "avg_order_value",
        "max_order_value",
        "avg_items_per_order",
        "ipt_mean_days",
        "ipt_std_days",
        "ipt_last_days",
        "recency_over_ipt",
        "has_repeat_order",
        "order_days_per_week",
        "active_weeks",
    ]
    names += [f"orders_{k}w" for k in config.recent_windows]
    names += [f"spend_{k}w" for k in config.recent_windows]
    names += ["order_trend", "spend_trend"]
    names += [f"orders_decay_{h}w" for h in config.decay_half_lives]
    for t in event_types:
        if t != EVENT_TYPE_ORDER:
            names += [f"{t}_{suffix}" for suffix in TYPE_FEATURE_SUFFIXES]
    return tuple(names)


@functools.lru_cache(maxsize=64)
def _channel_positions(event_types: tuple[str, ...]) -> Mapping[str, int]:
    return MappingProxyType({name: i for i, name in enumerate(_sequence_channel_names(event_types))})


def _read_only(values: np.ndarray) -> np.ndarray:
    values.flags.writeable = False
    return values


@functools.lru_cache(maxsize=64)
def _weeks_back(weeks: int) -> np.ndarray:
    """``[weeks]``: how many weeks back each sequence position is (W-1 ... 0), shared read-only."""
    return _read_only(np.arange(weeks - 1, -1, -1))


@functools.lru_cache(maxsize=64)
def _decay_weights(weeks: int, half_life: int) -> np.ndarray:
    return _read_only(0.5 ** (_weeks_back(weeks) / float(half_life)))


# Static features of each non-order event type, ``{type}_{suffix}``, in this order.
TYPE_FEATURE_SUFFIXES: tuple[str, ...] = ("count", "count_4w", "recency_days", "per_order")
PROFILE_GROUP = "profile"
# Reason groups of the core (order) features; config-dependent names are matched by _RECENT_TREND.
_CORE_GROUPS: dict[str, str] = {
    "recency_days": "recency",
    "recency_over_ipt": "recency",
    "ipt_last_days": "recency",
    "tenure_days": "tenure",
    "first_order_age_days": "tenure",
    "total_spend": "spend",
    "avg_order_value": "spend",
    "max_order_value": "spend",
    "avg_items_per_order": "spend",
    "n_orders": "frequency",
    "n_order_days": "frequency",
    "ipt_mean_days": "frequency",
    "ipt_std_days": "frequency",
    "has_repeat_order": "frequency",
    "order_days_per_week": "frequency",
    "active_weeks": "frequency",
    "order_trend": "recent_trend",
    "spend_trend": "recent_trend",
}
_RECENT_TREND = re.compile(r"(orders|spend)_\d+w|orders_decay_\d+w")  # orders_4w, spend_13w, orders_decay_4w
# Each event type's own features -> the type's reason group (from the event type table).
_TYPE_GROUPS: dict[str, str] = {
    f"{t.name}_{suffix}": t.reason.name
    for t in EVENT_TYPE_TABLE
    if t.reason is not None
    for suffix in TYPE_FEATURE_SUFFIXES
}


def _group_of(name: str) -> str:
    """The reason group of a model static input; a name no rule knows is an error, not "frequency"."""
    if name.startswith("profile:"):
        return PROFILE_GROUP
    group = _TYPE_GROUPS.get(name) or _CORE_GROUPS.get(name)
    if group is not None:
        return group
    if _RECENT_TREND.fullmatch(name):
        return "recent_trend"
    raise FeatureSpecError(
        f"static feature {name!r} has no reason group (event types: churnguard.event_types)"
    )


def _per_user_extreme(index: np.ndarray, values: np.ndarray, n: int, *, largest: bool) -> np.ndarray:
    out = np.full(n, -np.inf if largest else np.inf)
    if len(index):
        (np.maximum if largest else np.minimum).at(out, index, values)
    return out


def _finite_or_nan(values: np.ndarray) -> np.ndarray:
    """±inf (the per-user extreme of no events) -> NaN: undefined, imputed by the spec."""
    return np.where(np.isfinite(values), values, np.nan)


def _age_days(as_of: np.ndarray, timestamp_s: np.ndarray) -> np.ndarray:
    """Days from ``timestamp_s`` to ``as_of``, the one expression every age is computed with.

    It is monotone in ``timestamp_s`` (a correctly rounded subtraction and division), so the age of a
    user's latest timestamp *is* the smallest of the ages of their events, bit for bit: the features
    keep timestamps (as-of free, mergeable) and take ages only here. ±inf timestamps (no events) give
    ∓inf ages."""
    ages: np.ndarray = (as_of - timestamp_s) / SECONDS_PER_DAY
    return ages


def utc_day(timestamp_s: np.ndarray) -> np.ndarray:
    """The UTC calendar day number (days since 1970-01-01) of each timestamp: order days are these."""
    return np.floor(np.asarray(timestamp_s, dtype=np.float64) / SECONDS_PER_DAY).astype(np.int64)


def _order_code(event_types: tuple[str, ...]) -> int:
    if EVENT_TYPE_ORDER not in event_types:
        raise FeatureSpecError(
            "the feature vocabulary must contain 'order' events (churn is defined on orders)"
        )
    return event_types.index(EVENT_TYPE_ORDER)


# A static feature: its name and one value per user. Every block below returns these pairs, so a
# feature's name cannot come apart from its column.
_StaticColumn = tuple[str, np.ndarray]


@dataclass(frozen=True)
class ObservedEvents:
    """The events that count: of a vocabulary type and strictly before their user's ``as_of``.

    A row is one event (``count`` 1, ``largest_amount`` its amount) or, from a customer state's
    compact window, several events of one type at one instant: their count, summed amount and
    quantity, and largest amount. Every formula treats the two alike.
    """

    user: np.ndarray  # int64 index into the users
    age_days: np.ndarray  # float64, > 0: days before the user's as_of
    type_code: np.ndarray  # int64 index into the event types
    amount: np.ndarray  # float64 (summed over the row's events)
    quantity: np.ndarray  # float64 (summed over the row's events)
    timestamp_s: np.ndarray  # float64
    count: np.ndarray | None = None  # float64, events the row stands for (None: one each)
    largest_amount: np.ndarray | None = None  # float64, largest amount of one event (None: ``amount``)


def observe_events(
    events: EventArrays,
    as_of: np.ndarray,
    event_types: tuple[str, ...],
    *,
    count: np.ndarray | None = None,
    largest_amount: np.ndarray | None = None,
) -> ObservedEvents:
    """Keep the rows of a vocabulary type strictly before their user's ``as_of`` (per user, ``[n]``).

    ``count`` / ``largest_amount`` (per row) describe rows that stand for several events at one
    instant; by default each row is one event."""
    type_code = np.full(len(events.user_index), -1, dtype=np.int64)
    for code, t in enumerate(event_types):
        type_code[events.event_type == t] = code
    user = np.asarray(events.user_index, dtype=np.int64)
    age_days = _age_days(as_of[user], events.timestamp_s) if events.n_users else np.zeros(0)
    keep = (age_days > 0) & (type_code >= 0)
    return ObservedEvents(
        user=user[keep],
        age_days=age_days[keep],
        type_code=type_code[keep],
        amount=events.amount[keep],
        quantity=events.quantity[keep],
        timestamp_s=events.timestamp_s[keep],
        count=None if count is None else np.asarray(count, dtype=np.float64)[keep],
        largest_amount=None if largest_amount is None else np.asarray(largest_amount, dtype=np.float64)[keep],
    )


@dataclass(frozen=True)
class FeatureAccumulators:
    """Per user, everything the static features need besides the weekly tensor.

    They hold timestamps, not ages, so they do not depend on ``as_of`` and can be kept and merged:
    ``accumulate`` builds them from observed events, ``merge_accumulators`` adds two sets for the same
    users (a customer state's folded past + its window), and ``raw_features_from_accumulators`` turns
    them into the feature columns. Counts, extremes and order days merge exactly; ``spend`` and
    ``items`` are float sums, exact up to summation order.
    """

    count: np.ndarray  # float64 [n, K] events per vocabulary type
    first_s: np.ndarray  # float64 [n, K] earliest timestamp per type (+inf: none)
    last_s: np.ndarray  # float64 [n, K] latest timestamp per type (-inf: none)
    spend: np.ndarray  # float64 [n] order amounts summed
    items: np.ndarray  # float64 [n] order quantities summed
    max_order: np.ndarray  # float64 [n] largest order amount (-inf: none)
    order_day_user: np.ndarray  # int64: the distinct (user, UTC order day) pairs, sorted by user, day
    order_day: np.ndarray  # int64 UTC day number (``utc_day``)

    @property
    def n_users(self) -> int:
        return int(self.spend.shape[0])


def distinct_user_days(user: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (user, day) pairs, sorted by user then day."""
    user, day = np.asarray(user, dtype=np.int64), np.asarray(day, dtype=np.int64)
    day_offset = day.min() if len(day) else 0
    # sorted by user, then day. Sort + adjacent-difference, not np.unique: numpy 2.3+ np.unique
    # takes a hash-table path for integers that measured ~70x slower here (2M keys: 1.8 s vs 25 ms).
    key = np.sort(user * (1 << 24) + (day - day_offset))
    if len(key) > 1:
        key = key[np.concatenate(([True], key[1:] != key[:-1]))]
    k_user, k_day = key >> 24, key & ((1 << 24) - 1)
    return k_user, k_day + day_offset


def accumulate(observed: ObservedEvents, n: int, event_types: tuple[str, ...]) -> FeatureAccumulators:
    """Observed events -> the per-user accumulators of the static features."""
    order_code = _order_code(event_types)
    K = len(event_types)
    cell = observed.user * K + observed.type_code  # (user, type), flat
    count = np.bincount(cell, weights=observed.count, minlength=n * K).astype(np.float64, copy=False)
    first_s = _per_user_extreme(cell, observed.timestamp_s, n * K, largest=False)
    last_s = _per_user_extreme(cell, observed.timestamp_s, n * K, largest=True)
    is_order = observed.type_code == order_code
    user = observed.user[is_order]
    largest = observed.amount if observed.largest_amount is None else observed.largest_amount
    day_user, day = distinct_user_days(user, utc_day(observed.timestamp_s[is_order]))
    return FeatureAccumulators(
        count=count.reshape(n, K),
        first_s=first_s.reshape(n, K),
        last_s=last_s.reshape(n, K),
        spend=np.bincount(user, weights=observed.amount[is_order], minlength=n),
        items=np.bincount(user, weights=observed.quantity[is_order], minlength=n),
        max_order=_per_user_extreme(user, largest[is_order], n, largest=True),
        order_day_user=day_user,
        order_day=day,
    )


def merge_accumulators(a: FeatureAccumulators, b: FeatureAccumulators) -> FeatureAccumulators:
    """The accumulators of the union of two disjoint sets of events of the same users."""
    day_user, day = distinct_user_days(
        np.concatenate([a.order_day_user, b.order_day_user]), np.concatenate([a.order_day, b.order_day])
    )
    return FeatureAccumulators(
        count=a.count + b.count,
        first_s=np.minimum(a.first_s, b.first_s),
        last_s=np.maximum(a.last_s, b.last_s),
        spend=a.spend + b.spend,
        items=a.items + b.items,
        max_order=np.maximum(a.max_order, b.max_order),
        order_day_user=day_user,
        order_day=day,
    )


def _weekly_tensor(
    observed: ObservedEvents,
    n: int,
    event_types: tuple[str, ...],
    weeks: int,
    first_event_age: np.ndarray,
) -> np.ndarray:
    """float64 ``[n, weeks, channels]`` in ``sequence_channel_names`` order: one bincount over
    (user, week, channel) for the summed channels, then the two flag channels."""
    W = weeks
    position = _channel_positions(event_types)
    C = len(position)
    week_back = np.ceil(observed.age_days / 7.0).astype(np.int64) - 1
    in_window = week_back < W
    flat_base = (observed.user * W + (W - 1 - week_back)) * C
    idx_parts: list[np.ndarray] = []
    weight_parts: list[np.ndarray] = []
    for code, t in enumerate(event_types):
        sel = in_window & (observed.type_code == code)
        base = flat_base[sel]
        count = np.ones(len(base)) if observed.count is None else observed.count[sel]
        summed = [(f"{t}_count", count), (f"{t}_amount", observed.amount[sel])]
        if t == EVENT_TYPE_ORDER:
            summed.append((f"{t}_quantity", observed.quantity[sel]))
        for channel, weights in summed:
            idx_parts.append(base + position[channel])
            weight_parts.append(weights)
    any_activity = position["any_activity"]
    any_idx = flat_base[in_window] + any_activity
    idx_parts.append(any_idx)
    weight_parts.append(np.ones(len(any_idx)))
    seq = np.bincount(
        np.concatenate(idx_parts), weights=np.concatenate(weight_parts), minlength=n * W * C
    ).reshape(n, W, C)
    seq[:, :, any_activity] = np.minimum(seq[:, :, any_activity], 1.0)  # a flag, not a count
    seq[:, :, position["is_customer"]] = _customer_weeks(first_event_age, W)
    return seq


def _customer_weeks(first_event_age: np.ndarray, weeks: int) -> np.ndarray:
    """``[n, weeks]`` 1.0 from the week of the user's first event on (all 0 for a user without)."""
    first_week_back = np.where(np.isfinite(first_event_age), np.ceil(first_event_age / 7.0) - 1, -1)
    return (_weeks_back(weeks)[None, :] <= first_week_back[:, None]).astype(np.float64)


@dataclass(frozen=True)
class _OrderDayGaps:
    """Per user: distinct UTC order days, and the gaps in days between consecutive ones."""

    n_order_days: np.ndarray
    count: np.ndarray
    total: np.ndarray
    sum_of_squares: np.ndarray
    last: np.ndarray  # NaN below two order days


def _order_day_gaps(k_user: np.ndarray, k_day: np.ndarray, n: int) -> _OrderDayGaps:
    """Gaps between order *days* (distinct (user, day) pairs sorted by user, then day): several
    orders on one day are one purchase occasion."""
    same = k_user[1:] == k_user[:-1]
    gaps = (k_day[1:] - k_day[:-1])[same].astype(np.float64)
    g_user = k_user[1:][same]
    last = np.full(n, np.nan)
    if len(g_user):
        is_last = np.concatenate((g_user[1:] != g_user[:-1], [True]))
        last[g_user[is_last]] = gaps[is_last]
    return _OrderDayGaps(
        n_order_days=np.bincount(k_user, minlength=n).astype(np.float64),
        count=np.bincount(g_user, minlength=n).astype(np.float64),
        total=np.bincount(g_user, weights=gaps, minlength=n),
        sum_of_squares=np.bincount(g_user, weights=gaps * gaps, minlength=n),
        last=last,
    )


def _order_columns(
    acc: FeatureAccumulators, as_of: np.ndarray, order_code: int, first_event_age: np.ndarray
) -> list[_StaticColumn]:
    """Recency, tenure, frequency, spend and inter-purchase times; NaN where a user lacks orders."""
    n = acc.n_users
    last_order_age = _age_days(as_of, acc.last_s[:, order_code])  # +inf: no order
    first_order_age = _age_days(as_of, acc.first_s[:, order_code])  # -inf: no order
    n_orders = acc.count[:, order_code]
    spend = acc.spend
    gaps = _order_day_gaps(acc.order_day_user, acc.order_day, n)

    has_orders, has_gaps = n_orders > 0, gaps.count > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recency = _finite_or_nan(last_order_age)
        first_order = _finite_or_nan(first_order_age)
        ipt_mean = np.where(has_gaps, gaps.total / gaps.count, np.nan)
        ipt_var = np.where(gaps.count > 1, gaps.sum_of_squares / gaps.count - ipt_mean**2, np.nan)
        return [
            ("recency_days", recency),
            ("tenure_days", _finite_or_nan(first_event_age)),
            ("first_order_age_days", first_order),
            ("n_orders", n_orders),
            ("n_order_days", gaps.n_order_days),
            ("total_spend", spend),
            ("avg_order_value", np.where(has_orders, spend / n_orders, np.nan)),
            ("max_order_value", _finite_or_nan(acc.max_order)),
            ("avg_items_per_order", np.where(has_orders, acc.items / n_orders, np.nan)),
            ("ipt_mean_days", ipt_mean),
            ("ipt_std_days", np.sqrt(np.maximum(ipt_var, 0.0))),  # = np.clip(ipt_var, 0.0, None)
            ("ipt_last_days", gaps.last),
            ("recency_over_ipt", np.where(has_gaps, recency / np.maximum(ipt_mean, 1.0), np.nan)),
            ("has_repeat_order", (gaps.n_order_days >= 2).astype(np.float64)),
            (
                "order_days_per_week",
                np.where(
                    np.isfinite(first_order_age),
                    gaps.n_order_days / np.maximum(first_order / 7.0, 1.0),
                    0.0,
                ),
            ),
        ]


def _weekly_order_columns(
    seq: np.ndarray, channels: tuple[str, ...], config: FeatureConfig
) -> list[_StaticColumn]:
    """Order activity read off the weekly tensor: active weeks, recent windows, trends, decay."""
    W, T = config.weeks, config.trend_weeks
    orders = seq[:, :, channels.index(f"{EVENT_TYPE_ORDER}_count")]
    spend = seq[:, :, channels.index(f"{EVENT_TYPE_ORDER}_amount")]
    return [
        ("active_weeks", (orders > 0).sum(axis=1).astype(np.float64)),
        *((f"orders_{k}w", orders[:, W - k :].sum(axis=1)) for k in config.recent_windows),
        *((f"spend_{k}w", spend[:, W - k :].sum(axis=1)) for k in config.recent_windows),
        ("order_trend", orders[:, W - T :].sum(axis=1) - orders[:, W - 2 * T : W - T].sum(axis=1)),
        ("spend_trend", spend[:, W - T :].sum(axis=1) - spend[:, W - 2 * T : W - T].sum(axis=1)),
        *((f"orders_decay_{h}w", orders @ _decay_weights(W, h)) for h in config.decay_half_lives),
    ]


def _event_type_columns(
    acc: FeatureAccumulators,
    as_of: np.ndarray,
    event_types: tuple[str, ...],
    seq: np.ndarray,
    channels: tuple[str, ...],
    n_orders: np.ndarray,
) -> list[_StaticColumn]:
    """Each non-order type's ``TYPE_FEATURE_SUFFIXES``: count, last-4-weeks count, recency, per order."""
    W = seq.shape[1]
    columns: list[_StaticColumn] = []
    for code, t in enumerate(event_types):
        if t == EVENT_TYPE_ORDER:
            continue
        count = acc.count[:, code]
        values = (
            count,
            seq[:, W - 4 :, channels.index(f"{t}_count")].sum(axis=1),
            _finite_or_nan(_age_days(as_of, acc.last_s[:, code])),
            count / (n_orders + 1.0),
        )
        columns += [(f"{t}_{suffix}", v) for suffix, v in zip(TYPE_FEATURE_SUFFIXES, values, strict=True)]
    return columns


def build_raw_features(
    events: EventArrays,
    as_of_s: np.ndarray | float,
    *,
    event_types: Sequence[str],
    config: FeatureConfig,
    profile: Mapping[str, np.ndarray] | None = None,
) -> RawFeatures:
    """Aggregate events per user into the weekly tensor and the static matrix (vectorised)."""
    n = int(events.n_users)
    event_types = tuple(event_types)
    _order_code(event_types)
    as_of = np.asarray(as_of_s, dtype=np.float64)
    if as_of.shape != (n,):  # one instant for every user (read-only view)
        as_of = np.broadcast_to(as_of, (n,))
    observed = observe_events(events, as_of, event_types)
    return raw_features_from_accumulators(
        observed,
        accumulate(observed, n, event_types),
        as_of,
        event_types=event_types,
        config=config,
        profile=profile,
    )


def raw_features_from_accumulators(
    observed: ObservedEvents,
    acc: FeatureAccumulators,
    as_of: np.ndarray,
    *,
    event_types: tuple[str, ...],
    config: FeatureConfig,
    profile: Mapping[str, np.ndarray] | None = None,
) -> RawFeatures:
    """The features of ``acc.n_users`` users at ``as_of`` (``[n]``): the weekly tensor from the
    ``observed`` events (only those within ``config.weeks`` of as_of matter), the static columns from
    the accumulators of *all* their observed events (``acc``, which may cover more events than
    ``observed``, e.g. a customer state's folded past)."""
    n = acc.n_users
    order_code = _order_code(event_types)
    first_event_age = _age_days(as_of, acc.first_s.min(axis=1))  # -inf: none
    channels = sequence_channel_names(event_types)
    seq = _weekly_tensor(observed, n, event_types, config.weeks, first_event_age)
    columns = [
        *_order_columns(acc, as_of, order_code, first_event_age),
        *_weekly_order_columns(seq, channels, config),
    ]
    n_orders = dict(columns)["n_orders"]
    columns += _event_type_columns(acc, as_of, event_types, seq, channels, n_orders)
    names = tuple(name for name, _ in columns)
    assert names == static_feature_names(event_types, config), "static_feature_names is out of date"
    static = np.empty((n, len(columns)))  # = np.column_stack of the columns, without its per-call overhead
    static_by_column = static.T
    for j, (_, column) in enumerate(columns):
        static_by_column[j] = column
    return RawFeatures(
        sequence=seq.astype(np.float32),
        sequence_channels=channels,
        static=static,
        static_names=names,
        profile={k: np.asarray(v, dtype=object) for k, v in (profile or {}).items()},
    )


# ---------------------------------------------------------------------------------------------
# fitted preprocessing
# ---------------------------------------------------------------------------------------------

# Heavy-tailed, non-negative values are log1p'd before clipping and scaling; trends get a signed log.
_NO_LOG = {"has_repeat_order", "recency_over_ipt"}
_SIGNED_LOG = {"order_trend", "spend_trend"}
# Undefined recency means "no such event ever": impute with the far end of the training range.
_IMPUTE_HIGH_SUFFIX = "recency_days"


def _static_transform_kind(name: str) -> str:
    if name in _NO_LOG:
        return "identity"
    if name in _SIGNED_LOG:
        return "signed_log1p"
    return "log1p"


@functools.lru_cache(maxsize=64)
def _kind_masks(kinds: tuple[str, ...]) -> tuple[np.ndarray, bool, np.ndarray, bool]:
    """The (read-only) column masks of the ``log1p`` and ``signed_log1p`` static features, and
    whether each selects any column."""
    kind_of_column = np.asarray(kinds)
    log, signed = kind_of_column == "log1p", kind_of_column == "signed_log1p"
    return _read_only(log), bool(log.any()), _read_only(signed), bool(signed.any())


def _apply_kind(values: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    out = np.array(values, dtype=np.float64, copy=True)
    log, any_log, signed, any_signed = _kind_masks(tuple(kinds))
    if any_log:
        out[:, log] = np.log1p(np.maximum(out[:, log], 0.0))  # = np.clip(..., 0.0, None)
    if any_signed:
        part = out[:, signed]
        out[:, signed] = np.sign(part) * np.log1p(np.abs(part))
    return out


@dataclass
class FeatureSpec:
    """Everything fitted on training customers that serving needs to build identical inputs."""

    config: FeatureConfig
    event_types: tuple[str, ...]
    sequence_channels: tuple[str, ...]
    sequence_mean: np.ndarray
    sequence_std: np.ndarray
    static_names: tuple[str, ...]
    static_kind: tuple[str, ...]
    static_impute: np.ndarray
    static_clip_low: np.ndarray
    static_clip_high: np.ndarray
    static_mean: np.ndarray
    static_std: np.ndarray
    profile_categorical: dict[str, list[str]] = field(default_factory=dict)
    profile_numeric: dict[str, dict[str, float]] = field(default_factory=dict)
    fitted_on: dict[str, Any] = field(default_factory=dict)

    # ---- shapes and names the model is built from ----
    @property
    def weeks(self) -> int:
        return self.config.weeks

    @property
    def model_static_names(self) -> tuple[str, ...]:
        names = list(self.static_names)
        for column, vocab in self.profile_categorical.items():
            names += [f"profile:{column}={v}" for v in vocab]
        for column in self.profile_numeric:
            names += [f"profile:{column}", f"profile:{column}:missing"]
        return tuple(names)

    @property
    def n_static(self) -> int:
        return len(self.model_static_names)

    @property
    def n_channels(self) -> int:
        return len(self.sequence_channels)

    @property
    def static_groups(self) -> tuple[str, ...]:
        return tuple(_group_of(n) for n in self.model_static_names)

    # ---- the transform ----
    def transform(self, raw: RawFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Raw features -> float32 model inputs ``(sequence [n, W, C], static [n, S])``."""
        if raw.sequence_channels != self.sequence_channels or raw.static_names != self.static_names:
            raise FeatureSpecError("raw features were built with another event vocabulary or config")
        seq = np.log1p(np.maximum(raw.sequence, 0.0, dtype=np.float32))  # = np.clip(..., 0.0, None, ...)
        seq = (seq - self.sequence_mean.astype(np.float32)) / self.sequence_std.astype(np.float32)

        static = _apply_kind(raw.static, self.static_kind)
        static = np.where(np.isnan(static), self.static_impute, static)
        static = np.clip(static, self.static_clip_low, self.static_clip_high)
        static = (static - self.static_mean) / self.static_std
        parts = [static]
        n = raw.n_users
        for column, vocab in self.profile_categorical.items():
            values = raw.profile.get(column)
            values = np.full(n, None, dtype=object) if values is None else values
            parts.append(_one_hot(values, vocab))
        for column, stats in self.profile_numeric.items():
            values = raw.profile.get(column)
            numeric = _to_float(values, n)
            missing = np.isnan(numeric)
            filled = np.clip(np.where(missing, stats["median"], numeric), stats["low"], stats["high"])
            parts.append(((filled - stats["mean"]) / stats["std"])[:, None])
            parts.append(missing.astype(np.float64)[:, None])
        static_all = np.concatenate(parts, axis=1) if len(parts) > 1 else static
        return np.ascontiguousarray(seq, dtype=np.float32), np.ascontiguousarray(static_all, dtype=np.float32)

    # ---- persistence ----
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "version": SPEC_VERSION,
            "config": {
                "weeks": self.config.weeks,
                "recent_windows": list(self.config.recent_windows),
                "trend_weeks": self.config.trend_weeks,
                "decay_half_lives": list(self.config.decay_half_lives),
            },
            "event_types": list(self.event_types),
            "sequence": {
                "channels": list(self.sequence_channels),
                "mean": self.sequence_mean.tolist(),
                "std": self.sequence_std.tolist(),
            },
            "static": {
                "names": list(self.static_names),
                "kind": list(self.static_kind),
                "impute": self.static_impute.tolist(),
                "clip_low": self.static_clip_low.tolist(),
                "clip_high": self.static_clip_high.tolist(),
                "mean": self.static_mean.tolist(),
                "std": self.static_std.tolist(),
            },
            "profile": {"categorical": self.profile_categorical, "numeric": self.profile_numeric},
            "model_inputs": {
                "sequence_shape": [None, self.weeks, self.n_channels],
                "static_names": list(self.model_static_names),
                "static_groups": list(self.static_groups),
            },
            "fitted_on": self.fitted_on,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        if data.get("format") != SPEC_FORMAT:
            raise FeatureSpecError(f"not a ChurnGuard feature spec (format={data.get('format')!r})")
        if data.get("version") != SPEC_VERSION:
            raise FeatureSpecError(
                f"feature spec version {data.get('version')} unsupported (want {SPEC_VERSION})"
            )
        try:
            config = FeatureConfig(
                weeks=int(data["config"]["weeks"]),
                recent_windows=tuple(data["config"]["recent_windows"]),
                trend_weeks=int(data["config"]["trend_weeks"]),
                decay_half_lives=tuple(data["config"]["decay_half_lives"]),
            )
            event_types = tuple(data["event_types"])
            seq, st = data["sequence"], data["static"]
            spec = cls(
                config=config,
                event_types=event_types,
                sequence_channels=tuple(seq["channels"]),
                sequence_mean=np.asarray(seq["mean"], dtype=np.float64),
                sequence_std=np.asarray(seq["std"], dtype=np.float64),
                static_names=tuple(st["names"]),
                static_kind=tuple(st["kind"]),
                static_impute=np.asarray(st["impute"], dtype=np.float64),
                static_clip_low=np.asarray(st["clip_low"], dtype=np.float64),
                static_clip_high=np.asarray(st["clip_high"], dtype=np.float64),
                static_mean=np.asarray(st["mean"], dtype=np.float64),
                static_std=np.asarray(st["std"], dtype=np.float64),
                profile_categorical={k: list(v) for k, v in data["profile"]["categorical"].items()},
                profile_numeric={k: dict(v) for k, v in data["profile"]["numeric"].items()},
                fitted_on=dict(data.get("fitted_on", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatureSpecError(f"malformed feature spec: {exc!r}") from exc
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise FeatureSpecError(f"feature spec is not JSON: {exc}") from exc

    def validate(self) -> None:
        unknown = [t for t in self.event_types if t not in BY_NAME]
        if unknown:
            raise FeatureSpecError(f"event types {unknown} are not in churnguard.event_types")
        if self.sequence_channels != sequence_channel_names(self.event_types):
            raise FeatureSpecError("sequence channels do not match the event types")
        if self.static_names != static_feature_names(self.event_types, self.config):
            raise FeatureSpecError("static feature names do not match this code's feature path")
        S, C = len(self.static_names), len(self.sequence_channels)
        for name in ("static_impute", "static_clip_low", "static_clip_high", "static_mean", "static_std"):
            arr = getattr(self, name)
            if arr.shape != (S,) or not np.all(np.isfinite(arr)):
                raise FeatureSpecError(f"{name} must hold {S} finite values")
        for name in ("sequence_mean", "sequence_std"):
            arr = getattr(self, name)
            if arr.shape != (C,) or not np.all(np.isfinite(arr)):
                raise FeatureSpecError(f"{name} must hold {C} finite values")
        if np.any(self.static_std <= 0) or np.any(self.sequence_std <= 0):
            raise FeatureSpecError("scaling std must be positive")


def _category_labels(values: np.ndarray) -> np.ndarray:
    """Per-user category text; None / NaN / blank become ``MISSING_CATEGORY`` (vectorised)."""
    text = np.char.strip(np.asarray(values, dtype=object).astype(str))
    missing = (text == "None") | (text == "nan") | (text == "") | (text == "<NA>")
    return np.where(missing, MISSING_CATEGORY, text).astype(object)


def _one_hot(values: np.ndarray, vocab: Sequence[str]) -> np.ndarray:
    labels = _category_labels(values)
    labels = np.where(np.isin(labels, np.asarray(vocab, dtype=object)), labels, OTHER_CATEGORY)
    one_hot: np.ndarray = (labels[:, None] == np.asarray(vocab, dtype=object)[None, :]).astype(np.float64)
    return one_hot


def _to_float(values: np.ndarray | None, n: int) -> np.ndarray:
    """Numeric profile values; None/NaN/unparseable -> NaN. Vectorised unless text needs parsing."""
    if values is None:
        return np.full(n, np.nan)
    try:
        return np.asarray(values, dtype=np.float64)  # None -> nan; numeric text parses too
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):  # only reached when some value is non-numeric text
            with contextlib.suppress(TypeError, ValueError):
                out[i] = float(v)
        return out


def _fit_sequence_scaling(sequence: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of log1p weekly values over every (user, week)."""
    seq = np.log1p(np.clip(sequence.astype(np.float64), 0.0, None)).reshape(-1, sequence.shape[2])
    std = seq.std(axis=0)
    return seq.mean(axis=0), np.where(std > 1e-6, std, 1.0)


@dataclass(frozen=True)
class _StaticFit:
    impute: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def _fit_static(static: np.ndarray, names: Sequence[str], clip_quantiles: tuple[float, float]) -> _StaticFit:
    """Clip bounds, imputation and scaling of the transformed (``_apply_kind``) static features."""
    with warnings.catch_warnings():  # a feature undefined for every customer is expected (e.g. no repeats)
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanquantile(static, clip_quantiles[0], axis=0)
        high = np.nanquantile(static, clip_quantiles[1], axis=0)
        median = np.nanmedian(static, axis=0)
    all_nan = np.isnan(median)
    low, high, median = (np.where(all_nan, 0.0, a) for a in (low, high, median))
    impute = np.array(
        [high[j] if name.endswith(_IMPUTE_HIGH_SUFFIX) else median[j] for j, name in enumerate(names)]
    )
    filled = np.clip(np.where(np.isnan(static), impute, static), low, high)
    std = filled.std(axis=0)
    return _StaticFit(
        impute=impute,
        clip_low=low,
        clip_high=high,
        mean=filled.mean(axis=0),
        std=np.where(std > 1e-9, std, 1.0),
    )


def _fit_numeric_profile(
    as_float: np.ndarray, parsed: np.ndarray, clip_quantiles: tuple[float, float]
) -> dict[str, float]:
    """Median imputation, clip bounds and scaling of one numeric profile column."""
    x = as_float[parsed]
    lo, hi = np.quantile(x, clip_quantiles)
    med = float(np.median(x))
    clipped = np.clip(np.where(np.isnan(as_float), med, as_float), lo, hi)
    return {
        "median": med,
        "low": float(lo),
        "high": float(hi),
        "mean": float(clipped.mean()),
        "std": float(clipped.std()) if clipped.std() > 1e-9 else 1.0,
    }


def _fit_vocabulary(present_labels: np.ndarray, max_categories: int, min_category_count: int) -> list[str]:
    """The most frequent categories (ties: first in sorted order), then the other/missing buckets."""
    names, counts = np.unique(present_labels.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    vocab = [str(names[i]) for i in order if counts[i] >= min_category_count][:max_categories]
    return [*vocab, OTHER_CATEGORY, MISSING_CATEGORY]


def _fit_profile(
    profile: Mapping[str, np.ndarray],
    clip_quantiles: tuple[float, float],
    max_categories: int,
    min_category_count: int,
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """Each profile column becomes numeric or categorical: ``(categorical vocabularies, numeric stats)``."""
    categorical: dict[str, list[str]] = {}
    numeric: dict[str, dict[str, float]] = {}
    for column, values in sorted(profile.items()):
        as_float = _to_float(values, len(values))
        labels = _category_labels(values)
        non_missing = labels != MISSING_CATEGORY
        parsed = np.isfinite(as_float) & non_missing
        if non_missing.any() and parsed.sum() >= NUMERIC_PROFILE_SHARE * non_missing.sum():
            numeric[column] = _fit_numeric_profile(as_float, parsed, clip_quantiles)
        else:
            categorical[column] = _fit_vocabulary(labels[non_missing], max_categories, min_category_count)
    return categorical, numeric


def fit_feature_spec(
    raw: RawFeatures,
    *,
    event_types: Sequence[str],
    config: FeatureConfig,
    clip_quantiles: tuple[float, float] = (0.005, 0.995),
    max_categories: int = 20,
    min_category_count: int = 20,
    fitted_on: Mapping[str, Any] | None = None,
) -> FeatureSpec:
    """Fit imputation, clip bounds, scaling and vocabularies on *training* customers only."""
    if raw.n_users == 0:
        raise FeatureSpecError("cannot fit a feature spec on zero customers")
    seq_mean, seq_std = _fit_sequence_scaling(raw.sequence)
    kinds = tuple(_static_transform_kind(n) for n in raw.static_names)
    static = _fit_static(_apply_kind(raw.static, kinds), raw.static_names, clip_quantiles)
    categorical, numeric = _fit_profile(raw.profile, clip_quantiles, max_categories, min_category_count)
    spec = FeatureSpec(
        config=config,
        event_types=tuple(event_types),
        sequence_channels=raw.sequence_channels,
        sequence_mean=seq_mean,
        sequence_std=seq_std,
        static_names=raw.static_names,
        static_kind=kinds,
        static_impute=static.impute,
        static_clip_low=static.clip_low,
        static_clip_high=static.clip_high,
        static_mean=static.mean,
        static_std=static.std,
        profile_categorical=categorical,
        profile_numeric=numeric,
        fitted_on=dict(fitted_on or {}),
    )
    spec.validate()
    return spec
