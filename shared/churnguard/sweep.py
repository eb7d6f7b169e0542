"""The inactivity sweep's steps, as its state machine calls them (issue 13 §2).

Silence is the strongest churn signal, and a silent customer sends nothing that would re-score
them. Once a day (EventBridge Scheduler) a state machine re-scores every stored customer from
their state at the tick's time (``churnguard.realtime.rescore_inactive``) and fires the same
warnings as events do, with ``trigger: "inactivity"``:

* ``plan``: fixes the scoring instant (the tick's scheduled time, so a redelivered or retried tick
  scores at the same instant and fires nothing twice) and splits the table into parallel-scan
  segments, enough that each fits one invocation (``customers_per_segment``, from the table's
  approximate item count);
* ``segment``: one Lambda scans and re-scores one segment, page by page, until it is done or its
  time is nearly up; then it returns a cursor and the state machine calls it again from there;
* ``finish``: the segments' counts summed (metrics, the execution's output).

Why a parallel scan of the state table, not a table export scored by the dataset path: the sweep
scores *states* (the dataset path scores raw events, which the table does not keep), needs each
record's warning state and version for its conditional write (an export is a stale copy: a write
based on it would be refused or, worse, overwrite newer events), and a parallel scan scales the
same way (segments in parallel, each a bounded Lambda) without an export's minutes of latency and
per-GB cost.

Payloads carry the instant, segment numbers, counts and at most a cursor (the scan's last key: a
customer id, so it is data; it appears only when a segment outgrows one invocation, and it is not
logged). Errors of AWS raise as ``TransientAwsError`` / ``RefusedAwsError`` for the state
machine's Retry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnguard.aws import TransientAwsError, aws_errors, classify_aws_error
from churnguard.bundle import ModelBundle
from churnguard.ports import CustomerStateStore, RunningExecutions
from churnguard.promotions import PromotionPolicy, PromotionsPublisher
from churnguard.realtime import RealtimeRules, SweepResult, add_sweep_results, rescore_inactive
from churnguard.validation import describe

# DynamoDB takes up to 1,000,000 segments; the state machine's Map results (~250 bytes a segment, a
# 256 KB state) and its execution history (25,000 events, ~7 a segment invocation) take ~200.
MAX_SEGMENTS = 200
MIN_RESERVE_S = 60.0  # a segment stops with at least this much of its invocation left
COUNTS = tuple(f.name for f in dataclasses.fields(SweepResult) if f.name != "cursor")


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SweepRequest(_Step):
    """The state machine's input: what the schedule (or an operator) asks for."""

    # The Scheduler's <aws.scheduler.scheduled-time>; absent (a manual run): the current time.
    scheduled_time: AwareDatetime | None = None
    segments: int | None = Field(None, ge=1, le=MAX_SEGMENTS)  # an operator's override


class PlanStep(_Step):
    step: Literal["plan"]
    request: SweepRequest = Field(default_factory=lambda: SweepRequest.model_validate({}))
    # $$.StateMachine.Id and $$.Execution.Id: a run that finds an earlier one still running stands down.
    state_machine: str | None = Field(None, min_length=1)
    execution: str | None = Field(None, min_length=1)


class SegmentStep(_Step):
    step: Literal["segment"]
    now: AwareDatetime
    segment: int = Field(ge=0)
    segments: int = Field(ge=1, le=MAX_SEGMENTS)
    cursor: str | None = Field(None, min_length=1)
    totals: dict[str, int] = Field(default_factory=dict)
    invocations: int = Field(0, ge=0)
    slowest_page_s: float = Field(0.0, ge=0, allow_inf_nan=False)  # of the segment's earlier invocations

    @model_validator(mode="after")
    def _segment_in_range(self) -> SegmentStep:
        if self.segment >= self.segments:
            raise ValueError("segment must be less than segments")
        unknown = set(self.totals) - set(COUNTS)
        if unknown:
            raise ValueError(f"totals has unknown counts: {sorted(unknown)}")
        return self


class FinishStep(_Step):
    step: Literal["finish"]
    now: AwareDatetime
    segments: list[dict[str, Any]]  # the segment steps' last answers


SweepStep = Annotated[PlanStep | SegmentStep | FinishStep, Field(discriminator="step")]


class _SweepStepModel(BaseModel):
    payload: SweepStep


class SweepPayloadError(ValueError):
    """A payload the sweep's steps do not take; the message names the fields, never their values
    (a cursor is a customer id)."""


def parse_sweep_step(event: dict[str, Any]) -> PlanStep | SegmentStep | FinishStep:
    """The step of a state machine payload; ``SweepPayloadError`` names the bad fields."""
    try:
        return _SweepStepModel.model_validate({"payload": event}).payload
    except ValidationError as exc:
        problems = describe(exc, root="payload", skip=1)  # the wrapper's "payload"
        raise SweepPayloadError(f"invalid sweep payload: {problems}") from None


def _iso(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).isoformat()


def plan_sweep(
    step: PlanStep,
    store: CustomerStateStore,
    *,
    now: dt.datetime,
    customers_per_segment: int,
    min_segments: int = 1,
    max_future_s: float | None = 900.0,
    runs: RunningExecutions | None = None,
) -> dict[str, Any]:
    """The scoring instant and the segments (``items``: one per segment, for the Map); ``status``
    ``overlap`` (and no segments) when an earlier run of the same state machine is still running.

    A tick later than ``now + max_future_s`` is refused (``SweepPayloadError``): it would score every
    customer as silent until then, warn the active ones, and stamp their records with a future
    score time. ``max_future_s`` None allows it (a local stack simulating the passing of time)."""
    instant = step.request.scheduled_time or now
    if max_future_s is not None and (instant - now).total_seconds() > max_future_s:
        raise SweepPayloadError(
            f"invalid sweep payload: request.scheduled_time is more than {max_future_s:g} s after now "
            "(a sweep scores at its tick, never ahead of it)"
        )
    if runs is not None and step.state_machine and step.execution and _earlier_run(runs, step):
        return {"status": "overlap", "now": _iso(instant), "segments": 0, "items": []}
    if step.request.segments is not None:
        segments, estimate = step.request.segments, None
    else:
        try:
            estimate = store.approximate_count()
        except aws_errors() as exc:
            raise classify_aws_error(exc) from exc
        needed = math.ceil(estimate / customers_per_segment)
        segments = min(MAX_SEGMENTS, max(min_segments, needed, 1))
    return {
        "status": "planned",
        "now": _iso(instant),
        "segments": segments,
        "customers_estimate": estimate,
        "items": [{"segment": i} for i in range(segments)],
    }


def _earlier_run(runs: RunningExecutions, step: PlanStep) -> bool:
    """Another run of the machine started before this one (or at the same instant with a smaller
    ARN) is still running: two runs at once would both publish the warnings one of them stored."""
    assert step.state_machine is not None and step.execution is not None
    try:
        running = runs.running(step.state_machine)
    except aws_errors() as exc:
        raise classify_aws_error(exc) from exc
    mine = next((r for r in running if r.arn == step.execution), None)
    if mine is None:  # not listed yet (eventual consistency): compare with every other run
        return any(r.arn != step.execution for r in running)
    return any((r.started, r.arn) < (mine.started, mine.arn) for r in running if r.arn != step.execution)


@dataclasses.dataclass(frozen=True)
class SegmentWork:
    """What a segment step scores with and where its warnings go."""

    store: CustomerStateStore
    bundle: ModelBundle
    policy: PromotionPolicy
    publisher: PromotionsPublisher
    rules: RealtimeRules
    page_size: int = 1_000


def run_segment(step: SegmentStep, work: SegmentWork, remaining_s: Callable[[], float]) -> dict[str, Any]:
    """Pages of the segment re-scored until it is done, or until ``remaining_s()`` leaves less than
    three times the slowest page of the segment so far (at least ``MIN_RESERVE_S``), or until a
    transient AWS error after at least one page: then the answer's ``cursor`` says where to resume
    (the counts of the pages done are kept, and the next invocation retries from there)."""
    totals = _totals(step.totals)
    cursor, slowest, pages = step.cursor, step.slowest_page_s, 0
    while True:
        started = time.monotonic()
        try:
            page = rescore_inactive(
                work.store,
                work.bundle,
                policy=work.policy,
                publisher=work.publisher,
                now=step.now,
                rules=work.rules,
                cursor=cursor,
                page_size=work.page_size,
                max_pages=1,
                segment=step.segment,
                segments=step.segments,
            )
        except TransientAwsError:
            if pages == 0:
                raise  # nothing done yet: the state machine's Retry waits and calls again
            break
        totals, pages = add_sweep_results(totals, page), pages + 1
        cursor, slowest = page.cursor, max(slowest, time.monotonic() - started)
        if cursor is None or remaining_s() < max(MIN_RESERVE_S, 3 * slowest):
            break
    return {
        "now": _iso(step.now),
        "segment": step.segment,
        "segments": step.segments,
        "cursor": cursor,
        "done": cursor is None,
        "totals": {name: getattr(totals, name) for name in COUNTS},
        "invocations": step.invocations + 1,
        "slowest_page_s": round(slowest, 3),
        "model_version": work.bundle.version,
    }


def finish_sweep(step: FinishStep) -> dict[str, Any]:
    """The segments' counts summed; ``complete`` is False if a segment did not finish its scan."""
    totals = dict.fromkeys(COUNTS, 0)
    for answer in step.segments:
        for name in COUNTS:
            totals[name] += int(answer.get("totals", {}).get(name, 0))
    return {
        "now": _iso(step.now),
        "segments": len(step.segments),
        "complete": all(answer.get("done") for answer in step.segments),
        "invocations": sum(int(answer.get("invocations", 0)) for answer in step.segments),
        "model_versions": sorted({str(a["model_version"]) for a in step.segments if a.get("model_version")}),
        "totals": totals,
    }


def _totals(counts: dict[str, int]) -> SweepResult:
    get = counts.get
    return SweepResult(
        scanned=get("scanned", 0),
        scored=get("scored", 0),
        skipped_recent=get("skipped_recent", 0),
        warnings=get("warnings", 0),
        queued=get("queued", 0),
        conflicts=get("conflicts", 0),
        failed=get("failed", 0),
        promotion_failures=get("promotion_failures", 0),
    )
