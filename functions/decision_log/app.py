"""The decision-log writer: decision rows from the decision-log queue -> Parquet in S3 (issue 10 §1).

The scoring functions queue their decisions (``churnguard.decision_store.QueuedDecisionLog``); the SQS
event source mapping gathers up to 100 messages (a minute's batching window), and this function writes
them as few objects as there are as-of days (``ParquetDecisionLog``: Hive partitions of the Glue table,
ids already logged skipped through the decisions ledger).

A message that is not decision rows is reported failed (partial batch response) and, after the
queue's redrive count, parked in the DLQ; its problem is logged, never its body. A failed write fails
the whole batch: SQS delivers it again, and the ledger and the object names keep the log free of
duplicates.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes import SQSEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard.decision_store import DecisionMessageError, ParquetDecisionLog, unpack
from churnguard.decisions import arm_counts
from churnguard.wiring import decision_log_writer

SERVICE = "churnguard-decision-log"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)


@functools.cache
def runtime() -> ParquetDecisionLog:
    """Cold-start wiring (``churnguard.wiring``): settings validated, clients built, once per container."""
    return decision_log_writer()


@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
@event_source(data_class=SQSEvent)
def lambda_handler(event: SQSEvent, context: LambdaContext) -> dict[str, Any]:
    records: list[dict[str, Any]] = []
    failures = []
    for message in event.records:
        try:
            records += unpack(message.body)
        except DecisionMessageError as exc:
            failures.append({"itemIdentifier": message.message_id})
            logger.error("decision-log message refused", extra={"reason": str(exc)})
    keys = runtime().append(records) if records else []
    counts = arm_counts(records)
    metrics.add_metric(name="DecisionsLogged", unit=MetricUnit.Count, value=len(records))
    metrics.add_metric(name="TreatedDecisions", unit=MetricUnit.Count, value=counts.get("treated", 0))
    metrics.add_metric(name="ControlDecisions", unit=MetricUnit.Count, value=counts.get("control", 0))
    if failures:
        metrics.add_metric(name="DecisionMessagesRefused", unit=MetricUnit.Count, value=len(failures))
    logger.info(
        "decisions logged", extra={"rows": len(records), "objects": len(keys), "refused": len(failures)}
    )
    return {"batchItemFailures": failures}
