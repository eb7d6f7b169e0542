"""The real-time routes through lambda_handler with the real wiring: settings from the environment,
the DynamoDB state store on moto's server over HTTP (``aws`` fixture), the real clock."""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import quote

import pytest

from tests.helpers import FIXTURE_MODEL, FakeLambdaContext, load_event, load_handler
from tests.integration.conftest import STATE_TABLE as TABLE

USER = "çliente 42/ü"


@pytest.fixture
def api(aws, state_table, monkeypatch):
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.setenv("CHURNGUARD_STATE_TABLE", TABLE)
    monkeypatch.setenv("CHURNGUARD_STATE_RETENTION_DAYS", "30")
    monkeypatch.delenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", raising=False)
    monkeypatch.delenv("CHURNGUARD_IDEMPOTENCY_TABLE", raising=False)
    module = load_handler("score_api")
    yield module
    module.runtime.cache_clear()


def call(api, event):
    response = api.lambda_handler(event, FakeLambdaContext())
    return response["statusCode"], json.loads(response["body"]) if response.get("body") else None


def on_customer(api, method, user_id):
    event = load_event(f"score_api/{method.lower()}_customer.json")
    event["path"] = f"/v1/customers/{quote(user_id, safe='')}"
    return call(api, event)


def test_events_get_and_delete_through_the_handler_leave_no_item_behind(api, aws):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    events = [
        {
            "user_id": USER,
            "timestamp": (now - dt.timedelta(days=d)).isoformat(),
            "event_type": "order",
            "amount": 30.0,
            "event_id": f"o-{d}",
        }
        for d in (21, 14, 7)
    ]
    post = load_event("score_api/post_events.json")
    post["body"] = json.dumps({"events": events})
    status, body = call(api, post)
    assert status == 202, body
    (customer,) = body["customers"]
    assert customer["applied"] and customer["events_applied"] == 3 and body["retry"] == []
    key = {"user_id": {"S": USER}}
    written = aws["dynamodb"].get_item(TableName=TABLE, Key=key)["Item"]
    status, again = call(api, post)  # the same request again: duplicates, nothing written
    assert status == 202 and again["customers"][0]["duplicates"] == 3
    item = aws["dynamodb"].get_item(TableName=TABLE, Key=key)["Item"]
    assert item["version"] == written["version"]
    last_event = (now - dt.timedelta(days=7)).timestamp()
    assert int(item["ttl"]["N"]) == pytest.approx(last_event + 30 * 86_400, abs=1)

    status, view = on_customer(api, "GET", USER)
    assert status == 200 and view["user_id"] == USER and view["events_applied"] == 3
    assert view["last_event_at"] == (now - dt.timedelta(days=7)).isoformat(timespec="seconds")
    assert view["churn_probability"] == pytest.approx(customer["churn_probability"], abs=1e-3)

    assert on_customer(api, "DELETE", USER) == (204, None)
    assert "Item" not in aws["dynamodb"].get_item(TableName=TABLE, Key=key)
    assert aws["dynamodb"].scan(TableName=TABLE)["Count"] == 0
    assert on_customer(api, "GET", USER)[0] == 404
    assert on_customer(api, "DELETE", USER) == (204, None)


def test_the_local_stack_gives_the_scoring_function_the_templates_state_table_with_ttl(aws):
    from infra.local_stack.resources import create_resources
    from infra.template import load_template

    resources = create_resources(load_template(), aws)
    table = resources.function_env["ScoreApiFunction"]["CHURNGUARD_STATE_TABLE"]
    assert table == resources.names["CustomerStateTable"]
    description = aws["dynamodb"].describe_table(TableName=table)["Table"]
    assert description["KeySchema"] == [{"AttributeName": "user_id", "KeyType": "HASH"}]
    ttl = aws["dynamodb"].describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "ttl" and ttl["TimeToLiveStatus"] == "ENABLED"
