"""No duplicate promotions: Powertools idempotency (DynamoDB) around the side effects.

* API: publishing is idempotent on the list of message idempotency keys (customer, model version,
  as-of day, source). A retried request returns the stored publish result and sends nothing again.
* Batch: processing one S3 object version (bucket, key, eTag) happens once; a re-delivered
  notification returns the stored summary.

The handlers register the Lambda context on the config, so a timed-out invocation's record expires
with the invocation instead of staying IN_PROGRESS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from churnguard.promotions import PromotionsPublisher, PublishResult

DEFAULT_TTL_S = 7 * 24 * 3600


def idempotency_config(key_jmespath: str, expires_after_s: int = DEFAULT_TTL_S) -> IdempotencyConfig:
    return IdempotencyConfig(
        event_key_jmespath=key_jmespath,
        expires_after_seconds=expires_after_s,
        raise_on_no_idempotency_key=True,
    )


class IdempotentPublisher:
    """Wraps a publisher so the same set of promotion messages is sent at most once."""

    def __init__(
        self, inner: PromotionsPublisher, persistence: DynamoDBPersistenceLayer, config: IdempotencyConfig
    ) -> None:
        self.config = config

        @idempotent_function(data_keyword_argument="keys", persistence_store=persistence, config=config)
        def publish_once(keys: list[str], messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
            result = inner.publish(messages)
            return {"sent": result.sent, "failed": result.failed}

        self._publish_once = publish_once

    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult:
        keys = sorted(m["idempotency_key"] for m in messages)
        stored = self._publish_once(keys=keys, messages=messages)
        return PublishResult(sent=stored["sent"], failed=list(stored["failed"]))


def once_per_object(
    process: Callable[[str, str], dict[str, Any]],
    persistence: DynamoDBPersistenceLayer,
    config: IdempotencyConfig,
) -> Callable[[str, str, str], dict[str, Any]]:
    """``process(bucket, key)`` at most once per (bucket, key, eTag)."""

    @idempotent_function(data_keyword_argument="s3_object", persistence_store=persistence, config=config)
    def run(s3_object: dict[str, str]) -> dict[str, Any]:
        return process(s3_object["bucket"], s3_object["key"])

    def call(bucket: str, key: str, etag: str) -> dict[str, Any]:
        return run(s3_object={"bucket": bucket, "key": key, "etag": etag})

    return call
