"""The real-time routes on the local stack, as a user runs it (a subprocess, real HTTP): the state
table the stack created, events in, the customer's risk out, the inactivity sweep's state machine,
erasure leaving nothing in the table."""

import collections
import datetime as dt
import json
import signal
import threading
import time
import urllib.request
from urllib.parse import quote

import boto3
import pytest

from tests.e2e.test_local_stack import start_stack_process
from tests.helpers import http


@pytest.fixture(scope="module")
def stack():
    process, ready = start_stack_process()
    output = collections.deque(maxlen=200)  # drained, so the stack never blocks on a full pipe
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    ready["output"] = output
    yield ready
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def _client(stack, service):
    return boto3.client(
        service,
        endpoint_url=stack["aws_endpoint"],
        region_name=stack["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def test_events_get_and_delete_over_http_against_the_stacks_state_table(stack):
    ddb = _client(stack, "dynamodb")
    (table,) = [t for t in ddb.list_tables()["TableNames"] if t.endswith("CustomerStateTable")]
    assert ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]["AttributeName"] == "ttl"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    user = "e2e customer/1"
    events = [
        {"user_id": user, "timestamp": (now - dt.timedelta(days=d)).isoformat(), "event_type": "order",
         "amount": 25.0, "event_id": f"o{d}"}
        for d in (30, 20, 10)
    ]  # fmt: skip
    status, body = http("POST", stack["api"] + "/v1/events", {"events": events})
    assert status == 202, body
    assert body["customers"][0]["events_applied"] == 3 and body["model_version"] == stack["model_version"]
    url = f"{stack['api']}/v1/customers/{quote(user, safe='')}"
    status, view = http("GET", url)
    assert status == 200 and view["user_id"] == user and view["events_applied"] == 3, view
    assert "Item" in ddb.get_item(TableName=table, Key={"user_id": {"S": user}})
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30) as response:
        assert response.status == 204 and response.read() == b""
    assert "Item" not in ddb.get_item(TableName=table, Key={"user_id": {"S": user}})
    status, body = http("GET", url)
    assert (status, body["message"]) == (404, "no such customer")


def _sweep(stack, tick: dt.datetime) -> None:
    """One run of the sweep's state machine for the schedule tick ``tick``, waited for (the local
    runner stops a finished execution in moto: it no longer shows RUNNING)."""
    sfn = _client(stack, "stepfunctions")
    (machine,) = [
        m["stateMachineArn"]
        for m in sfn.list_state_machines()["stateMachines"]
        if m["name"].endswith("InactivitySweepStateMachine")
    ]
    execution = sfn.start_execution(
        stateMachineArn=machine, input=json.dumps({"scheduled_time": tick.isoformat()})
    )["executionArn"]
    deadline = time.monotonic() + 120
    while sfn.describe_execution(executionArn=execution)["status"] == "RUNNING":
        assert time.monotonic() < deadline, "the sweep did not finish in 120 s"
        time.sleep(0.2)
    assert not any("execution failed" in line for line in stack["output"]), list(stack["output"])[-20:]


def _warnings(stack, user: str) -> list[dict]:
    sqs = _client(stack, "sqs")
    (queue,) = [u for u in sqs.list_queues()["QueueUrls"] if "PromotionsQueue" in u]
    found = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            body = json.loads(message["Body"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            if body["user_id"] == user:
                found.append(body)
    return found


def test_risk_follows_events_and_the_sweep_warns_a_lapsed_customer_once_then_delete_erases(stack):
    """Issue 13's "done when": events one by one, the risk follows; silence, and the daily sweep
    fires one inactivity warning (not again on the next ticks); GET shows it; DELETE erases it."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    user = "e2e lapsing customer"
    risks = []
    for week in range(12):  # an order every week for 12 weeks, the last one an hour ago
        sent = now - dt.timedelta(weeks=11 - week, hours=1)
        event = {"user_id": user, "timestamp": sent.isoformat(), "event_type": "order", "amount": 40.0,
                 "event_id": f"order-{week}"}  # fmt: skip
        status, body = http("POST", stack["api"] + "/v1/events", {"events": [event]})
        assert status == 202, body
        (customer,) = body["customers"]
        assert customer["events_applied"] == 1
        risks.append(customer["churn_probability"])
    assert risks[-1] < risks[0] and risks[-1] == min(risks), risks  # a regular buyer gets safer
    _warnings(stack, user)  # the warnings of the first, risky, weeks: not this test's subject

    url = f"{stack['api']}/v1/customers/{quote(user, safe='')}"
    status, active = http("GET", url)
    assert status == 200 and active["churn_probability"] == pytest.approx(risks[-1], abs=1e-6), active

    _sweep(stack, now + dt.timedelta(days=1))  # a day of silence: nothing to say
    assert _warnings(stack, user) == []
    lapsed = now + dt.timedelta(days=300)
    _sweep(stack, lapsed)  # ten months of silence
    (warning,) = _warnings(stack, user)
    assert warning["trigger"] == "inactivity" and warning["model_version"] == stack["model_version"]
    assert warning["churn_probability"] > risks[-1]
    _sweep(stack, lapsed)  # the same tick delivered again
    _sweep(stack, lapsed + dt.timedelta(days=1))  # and the next day's tick: still one warning
    assert _warnings(stack, user) == []

    status, view = http("GET", url)
    assert status == 200 and view["events_applied"] == 12, view
    assert (view["last_warning_at"], view["armed"]) == (lapsed.isoformat(), False), view
    with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=30) as response:
        assert response.status == 204
    ddb = _client(stack, "dynamodb")
    (table,) = [t for t in ddb.list_tables()["TableNames"] if t.endswith("CustomerStateTable")]
    assert "Item" not in ddb.get_item(TableName=table, Key={"user_id": {"S": user}})
    assert http("GET", url)[0] == 404


def test_events_sent_to_the_queue_reach_the_customers_state(stack):
    sqs = _client(stack, "sqs")
    (queue,) = [u for u in sqs.list_queues()["QueueUrls"] if "RealtimeEventsQueue" in u]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    user = "e2e queued customer"
    events = [
        {"user_id": user, "timestamp": (now - dt.timedelta(days=d)).isoformat(), "event_type": "order",
         "amount": 30.0}
        for d in (14, 7)
    ]  # fmt: skip
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"events": events}))
    url = f"{stack['api']}/v1/customers/{quote(user, safe='')}"
    deadline = time.monotonic() + 60
    while (answer := http("GET", url))[0] == 404:
        assert time.monotonic() < deadline, "the queued events were not applied within 60 s"
        time.sleep(0.2)
    status, view = answer
    assert status == 200 and view["events_applied"] == 2, view
