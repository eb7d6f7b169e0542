"""The decision log (issue 10 §1): every promotion decision, treated and control, kept for outcomes.

What is recorded, one row per decision (``DECISION_COLUMNS``; schema ``churnguard.decision/v1``):

* **acted-on decisions**: every customer the promotion policy would act on (``build_messages``). A
  ``ControlPolicy`` fraction of them is held out as **control**: not sent, recorded exactly like the
  treated ones. ``ControlledPublisher`` does this in front of the promotions publisher, so the API,
  batch, dataset, real-time (the outbox) and sweep paths all decide the same way;
* **the monitoring sample**: scored customers the policy would not act on but whose draw puts them
  in the control arm (``action`` = ``none``). With the acted-on control rows they are a uniform random
  sample of *every* scored customer, none of them treated: an unbiased check of the model on today's
  customers (live AUC), which the acted-on control rows alone (high-risk only) are not.

The arm is drawn for the period of the decision's cutoff (the instant the features describe: the
request's as-of instant, the file's as-of, the real-time scoring instant), not of the wall clock: a
retried request or a re-delivered file is decided again into the same arm, and a replay of old data is
decided for its own time. The cutoff is also the row's ``as_of``: the outcome window starts there, so
no event the model saw counts as an outcome.

Treated means *assigned* to treatment (intention to treat): the row is logged before the send, and a
promotion the queue then refuses stays a treated row (the response or the summary reports it failed).

Promotion messages from before control groups existed (in a real-time outbox: no ``horizon_weeks``)
are sent as they were decided, and not logged.

Idempotent: ``decision_id`` is the promotion's idempotency key (source, customer, model version,
as-of day; a monitoring-sample row's is ``sample:`` + that key, so that a later decision to act on
the same customer the same day is logged too), the same for a retried request, a re-delivered file
or a re-published outbox; the log adapters write a batch of rows under a name made of its ids (same
rows -> same object) and skip the ids already logged (the decisions ledger, when an idempotency table
is configured). Readers still deduplicate on ``decision_id`` (``dedupe``) for the one window no write
can close: a crash between an object's write and the ledger's record of it, followed by a redelivery
in another batch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from churnguard.control import Arm, ControlPolicy
from churnguard.promotions import PromotionsPublisher, PublishResult, idempotency_key
from churnguard.scoring import ScoredBatch

DECISION_SCHEMA = "churnguard.decision/v1"
NO_ACTION = "none"
SAMPLE_PREFIX = "sample:"  # a monitoring-sample row's decision_id: this + the promotion key it would have

# (column, Parquet/Glue type): the log's schema, in order. ``as_of_date`` is the partition.
DECISION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("decision_id", "string"),
    ("user_id", "string"),
    ("decided_at", "string"),  # ISO-8601 UTC: when the decision was made
    # ISO-8601 UTC: the scoring cutoff (features see events before it); outcomes count from it
    ("as_of", "string"),
    ("model_version", "string"),
    ("horizon_weeks", "int"),  # the model's churn horizon: the outcome window is [as_of, + horizon)
    ("churn_probability", "double"),
    ("risk_tier", "string"),
    ("action", "string"),  # the policy's action, or "none" (monitoring sample)
    ("action_cost", "double"),
    ("action_uplift", "double"),  # the policy's assumed uplift (the measured one is the outcome job's)
    ("expected_value", "double"),
    ("customer_value", "double"),
    ("arm", "string"),  # treated | control
    ("period", "bigint"),  # the campaign period the arm was drawn for
    ("period_days", "int"),  # its length: the period ends at (period + 1) x period_days days after the epoch
    ("control_fraction", "double"),
    ("source", "string"),  # api | batch | dataset | realtime
    ("trigger", "string"),  # real-time: event | inactivity; else empty
)
PARTITION_COLUMN = "as_of_date"  # YYYY-MM-DD of as_of


class DecisionLog(Protocol):
    """Where decision rows go (``churnguard.adapters``: SQS to the log writer, or Parquet in S3)."""

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep ``records`` (rows of ``DECISION_COLUMNS``); raises when they could not be kept."""
        ...


class DecisionLogUnavailableError(RuntimeError):
    """The decision log did not take the rows; nothing was sent (a retry decides again)."""


def as_of_instant(as_of: str) -> dt.datetime:
    """A message's ``as_of`` (a day, ``YYYY-MM-DD``, or an ISO-8601 instant) as a UTC instant; a
    day is its first instant, as a batch file's as-of day is the cutoff after its last events."""
    parsed = dt.datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _iso(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cutoff_of(message: dict[str, Any]) -> dt.datetime:
    """The instant a promotion message's features describe (its ``cutoff``; else its ``as_of``)."""
    return as_of_instant(message.get("cutoff") or message["as_of"])


def record_of(message: dict[str, Any], arm: Arm, control: ControlPolicy) -> dict[str, Any]:
    """The decision row of a promotion message (``build_messages``) decided into ``arm``."""
    as_of = cutoff_of(message)
    action = message["suggested_action"]
    return {
        "decision_id": message["idempotency_key"],
        "user_id": message["user_id"],
        "decided_at": message["scored_at"],
        "as_of": _iso(as_of),
        "model_version": message["model_version"],
        "horizon_weeks": int(message["horizon_weeks"]),
        "churn_probability": float(message["churn_probability"]),
        "risk_tier": message["risk_tier"],
        "action": action["type"],
        "action_cost": float(action["cost"]),
        "action_uplift": float(action["uplift"]),
        "expected_value": float(message["expected_value"]),
        "customer_value": float(message["customer_value"]),
        "arm": arm,
        "period": control.period(as_of),
        "period_days": control.period_days,
        "control_fraction": control.fraction,
        "source": message["source"],
        "trigger": message.get("trigger") or "",
        PARTITION_COLUMN: as_of.date().isoformat(),
    }


def monitoring_sample(
    scored: ScoredBatch,
    control: ControlPolicy,
    *,
    acted_on: set[str],
    source: str,
    scored_at: str,
    as_of: Sequence[str],
    cutoffs: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows for the scored customers not acted on whose draw is control (``action`` = ``none``);
    ``as_of`` as in ``build_messages`` (the idempotency key's day), ``cutoffs`` the instants."""
    if control.fraction == 0.0:
        return []
    rows = []
    for i, user in enumerate(map(str, scored.user_ids)):
        if user in acted_on:
            continue
        instant = as_of_instant(cutoffs[i] if cutoffs is not None else as_of[i])
        if control.arm(user, instant) != "control":
            continue
        rows.append(
            {
                "decision_id": SAMPLE_PREFIX + idempotency_key(source, user, scored.model_version, as_of[i]),
                "user_id": user,
                "decided_at": scored_at,
                "as_of": _iso(instant),
                "model_version": scored.model_version,
                "horizon_weeks": scored.horizon_weeks,
                "churn_probability": round(float(scored.churn_probability[i]), 6),
                "risk_tier": str(scored.risk_tier[i]),
                "action": NO_ACTION,
                "action_cost": 0.0,
                "action_uplift": 0.0,
                "expected_value": 0.0,
                "customer_value": 0.0,
                "arm": "control",
                "period": control.period(instant),
                "period_days": control.period_days,
                "control_fraction": control.fraction,
                "source": source,
                "trigger": "",
                PARTITION_COLUMN: instant.date().isoformat(),
            }
        )
    return rows


@dataclass(frozen=True)
class Decisions:
    """Where decisions go: the control policy and the log (None: no control groups, nothing logged)."""

    control: ControlPolicy
    log: DecisionLog

    def sample(
        self,
        scored: ScoredBatch,
        *,
        acted_on: set[str],
        source: str,
        scored_at: str,
        as_of: Sequence[str],
        cutoffs: Sequence[str] | None = None,
    ) -> int:
        """Log the monitoring sample of ``scored``; the number of rows."""
        rows = monitoring_sample(
            scored,
            self.control,
            acted_on=acted_on,
            source=source,
            scored_at=scored_at,
            as_of=as_of,
            cutoffs=cutoffs,
        )
        if rows:
            self.log.append(rows)
        return len(rows)


class ControlledPublisher:
    """In front of the promotions publisher: draws each message's arm, logs every decision (treated
    and control) first, then sends the treated ones. Control messages count as ``held_out``.

    The log is written before anything is sent: when it fails, every message is reported failed
    (``DecisionLogUnavailable``) and nothing is sent, so the caller's retry (the API's idempotency,
    the batch file's redelivery, the real-time outbox) decides again, into the same arms."""

    def __init__(self, inner: PromotionsPublisher, decisions: Decisions) -> None:
        self.inner, self._decisions = inner, decisions

    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult:
        control = self._decisions.control
        decided = [m for m in messages if "horizon_weeks" in m]  # the rest: decided before the log existed
        arms = [control.arm(m["user_id"], cutoff_of(m)) for m in decided]
        try:
            self._decisions.log.append([record_of(m, a, control) for m, a in zip(decided, arms, strict=True)])
        except DecisionLogUnavailableError as exc:
            failure = {"code": "DecisionLogUnavailable", "message": str(exc)}
            failed = [
                {"user_id": m["user_id"], "idempotency_key": m["idempotency_key"], **failure}
                for m in messages
            ]
            return PublishResult(failed=failed)
        held_out = {m["idempotency_key"] for m, a in zip(decided, arms, strict=True) if a == "control"}
        send = [m for m in messages if m["idempotency_key"] not in held_out]
        result = self.inner.publish(send) if send else PublishResult()
        result.held_out += [
            {"user_id": m["user_id"], "idempotency_key": m["idempotency_key"]}
            for m in messages
            if m["idempotency_key"] in held_out
        ]
        return result


def dedupe(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``decision_id`` (the first decided), for readers of the log."""
    seen: set[str] = set()
    kept = []
    for record in sorted(records, key=lambda r: (r["decided_at"], r["decision_id"])):
        if record["decision_id"] not in seen:
            seen.add(record["decision_id"])
            kept.append(record)
    return kept


def batch_name(records: Sequence[dict[str, Any]]) -> str:
    """A name for a batch of rows made of their ids: the same rows always get the same name."""
    ids = sorted({r["decision_id"] for r in records})
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32]


def arm_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Rows per arm (acted-on decisions only: the monitoring sample has no action)."""
    return dict(Counter(r["arm"] for r in records if r["action"] != NO_ACTION))
