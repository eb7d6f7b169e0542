"""Control groups for promotion decisions (issue 10 §1): who is held out, deterministically.

Of the customers the policy would act on, a fraction is held out as **control**: not sent to the
promotions queue, recorded like the treated ones, so that later outcomes measure what acting changed
(uplift) and how well the model ranks untreated customers (live quality).

The arm is a pure function of (salt, campaign period, user id): SHA-256 of the three, read as a
uniform number in [0, 1), below ``fraction`` -> control. So the same customer is in the same arm
for the whole period wherever they are decided (API, batch, real-time, sweep), with no state to
share; a new period re-draws every customer independently (no one is held out forever); and without
the salt nobody can predict or steer an arm. Periods are ``period_days`` whole days long, counted
from the Unix epoch (UTC), so every function agrees on where one ends.

A re-draw can put a control customer into treatment before their outcome window is over, so the
outcome job measures only decisions whose window ends inside their own period (``period_end``):
choose a period of at least twice the model's horizon (the default, 546 days, is twice the default
39 weeks), and at least half of the decisions are measurable. ``churnguard.decisions`` uses the arm.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

Arm = Literal["control", "treated"]
_SCALE = float(1 << 64)


@dataclass(frozen=True)
class ControlPolicy:
    fraction: float = 0.10  # 0 disables control groups
    salt: str = ""  # per deployment; changing it re-draws every arm
    # Whole days: periods then start at midnight UTC, so a day and any instant of it share a period.
    period_days: int = 546

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0 or not math.isfinite(self.fraction):
            raise ValueError("fraction must be at least 0 and below 1")
        if (
            isinstance(self.period_days, bool)
            or not isinstance(self.period_days, int)
            or self.period_days < 1
        ):
            raise ValueError("period_days must be a whole number of days, at least 1")

    def period(self, at: dt.datetime) -> int:
        """The campaign period of the instant ``at`` (timezone-aware): whole periods since the epoch."""
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        return math.floor(at.timestamp() / (self.period_days * 86_400))

    def period_end(self, period: int) -> dt.datetime:
        """The first instant after ``period``."""
        return dt.datetime.fromtimestamp((period + 1) * self.period_days * 86_400, dt.UTC)

    def draw(self, user_id: str, period: int) -> float:
        """The customer's uniform number in [0, 1) for ``period``."""
        digest = hashlib.sha256(f"{self.salt}\x1f{period}\x1f{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / _SCALE

    def arm(self, user_id: str, at: dt.datetime) -> Arm:
        """``control`` for a ``fraction`` of customers in each period, ``treated`` for the rest."""
        if self.fraction == 0.0:
            return "treated"
        return "control" if self.draw(user_id, self.period(at)) < self.fraction else "treated"
