"""Batch scoring Lambda: an events file lands under incoming/ -> scored/, rejected/, summary.

Topology: S3 notification -> SQS scoring-jobs queue (with DLQ) -> this function with
ReportBatchItemFailures (Powertools BatchProcessor). A direct S3 -> Lambda event is handled too.
Keys arrive URL-encoded and are decoded here. A bad file produces a summary with the error (the
record succeeds: retrying cannot fix it); a transient AWS error fails the record so SQS retries it
and, after maxReceiveCount, parks it in the DLQ.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard import aws
from churnguard.admission import MemoryModel
from churnguard.batch import process_s3_object
from churnguard.idempotency import LedgeredPublisher, PromotionsNotSentError
from churnguard.model_provider import ModelProvider, provider_from_settings
from churnguard.promotions import PromotionPolicy, PromotionsPublisher, PublishResult, SqsPromotionsPublisher
from churnguard.scoring import ReasonsFor
from churnguard.settings import ServingSettings, SettingsError

SERVICE = "churnguard-batch-score"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)
# BatchSize is 1: a failed record is the whole batch. Reported as a batch item failure (SQS retries it,
# then its DLQ), not raised as an invocation error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
INCOMING_PREFIX = "incoming/"


@dataclass(frozen=True)
class Runtime:
    settings: ServingSettings
    models: ModelProvider
    publisher: PromotionsPublisher | None
    policy: PromotionPolicy
    s3: Any
    idempotency: Any = None  # IdempotencyConfig when a table is configured
    process: Any = None  # (bucket, key, etag) -> the loggable summary (counts, categories)


def _model_event(name: str, details: dict[str, Any]) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(name, extra=details)


@functools.cache
def runtime() -> Runtime:
    settings = ServingSettings.from_env()
    memory = MemoryModel(budget_mb=settings.batch_memory_mb)
    if memory.usable_mb <= memory.base_mb:  # every file would be refused: say so at cold start
        raise SettingsError(
            f"AWS_LAMBDA_FUNCTION_MEMORY_SIZE={settings.batch_memory_mb:g} MB leaves no memory for data "
            f"after the runtime's {memory.base_mb:.0f} MB: give the batch function at least "
            f"{2 * memory.base_mb / memory.headroom:.0f} MB"
        )
    models = provider_from_settings(settings, on_event=_model_event, budget=aws.BATCH)
    publisher = (
        SqsPromotionsPublisher(aws.client("sqs", aws.BATCH), settings.promotions_queue_url)
        if settings.promotions_queue_url
        else None
    )
    policy = settings.promotion_policy()
    idempotency = None
    if settings.idempotency_table and publisher is not None:
        from churnguard.idempotency import LedgeredPublisher, SentLedger

        publisher = LedgeredPublisher(
            publisher, SentLedger(aws.client("dynamodb", aws.BATCH), settings.idempotency_table)
        )
    rt = Runtime(settings, models, publisher, policy, aws.client("s3", aws.BATCH))
    process = lambda bucket, key, etag: _score_object(rt, bucket, key)  # noqa: E731
    if settings.idempotency_table:
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        from churnguard.idempotency import idempotency_config, once_per_object

        idempotency = idempotency_config("[bucket, key, etag]")
        process = once_per_object(
            lambda bucket, key: _score_object(rt, bucket, key),
            DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto_config=aws.BATCH.config()),
            idempotency,
        )
    return Runtime(settings, models, publisher, policy, rt.s3, idempotency, process)


def s3_objects(notification: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(bucket, decoded key, eTag) of every object-created record in an S3 notification."""
    if notification.get("Event") == "s3:TestEvent":
        return []
    out = []
    for record in notification.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        obj = record["s3"]["object"]
        out.append((record["s3"]["bucket"]["name"], unquote_plus(obj["key"]), str(obj.get("eTag", ""))))
    return out


def score_object(bucket: str, key: str, etag: str) -> None:
    if not key.startswith(INCOMING_PREFIX):
        logger.info("ignored: not under incoming/", extra={"key_hash": _hash(key)})
        return
    runtime().process(bucket, key, etag)


@tracer.capture_method(capture_response=False)  # a segment per file: read, score, publish, write
def _score_object(rt: Runtime, bucket: str, key: str) -> dict[str, Any]:
    summary = process_s3_object(
        rt.s3,
        bucket,
        key,
        rt.models.current(),
        policy=rt.policy,
        publisher=rt.publisher,
        reasons_for=ReasonsFor(rt.settings.batch_reasons),
        memory=MemoryModel(budget_mb=rt.settings.batch_memory_mb),
        max_object_bytes=rt.settings.batch_max_object_bytes,
    )
    metrics.add_metric(name="BatchRowsIn", unit=MetricUnit.Count, value=summary.rows_in)
    metrics.add_metric(name="RejectedRows", unit=MetricUnit.Count, value=summary.rows_rejected)
    metrics.add_metric(name="CustomersScored", unit=MetricUnit.Count, value=summary.customers_scored)
    metrics.add_metric(
        name="HighRiskCustomers", unit=MetricUnit.Count, value=summary.customers_at_or_above_promotion
    )
    metrics.add_metric(name="PromotionsQueued", unit=MetricUnit.Count, value=summary.customers_queued)
    logged = _loggable(summary, key)
    if summary.status not in ("ok", "split"):
        metrics.add_metric(name="BatchFilesFailed", unit=MetricUnit.Count, value=1)
        logger.error("batch file failed", extra=logged)
    if summary.promotion_failures:
        metrics.add_metric(
            name="PromotionFailures", unit=MetricUnit.Count, value=len(summary.promotion_failures)
        )
    logger.info("batch file scored", extra=logged)
    if summary.promotion_failures and isinstance(rt.publisher, LedgeredPublisher):
        # Not done: the idempotency record is dropped and SQS redelivers the file (then its DLQ, with
        # an alarm); the ledger makes the retry send only the promotions that did not go out.
        raise PromotionsNotSentError(PublishResult(summary.customers_queued, summary.promotion_failures))
    # Also what idempotency stores per object version: bounded (the full summary, with its error text
    # and promotion failures, lives in S3; a DynamoDB item over 400 KB failed *after* the promotions
    # were sent, so the redelivery sent them again).
    return logged


# Only counts, categories and versions reach the logs: the summary's ``error`` text and ``source``
# (the S3 key) can quote the file (a header-less CSV's first row becomes its "column names").
LOGGED_SUMMARY_FIELDS = (
    "status",
    "error_type",
    "rows_in",
    "rows_used",
    "rows_rejected",
    "customers_scored",
    "customers_at_or_above_promotion",
    "customers_queued",
    "model_version",
    "duration_s",
)


def _loggable(summary: Any, key: str) -> dict[str, Any]:
    fields = {name: getattr(summary, name) for name in LOGGED_SUMMARY_FIELDS}
    return {
        **fields,
        "key_hash": _hash(key),
        "promotion_failures": len(summary.promotion_failures),
        "parts": len(summary.parts),
    }


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def record_handler(record: SQSRecord) -> None:
    try:
        notification = json.loads(record.body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"SQS message {record.message_id} is not an S3 notification: {exc}") from exc
    for bucket, key, etag in s3_objects(notification):
        score_object(bucket, key, etag)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    if rt.idempotency is not None:
        rt.idempotency.register_lambda_context(context)
    records = event.get("Records", [])
    if records and records[0].get("eventSource") == "aws:s3":  # direct S3 -> Lambda delivery
        for bucket, key, etag in s3_objects(event):
            score_object(bucket, key, etag)
        return {"batchItemFailures": []}
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
