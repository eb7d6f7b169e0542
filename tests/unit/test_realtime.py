"""Real-time early warning (``churnguard.realtime``) against in-memory ports and the fixture model:
the risk follows the events, warnings fire once per crossing (hysteresis, cool-down, retries), the
inactivity sweep, the customer view, erasure, and write conflicts."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from churnguard.bundle import ModelBundle
from churnguard.customer_state import CustomerState, StateEvent
from churnguard.features import EventArrays
from churnguard.idempotency import LedgeredPublisher
from churnguard.ports import CustomerRecord, LedgerUnavailableError, SendFailure
from churnguard.promotions import MESSAGE_SCHEMA, PromotionPolicy, QueuePromotionsPublisher
from churnguard.realtime import (
    FutureEventError,
    RealtimeRules,
    WarningState,
    customer_view,
    erase,
    ingest,
    next_warning,
    rescore_inactive,
    scoring_instant,
)
from churnguard.scoring import ReasonsFor, score_customers
from tests.helpers import FIXTURE_MODEL
from tests.unit.fakes import (
    MemoryCustomerStateStore,
    MemoryLedger,
    MemoryQueue,
    RecordingPublisher,
    client_error,
)

DAY = 86_400.0
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
POLICY = PromotionPolicy()
RULES = RealtimeRules()


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.from_directory(FIXTURE_MODEL)


@pytest.fixture
def store() -> MemoryCustomerStateStore:
    return MemoryCustomerStateStore()


def weekly_order(week: int, amount: float = 40.0) -> StateEvent:
    return StateEvent((BASE + dt.timedelta(weeks=week)).timestamp(), "order", amount, 2, event_id=f"o{week}")


def send(store, bundle, publisher, pairs, now, rules=RULES):
    return ingest(pairs, store=store, bundle=bundle, policy=POLICY, publisher=publisher, now=now, rules=rules)


def sweep(store, bundle, publisher, now, **kwargs):
    return rescore_inactive(store, bundle, policy=POLICY, publisher=publisher, now=now, **kwargs)


def history_score(bundle, events: list[StateEvent], as_of_s: float) -> float:
    """The batch path's score of the full history (the reference the state must follow)."""
    arrays = EventArrays(
        user_index=np.zeros(len(events), dtype=np.int64),
        n_users=1,
        timestamp_s=np.asarray([e.timestamp_s for e in events]),
        event_type=np.asarray([e.event_type for e in events], dtype=object),
        amount=np.asarray([e.amount for e in events]),
        quantity=np.asarray([e.quantity for e in events]),
    )
    scored = score_customers(bundle, ["c"], arrays, as_of_s, reasons_for=ReasonsFor.NONE)
    return float(scored.churn_probability[0])


def regular_customer(store, bundle, publisher, weeks: int = 20):
    """A customer ordering every week for ``weeks`` weeks, one request per order; their results."""
    return [
        send(store, bundle, publisher, [("c1", weekly_order(w))], BASE + dt.timedelta(weeks=w, hours=1))
        for w in range(weeks)
    ]


# ---------------------------------------------------------------------------------------------
# the risk follows the events
# ---------------------------------------------------------------------------------------------


def test_events_one_by_one_give_the_full_historys_score_each_time(store, bundle):
    publisher = RecordingPublisher()
    results = regular_customer(store, bundle, publisher, weeks=12)
    for week, result in enumerate(results):
        (customer,) = result.customers
        now_s = (BASE + dt.timedelta(weeks=week, hours=1)).timestamp()
        expected = history_score(bundle, [weekly_order(w) for w in range(week + 1)], now_s)
        assert customer.churn_probability == pytest.approx(expected, abs=2e-6)
        assert (customer.applied, customer.duplicates, customer.error) == (1, 0, None)
    risks = [r.customers[0].churn_probability for r in results]
    assert risks[0] > bundle.thresholds.promotion > max(risks[4:])  # a one-order newcomer, then a regular
    record, version = store.get("c1")
    assert version != 0 and CustomerState.from_bytes(record.state).events_applied == 12
    assert record.risk == pytest.approx(risks[-1], abs=1e-6) and record.model_version == bundle.version


def test_one_request_scores_many_customers_and_groups_their_events(store, bundle):
    pairs = [(f"c{i % 3}", weekly_order(w)) for w in range(4) for i in range(3)]
    result = send(store, bundle, RecordingPublisher(), pairs, BASE + dt.timedelta(weeks=4))
    assert [c.user_id for c in result.customers] == ["c0", "c1", "c2"]
    assert {c.applied for c in result.customers} == {4}
    assert len({c.churn_probability for c in result.customers}) == 1  # same history, same score


def test_an_event_at_now_is_observed_and_the_state_never_scores_before_its_last_event(store, bundle):
    now = BASE + dt.timedelta(weeks=3)
    event = StateEvent(now.timestamp() + 600, "order", 50.0, event_id="later")  # a clock 10 min ahead
    (customer,) = send(store, bundle, RecordingPublisher(), [("c", event)], now).customers
    expected = history_score(bundle, [event], scoring_instant(event.timestamp_s, now.timestamp()))
    assert scoring_instant(event.timestamp_s, now.timestamp()) > event.timestamp_s
    assert customer.churn_probability == pytest.approx(expected, abs=2e-6)
    far = StateEvent(now.timestamp() + RULES.max_future_s + 1, "view")
    with pytest.raises(FutureEventError, match=r"events\[1\]"):
        send(store, bundle, RecordingPublisher(), [("c", event), ("c", far)], now)


# ---------------------------------------------------------------------------------------------
# warnings: once per crossing
# ---------------------------------------------------------------------------------------------


def test_a_crossing_fires_once_and_a_retried_request_fires_nothing_and_counts_duplicates(store, bundle):
    queue = MemoryQueue()
    publisher = LedgeredPublisher(QueuePromotionsPublisher(queue, sleep=lambda _: None), MemoryLedger())
    pairs = [("c1", weekly_order(0)), ("c1", weekly_order(0))]  # the same event twice in one request
    now = BASE + dt.timedelta(hours=1)
    (first,) = send(store, bundle, publisher, pairs, now).customers
    assert (first.warning, first.queued, first.applied, first.duplicates) == (True, True, 1, 1)
    (message,) = [json.loads(m.body) for m in queue.messages]
    assert message["schema"] == MESSAGE_SCHEMA and message["trigger"] == "event"
    assert message["user_id"] == "c1" and message["model_version"] == bundle.version
    assert message["churn_probability"] == first.churn_probability and message["reasons"]
    assert message["suggested_action"]["type"] and message["expected_value"] > 0
    (retry,) = send(store, bundle, publisher, pairs, now + dt.timedelta(seconds=30)).customers
    assert (retry.warning, retry.queued, retry.applied, retry.duplicates) == (False, False, 0, 2)
    assert retry.churn_probability == pytest.approx(first.churn_probability, abs=1e-4)
    assert len(queue.messages) == 1
    record, _ = store.get("c1")
    assert (record.armed, record.last_warning_s, record.outbox) == (False, pytest.approx(now.timestamp()), ())


def test_a_warning_waits_until_the_risk_falls_below_threshold_minus_margin():
    rules, threshold = RealtimeRules(margin=0.05, cooldown_days=0), 0.4
    risks = [0.5, 0.37, 0.5, 0.34, 0.41, 0.2, 0.39, 0.6]  # 0.37: inside the band, 0.34: below it
    fired, state = [], WarningState()
    for day, risk in enumerate(risks):
        fires, state = next_warning(state, risk, threshold, day * DAY, offer=True, rules=rules)
        fired.append(fires)
    assert fired == [True, False, False, False, True, False, False, True]


def test_a_crossing_inside_the_cool_down_fires_once_the_cool_down_is_over_not_before():
    rules, threshold = RealtimeRules(margin=0.05, cooldown_days=14), 0.4
    fires, state = next_warning(WarningState(), 0.6, threshold, 0.0, offer=True, rules=rules)
    assert fires
    _, state = next_warning(state, 0.1, threshold, 2 * DAY, offer=True, rules=rules)  # re-armed
    fires, state = next_warning(state, 0.7, threshold, 10 * DAY, offer=True, rules=rules)
    assert not fires and state.armed  # crossed again within 14 days: held, still armed
    fires, state = next_warning(state, 0.7, threshold, 14 * DAY - 1, offer=True, rules=rules)
    assert not fires
    fires, state = next_warning(state, 0.7, threshold, 14 * DAY, offer=True, rules=rules)
    assert fires and state == WarningState(armed=False, last_warning_s=14 * DAY)
    fires, _ = next_warning(state, 0.9, threshold, 40 * DAY, offer=True, rules=rules)
    assert not fires  # never fell below 0.35: the same crossing


def test_no_offer_that_pays_off_means_no_warning_and_the_customer_stays_armed():
    fires, state = next_warning(WarningState(), 0.9, 0.4, 0.0, offer=False, rules=RULES)
    assert not fires and state == WarningState()


def test_a_warned_customer_rearms_once_the_risk_is_below_the_band(store, bundle):
    publisher = RecordingPublisher()
    band = bundle.thresholds.promotion - RULES.margin
    armed, risks = [], []
    for week in range(3):
        now = BASE + dt.timedelta(weeks=week, hours=1)
        (customer,) = send(store, bundle, publisher, [("c1", weekly_order(week))], now).customers
        risks.append(customer.churn_probability)
        armed.append(store.get("c1")[0].armed)
    assert risks[0] >= bundle.thresholds.promotion and max(risks[1:]) < band
    assert armed == [False, True, True] and len(publisher.messages) == 1
    assert len([c for c, _ in store.calls if c == "put"]) == 3 + 1  # + clearing the warning's outbox


# ---------------------------------------------------------------------------------------------
# the inactivity sweep
# ---------------------------------------------------------------------------------------------


def test_the_sweep_warns_a_lapsed_customer_once_and_not_again_on_the_next_sweep(store, bundle):
    publisher = RecordingPublisher()
    regular_customer(store, bundle, publisher, weeks=20)
    assert len(publisher.messages) == 1  # the newcomer's warning, 19 weeks ago
    last = BASE + dt.timedelta(weeks=19)
    quiet = sweep(store, bundle, publisher, last + dt.timedelta(days=10))
    assert (quiet.scanned, quiet.scored, quiet.warnings, quiet.cursor) == (1, 1, 0, None)
    lapsed = sweep(store, bundle, publisher, last + dt.timedelta(days=30))
    assert (lapsed.warnings, lapsed.queued, lapsed.failed) == (1, 1, 0)
    message = publisher.messages[-1]
    assert message["trigger"] == "inactivity" and message["risk_tier"] == "high"
    assert message["as_of"] == (last + dt.timedelta(days=30)).isoformat(timespec="seconds")
    again = sweep(store, bundle, publisher, last + dt.timedelta(days=31))
    assert (again.scored, again.warnings) == (1, 0) and len(publisher.messages) == 2
    view = customer_view(store, bundle, "c1", last + dt.timedelta(days=31))
    assert view.risk_tier == "high" and view.last_warning_s == (last + dt.timedelta(days=30)).timestamp()
    assert view.last_event_s == weekly_order(19).timestamp_s and view.events_applied == 20


def test_the_sweep_defers_a_crossing_inside_the_cool_down(store, bundle):
    publisher = RecordingPublisher()
    regular_customer(store, bundle, publisher, weeks=20)
    last = BASE + dt.timedelta(weeks=19)
    rules = RealtimeRules(cooldown_days=170)  # the first warning was 133 days before ``last``
    held = sweep(store, bundle, publisher, last + dt.timedelta(days=30), rules=rules)
    assert held.warnings == 0 and store.get("c1")[0].armed
    fired = sweep(store, bundle, publisher, last + dt.timedelta(days=40), rules=rules)
    assert fired.warnings == 1 and publisher.messages[-1]["trigger"] == "inactivity"


def test_the_sweep_skips_customers_scored_recently_and_writes_only_changed_warning_states(store, bundle):
    publisher = RecordingPublisher()
    for i in range(7):
        send(store, bundle, publisher, [(f"c{i}", weekly_order(0))], BASE + dt.timedelta(hours=1))
    puts = len([c for c, _ in store.calls if c == "put"])
    recent = sweep(store, bundle, publisher, BASE + dt.timedelta(hours=3))
    assert (recent.scanned, recent.skipped_recent, recent.scored) == (7, 7, 0)
    later = sweep(store, bundle, publisher, BASE + dt.timedelta(days=1), page_size=3)
    assert (later.scanned, later.scored, later.warnings) == (7, 7, 0)  # all warned already, still high
    assert len([c for c, _ in store.calls if c == "put"]) == puts  # nothing changed: nothing written
    assert len([c for c, _ in store.calls if c == "scan"]) == 1 + 3  # 7 customers in pages of 3


def test_a_sweep_resumes_from_its_cursor_and_segments_cover_every_customer_once(store, bundle):
    publisher = RecordingPublisher()
    pairs = [(f"c{i}", weekly_order(0)) for i in range(10)]
    send(store, bundle, publisher, pairs, BASE + dt.timedelta(hours=1))
    now = BASE + dt.timedelta(days=2)
    first = sweep(store, bundle, publisher, now, page_size=4, max_pages=1)
    assert first.scanned == 4 and first.cursor is not None
    rest = sweep(store, bundle, publisher, now, page_size=4, cursor=first.cursor)
    assert rest.scanned == 6 and rest.cursor is None
    segments = [sweep(store, bundle, publisher, now, segment=s, segments=3).scanned for s in range(3)]
    assert sum(segments) == 10


# ---------------------------------------------------------------------------------------------
# publishing failures, conflicts, AWS errors
# ---------------------------------------------------------------------------------------------


def test_a_warning_the_queue_refused_stays_stored_and_goes_out_with_the_next_write(store, bundle):
    queue = MemoryQueue()
    queue.fail["c1"] = SendFailure("x", "InvalidParameterValue", "refused", sender_fault=True)
    publisher = LedgeredPublisher(QueuePromotionsPublisher(queue, sleep=lambda _: None), MemoryLedger())
    result = send(store, bundle, publisher, [("c1", weekly_order(0))], BASE + dt.timedelta(hours=1))
    (customer,) = result.customers
    assert (customer.warning, customer.queued, result.promotion_failures) == (True, False, 1)
    assert queue.messages == [] and len(store.get("c1")[0].outbox) == 1
    (retry,) = send(
        store, bundle, publisher, [("c1", weekly_order(0))], BASE + dt.timedelta(hours=2)
    ).customers
    assert not retry.warning and retry.duplicates == 1  # no second crossing ...
    (message,) = [json.loads(m.body) for m in queue.messages]  # ... the stored one went out
    assert message["trigger"] == "event" and store.get("c1")[0].outbox == ()


def test_a_concurrent_write_is_retried_and_both_writers_events_are_kept(store, bundle):
    publisher = RecordingPublisher()
    send(store, bundle, publisher, [("c1", weekly_order(0))], BASE + dt.timedelta(hours=1))
    now = BASE + dt.timedelta(weeks=1, hours=1)
    view = StateEvent(weekly_order(1).timestamp_s - 3600, "view", event_id="v1")

    def other_writer(user_id: str) -> None:
        store.before_put = None  # once
        send(store, bundle, publisher, [(user_id, view)], now)

    store.before_put = other_writer
    (customer,) = send(store, bundle, publisher, [("c1", weekly_order(1))], now).customers
    assert [c for c, _ in store.calls[3:]] == ["get", "put", "get", "put", "get", "put"]  # ours, other, ours
    assert customer.error is None and (customer.applied, customer.duplicates) == (1, 0)
    state = CustomerState.from_bytes(store.get("c1")[0].state)
    assert state.events_applied == 3  # ours and the other writer's: nothing lost
    expected = history_score(bundle, [weekly_order(0), view, weekly_order(1)], now.timestamp())
    assert customer.churn_probability == pytest.approx(expected, abs=2e-6)


def test_conflicts_past_the_bound_give_a_clear_transient_error_and_store_nothing(store, bundle):
    publisher = RecordingPublisher()
    send(store, bundle, publisher, [("c1", weekly_order(0))], BASE + dt.timedelta(hours=1))

    def someone_else_writes_c1(user_id: str) -> None:
        if user_id == "c1":
            record, version = store.items[user_id]
            store.items[user_id] = (record, version + 1)

    store.before_put = someone_else_writes_c1
    rules = RealtimeRules(max_attempts=3)
    pairs = [("c1", weekly_order(1)), ("c2", weekly_order(1))]
    failed, ok = send(store, bundle, publisher, pairs, BASE + dt.timedelta(weeks=1, hours=1), rules).customers
    assert failed.error.kind == "transient" and "still conflicting after 3 attempts" in failed.error.message
    assert failed.churn_probability is None and not failed.warning
    assert CustomerState.from_bytes(store.items["c1"][0].state).events_applied == 1
    assert ok.error is None and ok.applied == 1
    assert len([c for c, u in store.calls if c == "put" and u == "c1"]) == 1 + 1 + 3


def test_an_aws_error_fails_that_customer_only_and_names_no_user(store, bundle):
    store.faults[("get", "secret-user")] = client_error("ProvisionedThroughputExceededException", "GetItem")
    pairs = [("secret-user", weekly_order(0)), ("c2", weekly_order(0))]
    failed, ok = send(store, bundle, RecordingPublisher(), pairs, BASE + dt.timedelta(hours=1)).customers
    assert failed.error.kind == "transient" and "secret-user" not in failed.error.message
    assert "ProvisionedThroughputExceededException" in failed.error.message
    assert ok.error is None and "secret-user" not in store.items


def test_a_state_too_large_is_refused_and_the_previous_state_kept(store, bundle):
    store.items["c1"] = (CustomerRecord(CustomerState.empty(39).to_bytes(), -np.inf), 1)
    big = [("c1", StateEvent(BASE.timestamp() + i, "view", event_id=f"v{i}")) for i in range(60_000)]
    (customer,) = send(store, bundle, RecordingPublisher(), big, BASE + dt.timedelta(days=1)).customers
    assert customer.error.kind == "refused" and "limit" in customer.error.message
    assert store.items["c1"][1] == 1


# ---------------------------------------------------------------------------------------------
# the view and erasure
# ---------------------------------------------------------------------------------------------


def test_the_view_scores_now_from_the_state_and_stores_nothing(store, bundle):
    regular_customer(store, bundle, RecordingPublisher(), weeks=5)
    before = dict(store.items)
    now = BASE + dt.timedelta(weeks=6)
    view = customer_view(store, bundle, "c1", now)
    expected = history_score(bundle, [weekly_order(w) for w in range(5)], now.timestamp())
    assert view.churn_probability == pytest.approx(expected, abs=2e-6)
    assert view.model_version == bundle.version and view.as_of_s == now.timestamp()
    assert view.risk_tier in {"low", "medium", "high"} and len(view.reasons) <= 3
    assert store.items == before
    assert customer_view(store, bundle, "nobody", now) is None


def test_erase_leaves_nothing_of_the_customer_and_is_idempotent(store, bundle):
    publisher = RecordingPublisher()
    regular_customer(store, bundle, publisher, weeks=2)
    send(store, bundle, publisher, [("c2", weekly_order(0))], BASE + dt.timedelta(hours=1))
    erase(store, "c1")
    erase(store, "c1")
    assert list(store.items) == ["c2"]
    assert customer_view(store, bundle, "c1", BASE + dt.timedelta(weeks=3)) is None
    result = sweep(store, bundle, publisher, BASE + dt.timedelta(weeks=30))
    assert result.scanned == 1 and list(store.items) == ["c2"]  # the sweep cannot bring it back


def test_a_sweep_that_read_a_customer_erased_meanwhile_does_not_bring_them_back(store, bundle):
    publisher = RecordingPublisher()
    regular_customer(store, bundle, publisher, weeks=20)
    store.before_put = lambda user_id: store.items.pop(user_id, None)  # erased between scan and write
    result = sweep(store, bundle, publisher, BASE + dt.timedelta(weeks=19, days=30))
    assert (result.warnings, result.conflicts) == (0, 1) and store.items == {}


@pytest.mark.parametrize(
    "failure",
    [
        lambda: client_error("ThrottlingException", "BatchGetItem"),
        lambda: LedgerUnavailableError("the promotions ledger did not answer for every key"),
    ],
    ids=["aws_error", "ledger_unavailable"],
)
def test_a_publisher_failing_outright_keeps_the_warning_stored_for_the_next_write(store, bundle, failure):
    class Down:
        def publish(self, messages):
            raise failure()

    result = send(store, bundle, Down(), [("c1", weekly_order(0))], BASE + dt.timedelta(hours=1))
    (customer,) = result.customers
    assert (customer.warning, customer.queued, result.promotion_failures) == (True, False, 1)
    record, _ = store.get("c1")
    assert not record.armed and json.loads(record.outbox[0])["trigger"] == "event"
    publisher = RecordingPublisher()
    swept = sweep(store, bundle, publisher, BASE + dt.timedelta(hours=2))  # due: its outbox waits
    assert (swept.scored, swept.warnings, len(publisher.messages)) == (1, 0, 1)
    assert publisher.messages[0]["idempotency_key"] == json.loads(record.outbox[0])["idempotency_key"]
    assert store.get("c1")[0].outbox == ()


def test_profile_fields_of_the_events_reach_the_model_as_in_the_batch_path(store, bundle):
    first = StateEvent(
        BASE.timestamp(), "order", 30.0, profile={"country": "GB", "acquisition_channel": "email"}
    )
    later = StateEvent(BASE.timestamp() + DAY, "view", profile={"country": "DE"})
    now = BASE + dt.timedelta(days=3)
    (customer,) = send(store, bundle, RecordingPublisher(), [("c", later), ("c", first)], now).customers
    arrays = EventArrays(
        user_index=np.zeros(2, dtype=np.int64),
        n_users=1,
        timestamp_s=np.asarray([first.timestamp_s, later.timestamp_s]),
        event_type=np.asarray(["order", "view"], dtype=object),
        amount=np.asarray([30.0, 0.0]),
        quantity=np.asarray([1.0, 1.0]),
    )
    profile = {
        "country": np.asarray(["DE"], dtype=object),
        "acquisition_channel": np.asarray(["email"], dtype=object),
    }
    expected = score_customers(bundle, ["c"], arrays, now.timestamp(), profile=profile)
    assert customer.churn_probability == pytest.approx(float(expected.churn_probability[0]), abs=2e-6)
    without = score_customers(bundle, ["c"], arrays, now.timestamp())
    assert float(without.churn_probability[0]) != pytest.approx(customer.churn_probability, abs=1e-6)


class InFlight(MemoryCustomerStateStore):
    """Records how many store calls run at once (each takes a moment, as a DynamoDB call does)."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def _timed(self, call, *args):
        import time

        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.005)
            return call(*args)
        finally:
            with self.lock:
                self.now -= 1

    def get(self, user_id):
        return self._timed(super().get, user_id)

    def put(self, user_id, record, expected_version):
        return self._timed(super().put, user_id, record, expected_version)


def test_the_store_calls_of_many_customers_overlap_but_stay_within_the_connection_pool(bundle):
    store = InFlight()
    pairs = [(f"c{i:03d}", weekly_order(w)) for i in range(40) for w in range(3)]
    result = send(store, bundle, RecordingPublisher(), pairs, BASE + dt.timedelta(weeks=4))
    assert all(c.error is None and c.applied == 3 for c in result.customers) and len(store.items) == 40
    assert 1 < store.most <= 10
    one = InFlight()
    send(one, bundle, RecordingPublisher(), [("solo", weekly_order(0))], BASE + dt.timedelta(weeks=1))
    assert one.most == 1  # a single customer: no thread pool at all
