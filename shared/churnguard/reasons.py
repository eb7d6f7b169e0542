"""Why is a customer at risk? Each feature group's contribution to the churn probability.

Groups: recency, frequency, spend, recent trend, tenure, the event types' own groups, profile, and
the weekly activity sequence. A positive contribution pushes the customer towards churning.

Two explainers, one interface (``explain(sequence, static) -> (probabilities, contributions)``):

* ``ShapleyExplainer`` (models trained since issue 9): exact group Shapley values relative to a real
  retained training customer (the reference, named in metadata.json and ``GET /v1/model``), computed
  by the model directory's ``model_reasons.tflite`` (see training/reasons_model.py). The
  contributions add up to the customer's probability minus the reference's; a group the model
  ignores gets exactly 0.
* ``OcclusionExplainer``, for model directories written before it (they have no reasons model):
  each group replaced by the median training inputs, one at a time. Its contributions do not add up,
  and where the median customer is a churner they understate the risk. Kept so a serving function
  upgraded before its model is retrained still answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from churnguard.event_types import EVENT_REASON_TEXT

SEQUENCE_GROUP = "weekly_activity"
# How far the Shapley contributions' sum may be from p - p_reference (checked at export).
EFFICIENCY_TOLERANCE = 1e-5
SHAPLEY_METHOD = "exact_group_shapley"
OCCLUSION_METHOD = "occlusion_median"

# Core (order) groups here; the event types' own groups and texts come from churnguard.event_types.
REASON_TEXT = {
    "recency": "long time since the last order compared with the usual rhythm",
    "frequency": "few purchase occasions",
    "spend": "low spend",
    "recent_trend": "activity dropping in recent weeks",
    "tenure": "customer tenure",
    **EVENT_REASON_TEXT,
    "profile": "profile",
    SEQUENCE_GROUP: "week-by-week activity pattern",
}


class Scorer(Protocol):
    """What the explainers need of a TFLite model (``churnguard.scorer.TFLiteScorer``)."""

    @property
    def output_width(self) -> int: ...

    def predict(self, sequence: np.ndarray, static: np.ndarray) -> np.ndarray: ...

    def predict_rows(self, sequence: np.ndarray, static: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Reason:
    group: str
    contribution: float  # churn probability minus the probability with this group at its baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "contribution": round(self.contribution, 4),
            "text": REASON_TEXT.get(self.group, self.group),
        }


def reason_groups(static_groups: Sequence[str]) -> tuple[str, ...]:
    """The explained groups: the static groups in first-use order, then the weekly sequence."""
    return (*dict.fromkeys(static_groups), SEQUENCE_GROUP)


def top_reasons(groups: Sequence[str], contributions: np.ndarray, k: int = 3) -> list[list[Reason]]:
    """The ``k`` groups that push each customer's risk up the most (positive contributions only)."""
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
    return [
        [Reason(groups[j], float(contributions[i, j])) for j in row if contributions[i, j] > 1e-4]
        for i, row in enumerate(order)
    ]


class ShapleyExplainer:
    """Probabilities and exact group Shapley contributions from the reasons model, in one call."""

    method = SHAPLEY_METHOD

    def __init__(
        self,
        reasons_model: Scorer,
        groups: Sequence[str],
        reference_probability: float,
        *,
        served: Scorer | None = None,
    ) -> None:
        self.groups: tuple[str, ...] = tuple(groups)
        self._served = served
        self.reference_probability = float(reference_probability)
        if reasons_model.output_width != 1 + len(self.groups):
            raise ValueError(
                f"the reasons model outputs {reasons_model.output_width} columns for "
                f"{len(self.groups)} groups (expected {1 + len(self.groups)})"
            )
        self._model = reasons_model

    def explain(self, sequence: np.ndarray, static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [n] float32, contributions [n, groups] float64)``."""
        rows = self._model.predict_rows(sequence, static)
        contributions = rows[:, 1:].astype(np.float64)
        if self._served is not None:  # another model flavour serves: its score, these contributions
            return self._served.predict(sequence, static), contributions
        return np.ascontiguousarray(rows[:, 0]), contributions

    def top_reasons(self, contributions: np.ndarray, k: int = 3) -> list[list[Reason]]:
        return top_reasons(self.groups, contributions, k)


class OcclusionExplainer:
    method = OCCLUSION_METHOD

    def __init__(
        self,
        static_groups: Sequence[str],
        static_baseline: np.ndarray,
        sequence_baseline: np.ndarray,
        model: Scorer,
    ) -> None:
        self._model = model
        self.static_groups = np.asarray(static_groups, dtype=object)
        self.static_baseline = np.asarray(static_baseline, dtype=np.float32)
        self.sequence_baseline = np.asarray(sequence_baseline, dtype=np.float32)
        if self.static_baseline.shape != (len(static_groups),):
            raise ValueError(
                f"static baseline has {self.static_baseline.shape} values for {len(static_groups)} features"
            )
        self.groups: tuple[str, ...] = reason_groups(static_groups)

    def explain(self, sequence: np.ndarray, static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [n], contributions [n, groups])``: one interpreter call for all variants."""
        n = len(sequence)
        stacked = self._model.predict(*self.occluded_inputs(sequence, static))
        return stacked[:n], self.contributions(stacked, n)

    def occluded_inputs(self, sequence: np.ndarray, static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stacked inputs: block 0 = original, block g+1 = group g at its baseline."""
        n = len(sequence)
        blocks = len(self.groups) + 1
        seq = np.broadcast_to(sequence, (blocks, *sequence.shape)).copy()
        sta = np.broadcast_to(static, (blocks, *static.shape)).copy()
        for g, group in enumerate(self.groups, start=1):
            if group == SEQUENCE_GROUP:
                seq[g] = self.sequence_baseline
            else:
                columns = self.static_groups == group
                sta[g][:, columns] = self.static_baseline[columns]
        return seq.reshape(blocks * n, *sequence.shape[1:]), sta.reshape(blocks * n, static.shape[1])

    def contributions(self, probabilities_stacked: np.ndarray, n: int) -> np.ndarray:
        """``[n, groups]``: original probability minus each occluded probability."""
        p = probabilities_stacked.reshape(len(self.groups) + 1, n)
        contributions: np.ndarray = (p[0][None, :] - p[1:]).T
        return contributions

    def top_reasons(self, contributions: np.ndarray, k: int = 3) -> list[list[Reason]]:
        return top_reasons(self.groups, contributions, k)


Explainer = ShapleyExplainer | OcclusionExplainer
