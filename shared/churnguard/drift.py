"""Drift: how far a batch's customers and scores are from the ones the model was trained on (PSI).

**What is measured.** Every monitored quantity is binned the way training saw it, and a batch's
distribution over those bins is compared with training's by the population stability index:

* each static feature the model reads, per its reason group (``FeatureSpec.static_groups``): the
  raw value (``RawFeatures.static``, NaN where undefined) for the core features; the model input for
  the profile columns (one-hot / scaled values, what the model sees of them);
* the weekly sequence (group ``weekly_activity``, ``churnguard.reasons.SEQUENCE_GROUP``) through
  two per-customer summaries of its window: the events counted (every ``*_count`` channel) and the
  weeks with any activity;
* the churn probability the served model gives.

**Who is counted.** The model's population: customers with at least one order before the as-of
(training's cohort, ``churnguard.tabular.cohort``). A batch also scores customers who only browsed;
they are not in any training distribution, so they are counted apart (``outside_population``) rather
than compared (they would read as a large shift of every order feature).

**Bins.** Training's decile edges of each quantity over every customer at the cutoff (training,
validation and test), duplicates dropped (a feature that is 0 for most customers has fewer bins);
bins are right-closed, ``(-inf, e0], (e0, e1], ..., (e_last, inf)``, plus one bin for missing
values (NaN). The same edges serve for the score (deciles of the training customers' scores).

**PSI.** ``sum_i (a_i - e_i) * ln(a_i / e_i)`` over the bins, with ``e`` training's and ``a`` the
batch's proportions, each floored at ``EPSILON`` (1e-4), so an empty bin counts as a small share
instead of a division by zero; a bin empty on both sides contributes exactly 0, identical
distributions give exactly 0. A group's PSI is the **largest** PSI of its features: one drifted
feature among stable ones is drift of that group (a mean would dilute it by the group's size).
Customary reading: < 0.1 stable, 0.1-0.2 moderate, > 0.2 shifted.

Counting is separate from the PSI (``DriftCounts``): a batch adds each scored chunk's bin counts,
and counts of parts merge, so the memory is one count per bin, whatever the number of customers.
Below ``MIN_CUSTOMERS`` customers the PSI is not reported (sampling noise alone gives ~bins /
customers, i.e. ~0.05 at 200 customers).

Pure numpy: training builds the reference (``DriftReference.build``), serving loads it with the
model (``drift_reference.json``, hashed in metadata.json like every model file).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from churnguard.features import FeatureSpec, RawFeatures
from churnguard.reasons import SEQUENCE_GROUP

REFERENCE_FORMAT = "churnguard-drift-reference"
REFERENCE_VERSION = 1
EPSILON = 1e-4  # floor of a bin's proportion, both sides, in the PSI
QUANTILES = 10  # decile edges
MIN_CUSTOMERS = 200  # fewer scored customers: no PSI (noise alone ~ bins / customers)
# The weekly sequence's per-customer summaries (names are "weekly_activity:<summary>").
SEQUENCE_SUMMARIES = ("events", "active_weeks")
ACTIVITY_CHANNEL = "any_activity"
POPULATION_FEATURE = "n_orders"  # > 0: in the model's population (training's cohort)


class DriftReferenceError(ValueError):
    """drift_reference.json is malformed or does not describe this feature spec."""


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of two distributions over the same bins (proportions or counts:
    each side is normalised; an all-zero side is all bins at ``epsilon``)."""
    e, a = _proportions(expected), _proportions(actual)
    if e.shape != a.shape:
        raise ValueError(f"distributions over {e.shape} and {a.shape} bins")
    e, a = np.maximum(e, epsilon), np.maximum(a, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def _proportions(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    total = values.sum()
    return values / total if total > 0 else np.zeros_like(values)


@dataclass(frozen=True)
class Binned:
    """One quantity's bins (interior ``edges``, right-closed, plus a missing bin last) and the
    training ``proportions`` over them (``len(edges) + 2``)."""

    edges: np.ndarray
    proportions: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, quantiles: int = QUANTILES) -> Binned:
        """Edges at the ``quantiles``-quantiles of the finite values (distinct only) and the values'
        own proportions."""
        values = np.asarray(values, dtype=np.float64)
        present = values[~np.isnan(values)]
        finite = present[np.isfinite(present)]
        levels = np.arange(1, quantiles) / quantiles
        edges = np.unique(np.quantile(finite, levels)) if len(finite) else np.zeros(0)
        empty = cls(edges, np.zeros(len(edges) + 2))
        return cls(edges, _proportions(empty.counts(values)))

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 2

    def counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` fall in each bin (NaN: the last, missing, bin)."""
        values = np.asarray(values, dtype=np.float64)
        missing = np.isnan(values)
        index = np.searchsorted(self.edges, values[~missing], side="left")  # e[i-1] < v <= e[i] -> i
        counts = np.bincount(index, minlength=self.n_bins).astype(np.int64)
        counts[-1] += int(missing.sum())
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges.tolist(), "proportions": self.proportions.tolist()}

    @classmethod
    def from_dict(cls, data: Any, what: str) -> Binned:
        try:
            edges = np.asarray(data["edges"], dtype=np.float64).reshape(-1)
            proportions = np.asarray(data["proportions"], dtype=np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise DriftReferenceError(f"{what}: edges and proportions must be lists of numbers") from exc
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise DriftReferenceError(f"{what}: edges must be finite and strictly increasing")
        if len(proportions) != len(edges) + 2 or np.any(proportions < 0) or np.any(~np.isfinite(proportions)):
            raise DriftReferenceError(f"{what}: needs {len(edges) + 2} non-negative proportions")
        if not math.isclose(float(proportions.sum()), 1.0, abs_tol=1e-6):
            raise DriftReferenceError(f"{what}: proportions add up to {proportions.sum():.6f}, not 1")
        return cls(edges, proportions)


@dataclass(frozen=True)
class Monitored:
    name: str
    group: str
    binned: Binned


def monitored_columns(spec: FeatureSpec) -> tuple[tuple[str, str], ...]:
    """(name, group) of each monitored feature, in ``monitored_values``' column order: the model's
    static inputs (``model_static_names``), then the weekly sequence's summaries."""
    static = tuple(zip(spec.model_static_names, spec.static_groups, strict=True))
    return (*static, *((f"{SEQUENCE_GROUP}:{s}", SEQUENCE_GROUP) for s in SEQUENCE_SUMMARIES))


def monitored_values(spec: FeatureSpec, raw: RawFeatures) -> np.ndarray:
    """``[customers, monitored features]``: the raw core static features (NaN kept: the missing
    bin), the profile columns as model inputs, and the sequence summaries (see the module doc)."""
    parts = [np.asarray(raw.static, dtype=np.float64)]
    core = len(spec.static_names)
    if spec.n_static > core:  # profile columns: as the model sees them (one-hot, scaled)
        parts.append(spec.transform(raw)[1][:, core:].astype(np.float64))
    sequence = np.asarray(raw.sequence, dtype=np.float64)
    channels = list(raw.sequence_channels)
    counts = [j for j, name in enumerate(channels) if name.endswith("_count")]
    events = sequence[:, :, counts].sum(axis=(1, 2))
    activity = (
        sequence[:, :, channels.index(ACTIVITY_CHANNEL)]
        if ACTIVITY_CHANNEL in channels
        else sequence[:, :, counts].sum(axis=2)
    )
    parts.append(np.column_stack([events, (activity > 0).sum(axis=1)]).astype(np.float64))
    return np.concatenate(parts, axis=1)


def in_population(spec: FeatureSpec, raw: RawFeatures) -> np.ndarray:
    """Per customer: at least one order before the as-of (training's cohort)."""
    orders = np.asarray(raw.static[:, spec.static_names.index(POPULATION_FEATURE)], dtype=np.float64)
    mask: np.ndarray = orders > 0
    return mask


@dataclass(frozen=True)
class DriftReference:
    """Training's binned distributions: the score and every monitored feature."""

    score: Binned
    features: tuple[Monitored, ...]
    customers: int

    @classmethod
    def build(
        cls,
        scores: np.ndarray,
        values: np.ndarray,
        columns: Sequence[tuple[str, str]],
        quantiles: int = QUANTILES,
    ) -> DriftReference:
        """From the training customers' scores ``[n]`` and ``monitored_values`` ``[n, features]``."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(scores), len(columns)):
            raise ValueError(
                f"values {values.shape} do not match {len(scores)} scores x {len(columns)} columns"
            )
        features = tuple(
            Monitored(name, group, Binned.fit(values[:, j], quantiles))
            for j, (name, group) in enumerate(columns)
        )
        return cls(Binned.fit(np.asarray(scores, dtype=np.float64), quantiles), features, len(scores))

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        return tuple((f.name, f.group) for f in self.features)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.group for f in self.features))

    def check_fits(self, spec: FeatureSpec) -> None:
        expected = monitored_columns(spec)
        if self.columns != expected:
            raise DriftReferenceError(
                f"describes features {[n for n, _ in self.columns]}, the feature spec monitors "
                f"{[n for n, _ in expected]}"
            )

    def counts(self) -> DriftCounts:
        """Empty counts over these bins."""
        return DriftCounts(
            np.zeros(self.score.n_bins, np.int64),
            [np.zeros(f.binned.n_bins, np.int64) for f in self.features],
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": REFERENCE_FORMAT,
                "format_version": REFERENCE_VERSION,
                "method": "psi",
                "epsilon": EPSILON,
                "bins": "training deciles (distinct edges), right-closed, then a missing (NaN) bin",
                "group_statistic": "max",
                "customers": self.customers,
                "score": self.score.to_dict(),
                "features": [{"name": f.name, "group": f.group, **f.binned.to_dict()} for f in self.features],
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DriftReference:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DriftReferenceError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != REFERENCE_FORMAT:
            raise DriftReferenceError(f"format is not {REFERENCE_FORMAT!r}")
        if data.get("format_version") != REFERENCE_VERSION:
            raise DriftReferenceError(
                f"format_version {data.get('format_version')!r} is not {REFERENCE_VERSION}"
            )
        try:
            features = tuple(
                Monitored(str(f["name"]), str(f["group"]), Binned.from_dict(f, f"feature {f['name']}"))
                for f in data["features"]
            )
            return cls(Binned.from_dict(data["score"], "score"), features, int(data["customers"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DriftReferenceError):
                raise
            raise DriftReferenceError(f"malformed: {exc!r}") from exc


@dataclass
class DriftCounts:
    """Bin counts of scored customers (score, then each monitored feature): added chunk by chunk,
    merged across parts; the PSI comes from them at the end (``drift_summary``)."""

    score: np.ndarray
    features: list[np.ndarray]
    customers: int = 0
    outside_population: int = 0  # scored customers without an order before the as-of: not counted

    def add_scored(
        self, reference: DriftReference, spec: FeatureSpec, raw: RawFeatures, scores: np.ndarray
    ) -> None:
        """Count one scored chunk (its raw features and scores) of the model's population."""
        keep = in_population(spec, raw)
        self.outside_population += int((~keep).sum())
        self.add(reference, np.asarray(scores)[keep], monitored_values(spec, raw)[keep])

    def add(self, reference: DriftReference, scores: np.ndarray, values: np.ndarray) -> None:
        """Count one chunk: scores ``[n]``, ``monitored_values`` ``[n, features]``."""
        self.score += reference.score.counts(np.asarray(scores, dtype=np.float64))
        for j, feature in enumerate(reference.features):
            self.features[j] += feature.binned.counts(values[:, j])
        self.customers += len(scores)

    def merge(self, other: DriftCounts) -> DriftCounts:
        return DriftCounts(
            self.score + other.score,
            [a + b for a, b in zip(self.features, other.features, strict=True)],
            self.customers + other.customers,
            self.outside_population + other.outside_population,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "customers": self.customers,
            "outside_population": self.outside_population,
            "score": self.score.tolist(),
            "features": [f.tolist() for f in self.features],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftCounts:
        return cls(
            np.asarray(data["score"], dtype=np.int64),
            [np.asarray(f, dtype=np.int64) for f in data["features"]],
            int(data["customers"]),
            int(data.get("outside_population", 0)),
        )


@dataclass(frozen=True)
class DriftResult:
    score_psi: float
    feature_psi: dict[str, float]
    group_psi: dict[str, float] = field(default_factory=dict)


def compute_psi(reference: DriftReference, counts: DriftCounts) -> DriftResult:
    """The score's PSI, each feature's, and each group's (its features' largest)."""
    feature_psi = {
        f.name: psi(f.binned.proportions, c) for f, c in zip(reference.features, counts.features, strict=True)
    }
    group_psi: dict[str, float] = {}
    for f in reference.features:
        group_psi[f.group] = max(group_psi.get(f.group, 0.0), feature_psi[f.name])
    return DriftResult(psi(reference.score.proportions, counts.score), feature_psi, group_psi)


def drift_summary(
    reference: DriftReference | None, counts: DriftCounts | None, min_customers: int = MIN_CUSTOMERS
) -> dict[str, Any]:
    """What a batch summary says about drift. ``status``: ``ok`` (PSIs rounded to 6 places),
    ``no_reference`` (a model directory written before drift references) or ``too_few_customers``
    (fewer than ``min_customers`` counted); the PSIs are null (``group_psi`` empty) unless ok.
    ``customers``: those compared; ``outside_population``: scored customers without an order."""
    status = "no_reference" if reference is None or counts is None else "ok"
    customers = counts.customers if counts is not None else 0
    if status == "ok" and customers < min_customers:
        status = "too_few_customers"
    summary: dict[str, Any] = {
        "status": status,
        "reference": None if reference is None else "model",
        "customers": customers,
        "outside_population": counts.outside_population if counts is not None else 0,
        "min_customers": min_customers,
        "score_psi": None,
        "group_psi": {},
    }
    if status == "ok" and reference is not None and counts is not None:
        result = compute_psi(reference, counts)
        summary["score_psi"] = round(result.score_psi, 6)
        summary["group_psi"] = {g: round(v, 6) for g, v in result.group_psi.items()}
    return summary
