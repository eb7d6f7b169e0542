"""pandas adapters around the numpy feature path: event frames -> EventArrays, labels, cohorts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import numpy as np
import pandas as pd

from churnguard.event_types import EVENT_TYPE_ORDER
from churnguard.features import (
    EventArrays,
    FeatureConfig,
    RawFeatures,
    build_raw_features,
)


@overload
def to_epoch_seconds(values: pd.Timestamp | str) -> float: ...
@overload
def to_epoch_seconds(values: pd.Series | np.ndarray) -> np.ndarray: ...
def to_epoch_seconds(values: pd.Series | np.ndarray | pd.Timestamp | str) -> np.ndarray | float:
    """UTC-naive datetimes -> float seconds since the epoch."""
    if isinstance(values, str | pd.Timestamp):
        ts = pd.Timestamp(values)
        if ts.tzinfo is not None:
            ts = ts.tz_convert("UTC").tz_localize(None)
        return float(ts.value / 1e9)
    arr = np.asarray(values, dtype="datetime64[ns]")
    seconds: np.ndarray = arr.astype(np.int64).astype(np.float64) / 1e9
    return seconds


@dataclass(frozen=True)
class CustomerEvents:
    """Events of a set of customers in feature-path form, with the customers' ids in index order."""

    user_ids: np.ndarray  # object array of str, sorted
    arrays: EventArrays
    profile: dict[str, np.ndarray]


def customer_events(
    events: pd.DataFrame,
    *,
    profile_columns: tuple[str, ...] = (),
    user_ids: np.ndarray | None = None,
    as_of: str | pd.Timestamp | None = None,
) -> CustomerEvents:
    """Index a validated event frame by customer.

    ``user_ids`` fixes the customer set and order (customers without events get empty histories;
    events of other customers are dropped). Without it, customers are the sorted distinct ids, so
    the result does not depend on row order. ``as_of``: profile values are taken only from events
    strictly before it, as every feature is (a value that changes after the cutoff, such as a
    loyalty tier, would otherwise leak the label into training).
    """
    ids = events["user_id"].to_numpy(dtype=object)
    if user_ids is None:
        user_ids = natural_order(ids)
    user_ids = np.asarray(user_ids, dtype=object)
    index = pd.Index(user_ids).get_indexer(ids)
    keep = index >= 0
    arrays = EventArrays(
        user_index=index[keep].astype(np.int64),
        n_users=len(user_ids),
        timestamp_s=to_epoch_seconds(events["timestamp"].to_numpy()[keep]),
        event_type=events["event_type"].to_numpy(dtype=object)[keep],
        amount=events["amount"].to_numpy(dtype=np.float64)[keep],
        quantity=events["quantity"].to_numpy(dtype=np.float64)[keep],
    )
    profile: dict[str, np.ndarray] = {}
    if profile_columns:
        if as_of is not None:
            keep = keep & (to_epoch_seconds(events["timestamp"].to_numpy()) < to_epoch_seconds(as_of))
        sub = events.loc[keep, ["user_id", *profile_columns]]
        sub = sub.assign(_t=events.loc[keep, "timestamp"].to_numpy()).sort_values("_t", kind="stable")
        last = sub.groupby("user_id", sort=False)[list(profile_columns)].last()  # last non-null
        last = last.reindex(user_ids)
        for column in profile_columns:
            values = last[column].to_numpy(dtype=object)
            missing: np.ndarray = pd.isna(values)
            profile[column] = np.asarray(np.where(missing, None, values), dtype=object)
    return CustomerEvents(user_ids=user_ids, arrays=arrays, profile=profile)


def raw_features_for(
    events: pd.DataFrame,
    as_of: str | pd.Timestamp,
    *,
    event_types: tuple[str, ...],
    config: FeatureConfig,
    profile_columns: tuple[str, ...] = (),
    user_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, RawFeatures]:
    customers = customer_events(events, profile_columns=profile_columns, user_ids=user_ids, as_of=as_of)
    raw = build_raw_features(
        customers.arrays,
        to_epoch_seconds(as_of),
        event_types=event_types,
        config=config,
        profile=customers.profile,
    )
    return customers.user_ids, raw


def natural_order(user_ids: np.ndarray) -> np.ndarray:
    """Distinct ids sorted numerically when every id is a whole number (CDNOW), else as text."""
    ids = np.unique(np.asarray(user_ids, dtype=object).astype(str))
    if len(ids) and all(i.isdigit() for i in ids):
        ids = ids[np.argsort(ids.astype(np.int64), kind="stable")]
    return ids.astype(object)


def cohort(events: pd.DataFrame, as_of: str | pd.Timestamp) -> np.ndarray:
    """Customers with at least one order strictly before ``as_of`` (in ``natural_order``)."""
    cutoff = np.datetime64(pd.Timestamp(as_of).to_datetime64(), "ns")
    mask = (events["event_type"].to_numpy() == EVENT_TYPE_ORDER) & (events["timestamp"].to_numpy() < cutoff)
    return natural_order(events.loc[mask, "user_id"].to_numpy(dtype=object))


def churn_labels(
    events: pd.DataFrame, user_ids: np.ndarray, as_of: str | pd.Timestamp, horizon_weeks: int
) -> np.ndarray:
    """1 = churned: no order in ``[as_of, as_of + horizon_weeks)``; 0 = ordered again."""
    start = np.datetime64(pd.Timestamp(as_of).to_datetime64(), "ns")
    end = start + np.timedelta64(7 * horizon_weeks, "D")
    ts = events["timestamp"].to_numpy()
    mask = (events["event_type"].to_numpy() == EVENT_TYPE_ORDER) & (ts >= start) & (ts < end)
    buyers = pd.Index(pd.unique(events.loc[mask, "user_id"].to_numpy(dtype=object)))
    churned: np.ndarray = (~pd.Index(user_ids).isin(buyers)).astype(np.int64)
    return churned
