"""Which at-risk customers get an offer, what the offer is, and how it reaches the promotions queue.

Policy (defaults in ``PromotionPolicy``; every parameter configurable):

* customer value = spend per week of tenure x ``value_horizon_weeks`` (the spend at stake over the
  churn horizon), at least ``min_customer_value``;
* expected value of an offer = P(churn) x customer value x uplift(action) - cost(action);
* only customers at or above the model's promotion threshold are considered, and only an action with
  a positive expected value is queued — the best one per customer;
* actions: a care call (high-value customers only), or a coupon whose size grows with value and risk.

Message schema ``churnguard.promotion/v1`` is documented in the README.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from churnguard.aws import aws_errors, error_code
from churnguard.ports import MessageQueue, QueueMessage
from churnguard.scoring import ScoredBatch

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MESSAGE_SCHEMA = "churnguard.promotion/v1"


@dataclass(frozen=True)
class Action:
    name: str  # e.g. coupon_10, care_call
    cost: float  # expected cost per customer reached (coupon redemption value, agent time, ...)
    uplift: float  # share of churners this action wins back
    min_customer_value: float = 0.0  # offered only to customers worth at least this much


DEFAULT_ACTIONS: tuple[Action, ...] = (
    Action("coupon_5", cost=2.0, uplift=0.05),
    Action("coupon_10", cost=5.0, uplift=0.10),
    Action("coupon_20", cost=12.0, uplift=0.16),
    Action("care_call", cost=25.0, uplift=0.30, min_customer_value=250.0),
)


@dataclass(frozen=True)
class PromotionPolicy:
    actions: tuple[Action, ...] = DEFAULT_ACTIONS
    value_horizon_weeks: float = 39.0
    min_customer_value: float = 10.0

    def customer_value(self, total_spend: np.ndarray, tenure_days: np.ndarray) -> np.ndarray:
        weeks = np.maximum(np.nan_to_num(tenure_days, nan=0.0) / 7.0, 1.0)
        per_week = np.nan_to_num(total_spend, nan=0.0) / weeks
        value: np.ndarray = np.maximum(per_week * self.value_horizon_weeks, self.min_customer_value)
        return value

    def best_actions(self, churn_probability: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per customer: index of the best action (-1 = none pays off) and its expected value."""
        ev = np.stack(
            [
                np.where(
                    value >= a.min_customer_value, churn_probability * value * a.uplift - a.cost, -np.inf
                )
                for a in self.actions
            ],
            axis=1,
        )
        best = np.argmax(ev, axis=1)
        best_ev = ev[np.arange(len(ev)), best]
        return np.where(best_ev > 0, best, -1), best_ev


def idempotency_key(source: str, user_id: str, model_version: str, as_of: str) -> str:
    """Same customer, source, model and as-of day -> same key: a re-delivery cannot promote twice."""
    return hashlib.sha256(f"{source}|{user_id}|{model_version}|{as_of}".encode()).hexdigest()[:32]


def build_messages(
    scored: ScoredBatch,
    policy: PromotionPolicy,
    *,
    source: str,
    scored_at: str,
    as_of: Sequence[str],
    cutoffs: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Promotion messages for customers at/above the threshold whose best offer pays off.

    ``as_of`` per customer: the day (or instant) the idempotency key names; ``cutoffs`` (ISO
    instants), when ``as_of`` is a day: the instant the features describe (the message's ``cutoff``)."""
    value = policy.customer_value(scored.features["total_spend"], scored.features["tenure_days"])
    action_idx, ev = policy.best_actions(scored.churn_probability, value)
    chosen = np.flatnonzero(scored.at_or_above_promotion & (action_idx >= 0))
    messages = []
    for i in chosen.tolist():
        action = policy.actions[action_idx[i]]
        user_id = str(scored.user_ids[i])
        messages.append(
            {
                "schema": MESSAGE_SCHEMA,
                "user_id": user_id,
                "churn_probability": round(float(scored.churn_probability[i]), 6),
                "risk_tier": str(scored.risk_tier[i]),
                "reasons": [r.to_dict() for r in scored.reasons[i]],
                "suggested_action": {"type": action.name, "cost": action.cost, "uplift": action.uplift},
                "expected_value": round(float(ev[i]), 2),
                "customer_value": round(float(value[i]), 2),
                "model_version": scored.model_version,
                "horizon_weeks": scored.horizon_weeks,
                "scored_at": scored_at,
                "as_of": as_of[i],
                "source": source,
                "idempotency_key": idempotency_key(source, user_id, scored.model_version, as_of[i]),
            }
        )
        if cutoffs is not None:
            messages[-1]["cutoff"] = cutoffs[i]
    return messages


# ---------------------------------------------------------------------------------------------
# publishing
# ---------------------------------------------------------------------------------------------


class PromotionsPublisher(Protocol):
    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult: ...


@dataclass
class PublishResult:
    sent: int = 0
    failed: list[dict[str, Any]] = field(
        default_factory=list
    )  # {"user_id", "idempotency_key", "code", "message"}
    # control-arm decisions, recorded and deliberately not sent (churnguard.decisions): who, as in failed
    held_out: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


class QueuePromotionsPublisher:
    """Sends in batches of ``BATCH`` (``SendMessageBatch``); failed entries are retried with backoff,
    then reported. AWS errors (botocore's, see ``churnguard.ports``) fail the whole batch and are
    retried too; anything else is a bug and propagates."""

    BATCH = 10

    def __init__(
        self,
        queue: MessageQueue,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._queue = queue
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._sleep = sleep

    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult:
        result = PublishResult()
        for start in range(0, len(messages), self.BATCH):
            chunk = {str(i): m for i, m in enumerate(messages[start : start + self.BATCH])}
            last_errors: dict[str, dict[str, str]] = {}
            for attempt in range(self._max_attempts):
                if not chunk:
                    break
                if attempt:
                    self._sleep(self._backoff_s * 2 ** (attempt - 1))
                try:
                    answer = self._queue.send_batch([_queue_message(k, m) for k, m in chunk.items()])
                except aws_errors() as exc:  # a throttled or unreachable queue: retry the whole chunk
                    # Timeouts and resets carry ``response = None`` (an AttributeError here escaped the
                    # publisher: the API answered 500 instead of reporting the failures).
                    code = error_code(exc) or type(exc).__name__
                    last_errors = {k: {"code": code, "message": str(exc)} for k in chunk}
                    continue
                result.sent += answer.sent
                failed = {f.id: f for f in answer.failed}
                last_errors = {k: {"code": f.code, "message": f.message} for k, f in failed.items()}
                # Sender faults (malformed message) will not succeed on retry.
                retryable = {k for k, f in failed.items() if not f.sender_fault}
                chunk = {k: chunk[k] for k in retryable}
                if len(retryable) < len(failed):
                    for k in set(failed) - retryable:
                        result.failed.append({**_who(messages[start + int(k)]), **last_errors[k]})
            for k in chunk:
                if k in last_errors:
                    result.failed.append({**_who(chunk[k]), **last_errors[k]})
        return result


class SqsPromotionsPublisher(QueuePromotionsPublisher):
    """The publisher on one SQS queue, from a boto3 client (``churnguard.adapters.SqsMessageQueue``)."""

    def __init__(
        self,
        sqs_client: SQSClient,
        queue_url: str,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from churnguard.adapters import SqsMessageQueue

        super().__init__(
            SqsMessageQueue(sqs_client, queue_url),
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            sleep=sleep,
        )


def _queue_message(entry_id: str, message: dict[str, Any]) -> QueueMessage:
    return QueueMessage(
        id=entry_id,
        body=json.dumps(message, separators=(",", ":")),
        attributes={"schema": MESSAGE_SCHEMA, "idempotency_key": message["idempotency_key"]},
    )


def _who(message: dict[str, Any]) -> dict[str, str]:
    return {"user_id": message["user_id"], "idempotency_key": message["idempotency_key"]}
