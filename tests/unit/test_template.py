"""template.yaml stays true to the code: handlers, routes, settings, and cfn-lint."""

import json
import subprocess
import sys
from pathlib import Path

from churnguard.settings import GateSettings, RetrainSettings, ServingSettings
from infra.template import load_template
from tests.helpers import ROOT, load_handler

TEMPLATE = load_template()
FUNCTIONS = {k: v for k, v in TEMPLATE["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}


def test_every_function_handler_resolves_to_a_real_lambda_handler(monkeypatch):
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(ROOT / "tests/fixtures/model"))
    assert FUNCTIONS
    for name, resource in FUNCTIONS.items():
        code_uri = Path(resource["Properties"]["CodeUri"])
        module, function = resource["Properties"]["Handler"].split(".")
        assert (ROOT / code_uri / f"{module}.py").exists(), name
        handler = load_handler(code_uri.name)
        assert callable(getattr(handler, function)), name


def test_api_events_are_exactly_the_openapi_routes():
    wired = set()
    for resource in FUNCTIONS.values():
        for event in resource["Properties"].get("Events", {}).values():
            if event["Type"] == "Api":
                wired.add((event["Properties"]["Path"], event["Properties"]["Method"].lower()))
    openapi = json.loads((ROOT / "functions/score_api/openapi.json").read_text())
    documented = {(path, method) for path, ops in openapi["paths"].items() for method in ops}
    assert wired == documented


def _resolved(value):
    """Template parameters resolve to their defaults; other intrinsics to a deploy-time placeholder."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value and value["Ref"] in TEMPLATE.get("Parameters", {}):
        return str(TEMPLATE["Parameters"][value["Ref"]]["Default"])
    return "resolved-at-deploy"


def test_the_template_environment_is_valid_settings_for_every_function():
    env = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    for name, resource in FUNCTIONS.items():
        merged = {**env, **resource["Properties"].get("Environment", {}).get("Variables", {})}
        churnguard = {k: _resolved(v) for k, v in merged.items() if k.startswith("CHURNGUARD_")}
        settings = ServingSettings.from_env(churnguard)
        if name == "PromoteFunction":
            assert GateSettings.from_env(churnguard).data_bucket
        if name == "RetrainFunction":
            resolved = {
                **churnguard,
                "CHURNGUARD_TRAINING_ROLE_ARN": "arn:aws:iam::1:role/r",
                "CHURNGUARD_TRAINING_IMAGE": "1.dkr.ecr.eu-west-1.amazonaws.com/repo:v1",
            }
            assert RetrainSettings.from_env(resolved).training_image
        assert (
            settings.model_pointer_parameter and settings.promotions_queue_url and settings.idempotency_table
        ), name
        # every CHURNGUARD_ variable in the template is one the code reads
        known = {
            f.alias
            for cls in (ServingSettings, GateSettings, RetrainSettings)
            for f in cls.model_fields.values()
        }
        assert set(churnguard) <= known, set(churnguard) - known


def test_batch_scoring_reads_the_scoring_jobs_queue_with_partial_batch_failures():
    events = FUNCTIONS["BatchScoreFunction"]["Properties"]["Events"]
    sqs = next(e for e in events.values() if e["Type"] == "SQS")
    assert sqs["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    notification = TEMPLATE["Resources"]["DataBucket"]["Properties"]["NotificationConfiguration"]
    rule = notification["QueueConfigurations"][0]["Filter"]["S3Key"]["Rules"][0]
    assert rule == {"Name": "prefix", "Value": "incoming/"}


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"  # the venv's console script
    result = subprocess.run([str(cfn_lint), "template.yaml"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_pandas_functions_and_the_layer_pin_the_same_numpy():
    def numpy_pin(path):
        return next(
            line.split("#")[0].strip()
            for line in (ROOT / path).read_text().splitlines()
            if line.startswith("numpy")
        )

    # the batch and promote packages drop their own numpy and run pandas against the layer's
    for function in ("batch_score", "promote"):
        assert numpy_pin("shared/requirements.txt") == numpy_pin(f"functions/{function}/requirements.txt")
        assert "build_pandas_function" in (ROOT / f"functions/{function}/Makefile").read_text()
    recipe = (ROOT / "functions/lambda_build.mk").read_text().split("define build_pandas_function")[1]
    assert "numpy numpy.libs" in recipe


def test_every_function_logs_to_a_group_with_retention():
    groups = {
        r["Properties"]["LogGroupName"]["Sub"]: r["Properties"]
        for r in TEMPLATE["Resources"].values()
        if r["Type"] == "AWS::Logs::LogGroup"
    }
    for name in FUNCTIONS:
        group = groups.get(f"/aws/lambda/${{{name}}}")
        assert group and group["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name


def test_the_data_bucket_refuses_plain_http():
    policies = [r for r in TEMPLATE["Resources"].values() if r["Type"] == "AWS::S3::BucketPolicy"]
    statements = [
        s
        for p in policies
        if p["Properties"]["Bucket"] == {"Ref": "DataBucket"}
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )


def test_function_policies_are_least_privilege():
    """No SAM policy template that grants more than the code needs (DescribeParameters on *, Scan/Query)."""
    for name, resource in FUNCTIONS.items():
        for policy in resource["Properties"].get("Policies", []):
            assert not {"SSMParameterReadPolicy", "DynamoDBCrudPolicy"} & set(policy), name
            for statement in policy.get("Statement", []):
                assert statement["Resource"] != "*" or statement["Action"] in (
                    "ecr:GetAuthorizationToken",
                ), name
