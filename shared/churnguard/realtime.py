"""Real-time early warning: events in, per-customer state kept, re-scored, warnings out (issue 13).

Against two ports: ``CustomerStateStore`` (``churnguard.ports``; DynamoDB in
``churnguard.adapters.DynamoDbCustomerStateStore``) and the promotions publisher
(``churnguard.promotions``; ledgered in production, ``churnguard.idempotency.LedgeredPublisher``).

**The record** (``CustomerRecord``, one per customer): the behaviour state
(``churnguard.customer_state``), the last stored score, and the warning state (``armed``,
``last_warning_s``, ``outbox``) — in one item, written by one conditional write, so what fired is
stored with the behaviour that made it fire.

**Scoring instant.** A customer is scored at ``as_of = max(now, T+)``, T the state's latest event
and T+ the next float after it: a state cannot score before its last event (events at or after
``as_of`` are not observed, and a state cannot un-apply them), and T+ makes every applied event
observed even when its timestamp equals ``now``. Events more than ``RealtimeRules.max_future_s``
after ``now`` are refused (``FutureEventError``): one of them would pin the customer's scores to
that future instant.

**Warning rule** (``next_warning``). A warning fires when the customer is *armed*, the risk is at or
above the model's promotion threshold, an offer pays off (the policy of ``build_messages``: no
offer, no message, no warning) and the cool-down has passed (no warning within
``cooldown_days`` of the last one, default 14). Firing disarms; the customer re-arms only once the
risk falls below ``threshold - margin`` (default 0.05: hysteresis). A new customer is armed. So a
warning is an upward crossing of the threshold, once per crossing: an armed customer at or above
the threshold has crossed upwards since the last warning (or never had one). A crossing inside the
cool-down is deferred, not dropped: it fires at the first score after the cool-down at which the
customer is still armed and at or above the threshold.

**Exactly once.** The decision is written with the state (conditional on the version read), so a
retried request re-reads a disarmed customer and fires nothing; its events are duplicates (by
``event_id``; events without an id are always new, as everywhere). The warning message (the
promotion message of ``build_messages`` plus ``trigger``: ``event`` or ``inactivity``) is stored in
the record's ``outbox`` by that same write, published after it, then cleared: a crash or a failed
send between write and clear leaves it in the outbox, and the next write of the customer (an event
or the sweep) publishes it again. Its ``idempotency_key`` is fixed (customer, model version, the
crossing's ``as_of``), so the ledgered publisher sends it once; consumers deduplicate on it as for
every promotion (delivery is at least once in the windows the README names).

**Concurrency.** Each customer is read, updated and written conditionally; on a conflict (another
writer in between) the customer is read, updated and scored again, up to
``RealtimeRules.max_attempts`` times, then reported as a transient failure. The sweep never retries:
a conflict means an event (or an erasure) wrote the customer after the sweep read it, which is newer.

Failures are per customer (``Failure``: ``transient`` — retry later — or ``refused``), never with
the user id in their text; nothing here logs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from churnguard.aws import AwsCallError, TransientAwsError, aws_errors, classify_aws_error
from churnguard.bundle import ModelBundle
from churnguard.customer_state import (
    CustomerState,
    CustomerStateError,
    StateEvent,
    apply_events,
    raw_features_from_states,
)
from churnguard.features import SECONDS_PER_DAY
from churnguard.ports import (
    CustomerRecord,
    CustomerStateStore,
    LedgerUnavailableError,
    StateConflictError,
    StoredCustomer,
)
from churnguard.promotions import PromotionPolicy, PromotionsPublisher, build_messages
from churnguard.reasons import Reason
from churnguard.scoring import ReasonsFor, ScoredBatch, score_raw_features

T = TypeVar("T")
R = TypeVar("R")
Trigger = Literal["event", "inactivity"]
SOURCE = "realtime"  # the promotion messages' source (part of their idempotency key)


@dataclass(frozen=True)
class RealtimeRules:
    margin: float = 0.05  # hysteresis: re-armed below threshold - margin
    cooldown_days: float = 14.0  # no second warning within this many days
    max_attempts: int = 3  # read-update-write attempts per customer on write conflicts
    max_future_s: float = 900.0  # events later than now + this are refused
    rescore_after_s: float = 6 * 3600.0  # the sweep skips customers scored more recently than this


@dataclass(frozen=True)
class Failure:
    kind: Literal["transient", "refused"]  # transient: the same call may succeed later
    message: str  # never quotes a user id
    aws: bool = False  # an AWS call failed (refused: permissions, a missing table), not the customer's data


@dataclass(frozen=True)
class CustomerResult:
    """One customer of an ``ingest``: the new score, and whether a warning fired (and was queued)."""

    user_id: str
    churn_probability: float | None = None
    risk_tier: str | None = None
    reasons: tuple[Reason, ...] = ()
    warning: bool = False  # a warning fired now
    queued: bool = False  # ... and the queue accepted it
    applied: int = 0  # events applied
    duplicates: int = 0  # events ignored: their event_id was applied before
    error: Failure | None = None  # nothing was stored for this customer


@dataclass(frozen=True)
class IngestResult:
    model_version: str
    scored_at: str
    customers: list[CustomerResult]
    promotion_failures: int = 0  # warnings stored but not sent (sent again on the customer's next write)


@dataclass(frozen=True)
class SweepResult:
    scanned: int = 0
    scored: int = 0
    skipped_recent: int = 0  # scored less than ``rescore_after_s`` ago
    warnings: int = 0
    queued: int = 0
    conflicts: int = 0  # written by someone else since the scan read them: left to the newer write
    failed: int = 0
    promotion_failures: int = 0
    cursor: str | None = None  # where to resume (None: the scan is complete); data, never log it


@dataclass(frozen=True)
class CustomerView:
    """``GET /v1/customers/{user_id}``: the customer scored now from the stored state (read only)."""

    user_id: str
    churn_probability: float
    risk_tier: str
    reasons: tuple[Reason, ...]
    as_of_s: float
    last_event_s: float
    events_applied: int
    model_version: str
    last_warning_s: float | None
    armed: bool


class FutureEventError(ValueError):
    """An event later than ``now + max_future_s``."""

    def __init__(self, index: int, limit_s: float) -> None:
        super().__init__(f"events[{index}].timestamp is more than {limit_s:g} s after now")
        self.field = f"events[{index}].timestamp"


def scoring_instant(last_event_s: float, now_s: float) -> float:
    """``max(now, T+)``: the earliest instant that observes every applied event (module docstring)."""
    if not math.isfinite(last_event_s):
        return now_s
    return max(now_s, float(np.nextafter(last_event_s, math.inf)))


@dataclass(frozen=True)
class WarningState:
    armed: bool = True
    last_warning_s: float | None = None


def next_warning(
    previous: WarningState,
    risk: float,
    threshold: float,
    as_of_s: float,
    *,
    offer: bool,
    rules: RealtimeRules,
) -> tuple[bool, WarningState]:
    """(fires, the warning state after this score): the module docstring's rule."""
    last = previous.last_warning_s
    cooled = last is None or as_of_s - last >= rules.cooldown_days * SECONDS_PER_DAY
    if previous.armed and risk >= threshold and offer and cooled:
        return True, WarningState(armed=False, last_warning_s=as_of_s)
    rearm = previous.armed or risk < threshold - rules.margin
    return False, WarningState(armed=rearm, last_warning_s=last)


# ---------------------------------------------------------------------------------------------
# one round: read, apply, score, decide, write, publish
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    user_id: str
    previous: CustomerRecord | None
    version: int
    state: CustomerState
    applied: int = 0
    duplicates: int = 0


@dataclass(frozen=True)
class _Update:
    read: _Read
    row: int  # in the scored batch
    record: CustomerRecord
    fired: bool
    write: bool


def _failure(exc: BaseException) -> Failure:
    if isinstance(exc, AwsCallError):
        return Failure("transient" if isinstance(exc, TransientAwsError) else "refused", str(exc), aws=True)
    if isinstance(exc, CustomerStateError):
        return Failure("refused", str(exc))
    return _failure(classify_aws_error(exc))


def _read(
    store: CustomerStateStore, user_id: str, events: Sequence[StateEvent], bundle: ModelBundle
) -> _Read | Failure:
    config = bundle.spec.config
    try:
        previous, version = store.get(user_id)
        state = None if previous is None else CustomerState.from_bytes(previous.state)
        if state is not None and state.weeks < config.weeks:
            raise CustomerStateError(f"the state keeps {state.weeks} weeks, the model needs {config.weeks}")
        keep = config if state is None else dataclasses.replace(config, weeks=state.weeks)
        applied = apply_events(state, events, config=keep)
    except (CustomerStateError, *aws_errors()) as exc:  # type: ignore[misc]  # a starred tuple
        return _failure(exc)
    return _Read(user_id, previous, version, applied.state, applied.applied, applied.duplicates)


def _score(
    bundle: ModelBundle, reads: Sequence[_Read], now_s: float, reasons_for: ReasonsFor, top_k: int = 3
) -> ScoredBatch:
    spec = bundle.spec
    as_of = np.asarray([scoring_instant(r.state.last_event_s, now_s) for r in reads])
    raw = raw_features_from_states(
        [r.state for r in reads],
        as_of,
        event_types=spec.event_types,
        config=spec.config,
        profile_columns=[*spec.profile_categorical, *spec.profile_numeric],
    )
    return score_raw_features(bundle, [r.user_id for r in reads], raw, reasons_for=reasons_for, top_k=top_k)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def _decide(
    reads: Sequence[_Read],
    scored: ScoredBatch,
    bundle: ModelBundle,
    *,
    policy: PromotionPolicy,
    rules: RealtimeRules,
    trigger: Trigger,
    now_s: float,
) -> list[_Update]:
    """Each customer's new record: score, warning state, and the warning message if one fires."""
    as_of = [scoring_instant(r.state.last_event_s, now_s) for r in reads]
    messages = {
        m["user_id"]: {**m, "trigger": trigger}
        for m in build_messages(
            scored, policy, source=SOURCE, scored_at=_iso(now_s), as_of=[_iso(a) for a in as_of]
        )
    }
    updates = []
    for row, read in enumerate(reads):
        before = read.previous or CustomerRecord(state=b"", last_event_s=-math.inf)
        warning = WarningState(before.armed, before.last_warning_s)
        risk = float(scored.churn_probability[row])
        message = messages.get(read.user_id)
        fired, after = next_warning(
            warning, risk, bundle.thresholds.promotion, as_of[row], offer=message is not None, rules=rules
        )
        record = CustomerRecord(
            state=read.state.to_bytes() if read.applied or read.previous is None else before.state,
            last_event_s=read.state.last_event_s,
            risk=risk,
            risk_tier=str(scored.risk_tier[row]),
            model_version=bundle.version,
            scored_at_s=as_of[row],
            armed=after.armed,
            last_warning_s=after.last_warning_s,
            outbox=(*before.outbox, json.dumps(message, separators=(",", ":"))) if fired else before.outbox,
        )
        write = bool(read.applied) or read.previous is None or after != warning
        updates.append(_Update(read, row, record, fired, write))
    return updates


@dataclass(frozen=True)
class _Written:
    update: _Update
    version: int  # the record's version now


# Per-customer store calls run on up to this many threads (botocore's default connection pool of a
# client is 10: more threads would only queue). 100 customers' reads then writes were 200 calls one
# after another (~1 s at DynamoDB's few ms a call, against the API's 10 s timeout).
STORE_CALL_THREADS = 10


def _each(call: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[call(item) for item in items]``, in order, concurrently when there is more than one."""
    if len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(STORE_CALL_THREADS, len(items))) as pool:
        return list(pool.map(call, items))


def _write(
    store: CustomerStateStore, updates: Sequence[_Update]
) -> tuple[list[_Written], list[_Update], dict[str, Failure]]:
    """(written or unchanged, conflicts, failures): each update written conditionally on its read."""

    def write_one(update: _Update) -> _Written | Failure | None:  # None: a conflict
        if not update.write:
            return _Written(update, update.read.version)
        try:
            return _Written(update, store.put(update.read.user_id, update.record, update.read.version))
        except StateConflictError:
            return None
        except aws_errors() as exc:
            return _failure(exc)

    written, conflicts, failures = [], [], {}
    for update, outcome in zip(updates, _each(write_one, updates), strict=True):
        if outcome is None:
            conflicts.append(update)
        elif isinstance(outcome, Failure):
            failures[update.read.user_id] = outcome
        else:
            written.append(outcome)
    return written, conflicts, failures


def _publish(
    store: CustomerStateStore, publisher: PromotionsPublisher, written: Sequence[_Written]
) -> tuple[set[str], int]:
    """Publishes every written record's outbox, then clears the outboxes sent whole (best effort: a
    conflict or an AWS error leaves the outbox, published again on the customer's next write).
    (Users whose new warning was queued, promotions not sent.)"""
    waiting = [w for w in written if w.update.record.outbox]
    messages = [json.loads(m) for w in waiting for m in w.update.record.outbox]
    if not messages:
        return set(), 0
    held_out: set[str] = set()
    try:
        result = publisher.publish(messages)
        failed_keys = {f["idempotency_key"] for f in result.failed}
        held_out = {h["user_id"] for h in result.held_out}  # control arm: decided, logged, not sent
    except (LedgerUnavailableError, *aws_errors()):  # type: ignore[misc]  # a starred tuple
        # the queue or the ledger failed outright: nothing known sent, every outbox kept
        failed_keys = {m["idempotency_key"] for m in messages}
    failed_users = {m["user_id"] for m in messages if m["idempotency_key"] in failed_keys}

    def clear(done: _Written) -> None:
        try:
            store.put(
                done.update.read.user_id, dataclasses.replace(done.update.record, outbox=()), done.version
            )
        except (StateConflictError, *aws_errors()):  # type: ignore[misc]  # a starred tuple
            pass  # left in the outbox: the next write publishes it again (the ledger sends it once)

    _each(clear, [w for w in waiting if w.update.read.user_id not in failed_users])
    queued = {w.update.read.user_id for w in waiting if w.update.fired} - failed_users - held_out
    return queued, len(failed_keys)


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


def group_events(
    events: Iterable[tuple[str, StateEvent]], now_s: float, rules: RealtimeRules
) -> dict[str, list[StateEvent]]:
    """The events per customer, customers in first-seen order; ``FutureEventError`` for an event
    too far after ``now``."""
    grouped: dict[str, list[StateEvent]] = {}
    for index, (user_id, event) in enumerate(events):
        if event.timestamp_s > now_s + rules.max_future_s:
            raise FutureEventError(index, rules.max_future_s)
        grouped.setdefault(user_id, []).append(event)
    return grouped


def ingest(
    events: Iterable[tuple[str, StateEvent]],
    *,
    store: CustomerStateStore,
    bundle: ModelBundle,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher,
    now: dt.datetime,
    rules: RealtimeRules = RealtimeRules(),
) -> IngestResult:
    """Apply ``(user_id, event)`` pairs to the customers' stored states, re-score every customer
    touched at ``max(now, T+)``, fire ``trigger="event"`` warnings, write back conditionally (module
    docstring). One batch scoring per attempt, however many customers."""
    now_s = now.timestamp()
    grouped = group_events(events, now_s, rules)
    results: dict[str, CustomerResult] = {}
    pending = list(grouped)
    all_written: list[_Written] = []
    scored_rows: dict[str, tuple[ScoredBatch, int]] = {}
    for _ in range(rules.max_attempts):
        reads: list[_Read] = []
        for user_id, read in zip(
            pending, _each(lambda u: _read(store, u, grouped[u], bundle), pending), strict=True
        ):
            if isinstance(read, Failure):
                results[user_id] = CustomerResult(user_id, error=read)
            else:
                reads.append(read)
        if not reads:
            pending = []
            break
        scored = _score(bundle, reads, now_s, ReasonsFor.ALL)
        updates = _decide(reads, scored, bundle, policy=policy, rules=rules, trigger="event", now_s=now_s)
        written, conflicts, failures = _write(store, updates)
        results |= {u: CustomerResult(u, error=f) for u, f in failures.items()}
        all_written += written
        scored_rows |= {w.update.read.user_id: (scored, w.update.row) for w in written}
        pending = [c.read.user_id for c in conflicts]
        if not pending:
            break
    busy = Failure(
        "transient",
        f"concurrent updates of the customer: still conflicting after {rules.max_attempts} attempts",
    )
    results |= {u: CustomerResult(u, error=busy) for u in pending}
    queued, not_sent = _publish(store, publisher, all_written)
    results |= {
        w.update.read.user_id: _result(w.update, *scored_rows[w.update.read.user_id], queued)
        for w in all_written
    }
    return IngestResult(bundle.version, _iso(now_s), [results[u] for u in grouped], not_sent)


def ingest_counts(result: IngestResult, events: int, *, queue_configured: bool = True) -> dict[str, int]:
    """An ingest's counts under their metric names, the same whichever way the events came (the API,
    the queue); counts only, never a user id. ``queue_configured`` False: nothing counts as queued."""
    customers = result.customers
    return {
        "EventsReceived": events,
        "EventsApplied": sum(c.applied for c in customers),
        "DuplicateEvents": sum(c.duplicates for c in customers),
        "CustomersUpdated": sum(c.error is None for c in customers),
        "CustomersNotApplied": sum(c.error is not None for c in customers),
        "WarningsFired": sum(c.warning for c in customers),
        "WarningsQueued": sum(c.queued for c in customers) if queue_configured else 0,
    }


def _result(update: _Update, scored: ScoredBatch, row: int, queued: set[str]) -> CustomerResult:
    user_id = update.read.user_id
    return CustomerResult(
        user_id,
        churn_probability=round(float(scored.churn_probability[row]), 6),
        risk_tier=str(scored.risk_tier[row]),
        reasons=tuple(scored.reasons[row]),
        warning=update.fired,
        queued=user_id in queued,
        applied=update.read.applied,
        duplicates=update.read.duplicates,
    )


# ---------------------------------------------------------------------------------------------
# the inactivity sweep, the customer view, erasure
# ---------------------------------------------------------------------------------------------


def _due(record: CustomerRecord, now_s: float, rules: RealtimeRules) -> bool:
    scored_at = record.scored_at_s
    return bool(record.outbox) or scored_at is None or now_s - scored_at >= rules.rescore_after_s


def rescore_inactive(
    store: CustomerStateStore,
    bundle: ModelBundle,
    *,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher,
    now: dt.datetime,
    rules: RealtimeRules = RealtimeRules(),
    cursor: str | None = None,
    page_size: int = 1_000,
    max_pages: int | None = None,
    segment: int = 0,
    segments: int = 1,
) -> SweepResult:
    """Re-score stored customers at ``now`` (no new events), a page at a time, each page in one batch
    scoring; fire ``trigger="inactivity"`` warnings by the same rule. A customer is written only
    when their warning state changed (a daily sweep of silent customers costs reads, not writes).
    Resumable: pass the returned ``cursor`` (with ``max_pages``, to fit a time budget)."""
    now_s = now.timestamp()
    totals = SweepResult()
    pages = 0
    while max_pages is None or pages < max_pages:
        try:
            page = store.scan_page(cursor, page_size, segment=segment, segments=segments)
        except aws_errors() as exc:
            raise classify_aws_error(exc) from exc
        totals = add_sweep_results(
            totals, _sweep_page(store, bundle, page.customers, policy, publisher, now_s, rules)
        )
        cursor, pages = page.cursor, pages + 1
        if cursor is None:
            break
    return dataclasses.replace(totals, cursor=cursor)


def _sweep_page(
    store: CustomerStateStore,
    bundle: ModelBundle,
    customers: Sequence[StoredCustomer],
    policy: PromotionPolicy,
    publisher: PromotionsPublisher,
    now_s: float,
    rules: RealtimeRules,
) -> SweepResult:
    due = [c for c in customers if _due(c.record, now_s, rules)]
    reads, failed = [], 0
    for customer in due:
        try:
            state = CustomerState.from_bytes(customer.record.state)
            if state.weeks < bundle.spec.config.weeks:
                raise CustomerStateError("the state keeps fewer weeks than the model needs")
        except CustomerStateError:
            failed += 1
            continue
        reads.append(_Read(customer.user_id, customer.record, customer.version, state))
    if not reads:
        return SweepResult(scanned=len(customers), skipped_recent=len(customers) - len(due), failed=failed)
    scored = _score(bundle, reads, now_s, ReasonsFor.PROMOTED)
    updates = _decide(reads, scored, bundle, policy=policy, rules=rules, trigger="inactivity", now_s=now_s)
    written, conflicts, failures = _write(store, updates)
    queued, not_sent = _publish(store, publisher, written)
    return SweepResult(
        scanned=len(customers),
        scored=len(reads),
        skipped_recent=len(customers) - len(due),
        warnings=sum(w.update.fired for w in written),
        queued=len(queued),
        conflicts=len(conflicts),
        failed=failed + len(failures),
        promotion_failures=not_sent,
    )


def add_sweep_results(a: SweepResult, b: SweepResult) -> SweepResult:
    """The counts of two sweeps (or pages) added; the cursor is ``a``'s."""
    counts = [f.name for f in dataclasses.fields(SweepResult) if f.name != "cursor"]
    return dataclasses.replace(a, **{name: getattr(a, name) + getattr(b, name) for name in counts})


def customer_view(
    store: CustomerStateStore, bundle: ModelBundle, user_id: str, now: dt.datetime, *, top_k: int = 3
) -> CustomerView | None:
    """The customer scored at ``max(now, T+)`` from the stored state; None: no record. Read only: it
    stores nothing and fires nothing (events and the sweep do)."""
    try:
        record, version = store.get(user_id)
    except aws_errors() as exc:
        raise classify_aws_error(exc) from exc
    if record is None:
        return None
    state = CustomerState.from_bytes(record.state)
    read = _Read(user_id, record, version, state)
    scored = _score(bundle, [read], now.timestamp(), ReasonsFor.ALL, top_k)
    return CustomerView(
        user_id=user_id,
        churn_probability=round(float(scored.churn_probability[0]), 6),
        risk_tier=str(scored.risk_tier[0]),
        reasons=tuple(scored.reasons[0]),
        as_of_s=scoring_instant(state.last_event_s, now.timestamp()),
        last_event_s=state.last_event_s,
        events_applied=state.events_applied,
        model_version=bundle.version,
        last_warning_s=record.last_warning_s,
        armed=record.armed,
    )


def erase(store: CustomerStateStore, user_id: str) -> None:
    """Right to erasure: the customer's record (state, scores, pending warnings) is removed.
    Idempotent: erasing a customer with no record is no error."""
    try:
        store.delete(user_id)
    except aws_errors() as exc:
        raise classify_aws_error(exc) from exc
