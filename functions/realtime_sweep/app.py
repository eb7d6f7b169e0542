"""Inactivity sweep Lambda: the steps of the daily sweep's state machine (``churnguard.sweep``).

EventBridge Scheduler starts the sweep state machine once a day with the tick's time; the machine
calls this function to ``plan`` (the scoring instant, the parallel-scan segments), once or more per
``segment`` (re-score every stored customer of the segment at that instant, fire inactivity
warnings), and to ``finish`` (counts summed, metrics). Thin: parse the payload, call the domain,
shape the answer.

Logs carry steps, segment numbers and counts only: never a customer id (a cursor is one).
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard.aws import aws_errors, classify_aws_error
from churnguard.sweep import (
    FinishStep,
    PlanStep,
    SegmentStep,
    SegmentWork,
    finish_sweep,
    parse_sweep_step,
    plan_sweep,
    run_segment,
)
from churnguard.wiring import SweepRuntime, sweep_runtime

SERVICE = "churnguard-realtime-sweep"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)
SEGMENT_METRICS = {
    "scored": "SweepCustomersScored",
    "warnings": "InactivityWarnings",
    "queued": "InactivityWarningsQueued",
    "failed": "SweepCustomersFailed",
    "promotion_failures": "PromotionFailures",
}


def _model_event(name: str, details: dict[str, Any]) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(name, extra=details)


@functools.cache
def runtime() -> SweepRuntime:
    """Cold-start wiring (``churnguard.wiring``): settings validated, clients built, once per container."""
    return sweep_runtime(on_model_event=_model_event)


@tracer.capture_method(capture_response=False)
def run_step(
    rt: SweepRuntime, step: PlanStep | SegmentStep | FinishStep, context: LambdaContext
) -> dict[str, Any]:
    if isinstance(step, PlanStep):
        plan = plan_sweep(
            step,
            rt.realtime.store,
            now=dt.datetime.now(dt.UTC),
            customers_per_segment=rt.settings.sweep_customers_per_segment,
            min_segments=rt.settings.sweep_min_segments,
            # the events' bound: an event later than this is refused too
            max_future_s=None if rt.settings.sweep_allow_future_ticks else rt.realtime.rules.max_future_s,
            runs=rt.runs,
        )
        started = plan["status"] == "planned"
        metrics.add_metric(
            name="SweepsStarted" if started else "SweepsStoodDown", unit=MetricUnit.Count, value=1
        )
        return plan
    if isinstance(step, SegmentStep):
        work = SegmentWork(
            rt.realtime.store,
            rt.models.current(),
            rt.policy,
            rt.realtime.publisher,
            rt.realtime.rules,
            rt.settings.sweep_page_size,
        )
        before = dict(step.totals)
        answer = run_segment(step, work, lambda: context.get_remaining_time_in_millis() / 1000.0)
        for count, metric in SEGMENT_METRICS.items():
            metrics.add_metric(
                name=metric, unit=MetricUnit.Count, value=answer["totals"][count] - before.get(count, 0)
            )
        return answer
    answer = finish_sweep(step)
    metrics.add_metric(
        name="SweepsCompleted" if answer["complete"] else "SweepsIncomplete", unit=MetricUnit.Count, value=1
    )
    return answer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = parse_sweep_step(event)
    logger.append_keys(step=step.step)
    try:
        answer = run_step(runtime(), step, context)
    except aws_errors() as exc:
        # Renamed for the state machine's Retry: TransientAwsError is retried, RefusedAwsError is not.
        raise classify_aws_error(exc) from exc
    # Segment numbers and counts only: the cursor is a customer id.
    logger.info("sweep step done", extra={k: v for k, v in answer.items() if k not in ("cursor", "items")})
    return answer
