"""Real-time events through a queue (issue 13 §1): one SQS message = one ``POST /v1/events`` body.

Why a queue (SQS, ``RealtimeEventsQueue``) rather than an EventBridge bus: a retailer's event stream
is bursty and must not be lost when DynamoDB throttles or a model is loading. SQS buffers any
burst, retries per message (partial batch failures), parks what keeps failing in a dead-letter
queue, and needs no rule or schema registry; the events need no fan-out to other consumers, which is
what a bus would add (and a bus would still want a queue in front of the function to buffer).

A message is taken exactly as the API takes a request body (same model, same limits). Delivery is
at least once, so an event without an ``event_id`` gets one from the message's *content*:
``sqs:<sha-256 of the body, 32 hex>:<position>``. Not the SQS message id: a producer's SDK retry of
``SendMessage`` and a resend of a parked message (from the dead-letter queue) carry the same body
under a new message id, and must not apply anything twice either. So byte-identical messages are one
message; events meant to be distinct need distinct content (their timestamps) or their own ids.

Each message ends as one of:
* ``applied``: every customer's events are stored (warnings fired and queued as for the API);
* ``retry``: some customer failed for a transient reason (throttling, conflicts) or an AWS call was
  refused (a deployment problem, not the message's): the message is delivered again, and parked by
  the queue's redrive policy if that lasts; the customers already applied see their events as
  duplicates;
* ``refused``: the message can never be applied (not JSON, schema, limits, an event too far in the
  future, a customer refused by the state rules): the handler moves it to the dead-letter queue at
  once with ``reason`` (field names and rules, never a value), instead of retrying it in vain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import ValidationError

from churnguard.api import EventsRequest, StreamEventIn, TooManyCustomersError, state_events
from churnguard.customer_state import StateEvent
from churnguard.realtime import FutureEventError, IngestResult, ingest_counts
from churnguard.validation import describe

Ingest = Callable[[list[tuple[str, StateEvent]], dt.datetime], IngestResult]
"""``ingest(pairs, now)``: ``churnguard.realtime.ingest`` bound to its store, model and publisher."""


@dataclass(frozen=True)
class MessageOutcome:
    status: Literal["applied", "retry", "refused"]
    reason: str | None = None  # why refused or retried: field names and rules, never a value
    # ``realtime.ingest_counts`` (the API's metric names); empty when refused before any was applied
    counts: Mapping[str, int] = field(default_factory=dict)


# The names a reason may quote: the request's own fields; any other key in an error's location was
# chosen by the sender (a profile key, an unknown field: possibly a customer id or an e-mail).
_FIELD_NAMES = frozenset(EventsRequest.model_fields) | frozenset(StreamEventIn.model_fields)


def parse_message(
    body: str, *, max_events: int, max_customers: int
) -> list[tuple[str, StateEvent]] | MessageOutcome:
    """The message's ``(user_id, event)`` pairs, events without an id named after the message's
    content; a ``refused`` outcome when the body is not a valid ``POST /v1/events`` body within the
    limits."""
    try:
        request = EventsRequest.model_validate_json(body)
    except ValidationError as exc:
        reason = describe(exc, root="body", known=_FIELD_NAMES, limit=5)
        return MessageOutcome("refused", f"invalid message: {reason}")
    if len(request.events) > max_events:
        return MessageOutcome(
            "refused", f"at most {max_events} events per message (got {len(request.events)})"
        )
    try:
        pairs = state_events(request, max_customers)
    except TooManyCustomersError as exc:
        return MessageOutcome("refused", str(exc).replace("request", "message"))
    content = hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return [
        (
            user_id,
            event if event.event_id is not None else replace(event, event_id=f"sqs:{content}:{index}"),
        )
        for index, (user_id, event) in enumerate(pairs)
    ]


def apply_message(
    body: str,
    ingest: Ingest,
    now: dt.datetime,
    *,
    max_events: int,
    max_customers: int,
    queue_configured: bool = True,
) -> MessageOutcome:
    """One message applied to the customers' states (module docstring for the outcomes)."""
    pairs = parse_message(body, max_events=max_events, max_customers=max_customers)
    if isinstance(pairs, MessageOutcome):
        return pairs
    try:
        result = ingest(pairs, now)
    except FutureEventError as exc:
        return MessageOutcome("refused", f"invalid message: {exc}")
    errors = [c.error for c in result.customers if c.error is not None]
    counts = ingest_counts(result, len(pairs), queue_configured=queue_configured)
    outcome = MessageOutcome("applied", counts=counts)
    # An AWS call refused (permissions, a missing table) is the deployment's fault, not the message's:
    # retried, so the redrive policy parks it only if it lasts.
    transient = [e for e in errors if e.kind == "transient" or e.aws]
    if transient:
        return replace(
            outcome, status="retry", reason=f"{len(transient)} customer(s): {transient[0].message}"
        )
    if errors:
        return replace(
            outcome, status="refused", reason=f"{len(errors)} customer(s) refused: {errors[0].message}"
        )
    return outcome
