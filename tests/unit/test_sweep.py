"""The inactivity sweep's steps (``churnguard.sweep``) against in-memory ports and the fixture model:
the plan fixes the instant and sizes the segments, a segment stops before its time runs out and
resumes from its cursor without scoring anyone twice, the finish sums, and a bad payload is refused
naming the field, never its value."""

from __future__ import annotations

import datetime as dt

import pytest

from churnguard.bundle import ModelBundle
from churnguard.customer_state import StateEvent
from churnguard.ports import RunningExecution
from churnguard.promotions import PromotionPolicy
from churnguard.realtime import RealtimeRules, ingest
from churnguard.sweep import (
    COUNTS,
    FinishStep,
    SegmentWork,
    SweepPayloadError,
    finish_sweep,
    parse_sweep_step,
    plan_sweep,
    run_segment,
)
from tests.helpers import FIXTURE_MODEL
from tests.unit.fakes import MemoryCustomerStateStore, RecordingPublisher, client_error

BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NOW = BASE + dt.timedelta(weeks=12)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.from_directory(FIXTURE_MODEL)


@pytest.fixture
def store(bundle) -> MemoryCustomerStateStore:
    """25 customers, each ordering every week for 12 weeks."""
    store = MemoryCustomerStateStore()
    pairs = [
        (
            f"customer-{c:02d}",
            StateEvent((BASE + dt.timedelta(weeks=w)).timestamp(), "order", 40.0, 1, f"o{w}"),
        )
        for c in range(25)
        for w in range(12)
    ]
    ingest(
        pairs, store=store, bundle=bundle, policy=PromotionPolicy(), publisher=RecordingPublisher(), now=NOW
    )
    return store


def segment_payload(segment: int, segments: int, now: dt.datetime, **more) -> dict:
    return {"step": "segment", "now": now.isoformat(), "segment": segment, "segments": segments, **more}


def test_the_plan_scores_at_the_ticks_time_and_sizes_segments_from_the_customer_count(store):
    tick = dict(step="plan", request={"scheduled_time": "2024-03-01T03:00:00Z"})
    plan = plan_sweep(parse_sweep_step(tick), store, now=NOW, customers_per_segment=10)
    assert (
        plan["now"] == "2024-03-01T03:00:00+00:00" and plan["status"] == "planned"
    )  # the tick's, not the clock's: a re-run is the same
    assert plan["segments"] == 3 and plan["items"] == [{"segment": 0}, {"segment": 1}, {"segment": 2}]
    assert plan["customers_estimate"] == 25
    manual = plan_sweep(
        parse_sweep_step({"step": "plan"}), store, now=NOW, customers_per_segment=1000, min_segments=4
    )
    assert manual["now"] == NOW.isoformat() and manual["segments"] == 4
    override = parse_sweep_step({"step": "plan", "request": {"segments": 7}})
    assert plan_sweep(override, store, now=NOW, customers_per_segment=1)["segments"] == 7


def test_an_empty_table_is_one_segment_with_nothing_to_do(bundle):
    empty = MemoryCustomerStateStore()
    plan = plan_sweep(parse_sweep_step({"step": "plan"}), empty, now=NOW, customers_per_segment=1000)
    assert plan["segments"] == 1
    work = SegmentWork(empty, bundle, PromotionPolicy(), RecordingPublisher(), RealtimeRules())
    answer = run_segment(parse_sweep_step(segment_payload(0, 1, NOW)), work, lambda: 900.0)
    assert answer["done"] and answer["totals"]["scanned"] == 0
    carried = dict.fromkeys(COUNTS, 1)  # every count an earlier invocation made is carried on
    resumed = run_segment(parse_sweep_step(segment_payload(0, 1, NOW, totals=carried)), work, lambda: 900.0)
    assert resumed["totals"] == carried


def test_a_segment_out_of_time_returns_its_cursor_and_the_next_invocation_goes_on_without_repeats(
    store, bundle
):
    lapsed = NOW + dt.timedelta(days=300)
    publisher = RecordingPublisher()
    work = SegmentWork(store, bundle, PromotionPolicy(), publisher, RealtimeRules(), page_size=4)
    answers, payload = [], segment_payload(1, 2, lapsed)
    while True:
        answer = run_segment(parse_sweep_step(payload), work, lambda: 5.0)  # under 10 s: one page each
        answers.append(answer)
        if answer["done"]:
            break
        payload = segment_payload(1, 2, lapsed, cursor=answer["cursor"], totals=answer["totals"],
                                  invocations=answer["invocations"])  # fmt: skip
    in_segment = store.scan_page(None, 1_000, segment=1, segments=2).customers
    assert len(answers) == -(-len(in_segment) // 4) >= 2  # one page per invocation, then done
    final = answers[-1]
    assert final["invocations"] == len(answers) and final["cursor"] is None
    assert final["totals"]["scanned"] == final["totals"]["scored"] == len(in_segment)
    warned = [m["user_id"] for m in publisher.messages]
    assert sorted(warned) == sorted(set(warned)) and final["totals"]["warnings"] == len(warned) > 0
    assert all(m["trigger"] == "inactivity" for m in publisher.messages)


def test_a_segment_with_time_left_scans_to_the_end_in_one_invocation(store, bundle):
    work = SegmentWork(store, bundle, PromotionPolicy(), RecordingPublisher(), RealtimeRules(), page_size=4)
    answer = run_segment(
        parse_sweep_step(segment_payload(0, 1, NOW + dt.timedelta(days=1))), work, lambda: 900.0
    )
    assert answer["done"] and answer["invocations"] == 1 and answer["totals"]["scanned"] == 25


def test_finish_sums_the_segments_and_says_whether_every_segment_finished():
    def segment(done: bool, scanned: int) -> dict:
        return {"segment": 0, "done": done, "totals": {"scanned": scanned, "warnings": 1}, "invocations": 2,
                "model_version": "v1"}  # fmt: skip

    step = parse_sweep_step(
        {"step": "finish", "now": NOW.isoformat(), "segments": [segment(True, 3), segment(True, 4)]}
    )
    assert isinstance(step, FinishStep)
    answer = finish_sweep(step)
    assert answer["complete"] and answer["totals"]["scanned"] == 7 and answer["totals"]["warnings"] == 2
    assert (
        answer["invocations"] == 4
        and answer["model_versions"] == ["v1"]
        and set(answer["totals"]) == set(COUNTS)
    )
    partial = parse_sweep_step({"step": "finish", "now": NOW.isoformat(), "segments": [segment(False, 3)]})
    assert not finish_sweep(partial)["complete"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"step": "segment", "now": "2024-01-01T00:00:00", "segment": 0, "segments": 1}, "now"),
        (
            {
                "step": "segment",
                "now": "2024-01-01T00:00:00Z",
                "segment": 2,
                "segments": 2,
                "cursor": "customer-secret-07",
            },
            "segment must be less than segments",
        ),
        (
            {
                "step": "segment",
                "now": "2024-01-01T00:00:00Z",
                "segment": 0,
                "segments": 1,
                "totals": {"stolen": 1},
                "cursor": "customer-secret-07",
            },
            "unknown counts",
        ),
        ({"step": "plan", "request": {"scheduled_time": "tomorrow"}}, "request.scheduled_time"),
        ({"step": "plan", "request": {"segments": 0}}, "request.segments"),
        ({"step": "sweep-everything"}, "payload"),
    ],
)
def test_a_bad_payload_is_refused_naming_the_field_never_its_value(payload, field):
    with pytest.raises(SweepPayloadError) as caught:
        parse_sweep_step(payload)
    assert field in str(caught.value)
    assert "customer-secret" not in str(caught.value) and "tomorrow" not in str(caught.value)


def test_a_tick_ahead_of_the_clock_is_refused_unless_the_stack_simulates_time(store):
    def tick(minutes: int):
        return parse_sweep_step(
            {"step": "plan", "request": {"scheduled_time": (NOW + dt.timedelta(minutes=minutes)).isoformat()}}
        )

    with pytest.raises(SweepPayloadError, match=r"request\.scheduled_time"):
        plan_sweep(tick(16), store, now=NOW, customers_per_segment=10)
    assert (
        plan_sweep(tick(16), store, now=NOW, customers_per_segment=10, max_future_s=None)["status"]
        == "planned"
    )
    assert plan_sweep(tick(14), store, now=NOW, customers_per_segment=10)["status"] == "planned"  # clock skew


class Runs:
    def __init__(self, *runs: tuple[str, int]) -> None:
        self.runs = [RunningExecution(arn, NOW + dt.timedelta(seconds=s)) for arn, s in runs]

    def running(self, state_machine_arn: str) -> list[RunningExecution]:
        return self.runs


@pytest.mark.parametrize(
    ("running", "status"),
    [
        ([("mine", 0)], "planned"),
        ([("mine", 0), ("newer", 5)], "planned"),
        ([("older", -5), ("mine", 0)], "overlap"),
        ([("a-same-second", 0), ("mine", 0)], "overlap"),  # a tie: the smaller ARN goes on
        ([("older", -5)], "overlap"),  # mine not listed yet: any other run is one too many
    ],
)
def test_a_sweep_stands_down_while_an_earlier_run_is_still_running(store, running, status):
    step = parse_sweep_step({"step": "plan", "state_machine": "machine", "execution": "mine"})
    plan = plan_sweep(step, store, now=NOW, customers_per_segment=10, runs=Runs(*running))
    assert plan["status"] == status and (plan["items"] == []) == (status == "overlap")


def test_a_transient_error_after_some_pages_returns_their_counts_and_the_cursor(store, bundle):
    work = SegmentWork(store, bundle, PromotionPolicy(), RecordingPublisher(), RealtimeRules(), page_size=4)
    first_page = store.scan_page(None, 4).customers
    store.faults[("scan", first_page[-1].user_id)] = client_error(
        "ProvisionedThroughputExceededException", "Scan"
    )
    later = NOW + dt.timedelta(days=1)
    answer = run_segment(parse_sweep_step(segment_payload(0, 1, later)), work, lambda: 900.0)
    assert not answer["done"] and answer["cursor"] == first_page[-1].user_id
    assert answer["totals"]["scanned"] == 4
    again = segment_payload(0, 1, later, cursor=answer["cursor"], totals=answer["totals"])
    final = run_segment(parse_sweep_step(again), work, lambda: 900.0)
    assert final["done"] and final["totals"]["scanned"] == 25
