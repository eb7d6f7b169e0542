"""Score customers with a ModelBundle: features -> TFLite -> risk tier -> reasons (numpy only).

Used by the HTTP and batch Lambdas alike. When every customer needs reasons, one call of the
explainer scores and explains (the reasons model's first column is the probability), and a
single-customer request always has the same batch size: no interpreter is re-allocated on the warm
path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from churnguard.bundle import ModelBundle
from churnguard.features import EventArrays, RawFeatures, build_raw_features
from churnguard.reasons import Reason


class ReasonsFor(StrEnum):
    ALL = "all"
    PROMOTED = "promoted"  # customers at or above the promotion threshold
    NONE = "none"


@dataclass(frozen=True)
class ScoredBatch:
    user_ids: Sequence[str] | np.ndarray  # object array of str in batch
    churn_probability: np.ndarray  # float32 [n]
    risk_tier: np.ndarray  # object [n]: low | medium | high
    at_or_above_promotion: np.ndarray  # bool [n]
    reasons: list[list[Reason]]  # [] where not computed
    features: dict[str, np.ndarray]  # a few raw features the promotion policy needs, per customer
    model_version: str
    horizon_weeks: int  # the model's churn horizon (its protocol): what "churn" means for these scores


POLICY_FEATURES = ("total_spend", "tenure_days", "recency_days", "n_orders")


@functools.lru_cache(maxsize=64)
def _policy_columns(static_names: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """``POLICY_FEATURES`` with their column in a static matrix of ``static_names`` (once per names)."""
    return tuple((name, static_names.index(name)) for name in POLICY_FEATURES)


def score_customers(
    bundle: ModelBundle,
    user_ids: Sequence[str] | np.ndarray,
    events: EventArrays,
    as_of_s: np.ndarray | float,
    *,
    profile: dict[str, np.ndarray] | None = None,
    reasons_for: ReasonsFor = ReasonsFor.ALL,
    top_k: int = 3,
) -> ScoredBatch:
    n = len(user_ids)
    if events.n_users != n:
        raise ValueError(f"events index {events.n_users} customers but {n} user ids were given")
    spec = bundle.spec
    raw = build_raw_features(
        events, as_of_s, event_types=spec.event_types, config=spec.config, profile=profile
    )
    return score_raw_features(bundle, user_ids, raw, reasons_for=reasons_for, top_k=top_k)


def score_raw_features(
    bundle: ModelBundle,
    user_ids: Sequence[str] | np.ndarray,
    raw: RawFeatures,
    *,
    reasons_for: ReasonsFor = ReasonsFor.ALL,
    top_k: int = 3,
) -> ScoredBatch:
    """``score_customers`` from features already built (by ``build_raw_features`` or, for stored
    customer states, ``customer_state.raw_features_from_states``)."""
    n = len(user_ids)
    sequence, static = bundle.spec.transform(raw)
    explainer = bundle.explainer
    reasons: list[list[Reason]] = [[] for _ in range(n)]
    if reasons_for is ReasonsFor.ALL and n:
        probabilities, contributions = explainer.explain(sequence, static)
        reasons = explainer.top_reasons(contributions, top_k)
    else:
        probabilities = bundle.scorer.predict(sequence, static)
    promoted = probabilities >= bundle.thresholds.promotion
    if reasons_for is ReasonsFor.PROMOTED and promoted.any():
        rows = np.flatnonzero(promoted)
        _, contributions = explainer.explain(sequence[rows], static[rows])
        for row, row_reasons in zip(rows, explainer.top_reasons(contributions, top_k), strict=True):
            reasons[row] = row_reasons
    return ScoredBatch(
        user_ids=user_ids,
        churn_probability=probabilities,
        risk_tier=bundle.thresholds.tier(probabilities),
        at_or_above_promotion=promoted,
        reasons=reasons,
        features={name: raw.static[:, j] for name, j in _policy_columns(raw.static_names)},
        model_version=bundle.version,
        horizon_weeks=bundle.metadata.protocol.horizon_weeks,
    )
