"""template.yaml stays true to the code: handlers, routes, settings, and cfn-lint."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from churnguard.settings import GateSettings, RetrainSettings, ServingSettings, SettingsError
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


# --- Refs resolved to what CloudFormation returns for the resource they name ---------------------------
# Each logical resource gets a distinct physical name, so a value proves which resource it came from: an
# environment variable that Refs the scoring-jobs queue instead of the promotions queue, or GetAtts an
# ARN where the code wants a URL, resolves to a different string and fails the equality below.
ACCOUNT, REGION, STACK = "123456789012", "eu-west-1", "churnguard"
PSEUDO = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": "aws",
    "AWS::StackName": STACK,
    "AWS::URLSuffix": "amazonaws.com",
}


def physical_name(logical):
    return f"{STACK}-{logical}-X1Y2Z3"


def _ref(logical):
    """``!Ref logical`` as CloudFormation resolves it, per resource type (a type the template gains
    without an entry here fails loudly instead of resolving to a placeholder)."""
    kind = TEMPLATE["Resources"][logical]["Type"]
    name = physical_name(logical)
    return {
        "AWS::SQS::Queue": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}",
        "AWS::S3::Bucket": name.lower(),
        "AWS::DynamoDB::Table": name,
        "AWS::SSM::Parameter": f"CFN-{logical}-X1Y2Z3",  # SSM names have no leading slash
        "AWS::IAM::Role": name,
        "AWS::ECR::Repository": name.lower(),
        "AWS::Serverless::Function": name,
        "AWS::Serverless::Api": "a1b2c3d4e5",
        "AWS::IAM::ManagedPolicy": f"arn:aws:iam::{ACCOUNT}:policy/{name}",
        "AWS::Serverless::StateMachine": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{name}",
        "AWS::Logs::LogGroup": name,
        "AWS::Glue::Database": name.lower(),
    }[kind]


def _get_att(logical, attribute):
    kind = TEMPLATE["Resources"][logical]["Type"]
    ref = _ref(logical)
    return {
        ("AWS::SQS::Queue", "Arn"): f"arn:aws:sqs:{REGION}:{ACCOUNT}:{physical_name(logical)}",
        ("AWS::SQS::Queue", "QueueName"): physical_name(logical),
        ("AWS::S3::Bucket", "Arn"): f"arn:aws:s3:::{ref}",
        ("AWS::DynamoDB::Table", "Arn"): f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{ref}",
        ("AWS::IAM::Role", "Arn"): f"arn:aws:iam::{ACCOUNT}:role/{ref}",
        ("AWS::ECR::Repository", "Arn"): f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{ref}",
        ("AWS::ECR::Repository", "RepositoryUri"): f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{ref}",
        ("AWS::Serverless::Function", "Arn"): f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{ref}",
        ("AWS::Logs::LogGroup", "Arn"): f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{ref}:*",
    }[(kind, attribute)]


def _resolved(value, parameters=None):
    """``value`` as deployed with ``parameters`` (the rest at their defaults): Ref, GetAtt and Sub
    resolved to the parameter's value, a pseudo parameter, or the named resource's return value."""
    parameters = parameters or {}

    def name(logical):
        if logical in PSEUDO:
            return PSEUDO[logical]
        if logical in TEMPLATE.get("Parameters", {}):
            return str(parameters.get(logical, TEMPLATE["Parameters"][logical].get("Default", "")))
        return _ref(logical)

    def sub(match):
        logical, _, attribute = match.group(1).partition(".")
        return _get_att(logical, attribute) if attribute else name(logical)

    intrinsic, argument = _intrinsic(value)
    if intrinsic == "Ref":
        return name(argument)
    if intrinsic == "GetAtt":
        logical, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
        return _get_att(logical, attribute)
    if intrinsic == "Sub":
        assert isinstance(argument, str), value  # the template uses only the one-argument form
        return re.sub(r"\$\{([^}!]+)\}", sub, argument)
    if isinstance(value, dict):
        return {k: _resolved(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, parameters) for v in value]
    return value


def function_environment(name, parameters=None):
    """The CHURNGUARD_ variables function ``name`` gets (Globals merged under its own), resolved."""
    env = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    merged = {**env, **FUNCTIONS[name]["Properties"].get("Environment", {}).get("Variables", {})}
    merged = resolve_conditions(merged, condition_values(TEMPLATE, parameters or {}))
    return {k: _resolved(v, parameters) for k, v in merged.items() if k.startswith("CHURNGUARD_")}


# make deploy pushes the training image and sets its tag (the default "" means "not pushed yet")
DEPLOYED = {"TrainingImageTag": "abc123"}


def test_the_template_environment_is_valid_settings_for_every_function():
    for name in FUNCTIONS:
        churnguard = function_environment(name, DEPLOYED)
        settings = ServingSettings.from_env(churnguard)
        if name == "PromoteFunction":
            assert GateSettings.from_env(churnguard).data_bucket
        if name == "RetrainFunction":
            assert RetrainSettings.from_env(churnguard).training_image
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


def test_every_function_settings_name_the_resources_they_are_for():
    for name in FUNCTIONS:
        serving = ServingSettings.from_env(function_environment(name, DEPLOYED))
        assert serving.model_pointer_parameter == _ref("ModelPointer"), name
        assert serving.promotions_queue_url == _ref("PromotionsQueue"), name  # the URL, not the ARN
        assert serving.idempotency_table == _ref("IdempotencyTable"), name
    assert TEMPLATE["Resources"]["ModelPointer"]["Type"] == "AWS::SSM::Parameter"
    assert TEMPLATE["Resources"]["PromotionsQueue"]["Type"] == "AWS::SQS::Queue"
    assert TEMPLATE["Resources"]["IdempotencyTable"]["Type"] == "AWS::DynamoDB::Table"

    gate = GateSettings.from_env(function_environment("PromoteFunction", DEPLOYED))
    assert (gate.data_bucket, gate.model_pointer_parameter) == (_ref("DataBucket"), _ref("ModelPointer"))
    assert (gate.max_auc_drop, gate.max_log_loss_increase) == (
        float(TEMPLATE["Parameters"]["GateMaxAucDrop"]["Default"]),
        float(TEMPLATE["Parameters"]["GateMaxLogLossIncrease"]["Default"]),
    )

    retrain = RetrainSettings.from_env(function_environment("RetrainFunction", DEPLOYED))
    assert retrain.data_bucket == _ref("DataBucket")
    assert retrain.training_image == _get_att("TrainingImageRepository", "RepositoryUri") + ":abc123"
    assert retrain.training_role_arn == _get_att("SageMakerTrainingRole", "Arn")
    assert retrain.instance_type == TEMPLATE["Parameters"]["TrainingInstanceType"]["Default"]


def test_the_retrain_settings_refuse_the_untagged_training_image_of_a_fresh_stack():
    with pytest.raises(SettingsError, match="CHURNGUARD_TRAINING_IMAGE"):
        RetrainSettings.from_env(function_environment("RetrainFunction"))


def test_the_queues_buckets_and_tables_are_wired_to_each_other_as_named():
    resources = {logical: _resolved(r) for logical, r in deployed_resources(TEMPLATE, {}).items()}
    # the bucket notifies the scoring-jobs queue, which alone lets S3 send to it and feeds the batch function
    notification = resources["DataBucket"]["Properties"]["NotificationConfiguration"]
    assert [q["Queue"] for q in notification["QueueConfigurations"]] == [_get_att("ScoringJobsQueue", "Arn")]
    queue_policy = resources["ScoringJobsQueuePolicy"]["Properties"]
    assert queue_policy["Queues"] == [_ref("ScoringJobsQueue")]
    assert {s["Resource"] for s in queue_policy["PolicyDocument"]["Statement"]} == {
        _get_att("ScoringJobsQueue", "Arn")
    }
    batch_events = resources["BatchScoreFunction"]["Properties"]["Events"]
    assert [e["Properties"]["Queue"] for e in batch_events.values() if e["Type"] == "SQS"] == [
        _get_att("ScoringJobsQueue", "Arn")
    ]
    # each queue parks its failures in its own DLQ
    for queue, dlq in (("ScoringJobsQueue", "ScoringJobsDLQ"), ("PromotionsQueue", "PromotionsDLQ")):
        redrive = resources[queue]["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"] == _get_att(dlq, "Arn"), queue
    for function in ("PromoteFunction", "RetrainFunction"):
        target = resources[function]["Properties"]["DeadLetterQueue"]["TargetArn"]
        assert target == _get_att("AsyncFunctionsDLQ", "Arn"), function
    # the TLS-only bucket policy is on the data bucket and covers it and its objects
    bucket_policy = resources["DataBucketPolicy"]["Properties"]
    assert bucket_policy["Bucket"] == _ref("DataBucket")
    (statement,) = bucket_policy["PolicyDocument"]["Statement"]
    bucket_arn = _get_att("DataBucket", "Arn")
    assert statement["Resource"] == [bucket_arn, f"{bucket_arn}/*"]


def test_the_scoring_functions_may_send_to_the_promotions_queue_and_read_their_own_pointer_and_table():
    resources = {
        name: _resolved(r) for name, r in deployed_resources(TEMPLATE, {}).items() if name in FUNCTIONS
    }
    pointer_arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{_ref('ModelPointer')}"
    for name in ("ScoreApiFunction", "BatchScoreFunction"):
        policies = resources[name]["Properties"]["Policies"]
        send = [p["SQSSendMessagePolicy"] for p in policies if "SQSSendMessagePolicy" in p]
        queues = ("PromotionsQueue", "DecisionsQueue")  # the promotions, and every decision to the log
        assert send == [{"QueueName": _get_att(q, "QueueName")} for q in queues], name
        grants: dict[str, list] = {}
        for policy in policies:
            for statement in policy.get("Statement", []):
                for action in statement["Action"]:
                    grants.setdefault(action, []).append(statement["Resource"])
        assert grants["ssm:GetParameter"] == [pointer_arn], name
        # the idempotency records everywhere; the customers' real-time state only for the API
        state_table = [_get_att("CustomerStateTable", "Arn")] if name == "ScoreApiFunction" else []
        assert grants["dynamodb:PutItem"] == [_get_att("IdempotencyTable", "Arn"), *state_table], name
        assert grants["dynamodb:DeleteItem"] == [_get_att("IdempotencyTable", "Arn"), *state_table], name
        assert "dynamodb:Scan" not in grants, name
    promote = {
        action: statement["Resource"]
        for policy in resources["PromoteFunction"]["Properties"]["Policies"]
        for statement in policy["Statement"]
        for action in statement["Action"]
    }
    assert promote["ssm:PutParameter"] == pointer_arn
    retrain = resources["RetrainFunction"]["Properties"]["Policies"][0]["Statement"]
    pass_role = next(s for s in retrain if s["Action"] == "iam:PassRole")
    assert pass_role["Resource"] == _get_att("SageMakerTrainingRole", "Arn")


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
                    "sagemaker:ListTrainingJobs",  # no resource-level permissions (retrain's cooldown)
                ), name


def test_the_batch_function_may_write_the_parts_of_every_split_level():
    """Found in review: a part split once more goes to incoming/_parts2/, which the policy did not allow."""
    from churnguard.batch import MAX_SPLIT_LEVEL, _parts_prefix

    writable = [
        resource["Sub"].removeprefix("${DataBucket.Arn}/").removesuffix("*")
        for policy in FUNCTIONS["BatchScoreFunction"]["Properties"]["Policies"]
        for statement in policy.get("Statement", [])
        if "s3:PutObject" in statement["Action"]
        for resource in statement["Resource"]
    ]
    key = "incoming/export.csv"
    for level in range(MAX_SPLIT_LEVEL):
        parts = _parts_prefix(key, level)
        assert any(parts.startswith(prefix) for prefix in writable), (level, parts, writable)
        key = parts + "part-00000.csv.gz"


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
        iam_routes = {  # a path parameter is a wildcard in an execute-api ARN
            f"{stage}/{method.upper()}{re.sub(r'{[^}]+}', '*', path)}"
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


def test_the_dashboard_is_json_and_charts_only_metrics_some_function_emits():
    body = json.loads(_resolved(TEMPLATE["Resources"]["Dashboard"]["Properties"]["DashboardBody"]))
    apps = {
        re.search(r'^SERVICE = "([^"]+)"', path.read_text(), re.M).group(1): path.read_text()
        for path in (ROOT / "functions").glob("*/app.py")
    }
    # what the handlers emit through the domain package: the drift metrics (churnguard.telemetry), the
    # outcome job's figures (named in churnguard.outcomes.key_figures)
    for service, text in list(apps.items()):
        for module in ("telemetry", "outcomes"):
            if f"churnguard.{module} import" in text or "churnguard.outcome_job import" in text:
                apps[service] += (ROOT / f"shared/churnguard/{module}.py").read_text()
    charted = []
    for widget in body["widgets"]:
        for metric in widget["properties"].get("metrics", []):
            if metric[0] == "ChurnGuard":
                (name, _, service) = metric[1:4]
                charted.append((name, service))
            elif "expression" in metric[0] and "SEARCH" in metric[0]["expression"]:
                charted.append((re.search(r'MetricName="(\w+)"', metric[0]["expression"]).group(1), None))
    assert len(charted) >= 15
    missing = [
        (name, service)
        for name, service in charted
        # key_figures names a figure's interval after it: f"{name}CILow"
        if not any(
            f'"{re.sub("CI(Low|High)$", "", name)}' in text
            for s, text in apps.items()
            if service in (None, s)
        )
    ]
    assert not missing, missing
    threshold = TEMPLATE["Parameters"]["DriftPsiThreshold"]["Default"]
    (drift,) = [w for w in body["widgets"] if w["properties"].get("title", "").startswith("Drift")]
    assert drift["properties"]["annotations"]["horizontal"][0]["value"] == float(threshold)


def test_the_ledgers_outlive_every_message_a_dead_letter_queue_can_redrive():
    from churnguard.idempotency import LEDGER_TTL_S, DecisionLedger, SentLedger

    queues = [r for r in load_template()["Resources"].values() if r["Type"] == "AWS::SQS::Queue"]
    retention = [int(q["Properties"].get("MessageRetentionPeriod", 4 * 24 * 3600)) for q in queues]
    assert len(retention) >= 4 and max(retention) == 14 * 24 * 3600
    assert max(retention) < LEDGER_TTL_S
    for ledger in (SentLedger(None, "table"), DecisionLedger(None, "table")):  # type: ignore[arg-type]
        assert ledger._ttl_s == LEDGER_TTL_S
