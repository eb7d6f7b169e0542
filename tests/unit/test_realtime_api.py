"""POST /v1/events, GET and DELETE /v1/customers/{user_id} through lambda_handler, with the state
store, the promotions queue and the clock as in-memory fakes (the wiring is replaced, not the routes)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
from urllib.parse import quote

import pytest

from churnguard.idempotency import LedgeredPublisher
from churnguard.promotions import QueuePromotionsPublisher
from churnguard.realtime import RealtimeRules
from churnguard.settings import ServingSettings, SettingsError
from churnguard.wiring import NoQueuePublisher, RealtimeRuntime
from tests.helpers import FIXTURE_MODEL, PLANTED, FakeLambdaContext, load_event, load_handler
from tests.unit.fakes import MemoryCustomerStateStore, MemoryLedger, MemoryQueue, client_error

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
MODEL = json.loads((FIXTURE_MODEL / "metadata.json").read_text())


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclasses.dataclass
class Realtime:
    api: object
    store: MemoryCustomerStateStore
    queue: MemoryQueue
    clock: Clock


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.delenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", raising=False)
    monkeypatch.delenv("CHURNGUARD_STATE_TABLE", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ChurnGuardTest")
    module = load_handler("score_api")
    yield module
    module.runtime.cache_clear()


def with_realtime(api, monkeypatch, *, queue: bool = True, **settings) -> Realtime:
    """The handler's runtime with a real-time part on fakes (and ``settings`` changed)."""
    store, memory_queue, clock = MemoryCustomerStateStore(), MemoryQueue(), Clock(BASE)
    publisher = LedgeredPublisher(
        QueuePromotionsPublisher(memory_queue, sleep=lambda _: None), MemoryLedger()
    )
    base = api.runtime()
    realtime = RealtimeRuntime(
        store,
        RealtimeRules(),
        publisher if queue else NoQueuePublisher(),
        queue_configured=queue,
        clock=clock,
    )
    runtime = dataclasses.replace(base, settings=base.settings.model_copy(update=settings), realtime=realtime)
    monkeypatch.setattr(api, "runtime", functools.cache(lambda: runtime))
    return Realtime(api, store, memory_queue, clock)


@pytest.fixture
def rt(api, monkeypatch) -> Realtime:
    return with_realtime(api, monkeypatch)


def call(api, event):
    response = api.lambda_handler(event, FakeLambdaContext())
    body = json.loads(response["body"]) if response.get("body") else None
    headers = dict(response.get("headers") or {})  # API Gateway merges both maps
    headers |= {k: ", ".join(v) for k, v in (response.get("multiValueHeaders") or {}).items()}
    return response["statusCode"], body, headers


def post_events(api, events, raw=None):
    event = load_event("score_api/post_events.json")
    event["body"] = raw if raw is not None else json.dumps({"events": events})
    return call(api, event)


def customer(api, method, user_id):
    event = load_event(f"score_api/{'get' if method == 'GET' else 'delete'}_customer.json")
    event["path"] = f"/v1/customers/{quote(user_id, safe='')}"
    event["pathParameters"] = {"user_id": user_id}
    return call(api, event)


def order(user_id, when, amount=40.0, **extra):
    return {
        "user_id": user_id,
        "timestamp": when.isoformat(),
        "event_type": "order",
        "amount": amount,
        "quantity": 2,
        **extra,
    }


def week(n: int, hours: int = 0) -> dt.datetime:
    return BASE + dt.timedelta(weeks=n, hours=hours)


# ---------------------------------------------------------------------------------------------
# the risk follows the events
# ---------------------------------------------------------------------------------------------


def test_events_one_by_one_move_the_risk_and_get_shows_the_stateless_routes_score(rt):
    risks = []
    for n in range(8):
        rt.clock.now = week(n, hours=1)
        status, body, _ = post_events(rt.api, [order("c-1", week(n), event_id=f"o{n}")])
        assert status == 202, body
        (one,) = body["customers"]
        assert (one["applied"], one["events_applied"], one["duplicates"], one["error"]) == (True, 1, 0, None)
        risks.append(one["churn_probability"])
    # a one-order newcomer is at risk; a weekly regular is not
    assert risks[0] >= MODEL["thresholds"]["promotion"] > max(risks[4:])
    rt.clock.now = week(9)
    status, view, _ = customer(rt.api, "GET", "c-1")
    assert status == 200
    assert view["last_event_at"] == week(7).isoformat(timespec="seconds")
    assert view["as_of"] == week(9).isoformat(timespec="seconds") and view["events_applied"] == 8
    assert view["model_version"] == MODEL["model_version"] and view["risk_tier"] in {"low", "medium", "high"}
    # the same customer, whole history sent to the stateless route, scored at the same instant
    history = [{k: v for k, v in order("c-1", week(n)).items() if k != "user_id"} for n in range(8)]
    scores = load_event("score_api/post_scores.json")
    scores["body"] = json.dumps(
        {"customers": [{"user_id": "c-1", "as_of": week(9).isoformat(), "events": history}]}
    )
    status, stateless, _ = call(rt.api, scores)
    assert status == 200
    assert view["churn_probability"] == pytest.approx(
        stateless["customers"][0]["churn_probability"], abs=2e-6
    )
    assert [r["group"] for r in view["reasons"]] == [r["group"] for r in stateless["customers"][0]["reasons"]]


def test_one_request_updates_several_customers_in_first_seen_order(rt):
    rt.clock.now = week(2)
    events = [order(f"c-{i % 3}", week(w)) for w in range(2) for i in range(3)]
    status, body, _ = post_events(rt.api, events)
    assert status == 202
    assert [c["user_id"] for c in body["customers"]] == ["c-0", "c-1", "c-2"]
    assert {c["events_applied"] for c in body["customers"]} == {2} and body["retry"] == []
    assert sorted(rt.store.items) == ["c-0", "c-1", "c-2"]


# ---------------------------------------------------------------------------------------------
# warnings: once per crossing, retries are duplicates
# ---------------------------------------------------------------------------------------------


def test_a_retried_identical_post_fires_no_second_warning_and_reports_duplicates(rt):
    rt.clock.now = week(0, hours=1)
    events = [order("c-1", week(0), event_id="o-1"), order("c-1", week(0), event_id="o-1")]
    status, first, _ = post_events(rt.api, events)
    assert status == 202
    (c,) = first["customers"]
    assert c["warning"] == {"fired": True, "trigger": "event", "queued": True}
    assert (c["events_applied"], c["duplicates"]) == (1, 1)
    (message,) = [json.loads(m.body) for m in rt.queue.messages]
    assert message["trigger"] == "event" and message["user_id"] == "c-1"
    rt.clock.now += dt.timedelta(seconds=30)
    status, retry, _ = post_events(rt.api, events)
    assert status == 202
    (c,) = retry["customers"]
    assert c["warning"] == {"fired": False, "trigger": None, "queued": False}
    assert (c["applied"], c["events_applied"], c["duplicates"]) == (True, 0, 2)
    assert len(rt.queue.messages) == 1


def test_without_a_promotions_queue_a_warning_is_reported_but_not_queued(api, monkeypatch):
    rt = with_realtime(api, monkeypatch, queue=False)
    rt.clock.now = week(0, hours=1)
    status, body, _ = post_events(rt.api, [order("c-1", week(0))])
    assert status == 202 and body["promotion_failures"] == 0
    assert body["customers"][0]["warning"] == {"fired": True, "trigger": "event", "queued": False}
    assert rt.store.items["c-1"][0].outbox == ()  # nothing left waiting for a queue that does not exist


# ---------------------------------------------------------------------------------------------
# erasure
# ---------------------------------------------------------------------------------------------


def test_delete_then_get_is_404_and_nothing_of_the_customer_is_left_in_the_store(rt):
    rt.clock.now = week(3)
    gone, kept = f"{PLANTED}-erase", "c-2"
    post_events(rt.api, [order(gone, week(w), event_id=f"o{w}") for w in range(3)] + [order(kept, week(1))])
    assert customer(rt.api, "GET", gone)[0] == 200
    status, body, _ = customer(rt.api, "DELETE", gone)
    assert (status, body) == (204, None)
    assert customer(rt.api, "DELETE", gone)[0] == 204  # idempotent
    status, body, _ = customer(rt.api, "GET", gone)
    assert status == 404 and body["message"] == "no such customer"
    assert list(rt.store.items) == [kept]
    assert not any(c.user_id == gone for c in rt.store.scan_page(None, 100).customers)


def test_a_user_id_is_percent_decoded_from_the_path(rt):
    rt.clock.now = week(1)
    user_id = "ü 1/x%"
    assert post_events(rt.api, [order(user_id, week(0))])[0] == 202
    status, body, _ = customer(rt.api, "GET", user_id)
    assert status == 200 and body["user_id"] == user_id


# ---------------------------------------------------------------------------------------------
# bad input, limits
# ---------------------------------------------------------------------------------------------

BAD = {
    "missing-user-id": ([{"timestamp": "2024-01-01", "event_type": "order"}], "events[0].user_id"),
    "blank-user-id": ([order("  ", BASE)], "events[0].user_id"),
    "unknown-event-type": (
        [order("a", BASE), {**order("a", BASE), "event_type": "click"}],
        "events[1].event_type",
    ),
    "negative-amount": ([order("a", BASE, amount=-1.0)], "events[0].amount"),
    "amount-as-text": ([order("a", BASE, amount="12")], "events[0].amount"),
    "timestamp-as-number": ([{**order("a", BASE), "timestamp": 0}], "events[0].timestamp"),
    "unknown-field": ([order("a", BASE, colour="red")], "events[0].colour"),
    "blank-event-id": ([order("a", BASE, event_id="")], "events[0].event_id"),
    "no-events": ([], "events"),
    "future-event": ([order("a", BASE), order("a", BASE + dt.timedelta(hours=1))], "events[1].timestamp"),
}


@pytest.mark.parametrize(("events", "field"), BAD.values(), ids=list(BAD))
def test_bad_input_is_422_naming_the_field_and_stores_nothing(rt, events, field):
    status, body, _ = post_events(rt.api, events)
    assert status == 422, body
    assert body["errors"][0]["field"] == field and field in body["message"]
    assert rt.store.items == {}


def test_invalid_json_is_400(rt):
    status, body, _ = post_events(rt.api, None, raw='{"events": [')
    assert status == 400 and "not valid JSON" in body["message"]


def test_a_blank_user_id_in_the_path_is_422(rt):
    status, body, _ = customer(rt.api, "GET", " ")
    assert status == 422 and body["errors"][0]["field"] == "user_id"


def test_more_events_or_customers_than_the_limits_is_413_naming_the_limit(api, monkeypatch):
    rt = with_realtime(api, monkeypatch, max_events_per_request=5, max_customers_per_request=2)
    status, body, _ = post_events(rt.api, [order("a", BASE)] * 6)
    assert status == 413 and body["limit"] == 5 and "at most 5 events" in body["message"]
    status, body, _ = post_events(rt.api, [order(u, BASE) for u in "abc"])
    assert status == 413 and body["limit"] == 2 and "at most 2 customers" in body["message"]
    assert rt.store.items == {}


def test_too_large_a_body_is_413_before_parsing(api, monkeypatch):
    rt = with_realtime(api, monkeypatch, max_body_bytes=2048)
    status, body, _ = post_events(rt.api, [order("x" * 250, BASE)] * 10)
    assert status == 413 and body["limit"] == 2048


def test_an_unsupported_method_on_a_customer_is_405_naming_the_allowed_ones(rt):
    event = load_event("score_api/get_customer.json")
    event["httpMethod"] = "PUT"
    status, _, headers = call(rt.api, event)
    assert status == 405 and headers["Allow"] == "DELETE, GET"


# ---------------------------------------------------------------------------------------------
# store errors
# ---------------------------------------------------------------------------------------------


def test_one_customers_transient_store_error_applies_the_others_and_names_that_one_to_retry(rt):
    busy = f"{PLANTED}-busy"
    rt.store.faults[("get", busy)] = client_error("ProvisionedThroughputExceededException", "GetItem")
    rt.clock.now = week(1)
    status, body, _ = post_events(
        rt.api, [order("c-1", week(0)), order(busy, week(0)), order("c-2", week(0))]
    )
    assert status == 202
    assert body["retry"] == [busy]
    by_id = {c["user_id"]: c for c in body["customers"]}
    assert by_id[busy]["applied"] is False and by_id[busy]["error"]["kind"] == "transient"
    assert by_id[busy]["churn_probability"] is None and busy not in by_id[busy]["error"]["message"]
    assert by_id["c-1"]["applied"] and by_id["c-2"]["applied"]
    assert sorted(rt.store.items) == ["c-1", "c-2"]
    status, body, _ = post_events(rt.api, [order(busy, week(0))])  # the caller's retry
    assert status == 202 and body["customers"][0]["applied"] and busy in rt.store.items


def test_every_customer_failing_transiently_is_503_with_retry_after(rt):
    for user_id in ("c-1", "c-2"):
        rt.store.faults[("get", user_id)] = client_error("ThrottlingException", "GetItem")
    rt.clock.now = week(1)
    status, body, headers = post_events(rt.api, [order("c-1", week(0)), order("c-2", week(0))])
    assert status == 503 and headers["Retry-After"] == "2"
    assert body["retry"] == ["c-1", "c-2"] and rt.store.items == {}


def test_a_refused_customer_is_reported_and_not_listed_for_retry(rt):
    rt.store.faults[("put", "c-1")] = client_error("ValidationException", "PutItem")
    rt.clock.now = week(1)
    status, body, _ = post_events(rt.api, [order("c-1", week(0))])
    assert status == 202 and body["retry"] == []
    assert body["customers"][0]["error"]["kind"] == "refused" and not body["customers"][0]["applied"]


def test_a_transient_store_error_on_get_or_delete_is_503_with_retry_after(rt):
    rt.store.faults[("get", "c-1")] = client_error("ThrottlingException", "GetItem")
    status, body, headers = customer(rt.api, "GET", "c-1")
    assert status == 503 and headers["Retry-After"] == "2" and "retry" in body["message"]
    rt.store.faults[("delete", "c-1")] = client_error("ProvisionedThroughputExceededException", "DeleteItem")
    assert customer(rt.api, "DELETE", "c-1")[0] == 503


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


def test_without_a_state_table_the_realtime_routes_answer_404_saying_so(api):
    status, body, _ = call(api, load_event("score_api/post_events.json"))
    assert status == 404 and "real-time mode is not configured" in body["message"]
    assert "CHURNGUARD_STATE_TABLE" in body["message"]
    for name in ("get_customer.json", "delete_customer.json"):
        status, body, _ = call(api, load_event(f"score_api/{name}"))
        assert status == 404 and "not configured" in body["message"]
    assert call(api, load_event("score_api/post_scores.json"))[0] == 200  # the stateless route still works


def test_the_sample_events_request_is_accepted(rt):
    rt.clock.now = dt.datetime(2024, 9, 30, tzinfo=dt.UTC)
    status, body, _ = call(rt.api, load_event("score_api/post_events.json"))
    assert status == 202 and [c["user_id"] for c in body["customers"]] == ["c-1001", "c-1002"]
    assert call(rt.api, load_event("score_api/get_customer.json"))[0] == 200
    assert call(rt.api, load_event("score_api/delete_customer.json"))[0] == 204


def test_realtime_settings_are_validated_and_reach_the_store_and_rules(monkeypatch):
    from churnguard import aws
    from churnguard.wiring import realtime_runtime

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    base = {"CHURNGUARD_MODEL_DIR": "/models"}
    assert realtime_runtime(ServingSettings.from_env(base), None, aws.API) is None
    settings = ServingSettings.from_env(
        {
            **base,
            "CHURNGUARD_STATE_TABLE": "states",
            "CHURNGUARD_STATE_RETENTION_DAYS": "365",
            "CHURNGUARD_WARNING_COOLDOWN_DAYS": "7",
            "CHURNGUARD_WARNING_MARGIN": "0.1",
        }
    )
    realtime = realtime_runtime(settings, None, aws.API)
    assert realtime.rules == RealtimeRules(margin=0.1, cooldown_days=7)
    assert realtime.store._table == "states" and realtime.store._retention_s == 365 * 86_400
    assert isinstance(realtime.publisher, NoQueuePublisher) and not realtime.queue_configured
    defaults = ServingSettings.from_env(base)
    assert (defaults.state_retention_days, defaults.warning_cooldown_days, defaults.warning_margin) == (
        730,
        14,
        0.05,
    )
    for variable, value in (("CHURNGUARD_WARNING_MARGIN", "1.5"), ("CHURNGUARD_STATE_RETENTION_DAYS", "0")):
        with pytest.raises(SettingsError, match=variable):
            ServingSettings.from_env({**base, variable: value})


@pytest.mark.parametrize("stored", ["shorter_window", "corrupt"])
def test_a_stored_state_the_serving_model_cannot_score_is_409_naming_why_not_500(rt, stored):
    from churnguard.customer_state import StateEvent, apply_events
    from churnguard.features import FeatureConfig
    from churnguard.ports import CustomerRecord

    event = StateEvent(week(0).timestamp(), "order", 40.0, event_id="o1")
    state = (
        apply_events(None, [event], config=FeatureConfig(weeks=26)).state.to_bytes()
        if stored == "shorter_window"
        else b"CGS?"
    )
    rt.store.put("c-1", CustomerRecord(state=state, last_event_s=week(0).timestamp()), 0)
    status, body, _ = customer(rt.api, "GET", "c-1")
    assert status == 409 and body["message"].startswith("the stored state cannot be scored")


def test_debug_logging_of_get_and_delete_never_carries_the_user_id(rt, caplog):
    """Powertools logs the route arguments at DEBUG; here they are the path's user id."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="aws_lambda_powertools"):
        assert customer(rt.api, "GET", f"{PLANTED}-42")[0] == 404
        assert customer(rt.api, "DELETE", f"{PLANTED}-42")[0] == 204
    route_lines = [r.getMessage() for r in caplog.records if "Calling API Route Handler" in r.getMessage()]
    assert len(route_lines) == 2 and not [line for line in route_lines if PLANTED in line]


@pytest.mark.parametrize("route", ["/v1/events", "/v1/scores"])
def test_a_number_of_more_digits_than_python_parses_is_400_not_500(rt, route):
    huge = "9" * 5000
    if route == "/v1/events":
        raw = (
            '{"events": [{"user_id": "c", "timestamp": "2024-01-01", "event_type": "order", "amount": '
            + huge
            + "}]}"
        )
        status, body, _ = post_events(rt.api, None, raw=raw)
    else:
        event = load_event("score_api/post_scores.json")
        event["body"] = '{"customers": [{"user_id": "c", "events": [], "profile": {"n": ' + huge + "}}]}"
        status, body, _ = call(rt.api, event)
    assert status == 400 and "4,300 digits" in body["message"]
