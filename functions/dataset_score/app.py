"""Dataset scoring Lambda: every step of a multi-part dataset's run, as its state machine calls it.

One function for all steps, dispatching on the payload's ``step`` (``churnguard.dataset_steps``):
the steps share the package (pandas, the model, the promotions publisher), the memory a shard needs
(the admission model budgets from this function's MemorySize) and the IAM scope (the bucket's
incoming/, work/ and scored/ prefixes), so separate functions would be copies differing only in the
handler. Also the scheduled check of datasets whose marker has not come (``step: pending``).

Payloads are ids and S3 keys; answers are small JSON objects (statuses, counts, keys). A bad part
or shard is a ``failed`` result; an AWS error raises as ``TransientAwsError`` (the state machine
retries the step) or ``RefusedAwsError`` (it does not: the run fails with its summary).
Logs carry steps, statuses, counts and error categories only: no key, dataset name or file text.
At finish, an ok dataset's drift (``churnguard.dataset_drops.dataset_drift``) is emitted as the batch
function emits a file's: ``ScorePSI`` and ``FeatureGroupPSI`` per feature group (the drift alarm
watches ``ScorePSI`` of both functions).
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard.aws import aws_errors, classify_aws_error
from churnguard.bundle import ModelBundle
from churnguard.dataset_drops import DatasetPlan
from churnguard.dataset_steps import (
    FailStep,
    FinishStep,
    ModelVersionError,
    PartitionStep,
    PendingStep,
    PlanStep,
    ScoreStep,
    Scoring,
    ShardsStep,
    StepPayload,
    parse_step,
    run_fail,
    run_finish,
    run_partition,
    run_pending,
    run_plan,
    run_plan_shards,
    run_score,
)
from churnguard.model_provider import ModelUnavailableError
from churnguard.scoring import ReasonsFor
from churnguard.telemetry import emit_drift
from churnguard.wiring import DatasetRuntime, dataset_runtime, sends_once

SERVICE = "churnguard-dataset-score"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)


def _model_event(name: str, details: dict[str, Any]) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(name, extra=details)


@functools.cache
def runtime() -> DatasetRuntime:
    """Cold-start wiring (``churnguard.wiring``): settings validated, clients built, once per container."""
    return dataset_runtime(on_model_event=_model_event)


@tracer.capture_method(capture_response=False)
def run_step(rt: DatasetRuntime, step: StepPayload) -> dict[str, Any]:
    if isinstance(step, PlanStep):
        bundle = rt.models.current()
        location = getattr(rt.models, "location", None)
        where = location(bundle.version) if callable(location) else None
        return run_plan(rt.store, step, rt.memory, bundle, model_location=where)
    if isinstance(step, PartitionStep):
        return run_partition(rt.store, step, functools.partial(planned_model, rt))
    if isinstance(step, ShardsStep):
        return run_plan_shards(rt.store, step, rt.memory)
    if isinstance(step, ScoreStep):
        return _score(rt, step)
    if isinstance(step, FinishStep):
        answer, summary = run_finish(rt.store, step, rt.memory, models=functools.partial(planned_model, rt))
        if answer["status"] != "ok":
            metrics.add_metric(name="DatasetsFailed", unit=MetricUnit.Count, value=1)
        emit_drift(metrics, summary.drift)
        return answer
    if isinstance(step, FailStep):
        metrics.add_metric(name="DatasetsFailed", unit=MetricUnit.Count, value=1)
        return run_fail(rt.store, step)
    return _pending(rt, step)


def planned_model(rt: DatasetRuntime, plan: DatasetPlan) -> ModelBundle:
    """The model the run was planned with: the provider's current one while the pointer has not
    moved, else that version loaded from where the plan recorded it. Never another version: when it
    cannot be loaded the step raises ``ModelVersionError`` (not retried: the run fails with its
    summary, nothing more is scored) or ``ModelFetchError`` (S3 unreadable: retried)."""
    bundle = rt.models.current()
    if plan.model_version is None or bundle.version == plan.model_version:
        return bundle
    load_version = getattr(rt.models, "load_version", None)
    if plan.model_location is None or not callable(load_version):
        raise ModelVersionError(
            f"the run was planned with model {plan.model_version}; the provider serves {bundle.version} "
            "and cannot load another version"
        )
    try:
        pinned = load_version(plan.model_version, plan.model_location)
    except ModelUnavailableError as exc:
        raise ModelVersionError(f"the run's model {plan.model_version} cannot be loaded: {exc}") from exc
    _model_event("DatasetModelPinned", {"version": plan.model_version, "serving": bundle.version})
    assert isinstance(pinned, ModelBundle)
    return pinned


def _score(rt: DatasetRuntime, step: ScoreStep) -> dict[str, Any]:
    scoring = Scoring(
        bundle=functools.partial(planned_model, rt),
        policy=rt.policy,
        publisher=rt.publisher,
        decisions=rt.decisions,
        reasons_for=ReasonsFor(rt.settings.batch_reasons),
        memory=rt.memory,
        retry_unsent=sends_once(rt.publisher),
    )
    answer, result = run_score(rt.store, step, scoring)
    metrics.add_metric(name="CustomersScored", unit=MetricUnit.Count, value=result.customers_scored)
    metrics.add_metric(
        name="HighRiskCustomers", unit=MetricUnit.Count, value=result.customers_at_or_above_promotion
    )
    metrics.add_metric(name="PromotionsQueued", unit=MetricUnit.Count, value=result.customers_queued)
    if rt.decisions is not None:
        metrics.add_metric(name="PromotionsHeldOut", unit=MetricUnit.Count, value=result.customers_held_out)
    if result.promotion_failures:
        metrics.add_metric(
            name="PromotionFailures", unit=MetricUnit.Count, value=len(result.promotion_failures)
        )
    return answer


def _pending(rt: DatasetRuntime, step: PendingStep) -> dict[str, Any]:
    """Metrics the pending-dataset alarm watches: how many datasets wait for their marker, and the
    age of the oldest (0 when none)."""
    pending = run_pending(rt.store, step, dt.datetime.now(dt.UTC))
    oldest = max((p.age_s for p in pending), default=0.0)
    metrics.add_metric(name="PendingDatasets", unit=MetricUnit.Count, value=len(pending))
    metrics.add_metric(name="OldestPendingDatasetAge", unit=MetricUnit.Seconds, value=oldest)
    return {"status": "ok", "pending": len(pending), "oldest_age_s": round(oldest, 1)}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = parse_step(event)
    logger.append_keys(step=step.step)
    try:
        answer = run_step(runtime(), step)
    except aws_errors() as exc:
        # Renamed for the state machine's Retry: TransientAwsError is retried, RefusedAwsError is not.
        raise classify_aws_error(exc) from exc
    # Statuses, counts and categories only: keys and dataset names stay out of the logs.
    logger.info("dataset step done", extra={k: v for k, v in answer.items() if not k.endswith("_key")})
    return answer
