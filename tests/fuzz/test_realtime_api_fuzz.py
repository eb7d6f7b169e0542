"""schemathesis against the real-time routes (POST /v1/events, GET and DELETE /v1/customers/{user_id})
with real-time mode on: the handler behind the local stack's HTTP adapter, its state store an
in-memory fake (``tests/unit/fakes.py``), its clock fixed after every instant the schema admits (so
no generated event is "in the future"). ``tests/fuzz/test_api_fuzz.py`` covers every route with
real-time mode off. Bounded by ``CHURNGUARD_FUZZ_EXAMPLES`` per operation, derandomized.
"""

import dataclasses
import datetime as dt
import functools
import os
from pathlib import Path
from urllib.parse import unquote

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from churnguard.features import ID_BLANKS, MAX_USER_ID_LENGTH
from churnguard.realtime import RealtimeRules
from churnguard.wiring import RealtimeRuntime
from tests.helpers import FIXTURE_MODEL, counted_api_server, load_handler
from tests.unit.fakes import MemoryCustomerStateStore, RecordingPublisher

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("CHURNGUARD_FUZZ_EXAMPLES", "3400")) // 4  # scoring per request: slower
NOW = dt.datetime(2201, 1, 1, tzinfo=dt.UTC)  # after every timestamp the schema admits (years to 2199)

schema = schemathesis.openapi.from_path(ROOT / "functions/score_api/openapi.json").include(
    path_regex=r"^/v1/(events|customers/)"
)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=max(EXAMPLES, 1)
)
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


@pytest.fixture(scope="module")
def api_url():
    with pytest.MonkeyPatch.context() as env:  # restored when the module's tests end
        env.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
        env.delenv("CHURNGUARD_STATE_TABLE", raising=False)
        handler = load_handler("score_api")
        base = handler.runtime()
        realtime = RealtimeRuntime(
            MemoryCustomerStateStore(),
            RealtimeRules(),
            RecordingPublisher(),
            queue_configured=True,
            clock=lambda: NOW,
        )
        handler.runtime = functools.cache(lambda: dataclasses.replace(base, realtime=realtime))
        with counted_api_server(handler.lambda_handler, "schemathesis (real-time on)") as url:
            yield url


def _breaks_a_rule_json_schema_cannot_state(case) -> bool:
    """Schema-valid requests the API must still refuse: more distinct customers or events than the
    configured limits (413); a path user id blank or too long once stripped (422)."""
    if case.path == "/v1/events":
        body = case.body if isinstance(case.body, dict) else {}
        events = body.get("events") if isinstance(body.get("events"), list) else []
        ids = {
            e["user_id"].strip(ID_BLANKS)
            for e in events
            if isinstance(e, dict) and isinstance(e.get("user_id"), str)
        }
        return len(ids) > 100 or len(events) > 1_000
    raw = (case.path_parameters or {}).get("user_id")
    if not isinstance(raw, str):
        return False
    # schemathesis percent-encodes it (some phases pass it encoded already); the route decodes it
    candidates = (raw.strip(ID_BLANKS), unquote(raw).strip(ID_BLANKS))
    return any(not user_id or len(user_id) > MAX_USER_ID_LENGTH for user_id in candidates)


@schema.parametrize()
@settings(
    max_examples=max(EXAMPLES, 1), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_no_realtime_request_gets_a_5xx_or_an_undocumented_answer(case, api_url):
    excluded = [positive_data_acceptance] if _breaks_a_rule_json_schema_cannot_state(case) else []
    response = case.call_and_validate(base_url=api_url, excluded_checks=excluded, timeout=60)
    if excluded and case.path == "/v1/events":
        assert response.status_code in (413, 422), response.text
    if response.status_code in (200, 202):
        assert "NaN" not in response.text and "Infinity" not in response.text  # strict JSON only
