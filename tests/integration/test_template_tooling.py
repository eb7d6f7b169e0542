"""template.yaml passes the SAM CLI and checkov checks (their own venv, built on first use)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cached_venv
from tests.unit.test_template import (
    OPEN_ROUTES,
    SCORING_ROUTE_AUTH,
    api_event_routes,
    condition_values,
    deployed_resources,
    route_auth,
)

ROOT = Path(__file__).resolve().parents[2]
# The translation `make template-checks` lints (infra.template_checks.translated_template: local code
# paths as packaged S3 URIs, no IAM calls), once per ApiAuth value.
TRANSLATE_PER_API_AUTH = """
import json, sys
import samtranslator.translator.transform as sam
from infra.template_checks import translated_template

transform, translated = sam.transform, {}
for mode in sys.argv[1:]:
    sam.transform = lambda template, _, policies: transform(template, {"ApiAuth": mode}, policies)
    translated[mode] = translated_template()
print(json.dumps(translated, default=str))
"""


def infra_python() -> Path:
    return cached_venv("venv-infra", "-r", str(ROOT / "infra/requirements-checks.txt"))


def test_sam_validate_translated_cfn_lint_checkov_and_sam_build_pass():
    python = infra_python()
    result = subprocess.run(
        [str(python), str(ROOT / "infra/template_checks.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    for line in (
        "sam validate --lint: ok",
        "cfn-lint on the translated template: ok",
        "failed 0",
        "sam build (no Docker): ok",
        "glibc <= 2.26 (python3.11 runtime): ok",
        "asl-validator: ok",
    ):
        assert line in result.stdout, result.stdout


@pytest.fixture(scope="module")
def translated():
    """ApiAuth value -> the template as the SAM transform hands it to CloudFormation."""
    result = subprocess.run(
        [str(infra_python()), "-c", TRANSLATE_PER_API_AUTH, *SCORING_ROUTE_AUTH],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout)


def test_the_translated_api_methods_authorize_as_api_auth_says(translated):
    """Per mode, what API Gateway gets: every event route with its Lambda integration merged in, the
    scoring routes with the mode's authorization / API key, health open; IAM-authorized methods do not
    invoke with the caller's credentials (SAM's AWS_IAM default), so a caller needs execute-api:Invoke
    only, not lambda:InvokeFunction."""
    from infra.template import load_template

    routes = api_event_routes(load_template())
    assert routes.issuperset(OPEN_ROUTES) and routes - OPEN_ROUTES  # some routes are protected
    for mode, scoring in SCORING_ROUTE_AUTH.items():
        template = translated[mode]
        resources = deployed_resources(template, {"ApiAuth": mode})
        (api,) = [r for r in resources.values() if r["Type"] == "AWS::ApiGateway::RestApi"]
        body = api["Properties"]["Body"]
        auth = route_auth(body)
        assert set(auth) == routes, mode
        for path, method in routes:
            integration = body["paths"][path][method]["x-amazon-apigateway-integration"]
            assert integration["type"] == "aws_proxy" and "credentials" not in integration, (mode, path)
            assert auth[(path, method)] == (("NONE", False) if (path, method) in OPEN_ROUTES else scoring)
        # the usage plan and its key exist in every mode (deploy.py reads the key when the mode uses it)
        types = {r["Type"] for r in resources.values()}
        assert {"AWS::ApiGateway::UsagePlan", "AWS::ApiGateway::ApiKey"} <= types, mode
        assert ("ScoringApiInvokePolicy" in resources) is (scoring[0] == "AWS_IAM"), mode
        conditions = condition_values(template, {"ApiAuth": mode})
        assert conditions[template["Outputs"]["ScoringApiInvokePolicyArn"]["Condition"]] is (
            scoring[0] == "AWS_IAM"
        )


def test_the_dataset_state_machine_passes_asl_validator_which_refuses_a_broken_one(tmp_path):
    """asl-validator (npm, cached under .cache/node) on the committed definition and on it with its
    substitutions made; a definition with a dangling Next and a map without an ItemProcessor is
    refused, so "ok" means something."""
    from infra.template_checks import STATE_MACHINE_DEFINITIONS, asl_validator, validate_state_machines

    if shutil.which("npm") is None or shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npm and node are needed for asl-validator (make template-checks)")
        pytest.skip("npm/node not on this machine: asl-validator cannot be installed")
    validator = asl_validator()
    result = validate_state_machines(validator)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("is valid") == 2 * len(STATE_MACHINE_DEFINITIONS)

    broken = json.loads(STATE_MACHINE_DEFINITIONS["DatasetStateMachine"].read_text())
    broken["States"]["Plan"]["Next"] = "NoSuchState"
    del broken["States"]["ScoreShards"]["ItemProcessor"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    refused = subprocess.run(
        [str(validator), "--json-path", str(tmp_path / "broken.json")], capture_output=True, text=True
    )
    assert refused.returncode == 1, refused.stdout
    assert "NoSuchState" in refused.stdout + refused.stderr
