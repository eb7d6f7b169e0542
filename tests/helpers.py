"""Test helpers. Running handlers, sample events and model variants live in infra (the benchmarks
and the local stack use them too) and are re-exported here under the names the tests use."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from infra.lambda_harness import EVENTS, load_event, load_handler
from infra.lambda_harness import LambdaContext as FakeLambdaContext
from infra.local_stack.api import http_json as http
from infra.model_fixtures import FIXTURE_MODEL, model_variant, tarball

__all__ = [
    "EVENTS",
    "FIXTURE_MODEL",
    "PLANTED",
    "ROOT",
    "FakeLambdaContext",
    "cached_venv",
    "check_scoring_api_over_http",
    "counted_api_server",
    "http",
    "load_event",
    "load_handler",
    "model_variant",
    "tarball",
]

ROOT = Path(__file__).resolve().parents[1]
# Planted in test data (user ids of bad rows, hostile requests): tests/conftest.py fails the session if
# any log record of any test carries it.
PLANTED = "PLANTED-7f3a"


@contextlib.contextmanager
def counted_api_server(lambda_handler: Callable[[dict, object], dict], label: str) -> Iterator[str]:
    """``lambda_handler`` behind the local stack's HTTP adapter on 127.0.0.1 (the URL is yielded), its
    answers counted by status; on exit the counts are printed and no answer may have been a 5xx."""
    import threading

    from infra.local_stack import make_api_server

    statuses: Counter[int] = Counter()

    class Counted:  # what the HTTP adapter calls: the real handler, with its answers counted
        @staticmethod
        def lambda_handler(event: dict, context: object) -> dict:
            response = lambda_handler(event, context)
            statuses[int(response["statusCode"])] += 1
            return response

    server = make_api_server(Counted, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    print(f"\n{label}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert not [code for code in statuses if code >= 500]


def cached_venv(name: str, *requirements: str) -> Path:
    """A tool environment under .cache/ (built once, reused): for tools whose pins fight ours."""
    import subprocess

    venv = ROOT / ".cache" / name
    python = venv / "bin" / "python"
    marker = venv / ".ready"
    wanted = "\n".join(requirements)
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
            check=True,
            timeout=900,
        )
        marker.write_text(wanted)
    return python


def check_scoring_api_over_http(api: str, model_version: str) -> None:
    """The scoring API's contract over real HTTP (the in-process local stack and `sam local start-api`
    run the same checks): health, scores, and the 4xx answers that name what is wrong."""
    assert http("GET", api + "/v1/health") == (200, {"status": "ok", "model_version": model_version})
    customer = {
        "user_id": "x",
        "as_of": "2024-09-30",
        "events": [{"timestamp": "2024-02-01", "event_type": "order", "amount": 900, "quantity": 3}],
    }
    status, body = http("POST", api + "/v1/scores", {"customers": [customer]})
    assert status == 200 and body["model_version"] == model_version, body
    assert 0.0 <= body["customers"][0]["churn_probability"] <= 1.0
    assert body["customers"][0]["risk_tier"] in {"low", "medium", "high"}
    status, body = http(
        "POST", api + "/v1/scores", {"customers": [{"user_id": "x", "events": [{"event_type": "x"}]}]}
    )
    assert status == 422 and body["errors"][0]["field"].startswith("customers[0].events[0]"), body
    status, body = http("POST", api + "/v1/scores", b"{not json")
    assert status == 400 and "not valid JSON" in body["message"], body
    status, body = http("POST", api + "/v1/scores", {"customers": [customer] * 101})
    assert status == 413 and body["limit"] == 100, body
    status, body = http("GET", api + "/v1/model")
    assert status == 200 and body["model_version"] == model_version, body
