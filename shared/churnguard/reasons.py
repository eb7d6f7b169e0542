"""Why is a customer at risk? Batched occlusion on the TFLite model itself.

For each feature group (recency, frequency, spend, recent trend, tenure, browsing, returns, profile,
and the weekly activity sequence) the group's inputs are replaced by the training baseline (medians
of the transformed training inputs, saved in metadata.json) and the customer is scored again. The
drop in churn probability is the group's contribution: positive means the group pushes the customer
towards churning. All ``(groups + 1) x customers`` variants go through the interpreter in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from churnguard.event_types import EVENT_REASON_TEXT

SEQUENCE_GROUP = "weekly_activity"

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


class OcclusionExplainer:
    def __init__(
        self,
        static_groups: Sequence[str],
        static_baseline: np.ndarray,
        sequence_baseline: np.ndarray,
    ) -> None:
        groups = list(dict.fromkeys(static_groups))
        self.static_groups = np.asarray(static_groups, dtype=object)
        self.static_baseline = np.asarray(static_baseline, dtype=np.float32)
        self.sequence_baseline = np.asarray(sequence_baseline, dtype=np.float32)
        if self.static_baseline.shape != (len(static_groups),):
            raise ValueError(
                f"static baseline has {self.static_baseline.shape} values for {len(static_groups)} features"
            )
        self.groups: tuple[str, ...] = (*groups, SEQUENCE_GROUP)

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
        """The ``k`` groups that push each customer's risk up the most (positive contributions only)."""
        order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]
        out = []
        for i, row in enumerate(order):
            out.append(
                [
                    Reason(self.groups[j], float(contributions[i, j]))
                    for j in row
                    if contributions[i, j] > 1e-4
                ]
            )
        return out
