"""POST /v1/scores, GET /v1/model, GET /v1/health through lambda_handler (no network: no queue)."""

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import PLANTED, ROOT, FakeLambdaContext, load_event, load_handler

FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "model"


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.delenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ChurnGuardTest")
    module = load_handler("score_api")
    yield module
    module.runtime.cache_clear()


def call(api, event):
    response = api.lambda_handler(event, FakeLambdaContext())
    return response["statusCode"], json.loads(response["body"])


def post(api, body, raw=None):
    event = load_event("score_api/post_scores.json")
    event["body"] = raw if raw is not None else json.dumps(body)
    return call(api, event)


def test_scores_every_customer_with_tier_reasons_and_model_version(api):
    status, body = call(api, load_event("score_api/post_scores.json"))
    assert status == 200
    model = json.loads((FIXTURE_MODEL / "metadata.json").read_text())
    assert body["model_version"] == model["model_version"]
    assert [c["user_id"] for c in body["customers"]] == ["c-1001", "c-1002"]
    thresholds = model["thresholds"]["risk_tiers"]
    for customer in body["customers"]:
        p = customer["churn_probability"]
        assert 0 < p < 1
        expected = "high" if p >= thresholds["high"] else "medium" if p >= thresholds["medium"] else "low"
        assert customer["risk_tier"] == expected
        assert customer["queued"] is False  # no promotions queue configured
        assert all(r["contribution"] > 0 and r["text"] for r in customer["reasons"])
    # the lapsed customer (last order in May) is riskier than the active one (ordered last week)
    assert body["customers"][0]["churn_probability"] > body["customers"][1]["churn_probability"]


def test_base64_encoded_body_scores_the_same(api):
    _, plain = call(api, load_event("score_api/post_scores.json"))
    status, encoded = call(api, load_event("score_api/post_scores_base64.json"))
    assert status == 200
    assert [c["churn_probability"] for c in encoded["customers"]] == [
        c["churn_probability"] for c in plain["customers"]
    ]


def test_same_customer_twice_in_a_warm_container_gets_the_same_number(api):
    request = {
        "customers": [
            {
                "user_id": "a",
                "as_of": "2024-09-30",
                "events": [{"timestamp": "2024-06-01", "event_type": "order", "amount": 20}],
            }
        ]
    }
    first = post(api, request)[1]
    post(api, json.loads(load_event("score_api/post_scores.json")["body"]))  # other traffic in between
    again = post(api, request)[1]
    assert first["customers"][0]["churn_probability"] == again["customers"][0]["churn_probability"]


def test_invalid_json_is_a_400(api):
    status, body = post(api, None, raw='{"customers": [')
    assert status == 400
    assert "not valid JSON" in body["message"]


@pytest.mark.parametrize(
    ("customer", "field"),
    [
        (
            {"user_id": "a", "events": [{"timestamp": "2024-01-01", "event_type": "click"}]},
            "customers[0].events[0].event_type",
        ),
        (
            {"user_id": "a", "events": [{"timestamp": "2024-01-01", "event_type": "order", "amount": -5}]},
            "customers[0].events[0].amount",
        ),
        (
            {"user_id": "a", "events": [{"timestamp": "yesterday", "event_type": "order"}]},
            "customers[0].events[0].timestamp",
        ),
        ({"events": []}, "customers[0].user_id"),
        ({"user_id": "a", "events": [], "colour": "red"}, "customers[0].colour"),
        (  # 1e39 overflowed the float32 inputs and came back as a NaN score with 200
            {"user_id": "a", "events": [{"timestamp": "1997-03-01", "event_type": "order", "amount": 1e39}]},
            "customers[0].events[0].amount",
        ),
        (
            {"user_id": "a", "events": [{"timestamp": "1997-03-01", "event_type": "order", "quantity": 1e7}]},
            "customers[0].events[0].quantity",
        ),
        (
            {"user_id": "a", "events": [{"timestamp": "1997-03-01", "event_type": "order", "amount": "12"}]},
            "customers[0].events[0].amount",
        ),
        (
            {
                "user_id": "a",
                "events": [{"timestamp": "1997-03-01", "event_type": "order", "quantity": False}],
            },
            "customers[0].events[0].quantity",
        ),
        ({"user_id": "   ", "events": []}, "customers[0].user_id"),
        (  # found by schemathesis: a number was read as seconds since 1970
            {"user_id": "a", "events": [{"timestamp": 0, "event_type": "order"}]},
            "customers[0].events[0].timestamp",
        ),
    ],
    ids=[
        "unknown-event-type",
        "negative-amount",
        "bad-timestamp",
        "missing-user-id",
        "unknown-field",
        "amount-overflowing-float32",
        "quantity-above-limit",
        "amount-as-text",
        "quantity-as-boolean",
        "blank-user-id",
        "timestamp-as-number",
    ],
)
def test_schema_violations_are_422_naming_the_field(api, customer, field):
    status, body = post(api, {"customers": [customer]})
    assert status == 422
    assert body["errors"][0]["field"] == field
    assert field in body["message"]


def test_user_ids_are_stripped_like_batch_so_padded_duplicates_are_422(api):
    events = [{"timestamp": "1997-03-01", "event_type": "order", "amount": 12}]
    status, body = post(
        api, {"customers": [{"user_id": "a", "events": events}, {"user_id": "a ", "events": events}]}
    )
    assert status == 422 and body["errors"][0]["field"] == "customers[1].user_id"


def test_duplicate_user_ids_are_422(api):
    status, body = post(api, {"customers": [{"user_id": "a", "events": []}, {"user_id": "a", "events": []}]})
    assert status == 422
    assert body["errors"][0]["field"] == "customers[1].user_id"


def test_too_many_customers_is_413_with_the_limit(api):
    status, body = post(api, {"customers": [{"user_id": f"u{i}", "events": []} for i in range(101)]})
    assert status == 413
    assert body["limit"] == 100 and "at most 100 customers" in body["message"]


def test_too_large_a_body_is_413_before_parsing(api, monkeypatch):
    monkeypatch.setenv("CHURNGUARD_MAX_BODY_BYTES", "2048")
    api.runtime.cache_clear()
    status, body = post(api, None, raw=json.dumps({"customers": [{"user_id": "x" * 3000, "events": []}]}))
    assert status == 413 and body["limit"] == 2048


def test_event_case_blanks_and_offsets_are_normalised_like_the_batch_schema(api):
    def one(event_type, timestamp):
        status, body = post(
            api,
            {
                "customers": [
                    {
                        "user_id": "a",
                        "as_of": "2024-09-30",
                        "events": [{"timestamp": timestamp, "event_type": event_type, "amount": 20}],
                    }
                ]
            },
        )
        assert status == 200
        return body["customers"][0]["churn_probability"]

    assert one(" ORDER ", "2024-06-01T00:00:00+02:00") == one("order", "2024-05-31T22:00:00Z")
    assert one("order", "2024-05-31T22:00:00") == one("order", "2024-05-31T22:00:00Z")  # naive is UTC


def test_unknown_route_is_404(api):
    event = load_event("score_api/get_health.json")
    event["path"] = event["resource"] = "/v1/nothing"
    status, _ = call(api, event)
    assert status == 404


def test_model_endpoint_describes_the_serving_model(api):
    status, body = call(api, load_event("score_api/get_model.json"))
    assert status == 200
    metadata = json.loads((FIXTURE_MODEL / "metadata.json").read_text())
    assert body["model_version"] == metadata["model_version"]
    assert body["thresholds"]["promotion"] == metadata["thresholds"]["promotion"]
    assert body["features"]["event_types"] == ["order", "view", "cart", "return"]
    assert "recency" in body["features"]["reason_groups"]
    assert body["metrics"]["test"]["roc_auc"] == metadata["metrics"]["test"]["roc_auc"]


def test_health_reports_the_model_version_or_503_without_a_model(api, monkeypatch, tmp_path):
    status, body = call(api, load_event("score_api/get_health.json"))
    assert status == 200 and body["status"] == "ok"
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(tmp_path))
    api.runtime.cache_clear()
    status, body = call(api, load_event("score_api/get_health.json"))
    assert status == 503 and body["status"] == "unavailable"
    status, body = call(api, load_event("score_api/post_scores.json"))
    assert status == 503 and body["correlation_id"] == "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


def test_a_real_fault_is_a_500_with_the_correlation_id(api, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api, "_score_request", boom)  # the traced entry point the route calls
    status, body = call(api, load_event("score_api/post_scores.json"))
    assert status == 500
    assert body == {"message": "internal error", "correlation_id": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"}


def test_http_scores_equal_the_tabular_route_for_the_same_customers(api):
    import pandas as pd

    from churnguard.bundle import ModelBundle
    from churnguard.events import validate_events
    from churnguard.scoring import ReasonsFor, score_customers
    from churnguard.tabular import customer_events, to_epoch_seconds

    request = json.loads(load_event("score_api/post_scores.json")["body"])
    _, body = post(api, request)
    rows = []
    for customer in request["customers"]:
        for e in customer["events"]:
            rows.append({"user_id": customer["user_id"], **e, **customer["profile"]})
    events = validate_events(pd.DataFrame(rows)).events
    data = customer_events(
        events,
        profile_columns=("country", "acquisition_channel"),
        user_ids=np.array(["c-1001", "c-1002"], dtype=object),
    )
    bundle = ModelBundle.from_directory(FIXTURE_MODEL)
    scored = score_customers(
        bundle,
        list(data.user_ids),
        data.arrays,
        to_epoch_seconds("2024-09-30"),
        profile=data.profile,
        reasons_for=ReasonsFor.NONE,
    )
    np.testing.assert_allclose(
        [c["churn_probability"] for c in body["customers"]], scored.churn_probability, atol=1e-6
    )


def test_openapi_file_matches_the_real_routes(api):
    committed = json.loads((ROOT / "functions/score_api/openapi.json").read_text())
    assert committed == api.openapi_document(), (
        "regenerate it from functions/score_api/app.py's openapi_document(): "
        "PYTHONPATH=shared:functions/score_api .venv/bin/python -c "
        "'import json, app; print(json.dumps(app.openapi_document(), indent=2))' "
        "> functions/score_api/openapi.json"
    )
    paths = {"/v1/scores", "/v1/model", "/v1/health", "/v1/events", "/v1/customers/{user_id}"}
    assert set(committed["paths"]) == paths
    assert "post" in committed["paths"]["/v1/scores"] and "post" in committed["paths"]["/v1/events"]
    assert set(committed["paths"]["/v1/customers/{user_id}"]) == {"get", "delete"}


def test_the_function_package_imports_without_tensorflow_or_pandas():
    # As Lambda does it: the function folder and the layer on the path, then `import app`.
    code = (
        "import sys, app;"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras', 'pandas'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    path = f"{ROOT / 'functions/score_api'}:{ROOT / 'shared'}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_batch_function_package_imports_without_tensorflow():
    code = (
        "import sys, app; bad = sorted(k for k in sys.modules if k.split('.')[0] in ('tensorflow', 'keras'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    path = f"{ROOT / 'functions/batch_score'}:{ROOT / 'shared'}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": path, "AWS_DEFAULT_REGION": "eu-west-1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promotion_actions_are_configurable_and_validated_at_cold_start():
    from churnguard.settings import ServingSettings, SettingsError

    base = {"CHURNGUARD_MODEL_DIR": "/models"}
    custom = ServingSettings.from_env(
        {**base, "CHURNGUARD_PROMOTION_ACTIONS": '[{"name": "voucher", "cost": 3, "uplift": 0.2}]'}
    )
    assert [a.name for a in custom.promotion_policy().actions] == ["voucher"]
    assert len(ServingSettings.from_env(base).promotion_policy().actions) == 4  # documented defaults
    with pytest.raises(SettingsError, match="CHURNGUARD_PROMOTION_ACTIONS"):
        ServingSettings.from_env(
            {**base, "CHURNGUARD_PROMOTION_ACTIONS": '[{"name": "x", "cost": -1, "uplift": 2}]'}
        )
    with pytest.raises(SettingsError, match="exactly one of"):
        ServingSettings.from_env({})


def _customer(**overrides):
    customer = {
        "user_id": f"{PLANTED}-h-1",
        "as_of": "1997-10-01",
        "events": [{"timestamp": "1997-03-01", "event_type": "order", "amount": 10}],
    }
    return {"customers": [{**customer, **overrides}]}


def _hostile(name):
    """The hostile requests that used to end in 500 (or parse as something else), as proxy events."""
    event = load_event("score_api/post_scores.json")
    event["headers"] = {**(event.get("headers") or {}), "Content-Type": "application/json"}
    if name == "nested-100000-deep":
        event["body"] = "[" * 100_000 + "]" * 100_000
    elif name == "nested-5000-deep-in-profile":
        body = _customer()
        event["body"] = json.dumps(body).replace(
            '"as_of"', '"profile": {"x": ' + "[" * 5000 + "]" * 5000 + '}, "as_of"'
        )
    elif name in ("text/plain", "application/xml", "application/octet-stream", "multipart/form-data"):
        event["headers"]["Content-Type"] = name
        event["body"] = json.dumps(_customer())
    elif name == "invalid-utf8-base64":
        event["isBase64Encoded"] = True
        event["body"] = base64.b64encode(b'{"customers": [{"user_id": "\xff\xfe"}]}').decode()
    elif name == "utf16-base64":
        event["isBase64Encoded"] = True
        event["body"] = base64.b64encode(json.dumps(_customer()).encode("utf-16")).decode()
    elif name == "lone-surrogate":
        event["body"] = '{"customers": [{"user_id": "\ud800", "events": []}]}'
    elif name == "as_of-year-0-in-utc":
        event["body"] = json.dumps(_customer(as_of="0001-01-01T00:00:00+01:00"))
    elif name == "as_of-year-10000-in-utc":
        event["body"] = json.dumps(_customer(as_of="9999-12-31T23:59:59-01:00"))
    elif name == "http-api-v2-event":
        event = {"version": "2.0", "rawPath": "/v1/scores", "requestContext": {"http": {"method": "POST"}}}
    return event


HOSTILE = {
    "nested-100000-deep": 400,
    "nested-5000-deep-in-profile": 400,
    "text/plain": 415,
    "application/xml": 415,
    "application/octet-stream": 415,
    "multipart/form-data": 415,
    "invalid-utf8-base64": 400,
    "utf16-base64": 400,
    "lone-surrogate": 400,
    "as_of-year-0-in-utc": 422,
    "as_of-year-10000-in-utc": 422,
    "http-api-v2-event": 400,
}


@pytest.mark.parametrize(("name", "expected"), HOSTILE.items(), ids=list(HOSTILE))
def test_hostile_requests_get_a_specific_4xx_never_a_500(api, name, expected):
    status, body = call(api, _hostile(name))
    assert status == expected, body
    assert body["message"]
    if expected == 422:
        assert body["errors"][0]["field"] == "customers[0].as_of" and "1900" in body["message"]


def test_debug_logging_of_the_event_handler_never_carries_the_request_content(api, caplog):
    """Powertools' event handler logs the parsed route arguments at DEBUG on every request: the
    request models' repr names sizes only, so not even DEBUG puts a user id into the log."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="aws_lambda_powertools"):
        status, _ = post(api, _customer())
        event = load_event("score_api/post_events.json")
        event["body"] = json.dumps(
            {
                "events": [
                    {"user_id": f"{PLANTED}-e", "timestamp": "1997-03-01T00:00:00Z", "event_type": "order"}
                ]
            }
        )
        api.lambda_handler(event, FakeLambdaContext())
    route_lines = [r.getMessage() for r in caplog.records if "Calling API Route Handler" in r.getMessage()]
    assert status == 200 and len(route_lines) == 2
    assert route_lines[0] == "Calling API Route Handler"  # app._without_route_arguments dropped them
    assert not [line for line in route_lines if PLANTED in line]
    # and the f-string Powertools builds first (even when DEBUG is off) reprs sizes, not content
    from churnguard.api import ScoreRequest

    assert repr(ScoreRequest.model_validate(_customer())) == "ScoreRequest(customers: 1 items)"


def _log_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def log_output(api):
    out = io.StringIO()
    handler = api.logger.registered_handler
    previous = handler.setStream(out)
    yield out
    handler.setStream(previous)


def _emf_records(out: str) -> list[dict]:
    return [line for line in map(json.loads, out.splitlines()) if "_aws" in line]


def test_a_scored_request_is_one_emf_record_naming_its_request_and_model(api, log_output, capsys):
    """No separate Logger line repeats the counts: the request's record is its EMF line."""
    event, context = load_event("score_api/post_scores.json"), FakeLambdaContext()
    capsys.readouterr()
    response = api.lambda_handler(event, context)
    assert response["statusCode"] == 200
    assert _log_lines(log_output.getvalue()) == []
    [record] = _emf_records(capsys.readouterr().out)
    assert record["correlation_id"] == event["requestContext"]["requestId"]
    assert record["function_request_id"] == context.aws_request_id
    assert record["model_version"] == json.loads(response["body"])["model_version"]
    assert record["CustomersScored"] == [len(json.loads(event["body"])["customers"])]

    del event["requestContext"]  # the next request has none: the previous one's does not linger
    assert api.lambda_handler(event, FakeLambdaContext())["statusCode"] == 200
    [record] = _emf_records(capsys.readouterr().out)
    assert "correlation_id" not in record and record["model_version"]


def _failing_score_request(*args, **kwargs):
    raise RuntimeError("boom")


def test_every_log_line_of_a_request_carries_its_request_id(api, log_output, monkeypatch):
    monkeypatch.setattr(api, "_score_request", _failing_score_request)
    event = load_event("score_api/post_scores.json")
    assert api.lambda_handler(event, FakeLambdaContext())["statusCode"] == 500
    lines = _log_lines(log_output.getvalue())
    assert [line["message"] for line in lines] == ["unhandled error"]
    assert {line.get("correlation_id") for line in lines} == {event["requestContext"]["requestId"]}

    del event["requestContext"]  # the next request has none: the previous one's does not linger
    log_output.seek(0), log_output.truncate()
    assert api.lambda_handler(event, FakeLambdaContext())["statusCode"] == 500
    lines = _log_lines(log_output.getvalue())
    assert lines and all("correlation_id" not in line for line in lines)
