"""The HTTP scoring contract (pydantic) and the domain function behind ``POST /v1/scores``; the
real-time routes' contract (``POST /v1/events``, ``GET /v1/customers/{user_id}``) and its mapping
to and from ``churnguard.realtime``.

Events use the canonical schema (see README). Timestamps are ISO-8601 (offsets converted to UTC,
naive taken as UTC); ``as_of`` defaults to the request time, and events at or after it are ignored.
The real-time routes score at ``max(now, just after the customer's last event)`` (``realtime``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from churnguard.bundle import ModelBundle
from churnguard.customer_state import StateEvent
from churnguard.decisions import DecisionLogUnavailableError, Decisions
from churnguard.event_types import EVENT_TYPES
from churnguard.features import (
    ID_BLANKS,
    MAX_AMOUNT,
    MAX_QUANTITY,
    MAX_USER_ID_LENGTH,
    EventArrays,
)
from churnguard.promotions import PromotionPolicy, PromotionsPublisher, build_messages
from churnguard.realtime import CustomerView, IngestResult
from churnguard.scoring import ReasonsFor, score_customers


def _strip(value: Any) -> Any:
    return value.strip(ID_BLANKS) if isinstance(value, str) else value


def _normalise_event_type(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


# The enum of the canonical types, in table order (churnguard.event_types), as in the OpenAPI schema.
EventType = Annotated[Literal[EVENT_TYPES], BeforeValidator(_normalise_event_type)]  # type: ignore[valid-type]
ProfileValue = str | float | int | bool | None
# Instants the feature path can take: 0001-01-01T00:00:00+01:00 is a valid ISO-8601 string whose UTC
# value is in year 0, which used to escape as a 500 ("year 0 is out of range"). The rule is on the
# written year (so the OpenAPI schema can state it as a pattern); offsets then keep UTC in 1899..2200.
YEAR_PATTERN = r"^\s*(19\d\d|2[01]\d\d)-"
_YEAR = re.compile(YEAR_PATTERN)


def _iso_text(value: Any) -> Any:
    """Only ISO-8601 text (pydantic would read a number or a boolean as seconds since 1970), with a
    year from 1900 to 2199."""
    if not isinstance(value, str | dt.datetime):
        raise ValueError("must be an ISO-8601 date-time string")
    if isinstance(value, str) and not _YEAR.match(value):
        raise ValueError("must be an ISO-8601 date-time with a year from 1900 to 2199")
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    """Naive -> UTC; offsets converted to UTC."""
    try:
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    except (OverflowError, ValueError) as exc:  # unreachable for the years admitted; kept as a guard
        raise ValueError("must be an ISO-8601 date-time with a year from 1900 to 2199") from exc


# POST /v1/events: the schema's bound on events per request (the configured limit, CHURNGUARD_MAX_EVENTS,
# is at most this and answers 413), an event id's and a profile's size.
MAX_EVENTS_SCHEMA = 10_000
MAX_EVENT_ID_LENGTH = 256
MAX_PROFILE_FIELDS = 64

UtcDatetime = Annotated[dt.datetime, BeforeValidator(_iso_text), AfterValidator(_utc)]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timestamp: UtcDatetime = Field(
        description="ISO-8601, year 1900-2199; offsets are converted to UTC, naive is UTC",
        json_schema_extra={"pattern": YEAR_PATTERN},
    )
    event_type: EventType
    # strict: a JSON number only ("12", true and false were coerced to 12.0, 1.0 and 0.0)
    amount: float | None = Field(
        None, ge=0, le=MAX_AMOUNT, allow_inf_nan=False, strict=True, description="missing -> 0"
    )
    quantity: float | None = Field(
        None, ge=0, le=MAX_QUANTITY, allow_inf_nan=False, strict=True, description="missing -> 1"
    )


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # stripped like batch files do ("a" and "a " are one customer everywhere)
    user_id: Annotated[str, BeforeValidator(_strip)] = Field(
        min_length=1, max_length=MAX_USER_ID_LENGTH, json_schema_extra={"pattern": r"\S"}
    )
    as_of: UtcDatetime | None = Field(
        None,
        description="exclusive end of observation (ISO-8601, year 1900-2199); default: now",
        json_schema_extra={"pattern": YEAR_PATTERN},
    )
    events: list[EventIn] = Field(default_factory=list, max_length=20_000)
    profile: dict[str, ProfileValue] | None = None


class _RequestWithoutDataInRepr(BaseModel):
    """A request body whose repr names its size, not its content: Powertools' event handler formats
    the parsed route arguments into a debug log line on every request (``_registered_api_adapter``),
    which would put user ids into the log at DEBUG and costs ~0.1 ms a request even when nothing is
    logged."""

    def __repr__(self) -> str:
        sizes = {name: len(v) for name, v in self.__dict__.items() if isinstance(v, list)}
        return f"{type(self).__name__}({', '.join(f'{k}: {n} items' for k, n in sizes.items())})"

    __str__ = __repr__


class ScoreRequest(_RequestWithoutDataInRepr):
    model_config = ConfigDict(extra="forbid")

    customers: list[CustomerIn] = Field(min_length=1)


class ReasonOut(BaseModel):
    group: str
    contribution: float
    text: str


class CustomerScore(BaseModel):
    user_id: str
    churn_probability: float
    risk_tier: Literal["low", "medium", "high"]
    reasons: list[ReasonOut]
    queued: bool
    # A promotion was decided but the customer is in this period's control group: do not act on them
    # (the decision is logged; outcomes compare them with the treated).
    held_out: bool = False


class ScoreResponse(BaseModel):
    model_version: str
    scored_at: str
    customers: list[CustomerScore]
    promotion_failures: int = 0
    # Rows of the monitoring sample that could not be logged (the scores are still right).
    decision_log_failures: int = 0


class DuplicateCustomerError(ValueError):
    def __init__(self, index: int, user_id: str) -> None:
        super().__init__(f"customers[{index}].user_id {user_id!r} appears more than once")
        self.field = f"customers[{index}].user_id"


def _epoch(value: dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


def request_arrays(
    customers: Sequence[CustomerIn], now: dt.datetime, profile_columns: Sequence[str]
) -> tuple[EventArrays, np.ndarray, dict[str, np.ndarray], list[str]]:
    """Request -> feature-path arrays (one pass over the events), per-customer as_of, profile."""
    seen: dict[str, int] = {}
    user_index, timestamps, types, amounts, quantities = [], [], [], [], []
    as_of = np.empty(len(customers))
    as_of_days = []
    for i, customer in enumerate(customers):
        if customer.user_id in seen:
            raise DuplicateCustomerError(i, customer.user_id)
        seen[customer.user_id] = i
        cutoff = customer.as_of or now
        as_of[i] = _epoch(cutoff)
        as_of_days.append(dt.datetime.fromtimestamp(as_of[i], dt.UTC).date().isoformat())
        for event in customer.events:
            user_index.append(i)
            timestamps.append(_epoch(event.timestamp))
            types.append(event.event_type)
            amounts.append(0.0 if event.amount is None else event.amount)
            quantities.append(1.0 if event.quantity is None else event.quantity)
    arrays = EventArrays(
        user_index=np.asarray(user_index, dtype=np.int64),
        n_users=len(customers),
        timestamp_s=np.asarray(timestamps, dtype=np.float64),
        event_type=np.asarray(types, dtype=object),
        amount=np.asarray(amounts, dtype=np.float64),
        quantity=np.asarray(quantities, dtype=np.float64),
    )
    profile = {
        column: np.asarray([(c.profile or {}).get(column) for c in customers], dtype=object)
        for column in profile_columns
    }
    return arrays, as_of, profile, as_of_days


def score_request(
    request: ScoreRequest,
    bundle: ModelBundle,
    *,
    now: dt.datetime,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher | None,
    top_k: int = 3,
    decisions: Decisions | None = None,
) -> ScoreResponse:
    spec = bundle.spec
    profile_columns = [*spec.profile_categorical, *spec.profile_numeric]
    arrays, as_of, profile, as_of_days = request_arrays(request.customers, now, profile_columns)
    user_ids = [c.user_id for c in request.customers]
    scored = score_customers(
        bundle, user_ids, arrays, as_of, profile=profile, reasons_for=ReasonsFor.ALL, top_k=top_k
    )
    scored_at = now.astimezone(dt.UTC).isoformat(timespec="seconds")
    cutoffs = [dt.datetime.fromtimestamp(a, dt.UTC).isoformat(timespec="seconds") for a in as_of]
    queued: set[str] = set()
    held_out: set[str] = set()
    failures = log_failures = 0
    acted_on: set[str] = set()
    if publisher is not None:
        messages = build_messages(
            scored, policy, source="api", scored_at=scored_at, as_of=as_of_days, cutoffs=cutoffs
        )
        if messages:
            result = publisher.publish(messages)
            failed = {f["user_id"] for f in result.failed}
            held_out = {h["user_id"] for h in result.held_out}
            failures = len(failed)
            acted_on = {m["user_id"] for m in messages}
            queued = acted_on - failed - held_out
    if decisions is not None:
        try:
            decisions.sample(
                scored,
                acted_on=acted_on,
                source="api",
                scored_at=scored_at,
                as_of=as_of_days,
                cutoffs=cutoffs,
            )
        except DecisionLogUnavailableError:
            log_failures = 1
    return ScoreResponse(
        model_version=bundle.version,
        scored_at=scored_at,
        customers=[
            CustomerScore(
                user_id=user_id,
                churn_probability=round(float(scored.churn_probability[i]), 6),
                risk_tier=scored.risk_tier[i],
                reasons=[ReasonOut(**r.to_dict()) for r in scored.reasons[i]],
                queued=user_id in queued,
                held_out=user_id in held_out,
            )
            for i, user_id in enumerate(user_ids)
        ],
        promotion_failures=failures,
        decision_log_failures=log_failures,
    )


def model_summary(bundle: ModelBundle) -> dict[str, Any]:
    """``GET /v1/model``: what a caller needs to trust and interpret the scores."""
    m = bundle.metadata
    spec = bundle.spec
    data = m.data.model_dump()
    return {
        "model_version": bundle.version,
        "trained_at": m.created_at,
        "code_version": m.code_version,
        "data": {k: data[k] for k in ("source", "sha256", "customers", "event_types")},
        "protocol": m.protocol.model_dump(),
        "metrics": {split: m.summary_metrics(split) for split in m.metrics},
        "thresholds": m.thresholds.model_dump(),
        "features": {
            "weeks": spec.weeks,
            "event_types": list(spec.event_types),
            "sequence_channels": list(spec.sequence_channels),
            "static": list(spec.model_static_names),
            "reason_groups": list(bundle.explainer.groups),
            "profile_fields": [*spec.profile_categorical, *spec.profile_numeric],
        },
        "reasons": reasons_summary(bundle),
    }


def reasons_summary(bundle: ModelBundle) -> dict[str, Any]:
    """How the reasons are computed and what they are relative to."""
    reference = bundle.metadata.reason_reference
    if reference is None:
        return {
            "method": bundle.explainer.method,
            "groups": list(bundle.explainer.groups),
            "reference": {"description": "median training inputs, one group replaced at a time"},
            "adds_up": False,
        }
    return {
        "method": reference.method,
        "groups": list(reference.groups),
        "reference": {
            "description": reference.selection,
            "probability": reference.probability,
            "features": reference.features,
        },
        "adds_up": True,  # contributions sum to churn_probability - reference.probability
    }


# ---------------------------------------------------------------------------------------------
# real-time mode (issue 13): POST /v1/events, GET / DELETE /v1/customers/{user_id}
# ---------------------------------------------------------------------------------------------


class StreamEventIn(EventIn):
    """One event of ``POST /v1/events``: the canonical schema, with its customer and optional id."""

    user_id: Annotated[str, BeforeValidator(_strip)] = Field(
        min_length=1, max_length=MAX_USER_ID_LENGTH, json_schema_extra={"pattern": r"\S"}
    )
    event_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_EVENT_ID_LENGTH,
        description="an event sent again with the same id is applied once; without an id, every event is new",
    )
    profile: dict[str, ProfileValue] | None = Field(
        None, max_length=MAX_PROFILE_FIELDS, description="profile fields; the latest non-null value counts"
    )


class EventsRequest(_RequestWithoutDataInRepr):
    model_config = ConfigDict(extra="forbid")

    events: list[StreamEventIn] = Field(min_length=1, max_length=MAX_EVENTS_SCHEMA)


class WarningOut(BaseModel):
    fired: bool  # the risk crossed the promotion threshold upwards now (once per crossing)
    trigger: Literal["event"] | None  # what fired it (the sweep's warnings say "inactivity")
    queued: bool  # the promotions queue accepted it


class CustomerError(BaseModel):
    kind: Literal["transient", "refused"]  # transient: send this customer's events again later
    message: str


class IngestedCustomer(BaseModel):
    user_id: str
    applied: bool  # this customer's events were stored (False: see ``error``)
    churn_probability: float | None
    risk_tier: Literal["low", "medium", "high"] | None
    reasons: list[ReasonOut]
    warning: WarningOut
    events_applied: int  # events new to the state
    duplicates: int  # events whose event_id was applied before
    error: CustomerError | None = None


class EventsResponse(BaseModel):
    model_version: str
    scored_at: str
    customers: list[IngestedCustomer]
    retry: list[str]  # customers whose events were not applied for a transient reason: send them again
    promotion_failures: int = 0  # warnings stored but not yet sent (sent again on the customer's next write)


class CustomerOut(BaseModel):
    user_id: str
    churn_probability: float
    risk_tier: Literal["low", "medium", "high"]
    reasons: list[ReasonOut]
    as_of: str  # the instant scored: max(now, just after the last event)
    last_event_at: str | None  # None: only events without a usable time (never for a stored customer)
    events_applied: int
    model_version: str
    last_warning_at: str | None
    armed: bool  # a warning fires at the next upward crossing


class TooManyCustomersError(ValueError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"at most {limit} customers per request (got {count})")
        self.limit = limit


def _iso_or_none(seconds: float | None) -> str | None:
    if seconds is None or not np.isfinite(seconds):
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")


def state_events(request: EventsRequest, max_customers: int) -> list[tuple[str, StateEvent]]:
    """The request's ``(user_id, event)`` pairs in request order; ``TooManyCustomersError`` beyond
    ``max_customers`` distinct customers."""
    customers = {e.user_id for e in request.events}
    if len(customers) > max_customers:
        raise TooManyCustomersError(len(customers), max_customers)
    return [
        (
            e.user_id,
            StateEvent(
                timestamp_s=_epoch(e.timestamp),
                event_type=e.event_type,
                amount=0.0 if e.amount is None else e.amount,
                quantity=1.0 if e.quantity is None else e.quantity,
                event_id=e.event_id,
                profile=dict(e.profile or {}),
            ),
        )
        for e in request.events
    ]


def events_response(result: IngestResult, *, queue_configured: bool = True) -> EventsResponse:
    """``realtime.ingest``'s result as the HTTP contract."""
    customers = []
    for c in result.customers:
        error = None if c.error is None else CustomerError(kind=c.error.kind, message=c.error.message)
        customers.append(
            IngestedCustomer(
                user_id=c.user_id,
                applied=c.error is None,
                churn_probability=c.churn_probability,
                risk_tier=c.risk_tier,  # type: ignore[arg-type]  # the model's tiers: low/medium/high
                reasons=[ReasonOut(**r.to_dict()) for r in c.reasons],
                warning=WarningOut(
                    fired=c.warning,
                    trigger="event" if c.warning else None,
                    queued=c.queued and queue_configured,
                ),
                events_applied=c.applied,
                duplicates=c.duplicates,
                error=error,
            )
        )
    return EventsResponse(
        model_version=result.model_version,
        scored_at=result.scored_at,
        customers=customers,
        retry=[c.user_id for c in result.customers if c.error is not None and c.error.kind == "transient"],
        promotion_failures=result.promotion_failures if queue_configured else 0,
    )


def customer_out(view: CustomerView) -> CustomerOut:
    """``realtime.customer_view``'s answer as the HTTP contract."""
    return CustomerOut(
        user_id=view.user_id,
        churn_probability=view.churn_probability,
        risk_tier=view.risk_tier,  # type: ignore[arg-type]  # the model's tiers: low/medium/high
        reasons=[ReasonOut(**r.to_dict()) for r in view.reasons],
        as_of=_iso_or_none(view.as_of_s) or "",
        last_event_at=_iso_or_none(view.last_event_s),
        events_applied=view.events_applied,
        model_version=view.model_version,
        last_warning_at=_iso_or_none(view.last_warning_s),
        armed=view.armed,
    )


def path_user_id(raw: str) -> str:
    """The ``{user_id}`` of ``/v1/customers/{user_id}``: percent-decoded, stripped like everywhere;
    ``ValueError`` when blank or too long."""
    user_id = unquote(raw).strip(ID_BLANKS)
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise ValueError(f"user_id must be 1 to {MAX_USER_ID_LENGTH} characters, not blank")
    return user_id
