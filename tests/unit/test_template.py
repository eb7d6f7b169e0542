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


# --- API auth (parameter ApiAuth) ------------------------------------------------------------------
# What each mode must give every route, as API Gateway imports it: (authorization type, API key required).
SCORING_ROUTE_AUTH = {
    "API_KEY": ("NONE", True),
    "IAM": ("AWS_IAM", False),
    "IAM_AND_API_KEY": ("AWS_IAM", True),
}
OPEN_ROUTES = {("/v1/health", "get")}  # load balancers and uptime checks: no key, no signature


def _intrinsic(value):
    """``{"Fn::If": x}`` (translated template) or ``{"If": x}`` (infra.template's short form) -> ("If", x)."""
    if isinstance(value, dict) and len(value) == 1:
        ((name, argument),) = value.items()
        return name.removeprefix("Fn::"), argument
    return None, None


def condition_values(template, parameters):
    """Every condition of ``template`` evaluated as CloudFormation would with ``parameters`` (the rest at
    their defaults)."""
    values = {name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()}
    values.update(parameters)
    conditions = template.get("Conditions", {})

    def evaluate(expression):
        name, argument = _intrinsic(expression)
        if name == "Condition":
            return evaluate(conditions[argument])
        if name == "Not":
            return not evaluate(argument[0])
        if name == "And":
            return all(evaluate(a) for a in argument)
        if name == "Or":
            return any(evaluate(a) for a in argument)
        if name == "Equals":
            return operand(argument[0]) == operand(argument[1])
        raise AssertionError(f"unsupported condition {expression}")

    def operand(value):
        name, argument = _intrinsic(value)
        return values[argument] if name == "Ref" else str(value)

    return {name: evaluate(expression) for name, expression in conditions.items()}


def resolve_conditions(value, conditions):
    """``value`` with every Fn::If decided and ``AWS::NoValue`` dropped (what CloudFormation deploys)."""
    name, argument = _intrinsic(value)
    if name == "If":
        condition, if_true, if_false = argument
        return resolve_conditions(if_true if conditions[condition] else if_false, conditions)
    if isinstance(value, dict):
        resolved = {k: resolve_conditions(v, conditions) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v != {"Ref": "AWS::NoValue"}}
    if isinstance(value, list):
        return [v for v in (resolve_conditions(v, conditions) for v in value) if v != {"Ref": "AWS::NoValue"}]
    return value


def deployed_resources(template, parameters):
    """The resources CloudFormation creates for ``parameters``, their conditional values resolved."""
    conditions = condition_values(template, parameters)
    return {
        logical: resolve_conditions(resource, conditions)
        for logical, resource in template["Resources"].items()
        if conditions.get(resource.get("Condition"), True)
    }


def route_auth(definition):
    """(path, method) -> (authorization type, API key required), the way API Gateway imports a Swagger
    definition: an awsSigv4 scheme in a method's security makes it AWS_IAM, the x-api-key scheme makes
    the key required; a method with no security is open."""
    schemes = definition.get("securityDefinitions", {})
    auth = {}
    for path, methods in definition["paths"].items():
        for method, operation in methods.items():
            used = {scheme for requirement in operation.get("security", []) for scheme in requirement}
            assert used <= set(schemes), (path, method, used - set(schemes))
            iam = any(schemes[s].get("x-amazon-apigateway-authtype") == "awsSigv4" for s in used)
            key = any(
                (schemes[s]["type"], schemes[s]["name"], schemes[s]["in"])
                == ("apiKey", "x-api-key", "header")
                for s in used
                if "x-amazon-apigateway-authtype" not in schemes[s]
            )
            auth[(path, method)] = ("AWS_IAM" if iam else "NONE", key)
    return auth


def api_event_routes(template):
    return {
        (event["Properties"]["Path"], event["Properties"]["Method"].lower())
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource["Properties"].get("Events", {}).values()
        if event["Type"] == "Api"
    }


def test_api_auth_is_a_parameter_defaulting_to_api_keys_and_deploy_knows_its_values():
    from infra import deploy

    parameter = TEMPLATE["Parameters"]["ApiAuth"]
    assert parameter["Default"] == "API_KEY" == deploy.DEFAULT_API_AUTH
    assert parameter["AllowedValues"] == list(SCORING_ROUTE_AUTH) == list(deploy.API_AUTH_MODES)


def test_every_route_decides_its_auth_in_the_definition_body_and_nothing_overrides_it():
    """A route wired only as a function event would get no security at all (open in every mode), so each
    one is listed in DefinitionBody; SAM's own Auth switches would apply to all routes in all modes."""
    api = TEMPLATE["Resources"]["ScoringApi"]["Properties"]
    assert api["MergeDefinitions"] is True
    body_routes = {
        (path, method) for path, methods in api["DefinitionBody"]["paths"].items() for method in methods
    }
    assert body_routes == api_event_routes(TEMPLATE)
    assert set(api["Auth"]) == {"UsagePlan"}  # no ApiKeyRequired / DefaultAuthorizer: the body decides
    for resource in FUNCTIONS.values():
        for name, event in resource["Properties"].get("Events", {}).items():
            assert "Auth" not in event.get("Properties", {}), name
    # the mode changes the definition only after SAM hashed it: a new deployment on every update
    assert api["AlwaysDeploy"] is True


def test_each_api_auth_mode_protects_the_scoring_routes_and_leaves_health_open():
    for mode, scoring in SCORING_ROUTE_AUTH.items():
        api = deployed_resources(TEMPLATE, {"ApiAuth": mode})["ScoringApi"]["Properties"]
        auth = route_auth(api["DefinitionBody"])
        for route in api_event_routes(TEMPLATE):
            assert auth[route] == (("NONE", False) if route in OPEN_ROUTES else scoring), (mode, route)


def test_the_invoke_policy_exists_only_with_iam_and_allows_exactly_the_iam_routes():
    stage = TEMPLATE["Resources"]["ScoringApi"]["Properties"]["StageName"]
    for mode, (authorization, _) in SCORING_ROUTE_AUTH.items():
        resources = deployed_resources(TEMPLATE, {"ApiAuth": mode})
        conditions = condition_values(TEMPLATE, {"ApiAuth": mode})
        output = TEMPLATE["Outputs"]["ScoringApiInvokePolicyArn"]
        if authorization != "AWS_IAM":
            assert "ScoringApiInvokePolicy" not in resources, mode
            assert not conditions[output["Condition"]], mode
            continue
        assert conditions[output["Condition"]] and output["Value"] == {"Ref": "ScoringApiInvokePolicy"}
        policy = resources["ScoringApiInvokePolicy"]
        assert policy["Type"] == "AWS::IAM::ManagedPolicy"
        (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert (statement["Effect"], statement["Action"]) == ("Allow", "execute-api:Invoke")
        prefix = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${ScoringApi}/"
        granted = {r["Sub"].removeprefix(prefix) for r in statement["Resource"]}
        iam_routes = {
            f"{stage}/{method.upper()}{path}"
            for (path, method), (kind, _) in route_auth(
                resources["ScoringApi"]["Properties"]["DefinitionBody"]
            ).items()
            if kind == "AWS_IAM"
        }
        assert granted == iam_routes, mode


def test_deploy_passes_api_auth_through_and_tells_iam_callers_how_to_sign(tmp_path):
    from infra import deploy

    def options(*args):
        return deploy.parse_options(
            ["--region", "eu-west-1", "--config-file", str(tmp_path / "s.toml"), *args]
        )

    kept = deploy.sam_deploy_command(options(), "abc", guided=False)
    assert kept[kept.index("--parameter-overrides") + 1 :] == [
        "TrainingImageTag=abc"
    ]  # the stack keeps its mode
    iam = deploy.sam_deploy_command(options("--api-auth", "IAM"), "abc", guided=False)
    assert iam[iam.index("--parameter-overrides") + 1 :] == ["TrainingImageTag=abc", "ApiAuth=IAM"]

    outputs = {
        "ApiUrl": "https://a.execute-api.eu-west-1.amazonaws.com/v1",
        "ScoringApiInvokePolicyArn": "arn:p",
    }
    for mode, signed, key in (
        ("API_KEY", False, True),
        ("IAM", True, False),
        ("IAM_AND_API_KEY", True, True),
    ):
        state = deploy.Deploy(options(), outputs={**outputs, "ApiAuth": mode}, api_key_id="k")
        text = "\n".join(deploy.instructions(state))
        assert ("awscurl --service execute-api --region eu-west-1 -X POST" in text) is signed, mode
        assert ("attach arn:p" in text) is signed, mode
        assert ('-H "x-api-key: $API_KEY"' in text and "get-api-keys" in text) is key, mode
        assert "curl -s https://a.execute-api.eu-west-1.amazonaws.com/v1/v1/health" in text
