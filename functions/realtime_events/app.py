"""Real-time events through SQS: each message is one ``POST /v1/events`` body (``churnguard.event_messages``).

The SQS event source mapping delivers up to 10 messages; each is applied on its own (the same
``churnguard.realtime.ingest`` as the API). The answer is Lambda's partial batch response
(Powertools ``BatchProcessor``): a message with a transiently failed customer is reported failed and
delivered again (its applied customers then see duplicates); a message that can never be applied is
moved to the dead-letter queue at once with its reason, and reported done.

Logs and metrics carry statuses, counts and reasons (field names, rules) only: never a user id, an
event or a message body.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard.aws import aws_errors, classify_aws_error
from churnguard.event_messages import MessageOutcome, apply_message
from churnguard.realtime import ingest
from churnguard.wiring import EventsQueueRuntime, events_queue_runtime

SERVICE = "churnguard-realtime-events"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)
processor = BatchProcessor(event_type=EventType.SQS)
# A message's worst case: reads and writes on 3 conflict rounds, the ledger, the queue, at the API
# client budget (~6 s a call at worst): no message is started with less than this left.
RESERVE_MS = 20_000


class RetryMessageError(Exception):
    """The message is delivered again (a customer failed for a transient reason)."""


def _model_event(name: str, details: dict[str, Any]) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(name, extra=details)


@functools.cache
def runtime() -> EventsQueueRuntime:
    """Cold-start wiring (``churnguard.wiring``): settings validated, clients built, once per container."""
    return events_queue_runtime(on_model_event=_model_event)


def _apply(rt: EventsQueueRuntime, record: SQSRecord) -> MessageOutcome:
    realtime, bundle = rt.realtime, rt.models.current()

    def bound_ingest(pairs: Any, now: Any) -> Any:
        return ingest(
            pairs,
            store=realtime.store,
            bundle=bundle,
            policy=rt.policy,
            publisher=realtime.publisher,
            now=now,
            rules=realtime.rules,
        )

    return apply_message(
        record.body,
        bound_ingest,
        realtime.clock(),
        max_events=rt.settings.max_events_per_request,
        max_customers=rt.settings.max_customers_per_request,
        queue_configured=realtime.queue_configured,
    )


@tracer.capture_method(capture_response=False)
def record_handler(record: SQSRecord, lambda_context: LambdaContext | None = None) -> dict[str, Any]:
    # A message started too late would be cut by the timeout, and with it the batch's answer: every
    # message (those done, those parked) would come back. Left for the next delivery instead.
    if lambda_context is not None and lambda_context.get_remaining_time_in_millis() < RESERVE_MS:
        raise RetryMessageError("too little time left in this invocation")
    rt = runtime()
    try:
        outcome = _apply(rt, record)
    except aws_errors() as exc:  # the model or the ledger: the message waits for another delivery
        raise RetryMessageError(f"AWS error: {classify_aws_error(exc)}") from None
    counts = dict(outcome.counts)
    for name, value in counts.items():  # the API's metric names for the same counts
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    if outcome.status == "retry":
        metrics.add_metric(name="EventMessagesRetried", unit=MetricUnit.Count, value=1)
        logger.warning("event message retried", extra={"reason": outcome.reason, **counts})
        raise RetryMessageError(outcome.reason or "transient failure")
    if outcome.status == "refused":
        metrics.add_metric(name="EventMessagesRefused", unit=MetricUnit.Count, value=1)
        logger.warning("event message refused", extra={"reason": outcome.reason, **counts})
        if rt.dead_letters is None:
            raise RetryMessageError(outcome.reason or "refused")  # the redrive policy parks it
        rt.dead_letters.park(record.body, reason=outcome.reason or "refused", message_id=record.message_id)
    return {"status": outcome.status, **counts}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
