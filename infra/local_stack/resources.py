"""The resources template.yaml declares, created in moto (the local stack's and ``sam local``'s).

Read from the template, so local and cloud cannot drift: queues with their DLQs, the idempotency
table, the model pointer, the bucket with its S3 -> scoring-jobs notification, the functions'
EventBridge rules, each delivering to a queue the stack polls, and the state machines (given a
stepfunctions client; ``step_functions.ExecutionPoller`` runs their executions). The functions'
environment is the template's, with ``!Ref`` / ``!GetAtt`` / ``!Sub`` / ``!If`` resolved to what
was created.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from infra.local_aws import REGION
from infra.template import resources_of_type

# Locally, retries should show up in seconds (cloud: the template's timeouts).
LOCAL_VISIBILITY_CAP_S = 10
PSEUDO_PARAMETERS = {
    "AWS::Region": REGION,
    "AWS::AccountId": "000000000000",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "churnguard-local",
}
NOT_CREATED_BECAUSE = {
    "AWS::Serverless::Function": "runs in-process",
    "AWS::Serverless::LayerVersion": "the local Python environment",
    "AWS::SQS::QueuePolicy": "moto does not enforce IAM",
}


@dataclass
class LocalResources:
    """What was created, by logical id, and how the template's references resolve locally."""

    refs: dict[str, str] = field(default_factory=dict)  # Ref value (name / URL)
    arns: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    function_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # function logical id -> (queue url, queue arn) receiving what its EventBridge rules match
    event_queues: dict[str, tuple[str, str]] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        """!Ref / !GetAtt / !Sub / !If against what was created; resources not emulated locally (IAM
        roles, schedules) resolve to a local placeholder ARN; ``AWS::NoValue`` resolves to None."""
        if isinstance(value, dict) and len(value) == 1:
            ((kind, arg),) = value.items()
            if kind == "Ref" and arg == "AWS::NoValue":
                return None
            if kind == "If":
                condition, if_true, if_false = arg
                return self.resolve(if_true if self.condition(condition) else if_false)
            if kind == "Ref":
                return self.refs.get(arg, f"local-{arg}")
            if kind == "GetAtt":
                logical, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                if attribute == "Arn":
                    return self.arns.get(logical, f"arn:aws:iam::000000000000:role/local-{logical}")
                return self.names.get(logical, f"local-{logical}")
            if kind == "Sub" and isinstance(arg, str):
                return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub_variable(m.group(1)), arg)
        return value

    def condition(self, name: str) -> bool:
        def evaluate(expression: dict[str, Any]) -> bool:
            ((kind, arg),) = expression.items()
            if kind == "Not":
                return not evaluate(arg[0])
            if kind == "Equals":
                return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
            if kind == "Condition":
                return self.condition(arg)
            raise ValueError(f"condition function {kind} is not supported by the local stack")

        return evaluate(self.conditions[name])

    def _sub_variable(self, name: str) -> str:
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if "." in name:
            return str(self.resolve({"GetAtt": name}))
        return str(self.resolve({"Ref": name}))


def create_resources(
    template: dict[str, Any],
    clients: dict[str, Any],
    prefix: str = "churnguard-local",
    parameters: dict[str, str] | None = None,
) -> LocalResources:
    """Create what the template declares in moto; ``parameters`` override the template's defaults.

    ``template`` is ``infra.template.load_template()``'s short form; ``clients`` are boto3 clients by
    service name (s3, sqs, dynamodb, ssm; events optional: without it no rule is created;
    stepfunctions optional: without it no state machine is created, with it the state machines are
    created with their resolved definitions, ``infra.local_stack.step_functions.create_state_machines``).
    """
    res = LocalResources(conditions=template.get("Conditions", {}))
    for name, parameter in template.get("Parameters", {}).items():  # !Ref Parameter -> its default
        if "Default" in parameter:
            res.refs[name] = str(parameter["Default"])
    res.refs.update(parameters or {})
    _create_queues(template, clients["sqs"], prefix, res)
    _create_tables(template, clients["dynamodb"], prefix, res)
    _create_parameters(template, clients["ssm"], prefix, res)
    _create_buckets(template, clients["s3"], prefix, res)
    for logical, resource in template["Resources"].items():
        if logical not in res.names:
            res.skipped[logical] = NOT_CREATED_BECAUSE.get(resource["Type"], "not needed locally")
    if clients.get("events") is not None:
        _create_event_rules(template, clients["events"], clients["sqs"], prefix, res)
    _resolve_function_environments(template, res)
    if clients.get("stepfunctions") is not None:
        # Imported here: step_functions imports this module. It resolves the environments again, so
        # a function's !Ref to a state machine is the ARN moto gave it.
        from infra.local_stack.step_functions import create_state_machines

        create_state_machines(template, clients["stepfunctions"], res, prefix)
    return res


def _create_queues(template: dict[str, Any], sqs: Any, prefix: str, res: LocalResources) -> None:
    queues = resources_of_type(template, "AWS::SQS::Queue")
    # Dead-letter queues first: the others name them in their RedrivePolicy.
    for logical in sorted(queues, key=lambda k: "RedrivePolicy" in queues[k].get("Properties", {})):
        props = queues[logical].get("Properties", {})
        attributes = {}
        if "VisibilityTimeout" in props:
            attributes["VisibilityTimeout"] = str(
                min(int(props["VisibilityTimeout"]), LOCAL_VISIBILITY_CAP_S)
            )
        if "MessageRetentionPeriod" in props:
            attributes["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
        if "RedrivePolicy" in props:
            redrive = props["RedrivePolicy"]
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": res.resolve(redrive["deadLetterTargetArn"]),
                    "maxReceiveCount": int(redrive["maxReceiveCount"]),
                }
            )
        name = f"{prefix}-{logical}"
        url, arn = _create_queue(sqs, name, Attributes=attributes)
        res.refs[logical], res.names[logical], res.arns[logical] = url, name, arn


def _create_queue(sqs: Any, name: str, **create_args: Any) -> tuple[str, str]:
    """(url, arn) of a new queue."""
    url = sqs.create_queue(QueueName=name, **create_args)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _create_tables(template: dict[str, Any], ddb: Any, prefix: str, res: LocalResources) -> None:
    for logical, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        props = resource["Properties"]
        name = f"{prefix}-{logical}"
        ddb.create_table(
            TableName=name,
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
        )
        if props.get("TimeToLiveSpecification", {}).get("Enabled"):
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "Enabled": True,
                    "AttributeName": props["TimeToLiveSpecification"]["AttributeName"],
                },
            )
        res.refs[logical] = res.names[logical] = name


def _create_parameters(template: dict[str, Any], ssm: Any, prefix: str, res: LocalResources) -> None:
    for logical, resource in resources_of_type(template, "AWS::SSM::Parameter").items():
        props = resource["Properties"]
        name = f"/{prefix}/{logical}"
        ssm.put_parameter(
            Name=name, Value=res.resolve(props["Value"]), Type=props.get("Type", "String"), Overwrite=True
        )
        res.refs[logical] = res.names[logical] = name


def _create_buckets(template: dict[str, Any], s3: Any, prefix: str, res: LocalResources) -> None:
    for logical, resource in resources_of_type(template, "AWS::S3::Bucket").items():
        props = resource.get("Properties", {})
        name = f"{prefix}-{logical.lower()}"
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        res.refs[logical] = res.names[logical] = name
        res.arns[logical] = f"arn:aws:s3:::{name}"
        configs = props.get("NotificationConfiguration", {}).get("QueueConfigurations", [])
        if configs:
            s3.put_bucket_notification_configuration(
                Bucket=name,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "QueueArn": res.resolve(c["Queue"]),
                            "Events": [c["Event"]],
                            "Filter": {"Key": {"FilterRules": c["Filter"]["S3Key"]["Rules"]}},
                        }
                        for c in configs
                    ]
                },
            )


def _create_event_rules(
    template: dict[str, Any], events: Any, sqs: Any, prefix: str, res: LocalResources
) -> None:
    """The functions' EventBridgeRule events as rules with the same patterns, each delivering to a
    queue the stack polls (a Lambda cannot be an EventBridge target here)."""
    for logical, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        for event_id, event in resource["Properties"].get("Events", {}).items():
            if event["Type"] != "EventBridgeRule":
                continue
            name = f"{prefix}-{logical}-{event_id}"
            url, arn = _create_queue(sqs, name)
            events.put_rule(Name=name, EventPattern=json.dumps(event["Properties"]["Pattern"]))
            events.put_targets(Rule=name, Targets=[{"Id": "local-queue", "Arn": arn}])
            res.event_queues[logical] = (url, arn)


def _resolve_function_environments(template: dict[str, Any], res: LocalResources) -> None:
    """Each function's environment as deployed: Globals under its own variables, references resolved,
    variables resolving to ``AWS::NoValue`` left out."""
    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    for logical, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        own = resource["Properties"].get("Environment", {}).get("Variables", {})
        resolved = {k: res.resolve(v) for k, v in {**globals_env, **own}.items()}
        res.function_env[logical] = {k: str(v) for k, v in resolved.items() if v is not None}
