"""Every log line of a scoring request carries the request's correlation id (API Gateway's request
id), and a request without one gets none: the previous request's id does not linger."""

import io
import json

import pytest

from tests.helpers import FIXTURE_MODEL, FakeLambdaContext, load_event, load_handler


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.delenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "ChurnGuardTest")
    module = load_handler("score_api")
    yield module
    module.runtime.cache_clear()


def _log_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def log_output(api):
    out = io.StringIO()
    handler = api.logger.registered_handler
    previous = handler.setStream(out)
    yield out
    handler.setStream(previous)


def test_every_log_line_of_a_request_carries_its_request_id(api, log_output):
    out = log_output
    event = load_event("score_api/post_scores.json")
    assert api.lambda_handler(event, FakeLambdaContext())["statusCode"] == 200
    lines = _log_lines(out.getvalue())
    assert [line["message"] for line in lines if line["message"] == "scored"] == ["scored"]
    assert {line.get("correlation_id") for line in lines} == {event["requestContext"]["requestId"]}

    del event["requestContext"]  # the next request has none: the previous one's does not linger
    out.seek(0), out.truncate()
    assert api.lambda_handler(event, FakeLambdaContext())["statusCode"] == 200
    lines = _log_lines(out.getvalue())
    assert lines and all("correlation_id" not in line for line in lines)
