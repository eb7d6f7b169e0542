"""schemathesis against the scoring API over real HTTP on 127.0.0.1 (the local stack's API adapter:
REST proxy events into ``lambda_handler``), generated from the committed OpenAPI file: every check
(no 5xx, status codes and response bodies as documented, content types), valid and invalid inputs.

Bounded for CI by ``CHURNGUARD_FUZZ_EXAMPLES`` per operation (default 3,400 -> ~10,000 requests over
the three operations); ``make fuzz`` runs more. Generation is derandomized, so a failure reproduces.
"""

import os
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from churnguard.features import ID_BLANKS
from tests.helpers import FIXTURE_MODEL, counted_api_server, load_handler

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("CHURNGUARD_FUZZ_EXAMPLES", "3400"))

schema = schemathesis.openapi.from_path(ROOT / "functions/score_api/openapi.json")
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES
)
# 413 is a rejection too: a generated body over the documented 1 MiB limit is refused for its size first
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


@pytest.fixture(scope="module")
def api_url():
    with pytest.MonkeyPatch.context() as env:  # restored when the module's tests end
        env.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
        env.delenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", raising=False)
        handler = load_handler("score_api")
        with counted_api_server(handler.lambda_handler, "schemathesis") as url:
            yield url
        handler.runtime.cache_clear()


def _breaks_a_rule_json_schema_cannot_state(case) -> bool:
    """Schema-valid bodies the API must still refuse (documented as 422 and 413): a user id twice in
    one request (uniqueness by a property is not expressible in JSON Schema), more customers than the
    configured per-request limit."""
    body = case.body if isinstance(case.body, dict) else {}
    customers = body.get("customers") if isinstance(body.get("customers"), list) else []
    ids = [
        c["user_id"].strip(ID_BLANKS)
        for c in customers
        if isinstance(c, dict) and isinstance(c.get("user_id"), str)
    ]
    return len(ids) != len(set(ids)) or len(customers) > 100


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_the_schema_allows_or_forbids_gets_a_5xx_or_an_undocumented_answer(case, api_url):
    excluded = [positive_data_acceptance] if _breaks_a_rule_json_schema_cannot_state(case) else []
    # 60 s, not schemathesis' 10 s: on a loaded CI machine a large valid body can take seconds to score
    response = case.call_and_validate(base_url=api_url, excluded_checks=excluded, timeout=60)
    if excluded:
        assert response.status_code in (413, 422), response.text
    if response.status_code == 200 and case.path == "/v1/scores":
        assert "NaN" not in response.text and "Infinity" not in response.text  # strict JSON only
