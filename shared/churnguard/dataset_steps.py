"""A dataset run as its state machine drives it (``statemachine/dataset.asl.json``), and its start.

**Routing a drop** (``route_drop``, what the batch function does with each object under
``incoming/``, by ``churnguard.dataset_drops.classify_key``):

============================  =====================================================================
kind of key                   what happens
============================  =====================================================================
single drop, split part       scored alone, as before (``churnguard.batch.process_s3_object``)
unsupported, top level        as before: a failed summary saying the file type is not read
dataset part                  acknowledged, not scored: its dataset is scored once its marker comes;
                              if written after the marker, a run of its own (named by the part)
marker                        one run of the state machine started (``start_dataset_run``); a
                              ``_SUCCESS`` next to a ``_manifest.json`` is acknowledged, not run
never data, unsupported part  acknowledged with the reason (a dataset's plan reports such files)
outside ``incoming/``         acknowledged with the reason
============================  =====================================================================

**The steps** (``run_step``): each takes a small payload of ids and S3 keys and answers a small one.
What the steps hand each other lives in the run's work area (``work/<dataset>/<run>/``), never in
the state machine's payloads (256 KB): the plan, the item lists the two distributed maps read with
their ``ItemReader`` (``parts.json``, ``shards.json``: JSON arrays of step payloads), each shard's
task, and each part's and shard's result (``results/``), read back by listing.

=========  ===========================  ==========================================  ====================
step       payload                      writes                                      answers ``status``
=========  ===========================  ==========================================  ====================
plan       bucket, dataset, marker      plan.json, parts.json (refused: summary)    planned / refused
                                                                                / superseded
partition  bucket, plan_key, part       its pieces and rejects, results/part-P      ok / failed
shards     bucket, plan_key             tasks/shard-S, shards.json                  ready / failed
score      bucket, plan_key, shard      its Parquet, results/shard-S                ok / failed
finish     bucket, plan_key             the outputs, then the summary               ok / failed
fail       bucket, dataset, error       the failed summary                          failed
pending    bucket                       nothing (the handler emits metrics)         ok
=========  ===========================  ==========================================  ====================

A bad part or shard is a ``failed`` result (the dataset fails at ``shards`` or ``finish``, with its
summary); a transient AWS error raises, and the state machine retries the step, then runs ``fail``.
``superseded``: the run was started by a ``_SUCCESS`` beside a manifest; it ends without writing.
``shards`` and ``finish`` re-list the dataset (``dataset_changes``): a dataset that changed since its
plan fails the run. Partition and score use the plan's model version (``planned_bundle``): a step
that cannot get it raises ``ModelVersionError`` rather than score with another. Finish gets that
version too, for its drift reference: the summary's ``drift`` is the PSI of every shard's customers
(``churnguard.dataset_drops.dataset_drift``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from churnguard.admission import MemoryModel
from churnguard.batch import read_columns
from churnguard.bundle import ModelBundle
from churnguard.dataset_drops import (
    INCOMING_PREFIX,
    MANIFEST_NAME,
    SUCCESS_MARKER,
    DatasetError,
    DatasetPlan,
    DatasetSummary,
    DropKind,
    PartResult,
    PendingDataset,
    ShardResult,
    ShardTask,
    classify_key,
    dataset_changes,
    fail_dataset,
    finish_dataset,
    partition_part,
    pending_datasets,
    plan_dataset,
    plan_shards,
    score_shard,
    summary_key,
    superseded_summary_key,
)
from churnguard.decisions import Decisions
from churnguard.ports import ObjectStore, WorkflowStarter
from churnguard.promotions import PromotionPolicy, PromotionsPublisher, PublishResult
from churnguard.scoring import ReasonsFor

# --- routing a drop and starting a dataset's run -----------------------------------------------------


class Route(StrEnum):
    SCORE = "score"  # the batch function scores the object alone
    START_DATASET = "start_dataset"  # a marker: start the dataset's run
    ACKNOWLEDGE = "acknowledge"  # nothing to do now (the reason says why)


@dataclass(frozen=True)
class DropRoute:
    route: Route
    kind: DropKind
    dataset: str | None = None
    reason: str = ""  # a fixed text per kind, safe to log (never the key)


REASONS = {
    DropKind.DATASET_PART: "part of a dataset: scored with its dataset once the marker comes",
    DropKind.IGNORED: "never data (a name starting with '_' or '.', or a folder placeholder)",
    DropKind.UNSUPPORTED: "unsupported file type inside a dataset: reported in the dataset's plan",
    DropKind.OUTSIDE: "not under incoming/",
}


def route_drop(key: str, incoming_prefix: str = INCOMING_PREFIX) -> DropRoute:
    """What the batch function does with a created object (the table in the module docstring)."""
    drop = classify_key(key, incoming_prefix)
    if drop.kind in (DropKind.SINGLE, DropKind.SPLIT_PART):
        return DropRoute(Route.SCORE, drop.kind)
    if drop.kind is DropKind.UNSUPPORTED and drop.dataset is None:
        # A single file in a format not read keeps today's answer: a failed summary saying so.
        return DropRoute(Route.SCORE, drop.kind)
    if drop.kind is DropKind.MARKER:
        return DropRoute(Route.START_DATASET, drop.kind, drop.dataset)
    return DropRoute(Route.ACKNOWLEDGE, drop.kind, drop.dataset, REASONS[drop.kind])


_NOT_IN_EXECUTION_NAMES = re.compile(r"[^A-Za-z0-9_.-]+")


def execution_name(dataset: str, bucket: str, key: str, etag: str, version: str) -> str:
    """The run's name for one version of a marker object: the same S3 event delivered twice gives
    the same name (Step Functions starts it once); a marker written again (a re-drop) gives a new
    one. ``version`` is the object's version id or the event's sequencer: an empty ``_SUCCESS``
    always has the same ETag, so the ETag alone would make every re-drop of a dataset a repeat."""
    digest = hashlib.sha256("\0".join((bucket, key, etag, version)).encode()).hexdigest()[:24]
    readable = _NOT_IN_EXECUTION_NAMES.sub("-", dataset)[:50].strip("-.") or "dataset"
    return f"{readable}-{digest}"  # at most 75 of the 80 characters allowed, ASCII only


def start_dataset_run(
    starter: WorkflowStarter,
    bucket: str,
    marker_key: str,
    dataset: str,
    *,
    etag: str,
    version: str,
    max_concurrency: int,
    trigger_key: str | None = None,
) -> bool:
    """Start the dataset's run (False: this marker's run had already been started). ``trigger_key``:
    the object whose event starts it when it is not the marker (a part landing after the marker):
    the run is named by that object's version."""
    name = execution_name(dataset, bucket, trigger_key or marker_key, etag, version)
    run_input = {
        "bucket": bucket,
        "dataset": dataset,
        "marker": marker_key,
        "max_concurrency": max_concurrency,  # the maps' MaxConcurrencyPath
    }
    return starter.start(name, run_input)


# --- the steps' payloads --------------------------------------------------------------------------------


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bucket: str = Field(min_length=3)


class PlanStep(_Step):
    step: Literal["plan"]
    dataset: str = Field(min_length=1)
    marker: str | None = None  # the key whose event started the run (``_SUCCESS`` or the manifest)
    shards: int | None = Field(None, ge=1)  # an operator's override of N (tests, reruns)


class PartitionStep(_Step):
    step: Literal["partition"]
    plan_key: str
    part: int = Field(ge=0)


class ShardsStep(_Step):
    step: Literal["shards"]
    plan_key: str


class ScoreStep(_Step):
    step: Literal["score"]
    plan_key: str
    shard: int = Field(ge=0)


class FinishStep(_Step):
    step: Literal["finish"]
    plan_key: str


class CaughtError(BaseModel):
    """What a state machine's Catch puts at its ResultPath: the error's name (a category: an AWS
    error code, an exception class, ``States.Timeout``) and its cause (may quote a file: it goes to
    the summary, never to a log)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    error: str = Field("States.ALL", alias="Error")
    cause: str | None = Field(None, alias="Cause")


class FailStep(_Step):
    step: Literal["fail"]
    dataset: str = Field(min_length=1)
    error: CaughtError = Field(default_factory=lambda: CaughtError.model_validate({}))


class PendingStep(_Step):
    step: Literal["pending"]


StepPayload = Annotated[
    PlanStep | PartitionStep | ShardsStep | ScoreStep | FinishStep | FailStep | PendingStep,
    Field(discriminator="step"),
]


class StepPayloadModel(BaseModel):
    """A payload of any step, told apart by its ``step`` field."""

    payload: StepPayload


def parse_step(event: dict[str, Any]) -> StepPayload:
    return StepPayloadModel.model_validate({"payload": event}).payload


# --- where a run keeps what its steps hand each other ----------------------------------------------------


def plan_key(plan: DatasetPlan) -> str:
    return f"{plan.work_prefix}plan.json"


def parts_items_key(plan: DatasetPlan) -> str:
    return f"{plan.work_prefix}parts.json"


def shards_items_key(plan: DatasetPlan) -> str:
    return f"{plan.work_prefix}shards.json"


def task_key(plan: DatasetPlan, shard: int) -> str:
    return f"{plan.work_prefix}tasks/shard-{shard:04d}.json"


def result_key(plan: DatasetPlan, kind: Literal["part", "shard"], index: int) -> str:
    return f"{plan.work_prefix}results/{kind}-{index:04d}.json"


def _put_json(store: ObjectStore, bucket: str, key: str, value: Any) -> None:
    store.put_bytes(bucket, key, json.dumps(value).encode(), content_type="application/json")


def _put_model(store: ObjectStore, bucket: str, key: str, value: BaseModel) -> None:
    store.put_bytes(bucket, key, value.model_dump_json().encode(), content_type="application/json")


def load_plan(store: ObjectStore, bucket: str, key: str) -> DatasetPlan:
    return DatasetPlan.model_validate_json(store.get_bytes(bucket, key))


ResultT = TypeVar("ResultT", PartResult, ShardResult)


def load_results(
    store: ObjectStore,
    plan: DatasetPlan,
    kind: Literal["part", "shard"],
    model: type[ResultT],
    indexes: Sequence[int] | None = None,
) -> list[ResultT]:
    """The results of the planned parts (or of the shards ``indexes``, from ``shards.json``), read
    by key: never a listing, which may hold a stale result of an earlier attempt. A missing one is
    left out (the dataset's checks then fail it: "no result")."""
    wanted = [p.index for p in plan.parts] if indexes is None else indexes
    found = []
    for index in wanted:
        key = result_key(plan, kind, index)
        if any(o.key == key for o in store.list_objects(plan.bucket, key)):
            found.append(model.model_validate_json(store.get_bytes(plan.bucket, key)))
    return found


def planned_shards(store: ObjectStore, plan: DatasetPlan) -> list[int] | None:
    """The shards the shards step planned (``shards.json``), None when it wrote none (it failed)."""
    key = shards_items_key(plan)
    if not any(o.key == key for o in store.list_objects(plan.bucket, key)):
        return None
    return [int(item["shard"]) for item in json.loads(store.get_bytes(plan.bucket, key))]


class ModelVersionError(DatasetError):
    """The run's planned model version cannot be loaded: the step fails rather than score the run
    with another version (shards of two versions would be published as one dataset)."""


# The model a step scores with: a fixed bundle, or one resolved for the plan (the planned version).
Models = ModelBundle | Callable[[DatasetPlan], ModelBundle]


def planned_bundle(models: Models, plan: DatasetPlan) -> ModelBundle:
    """The bundle the run was planned with; ``ModelVersionError`` if it is another one."""
    bundle = models if isinstance(models, ModelBundle) else models(plan)
    if plan.model_version is not None and bundle.version != plan.model_version:
        raise ModelVersionError(
            f"the run was planned with model {plan.model_version}, but {bundle.version} was given"
        )
    return bundle


# --- the steps ----------------------------------------------------------------------------------------------


def run_plan(
    store: ObjectStore,
    step: PlanStep,
    memory: MemoryModel,
    bundle: ModelBundle | None = None,
    *,
    model_location: str | None = None,
) -> dict[str, Any]:
    """Plan the dataset and write the parts' item list; a dataset that cannot be scored as dropped
    gets its failed summary here (``refused``: the state machine fails the run). ``bundle`` (at
    ``model_location``) is the model every later step of the run uses. A run started by a
    ``_SUCCESS`` next to a ``_manifest.json`` does nothing (``superseded``): the manifest's own run
    scores the dataset."""
    if step.marker is not None and step.marker.endswith(f"/{SUCCESS_MARKER}"):
        manifest_key = step.marker.removesuffix(SUCCESS_MARKER) + MANIFEST_NAME
        if any(o.key == manifest_key for o in store.list_objects(step.bucket, manifest_key)):
            return {"status": "superseded", "plan_key": None, "parts_key": None}
    try:
        plan = plan_dataset(
            store,
            step.bucket,
            step.dataset,
            memory=memory,
            shards=step.shards,
            bundle=bundle,
            model_location=model_location,
        )
    except DatasetError as exc:
        summary = fail_dataset(store, step.bucket, step.dataset, exc)
        return {
            "status": "refused",
            "error_type": summary.error_type,
            "plan_key": None,
            "parts_key": None,
            "summary_key": summary_key(step.dataset),
        }
    _put_model(store, step.bucket, plan_key(plan), plan)
    items = [{"bucket": plan.bucket, "plan_key": plan_key(plan), "part": p.index} for p in plan.parts]
    _put_json(store, plan.bucket, parts_items_key(plan), items)
    return {
        "status": "planned",
        "plan_key": plan_key(plan),
        "parts_key": parts_items_key(plan),
        "parts": len(plan.parts),
        "shards": plan.shards,
    }


def run_partition(
    store: ObjectStore, step: PartitionStep, models: Models, *, tmp_dir: str | None = None
) -> dict[str, Any]:
    """Phase 1 for one part; its result goes to the work area (the map's output is discarded).
    Keeps the columns the planned model reads (recorded in the plan)."""
    plan = load_plan(store, step.bucket, step.plan_key)
    if plan.columns is not None:
        columns: Sequence[str] = plan.columns
    else:  # a plan made without a model: what the given one reads
        columns = read_columns(planned_bundle(models, plan), plan.parts[step.part].key)
    result = partition_part(store, plan, step.part, columns=columns, tmp_dir=tmp_dir)
    _put_model(store, plan.bucket, result_key(plan, "part", step.part), result)
    return {"status": result.status, "part": step.part, "error_type": result.error_type}


def run_plan_shards(store: ObjectStore, step: ShardsStep, memory: MemoryModel) -> dict[str, Any]:
    """After phase 1: one task object per shard and the shards' item list, or ``failed`` (the
    finish step then writes the failed summary with every reason)."""
    plan = load_plan(store, step.bucket, step.plan_key)
    shuffle = plan_shards(plan, load_results(store, plan, "part", PartResult), memory=memory)
    # Before anything is scored or sent: the dataset must still be what was planned (a part that
    # landed after _SUCCESS, or was uploaded again, fails the run; finish writes the reasons).
    if shuffle.errors or dataset_changes(store, plan).errors:
        return {"status": "failed", "shards_key": None, "shards": 0}
    for task in shuffle.tasks:
        _put_model(store, plan.bucket, task_key(plan, task.shard), task)
    items = [{"bucket": plan.bucket, "plan_key": step.plan_key, "shard": t.shard} for t in shuffle.tasks]
    _put_json(store, plan.bucket, shards_items_key(plan), items)
    return {"status": "ready", "shards_key": shards_items_key(plan), "shards": len(items)}


@dataclass(frozen=True)
class Scoring:
    """What phase 2 scores with (the batch function's settings, built once per container)."""

    bundle: Models  # resolved to the run's planned version (``planned_bundle``)
    policy: PromotionPolicy
    publisher: PromotionsPublisher | None
    reasons_for: ReasonsFor
    memory: MemoryModel
    decisions: Decisions | None = None  # the control arm's monitoring sample goes to its log
    # With a ledger of sent promotions a failed send is retried by failing the step: the ledger
    # makes the retry send only what did not go out (as batch does through SQS redelivery).
    retry_unsent: bool = False


def run_score(
    store: ObjectStore, step: ScoreStep, scoring: Scoring, *, tmp_dir: str | None = None
) -> tuple[dict[str, Any], ShardResult]:
    """Phase 2 for one shard; its result goes to the work area. Raises ``PromotionsNotSentError``
    when promotions failed and ``retry_unsent`` (the state machine retries the step)."""
    from churnguard.idempotency import PromotionsNotSentError

    plan = load_plan(store, step.bucket, step.plan_key)
    task = ShardTask.model_validate_json(store.get_bytes(plan.bucket, task_key(plan, step.shard)))
    result = score_shard(
        store,
        plan,
        task,
        planned_bundle(scoring.bundle, plan),
        policy=scoring.policy,
        publisher=scoring.publisher,
        decisions=scoring.decisions,
        reasons_for=scoring.reasons_for,
        memory=scoring.memory,
        tmp_dir=tmp_dir,
    )
    if result.promotion_failures and scoring.retry_unsent:
        raise PromotionsNotSentError(PublishResult(result.customers_queued, result.promotion_failures))
    _put_model(store, plan.bucket, result_key(plan, "shard", step.shard), result)
    return {"status": result.status, "shard": step.shard, "error_type": result.error_type}, result


def run_finish(
    store: ObjectStore,
    step: FinishStep,
    memory: MemoryModel,
    *,
    models: Models | None = None,
    tmp_dir: str | None = None,
) -> tuple[dict[str, Any], DatasetSummary]:
    """Check every dataset-level invariant over all results, publish (ok only), summary last; the
    answer and the summary. ``models``: resolved to the planned version for its drift reference
    (None, or a version that cannot be loaded any more: the drift reads ``no_reference``; the
    dataset is not failed for it)."""
    plan = load_plan(store, step.bucket, step.plan_key)
    parts = load_results(store, plan, "part", PartResult)
    shards = load_results(store, plan, "shard", ShardResult, planned_shards(store, plan) or [])
    changes = dataset_changes(store, plan)
    reference = None
    if models is not None:
        try:
            reference = planned_bundle(models, plan).drift_reference
        except ModelVersionError:
            reference = None
    summary = finish_dataset(
        store, plan, parts, shards, memory=memory, tmp_dir=tmp_dir, changes=changes, reference=reference
    )
    answer = {
        "status": summary.status,
        "error_type": summary.error_type,
        # superseded by a newer run (a part written after the plan): that run writes the dataset's
        "summary_key": superseded_summary_key(plan) if changes.superseded else plan.summary_key,
        "rows_in": summary.rows_in,
        "customers_scored": summary.customers_scored,
        "customers_queued": summary.customers_queued,
    }
    return answer, summary


class DatasetRunError(DatasetError):
    """The state machine stopped the run (a step failed after its retries)."""


MAX_CAUSE_CHARS = 2_000


def run_fail(store: ObjectStore, step: FailStep) -> dict[str, Any]:
    """The failed summary of a run the state machine stopped: what failed, for the data owner."""
    cause = f": {readable_cause(step.error.cause)}" if step.error.cause else ""
    error = DatasetRunError(f"the dataset's run stopped after retries: {step.error.error}{cause}")
    summary = fail_dataset(store, step.bucket, step.dataset, error)
    return {"status": "failed", "error_type": summary.error_type, "summary_key": summary_key(step.dataset)}


def readable_cause(cause: str) -> str:
    """A Step Functions ``Cause`` for the data owner: a Lambda error's JSON (errorType, errorMessage,
    stackTrace) as "type: message", the stack trace left out; any other cause as it came. Truncated."""
    try:
        payload = json.loads(cause)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("errorMessage"), str):
        cause = f"{payload.get('errorType') or 'Error'}: {payload['errorMessage']}"
    return cause[:MAX_CAUSE_CHARS]


def run_pending(store: ObjectStore, step: PendingStep, now: dt.datetime) -> Sequence[PendingDataset]:
    """Datasets with parts but no marker yet, oldest first (the scheduled check's metrics)."""
    return pending_datasets(store.list_objects(step.bucket, INCOMING_PREFIX), now)
