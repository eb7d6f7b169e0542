"""The real-time routes on the local stack, as a user runs it (a subprocess, real HTTP): the state
table the stack created, events in, the customer's risk out, erasure leaving nothing in the table."""

import datetime as dt
import signal
import urllib.request
from urllib.parse import quote

import boto3
import pytest

from tests.e2e.test_local_stack import start_stack_process
from tests.helpers import http


@pytest.fixture(scope="module")
def stack():
    process, ready = start_stack_process()
    yield ready
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def test_events_get_and_delete_over_http_against_the_stacks_state_table(stack):
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=stack["aws_endpoint"],
        region_name=stack["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
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
