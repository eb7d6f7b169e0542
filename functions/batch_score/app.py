"""Batch scoring Lambda: an events file lands under incoming/ -> scored/, rejected/, summary.

Topology: S3 notification -> SQS scoring-jobs queue (with DLQ) -> this function with
ReportBatchItemFailures (Powertools BatchProcessor). A direct S3 -> Lambda event is handled too.
Keys arrive URL-encoded and are decoded here. A bad file produces a summary with the error (the
record succeeds: retrying cannot fix it); a transient AWS error fails the record so SQS retries it
and, after maxReceiveCount, parks it in the DLQ.

Each key is routed first (``churnguard.dataset_steps.route_drop``): single drops and split parts are
scored here; a part of a multi-part dataset is acknowledged (its dataset is scored as one once its
marker comes); a dataset's marker starts one run of the dataset state machine; anything else is
acknowledged with the reason. Two refinements (``churnguard.dataset_steps``'s docstring):

* a ``_SUCCESS`` next to a ``_manifest.json`` is acknowledged: only the manifest starts a run;
* a part written after its dataset's marker (``aws s3 cp --recursive`` may upload ``_SUCCESS``
  first) starts a run of its own, named by the part's version (a redelivery starts none): that run
  plans the complete dataset, while a run whose listing missed the part fails before scoring (its
  shards step re-lists the dataset) or at finish, publishing nothing
  (``churnguard.dataset_drops.DatasetChanges``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard.batch import BatchSummary, process_s3_object
from churnguard.dataset_drops import MANIFEST_NAME, MARKERS, SUCCESS_MARKER, DropKind
from churnguard.dataset_steps import Route, route_drop, start_dataset_run
from churnguard.idempotency import PromotionsNotSentError
from churnguard.promotions import PublishResult
from churnguard.scoring import ReasonsFor
from churnguard.telemetry import emit_drift
from churnguard.wiring import BatchRuntime, batch_runtime, sends_once

SERVICE = "churnguard-batch-score"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)
# BatchSize is 1: a failed record is the whole batch. Reported as a batch item failure (SQS retries it,
# then its DLQ), not raised as an invocation error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
INCOMING_PREFIX = "incoming/"


def _model_event(name: str, details: dict[str, Any]) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(name, extra=details)


@functools.cache
def runtime() -> BatchRuntime:
    """Cold-start wiring (``churnguard.wiring``), built once per container; each object goes to
    ``_score_object`` (looked up per call), once per object version with an idempotency table."""
    return batch_runtime(lambda rt, bucket, key: _score_object(rt, bucket, key), on_model_event=_model_event)


class DroppedObject(NamedTuple):
    bucket: str
    key: str  # decoded
    etag: str
    # the object's version id, else the event's sequencer: with the eTag, which version of the key
    # this event is about (a dataset's marker starts one run per version)
    version: str


def s3_objects(notification: dict[str, Any]) -> list[DroppedObject]:
    """Every object-created record of an S3 notification."""
    if notification.get("Event") == "s3:TestEvent":
        return []
    out = []
    for record in notification.get("Records", []):
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        obj = record["s3"]["object"]
        version = str(obj.get("versionId") or obj.get("sequencer") or record.get("eventTime", ""))
        out.append(
            DroppedObject(
                record["s3"]["bucket"]["name"], unquote_plus(obj["key"]), str(obj.get("eTag", "")), version
            )
        )
    return out


def score_object(obj: DroppedObject) -> None:
    """Route one created object (see the module docstring): score it, start its dataset's run, or
    acknowledge it. Logged by the key's hash and the fixed reason only."""
    route = route_drop(obj.key, INCOMING_PREFIX)
    if route.route is Route.SCORE:
        runtime().process(obj.bucket, obj.key, obj.etag)
    elif route.route is Route.START_DATASET and route.dataset is not None:
        rt = runtime()
        markers = _markers(rt, obj.bucket, route.dataset)
        if obj.key.endswith(f"/{SUCCESS_MARKER}") and MANIFEST_NAME in markers:
            metrics.add_metric(name="DatasetMarkersSuperseded", unit=MetricUnit.Count, value=1)
            logger.info(
                "_SUCCESS next to a manifest: the manifest starts the run", extra={"key_hash": _hash(obj.key)}
            )
            return
        _start_dataset(rt, obj, route.dataset)
    elif route.kind is DropKind.DATASET_PART and route.dataset is not None:
        rt = runtime()
        markers = _markers(rt, obj.bucket, route.dataset)
        if not markers or not _written_since(rt, obj, min(markers.values())):
            logger.debug("not scored alone", extra={"kind": route.kind.value, "reason": route.reason})
            return
        # Its dataset was already closed when it landed: the marker's run may have missed it. A new
        # run scores the complete dataset (a run that missed the part publishes nothing).
        metrics.add_metric(name="DatasetPartsAfterMarker", unit=MetricUnit.Count, value=1)
        marker = MANIFEST_NAME if MANIFEST_NAME in markers else SUCCESS_MARKER
        _start_dataset(rt, obj, route.dataset, marker_key=f"{INCOMING_PREFIX}{route.dataset}/{marker}")
    else:
        logger.info(
            "not scored", extra={"kind": route.kind.value, "reason": route.reason, "key_hash": _hash(obj.key)}
        )


def _markers(rt: BatchRuntime, bucket: str, dataset: str) -> dict[str, dt.datetime]:
    """The dataset's markers present now, with when each was written (one listing of its
    ``_``-prefixed names)."""
    prefix = f"{INCOMING_PREFIX}{dataset}/"
    listed = rt.store.list_objects(bucket, f"{prefix}_")
    return {o.key[len(prefix) :]: o.last_modified for o in listed if o.key[len(prefix) :] in MARKERS}


def _written_since(rt: BatchRuntime, obj: DroppedObject, marker_written: dt.datetime) -> bool:
    """Whether the part was written after the marker (the rule ``DatasetChanges.superseded`` uses:
    a run that missed such a part leaves the dataset's summary to this part's run). A part written
    before the marker, or in the same second (S3 times are to the second), starts nothing: the
    marker's run has it, or fails visibly naming it."""
    written = [o.last_modified for o in rt.store.list_objects(obj.bucket, obj.key) if o.key == obj.key]
    return bool(written) and written[0] > marker_written


def _start_dataset(rt: BatchRuntime, obj: DroppedObject, dataset: str, marker_key: str | None = None) -> None:
    """One run of the dataset state machine per version of the object that started it (the marker,
    or a part landing after it): a redelivered event starts none (its name is taken). Without a
    configured state machine the marker is reported, not retried (a redelivery cannot fix the
    configuration)."""
    if rt.workflow is None:
        metrics.add_metric(name="DatasetsNotStarted", unit=MetricUnit.Count, value=1)
        logger.error("dataset marker: no state machine configured", extra={"key_hash": _hash(obj.key)})
        return
    started = start_dataset_run(
        rt.workflow,
        obj.bucket,
        marker_key or obj.key,
        dataset,
        etag=obj.etag,
        version=obj.version,
        max_concurrency=rt.settings.dataset_max_concurrency,
        trigger_key=obj.key,
    )
    metrics.add_metric(name="DatasetRunsStarted", unit=MetricUnit.Count, value=int(started))
    message = "dataset run started" if started else "dataset run already started: nothing to do"
    logger.info(message, extra={"key_hash": _hash(obj.key)})


@tracer.capture_method(capture_response=False)  # a segment per file: read, score, publish, write
def _score_object(rt: BatchRuntime, bucket: str, key: str) -> dict[str, Any]:
    summary = process_s3_object(
        rt.store,
        bucket,
        key,
        rt.models.current(),
        policy=rt.policy,
        publisher=rt.publisher,
        decisions=rt.decisions,
        reasons_for=ReasonsFor(rt.settings.batch_reasons),
        memory=rt.memory,
        max_object_bytes=rt.settings.batch_max_object_bytes,
    )
    metrics.add_metric(name="BatchRowsIn", unit=MetricUnit.Count, value=summary.rows_in)
    metrics.add_metric(name="RejectedRows", unit=MetricUnit.Count, value=summary.rows_rejected)
    metrics.add_metric(name="CustomersScored", unit=MetricUnit.Count, value=summary.customers_scored)
    metrics.add_metric(
        name="HighRiskCustomers", unit=MetricUnit.Count, value=summary.customers_at_or_above_promotion
    )
    metrics.add_metric(name="PromotionsQueued", unit=MetricUnit.Count, value=summary.customers_queued)
    if rt.decisions is not None:
        metrics.add_metric(name="PromotionsHeldOut", unit=MetricUnit.Count, value=summary.customers_held_out)
    logged = _loggable(summary, key)
    if summary.status not in ("ok", "split"):
        metrics.add_metric(name="BatchFilesFailed", unit=MetricUnit.Count, value=1)
        logger.error("batch file failed", extra=logged)
    if summary.promotion_failures:
        metrics.add_metric(
            name="PromotionFailures", unit=MetricUnit.Count, value=len(summary.promotion_failures)
        )
    emit_drift(metrics, summary.drift)
    logger.info("batch file scored", extra=logged)
    if summary.promotion_failures and sends_once(rt.publisher):
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
    "customers_held_out",
    "monitoring_sample",
    "model_version",
    "duration_s",
)


def _loggable(summary: BatchSummary, key: str) -> dict[str, Any]:
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
    for obj in s3_objects(notification):
        score_object(obj)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    rt = runtime()
    if rt.idempotency is not None:
        rt.idempotency.register_lambda_context(context)
    records = event.get("Records", [])
    if records and records[0].get("eventSource") == "aws:s3":  # direct S3 -> Lambda delivery
        for obj in s3_objects(event):
            score_object(obj)
        return {"batchItemFailures": []}
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
