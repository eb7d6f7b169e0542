"""The inactivity sweep as deployed runs it: the template's state machine definition
(statemachine/sweep.asl.json) executed by the local runner, its Lambda steps the real handler with
the real wiring, the state table and the promotions queue on moto's server over HTTP."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest

from infra.local_stack.step_functions import LocalFunctions, StateMachine
from tests.helpers import FIXTURE_MODEL, ROOT, FakeLambdaContext, load_event, load_handler
from tests.integration.conftest import STATE_TABLE as TABLE

FUNCTION = "InactivitySweepFunction"
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
CUSTOMERS = 25


@pytest.fixture
def sweep(aws, state_table, monkeypatch):
    """The sweep handler over a table of 25 weekly buyers (12 weeks each), warnings to a queue;
    pages of 4 customers, so a segment takes several pages."""
    from churnguard.adapters import DynamoDbCustomerStateStore
    from churnguard.bundle import ModelBundle
    from churnguard.customer_state import StateEvent
    from churnguard.promotions import PromotionPolicy
    from churnguard.realtime import ingest
    from tests.unit.fakes import RecordingPublisher

    queue = aws["sqs"].create_queue(QueueName="promotions")["QueueUrl"]
    store = DynamoDbCustomerStateStore(aws["dynamodb"], TABLE)
    pairs = [
        (f"buyer-{c:02d}", StateEvent((BASE + dt.timedelta(weeks=w)).timestamp(), "order", 40.0, 1, f"o{w}"))
        for c in range(CUSTOMERS)
        for w in range(12)
    ]
    bundle = ModelBundle.from_directory(FIXTURE_MODEL)
    ingest(pairs, store=store, bundle=bundle, policy=PromotionPolicy(), publisher=RecordingPublisher(),
           now=BASE + dt.timedelta(weeks=12))  # fmt: skip
    for name, value in {
        "CHURNGUARD_MODEL_DIR": str(FIXTURE_MODEL),
        "CHURNGUARD_STATE_TABLE": TABLE,
        "CHURNGUARD_PROMOTIONS_QUEUE_URL": queue,
        "CHURNGUARD_SWEEP_PAGE_SIZE": "4",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHURNGUARD_IDEMPOTENCY_TABLE", raising=False)
    module = load_handler("realtime_sweep")
    yield module, queue
    module.runtime.cache_clear()


def state_machine(handler, timeout_s: float) -> StateMachine:
    """The template's definition, registered in moto (the plan step lists its running executions)."""
    import boto3

    arn = f"arn:aws:lambda:eu-west-1:000000000000:function:{FUNCTION}"
    definition = json.loads(
        (ROOT / "statemachine/sweep.asl.json").read_text().replace("${InactivitySweepFunctionArn}", arn)
    )
    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name=f"sweep-{uuid.uuid4().hex[:8]}",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/local",
    )["stateMachineArn"]
    return StateMachine(
        definition,
        LocalFunctions({FUNCTION: handler}, {FUNCTION: timeout_s}),
        arn=machine,
        time_scale=0,
    )


def queued(aws, queue: str) -> list[dict]:
    found = []
    while messages := aws["sqs"].receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            found.append(json.loads(message["Body"]))
            aws["sqs"].delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return found


def test_the_sweep_state_machine_scores_every_customer_once_across_segments_and_invocations(sweep, aws):
    handler, queue = sweep
    # A 5 s function timeout leaves less than the 60 s reserve: one page per invocation, so every
    # segment goes round the state machine's loop from its cursor.
    tick = {"scheduled_time": (BASE + dt.timedelta(weeks=12, days=300)).isoformat(), "segments": 2}
    outcome = state_machine(handler, timeout_s=5).execute(tick)
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.cause)
    summary = outcome.output
    assert summary["complete"] and summary["segments"] == 2
    assert summary["totals"]["scanned"] == summary["totals"]["scored"] == CUSTOMERS
    assert summary["invocations"] >= CUSTOMERS // 4  # pages of 4, one per invocation
    warnings = queued(aws, queue)
    users = [w["user_id"] for w in warnings]
    assert len(users) == len(set(users)) == summary["totals"]["warnings"] == summary["totals"]["queued"] > 0
    assert {w["trigger"] for w in warnings} == {"inactivity"}

    again = state_machine(handler, timeout_s=900).execute(tick)  # the same tick, delivered again
    assert again.status == "SUCCEEDED" and again.output["totals"]["warnings"] == 0
    assert again.output["invocations"] == 2  # time enough: one invocation per segment
    assert queued(aws, queue) == []


def test_the_segment_fixture_event_runs_through_the_handler(sweep):
    handler, _ = sweep
    context = FakeLambdaContext(timeout_s=900)
    answer = handler.lambda_handler(load_event("realtime_sweep/segment.json"), context)
    assert answer["done"] and answer["totals"]["scanned"] == CUSTOMERS and answer["cursor"] is None


def test_a_tick_ahead_of_the_clock_is_refused_and_an_earlier_running_sweep_makes_a_new_one_stand_down(sweep):
    handler, _ = sweep
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    with pytest.raises(ValueError, match=r"request\.scheduled_time is more than 900 s after now"):
        handler.lambda_handler({"step": "plan", "request": {"scheduled_time": ahead}}, FakeLambdaContext())

    import boto3

    sfn = boto3.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="sweep-overlap",
        definition='{"StartAt": "S", "States": {"S": {"Type": "Succeed"}}}',
        roleArn="arn:aws:iam::123456789012:role/local",
    )["stateMachineArn"]
    earlier = sfn.start_execution(stateMachineArn=machine, name="earlier")["executionArn"]
    time.sleep(1.1)  # moto's start dates have a one-second resolution
    later = sfn.start_execution(stateMachineArn=machine, name="later")["executionArn"]  # moto: both RUNNING
    plan = {"step": "plan", "state_machine": machine}
    stood_down = handler.lambda_handler(plan | {"execution": later}, FakeLambdaContext())
    assert stood_down["status"] == "overlap" and stood_down["items"] == []
    assert handler.lambda_handler(plan | {"execution": earlier}, FakeLambdaContext())["status"] == "planned"


def test_a_bad_step_fails_the_invocation_naming_the_field_not_the_cursor(sweep):
    handler, _ = sweep
    event = load_event("realtime_sweep/segment.json") | {"segment": 5, "cursor": "buyer-07"}
    with pytest.raises(ValueError, match="segment must be less than segments") as caught:
        handler.lambda_handler(event, FakeLambdaContext())
    assert "buyer-07" not in str(caught.value)
