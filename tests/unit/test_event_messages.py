"""Real-time events by queue (``churnguard.event_messages``): a message is a ``POST /v1/events``
body; a redelivered message applies nothing twice (ids named after the message), a transient
failure asks for a retry, and a message that can never be applied is refused with a reason that
names fields and rules, never a value."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from churnguard.bundle import ModelBundle
from churnguard.customer_state import CustomerState
from churnguard.event_messages import apply_message, parse_message
from churnguard.promotions import PromotionPolicy
from churnguard.realtime import ingest
from tests.helpers import FIXTURE_MODEL
from tests.unit.fakes import MemoryCustomerStateStore, RecordingPublisher, client_error

NOW = dt.datetime(2024, 10, 1, tzinfo=dt.UTC)
LIMITS = {"max_events": 1000, "max_customers": 100}


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.from_directory(FIXTURE_MODEL)


@pytest.fixture
def store() -> MemoryCustomerStateStore:
    return MemoryCustomerStateStore()


def bound(store, bundle):
    def run(pairs, now):
        return ingest(
            pairs,
            store=store,
            bundle=bundle,
            policy=PromotionPolicy(),
            publisher=RecordingPublisher(),
            now=now,
        )

    return run


def body(*events: dict) -> str:
    return json.dumps({"events": list(events)})


def order(user: str, day: int, **more) -> dict:
    return {
        "user_id": user,
        "timestamp": f"2024-09-{day:02d}T10:00:00Z",
        "event_type": "order",
        "amount": 20.0,
        **more,
    }


def test_the_same_message_again_applies_nothing_twice_even_without_event_ids(store, bundle):
    """Again: an SQS redelivery, a producer's SDK retry of SendMessage (a new message id), or a
    parked message resent from the dead-letter queue (a new message id): the same body each time."""
    message = body(order("c-1", 2), order("c-1", 9), order("c-2", 3, event_id="own-id"))
    first = apply_message(message, bound(store, bundle), NOW, **LIMITS)
    c = first.counts
    outcome = (
        first.status,
        c["EventsReceived"],
        c["CustomersUpdated"],
        c["EventsApplied"],
        c["DuplicateEvents"],
    )
    assert outcome == ("applied", 3, 2, 3, 0)
    again = apply_message(message, bound(store, bundle), NOW, **LIMITS)
    assert (again.status, again.counts["DuplicateEvents"], again.counts["EventsApplied"]) == ("applied", 3, 0)
    assert CustomerState.from_bytes(store.items["c-1"][0].state).events_applied == 2
    reordered = body(order("c-1", 9), order("c-1", 2))  # other content: its id-less events are new
    assert apply_message(reordered, bound(store, bundle), NOW, **LIMITS).counts["DuplicateEvents"] == 0


def test_events_without_an_id_are_named_after_the_message_content_and_their_position():
    message = body(order("c-1", 2), order("c-1", 9, event_id="x"))
    pairs = parse_message(message, **LIMITS)
    content = hashlib.sha256(message.encode()).hexdigest()[:32]
    assert [event.event_id for _, event in pairs] == [f"sqs:{content}:0", "x"]


def test_a_mixed_message_refused_for_one_customer_applies_the_others_once_however_often_it_is_resent(
    store, bundle
):
    message = body(order("c-1", 2), order("c-bad", 3))
    for _ in range(3):  # parked, resent from the DLQ, parked again ...
        store.faults[("get", "c-bad")] = client_error("ValidationException", "GetItem")
        apply_message(message, bound(store, bundle), NOW, **LIMITS)
    assert CustomerState.from_bytes(store.items["c-1"][0].state).events_applied == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("{not json", "invalid message: body: Invalid JSON"),
        (body(order("secret-customer", 2) | {"event_type": "teleport"}), "events[0].event_type"),
        (body(order("secret-customer", 2) | {"amount": "lots"}), "events[0].amount"),
        (json.dumps({"customers": []}), "events: Field required"),
        (json.dumps({"secret-customer": []}), "<key>: Extra inputs are not permitted"),
        (body(order("c-1", 2, profile={"secret-customer@example.com": [1]})), "events[0].profile.<key>"),
        (body(*[order(f"c-{i}", 2) for i in range(101)]), "at most 100 customers per message (got 101)"),
    ],
)
def test_a_message_that_can_never_be_applied_is_refused_naming_the_field_not_the_value(
    message, reason, store, bundle
):
    outcome = apply_message(message, bound(store, bundle), NOW, **LIMITS)
    assert outcome.status == "refused" and reason in outcome.reason
    assert "secret-customer" not in outcome.reason and "lots" not in outcome.reason and store.items == {}


def test_too_many_events_and_an_event_far_in_the_future_are_refused(store, bundle):
    many = apply_message(
        body(*[order("c-1", 2)] * 5), bound(store, bundle), NOW, max_events=4, max_customers=100
    )
    assert many.status == "refused" and "at most 4 events per message (got 5)" in many.reason
    future = order("secret-customer", 2) | {"timestamp": "2025-01-01T00:00:00Z"}
    late = apply_message(body(future), bound(store, bundle), NOW, **LIMITS)
    assert late.status == "refused" and "events[0].timestamp" in late.reason and "secret" not in late.reason


def test_a_transient_failure_of_one_customer_asks_for_a_retry_and_the_retry_completes_it(store, bundle):
    store.faults[("get", "c-2")] = client_error("ProvisionedThroughputExceededException", "GetItem")
    message = body(order("c-1", 2), order("c-2", 3))
    first = apply_message(message, bound(store, bundle), NOW, **LIMITS)
    assert (first.status, first.counts["CustomersUpdated"]) == ("retry", 1) and "c-2" not in first.reason
    assert first.counts["CustomersNotApplied"] == 1
    again = apply_message(message, bound(store, bundle), NOW, **LIMITS)
    assert (again.status, again.counts["CustomersUpdated"], again.counts["DuplicateEvents"]) == (
        "applied",
        2,
        1,
    )
    assert set(store.items) == {"c-1", "c-2"}
