"""No duplicate promotions, and none lost: Powertools idempotency (DynamoDB) around the side effects,
plus a ledger of the promotions already sent.

* API: publishing is idempotent on the list of message idempotency keys (customer, model version,
  as-of day, source). A retried request returns the stored publish result and sends nothing again —
  but only when everything was sent: a publish with failures is not stored (the record is deleted),
  so the retry sends again, and the ledger makes it send only what did not go out.
* Batch: processing one S3 object version (bucket, key, eTag) happens once when it succeeded; a file
  whose promotions could not all be sent fails its record (SQS redelivers it, then the DLQ), and on
  redelivery the ledger again sends only the missing ones.
* The ledger (``SentLedger``, the DynamoDB adapter of ``churnguard.ports.PromotionLedger``): one item
  per sent promotion, ``promotion#<idempotency key>``, in the idempotency table with a longer TTL
  (``LEDGER_TTL_S``, 15 days: past the 14 days a dead-letter queue keeps a message; a message redriven
  more than once can outlive it, since each redrive restarts the queue's retention). Written after
  each ``SendMessageBatch`` chunk SQS accepted, before the next is sent. A crash (or a ledger failure)
  between the send and the write can still repeat that one chunk on retry (at least once, within that
  window).

The handlers register the Lambda context on the config, so a timed-out invocation's record expires
with the invocation instead of staying IN_PROGRESS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from churnguard.ports import LedgerUnavailableError as LedgerUnavailableError  # raised here
from churnguard.ports import PromotionLedger
from churnguard.promotions import PromotionsPublisher, PublishResult, QueuePromotionsPublisher

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import KeysAndAttributesUnionTypeDef, WriteRequestUnionTypeDef

DEFAULT_TTL_S = 7 * 24 * 3600  # Powertools idempotency records: a completed request or file version
# Ledger items live longer than any dead-letter queue keeps a message (14 days in the template): a
# message redriven on its last day must still find the promotions and decisions it already sent, or
# it sends them again (with the records' 7 days, a redrive in the second week duplicated them). Only
# the ledgers: the records of completed work keep 7 days (an identical file dropped again after a
# week is scored again).
LEDGER_TTL_S = 15 * 24 * 3600


def idempotency_config(key_jmespath: str, expires_after_s: int = DEFAULT_TTL_S) -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath=key_jmespath,
        expires_after_seconds=expires_after_s,
        raise_on_no_idempotency_key=True,
    )


class SentLedger:
    """Which promotions (by idempotency key) SQS has accepted: items ``promotion#<key>`` with a TTL."""

    PREFIX = "promotion#"
    WHAT = "the promotions ledger"

    ATTEMPTS = 5  # per batch call; unprocessed items/keys (DynamoDB throttling) are retried with backoff
    BACKOFF_S = 0.05  # 0.05, 0.1, 0.2, 0.4 s

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        ttl_s: int = LEDGER_TTL_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ddb, self._table, self._ttl_s, self._clock, self._sleep = dynamodb, table, ttl_s, clock, sleep

    def sent(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        unique = sorted(set(keys))
        for start in range(0, len(unique), 100):  # BatchGetItem: 100 keys per call
            request: Mapping[str, KeysAndAttributesUnionTypeDef] = {
                self._table: {
                    "Keys": [{"id": {"S": self.PREFIX + k}} for k in unique[start : start + 100]],
                    "ProjectionExpression": "id",
                }
            }
            for attempt in range(self.ATTEMPTS):
                if attempt:
                    self._sleep(self.BACKOFF_S * 2 ** (attempt - 1))
                response = self._ddb.batch_get_item(RequestItems=request)
                found |= {
                    item["id"]["S"][len(self.PREFIX) :] for item in response["Responses"].get(self._table, [])
                }
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            if request:
                raise LedgerUnavailableError(f"{self.WHAT} did not answer for every key")
        return found

    def mark(self, keys: Sequence[str]) -> None:
        expires = str(int(self._clock()) + self._ttl_s)
        unique = sorted(set(keys))
        for start in range(0, len(unique), 25):  # BatchWriteItem: 25 items per call
            request: Mapping[str, Sequence[WriteRequestUnionTypeDef]] = {
                self._table: [
                    {"PutRequest": {"Item": {"id": {"S": self.PREFIX + k}, "expiration": {"N": expires}}}}
                    for k in unique[start : start + 25]
                ]
            }
            for attempt in range(self.ATTEMPTS):
                if attempt:
                    self._sleep(self.BACKOFF_S * 2 ** (attempt - 1))
                request = self._ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
                if not request:
                    break
            if request:
                raise LedgerUnavailableError(f"{self.WHAT} did not record every key")


class DecisionLedger(SentLedger):
    """Which decisions (by ``decision_id``) the decision log holds (``churnguard.decision_store``)."""

    PREFIX = "decision#"
    WHAT = "the decisions ledger"


class LedgeredPublisher:
    """Sends only the promotions the ledger has not seen, and records what SQS accepted chunk by chunk
    (``SendMessageBatch`` size): a crash or a ledger failure mid-publish leaves at most the chunk in
    flight unrecorded. (Recorded once at the end, every promotion sent before it was sent again.)"""

    CHUNK = QueuePromotionsPublisher.BATCH

    def __init__(self, inner: PromotionsPublisher, ledger: PromotionLedger) -> None:
        self._inner, self._ledger = inner, ledger

    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult:
        already = self._ledger.sent([m["idempotency_key"] for m in messages])
        todo = [m for m in messages if m["idempotency_key"] not in already]
        result = PublishResult(sent=len(messages) - len(todo))
        for start in range(0, len(todo), self.CHUNK):
            chunk = todo[start : start + self.CHUNK]
            sent = self._inner.publish(chunk)
            failed = {f["idempotency_key"] for f in sent.failed}
            self._ledger.mark([m["idempotency_key"] for m in chunk if m["idempotency_key"] not in failed])
            result.sent += sent.sent
            result.failed += sent.failed
        return result


class PromotionsNotSentError(RuntimeError):
    """Some promotions could not be sent after retries; raised so the idempotency record is not
    stored (a retry must send them) and, in batch, so SQS redelivers the file (then the DLQ)."""

    def __init__(self, result: PublishResult) -> None:
        super().__init__(f"{len(result.failed)} promotions not sent")
        self.result = result


class IdempotentPublisher:
    """Wraps a publisher so the same set of promotion messages is sent at most once, and a set with
    failures is not remembered as done."""

    def __init__(
        self, inner: PromotionsPublisher, persistence: BasePersistenceLayer, config: IdempotencyConfig
    ) -> None:
        self.config = config

        # Records are keyed on this function's qualified name too: keep the name.
        def publish_once(keys: list[str], messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
            result = inner.publish(messages)
            if result.failed:
                raise PromotionsNotSentError(result)
            return {"sent": result.sent, "failed": [], "held_out": result.held_out}

        once = idempotent_function(data_keyword_argument="keys", persistence_store=persistence, config=config)
        self._publish_once: Callable[..., dict[str, Any]] = once(publish_once)

    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult:
        keys = sorted(m["idempotency_key"] for m in messages)
        try:
            stored = self._publish_once(keys=keys, messages=messages)
        except PromotionsNotSentError as exc:
            return exc.result
        # Records stored before control groups existed have no "held_out".
        return PublishResult(
            sent=stored["sent"], failed=list(stored["failed"]), held_out=list(stored.get("held_out", []))
        )


def once_per_object(
    process: Callable[[str, str], dict[str, Any]],
    persistence: BasePersistenceLayer,
    config: IdempotencyConfig,
) -> Callable[[str, str, str], dict[str, Any]]:
    """``process(bucket, key)`` at most once per (bucket, key, eTag)."""

    # Records are keyed on this function's module and qualified name
    # (``churnguard.idempotency.once_per_object.<locals>.run``): renaming it forgets every stored record.
    def run(s3_object: dict[str, str]) -> dict[str, Any]:
        return process(s3_object["bucket"], s3_object["key"])

    once = idempotent_function(
        data_keyword_argument="s3_object", persistence_store=persistence, config=config
    )
    run_once: Callable[..., dict[str, Any]] = once(run)

    def call(bucket: str, key: str, etag: str) -> dict[str, Any]:
        return run_once(s3_object={"bucket": bucket, "key": key, "etag": etag})

    return call
