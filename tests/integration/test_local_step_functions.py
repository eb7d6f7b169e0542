"""The local Step Functions runner against the moto server: items read from and results written to
S3, the two-phase Map -> Task -> Map pipeline shape of issue 12, and the poller that runs the
executions moto only records."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import boto3
import pytest

from infra.local_aws import REGION
from infra.local_stack.resources import create_resources
from infra.local_stack.step_functions import (
    LAMBDA_INVOKE,
    ExecutionPoller,
    LocalFunctions,
    StateMachine,
    StatesError,
    create_state_machines,
)

BUCKET = "sfn-local-test"
ROLE = "arn:aws:iam::123456789012:role/local"


@pytest.fixture
def s3(aws):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return aws["s3"]


@pytest.fixture
def sfn(aws):
    return boto3.client("stepfunctions")


def invoke_task(function, payload, **fields):
    return {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function, "Payload": payload},
        **fields,
    }


def distributed(states, **fields):
    start = next(iter(states))
    return {
        "Type": "Map",
        "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                          "StartAt": start, "States": states},
        **fields,
    }  # fmt: skip


def pipeline(score_map_fields):
    """Partition each part (Map) -> plan shards into an S3 JSON array (Task) -> score each shard,
    items read by ItemReader (Distributed Map) -> a final Task that sees the results."""
    return {
        "StartAt": "Partition",
        "States": {
            "Partition": distributed(
                {"P": invoke_task("Partition", {"part.$": "$.part"}, OutputPath="$.Payload", End=True)},
                ItemsPath="$.parts",
                ItemSelector={"part.$": "$$.Map.Item.Value", "dataset.$": "$.dataset"},
                ResultPath="$.partitions",
                Next="Plan",
            ),
            "Plan": invoke_task(
                "Plan",
                {"dataset.$": "$.dataset", "partitions.$": "$.partitions"},
                ResultSelector={"bucket.$": "$.Payload.bucket", "key.$": "$.Payload.key"},
                ResultPath="$.plan",
                Next="Score",
            ),
            "Score": distributed(
                {
                    "S": invoke_task(
                        "Score",
                        {"shard.$": "$.shard", "dataset.$": "$.dataset"},
                        Retry=[
                            {
                                "ErrorEquals": ["Lambda.ServiceException"],
                                "IntervalSeconds": 1,
                                "MaxAttempts": 2,
                            }
                        ],
                        OutputPath="$.Payload",
                        End=True,
                    )
                },
                ItemReader={
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.plan.bucket", "Key.$": "$.plan.key"},
                },
                ItemSelector={"shard.$": "$$.Map.Item.Value", "dataset.$": "$.dataset"},
                MaxConcurrency=2,
                ResultPath="$.scored",
                Next="Finalize",
                **score_map_fields,
            ),
            "Finalize": invoke_task(
                "Finalize",
                {"dataset.$": "$.dataset", "scored.$": "$.scored", "run.$": "$$.Execution.Name"},
                OutputPath="$.Payload",
                End=True,
            ),
        },
    }


class Pipeline:
    """The pipeline's functions, writing and reading S3 like the real ones would."""

    def __init__(self, s3, fail_shards=(), throttle_shards=()):
        self.s3, self.fail_shards, self.throttled = s3, set(fail_shards), set(throttle_shards)
        self.scored: list[int] = []
        self._lock = threading.Lock()

    def partition(self, event):
        return {"part": event["part"], "customers": 3 * (event["part"] + 1)}

    def plan(self, event):
        shards = [{"id": i, "customers": p["customers"]} for i, p in enumerate(event["partitions"])]
        key = f"plans/{event['dataset']}/shards.json"
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(shards).encode())
        return {"bucket": BUCKET, "key": key}

    def score(self, event):
        shard = event["shard"]["id"]
        with self._lock:
            if shard in self.throttled:
                self.throttled.discard(shard)  # a service error once: the Retry takes it
                raise StatesError("Lambda.ServiceException", "local throttle")
            self.scored.append(shard)
        if shard in self.fail_shards:
            raise ValueError("shard unreadable")
        return {"shard": shard, "scored": event["shard"]["customers"]}

    def finalize(self, event):
        scored = event["scored"]
        if "ResultWriterDetails" in scored:  # results written to S3: read them as a final step would
            details = scored["ResultWriterDetails"]
            manifest = json.loads(
                self.s3.get_object(Bucket=details["Bucket"], Key=details["Key"])["Body"].read()
            )
            files = manifest["ResultFiles"]["SUCCEEDED"]
            records = [
                r
                for f in files
                for r in json.loads(self.s3.get_object(Bucket=BUCKET, Key=f["Key"])["Body"].read())
            ]
            scored = [json.loads(r["Output"]) for r in records]
        return {"run": event["run"], "total": sum(s["scored"] for s in scored), "shards": len(scored)}

    def invoke(self, function, payload):
        return getattr(self, function.lower())(payload)


def test_two_phase_pipeline_reads_its_items_from_s3_and_the_final_task_sees_every_result(s3):
    functions = Pipeline(s3, throttle_shards={1})
    machine = StateMachine(pipeline({}), functions.invoke, s3=s3, time_scale=0)
    outcome = machine.execute({"dataset": "d1", "parts": [0, 1, 2, 3]}, name="d1-run")
    assert outcome.status == "SUCCEEDED", outcome
    assert outcome.output == {"run": "d1-run", "total": 3 + 6 + 9 + 12, "shards": 4}
    assert sorted(functions.scored) == [0, 1, 2, 3]  # each shard scored once; the throttled one retried


def test_result_writer_writes_manifest_and_result_files_and_tolerated_failures_are_listed(s3):
    functions = Pipeline(s3, fail_shards={2})
    writer = {
        "Resource": "arn:aws:states:::s3:putObject",
        "Parameters": {"Bucket": BUCKET, "Prefix": "runs/d2"},
    }
    machine = StateMachine(
        pipeline({"ResultWriter": writer, "ToleratedFailureCount": 1}), functions.invoke, s3=s3, time_scale=0
    )
    outcome = machine.execute({"dataset": "d2", "parts": [0, 1, 2]}, name="d2-run")
    assert outcome.output == {"run": "d2-run", "total": 3 + 6, "shards": 2}
    (manifest_key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/d2/")["Contents"]
                       if o["Key"].endswith("manifest.json")]  # fmt: skip
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    assert manifest["DestinationBucket"] == BUCKET and ":mapRun:" in manifest["MapRunArn"]
    (failed_file,) = manifest["ResultFiles"]["FAILED"]
    (failed,) = json.loads(s3.get_object(Bucket=BUCKET, Key=failed_file["Key"])["Body"].read())
    assert (failed["Status"], failed["Error"]) == ("FAILED", "ValueError")
    assert json.loads(failed["Input"])["shard"]["id"] == 2


def test_more_failures_than_tolerated_fail_the_pipeline_before_the_final_task(s3):
    functions = Pipeline(s3, fail_shards={0, 2})
    machine = StateMachine(pipeline({"ToleratedFailureCount": 1}), functions.invoke, s3=s3, time_scale=0)
    outcome = machine.execute({"dataset": "d3", "parts": [0, 1, 2]})
    assert (outcome.status, outcome.error) == ("FAILED", "States.ExceedToleratedFailureThreshold")


@pytest.mark.parametrize(
    ("body", "key"), [(None, "plans/missing.json"), (b'{"not": "an array"}', "plans/object.json")]
)
def test_an_unreadable_item_source_fails_with_item_reader_failed(s3, body, key):
    if body is not None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    definition = {
        "StartAt": "M",
        "States": {
            "M": distributed(
                {"P": {"Type": "Pass", "End": True}},
                ItemReader={
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket": BUCKET, "Key.$": "$.key"},
                },
                End=True,
            )
        },
    }
    outcome = StateMachine(definition, lambda f, p: p, s3=s3).execute({"key": key})
    assert (outcome.status, outcome.error) == ("FAILED", "States.ItemReaderFailed")


# --- The poller ----------------------------------------------------------------------------------

ECHO = {
    "StartAt": "T",
    "States": {"T": invoke_task("Echo", {"input.$": "$", "name.$": "$$.Execution.Name"}, End=True)},
}


def handler(function):
    return SimpleNamespace(lambda_handler=lambda event, context: function(event))


@pytest.fixture
def poller_factory(sfn, s3):
    started = []

    def make(functions):
        poller = ExecutionPoller(sfn, functions, s3=s3, interval_s=0.05, time_scale=0)
        poller.start()
        started.append(poller)
        return poller

    yield make
    for poller in started:
        poller.stop()
        poller.join(timeout=5)


def test_the_poller_runs_each_running_execution_exactly_once_and_stops_it(sfn, poller_factory):
    calls = []

    def slow_echo(event):  # still RUNNING in moto across several polls
        calls.append(event["name"])
        time.sleep(0.3)
        return event

    functions = LocalFunctions({"Echo": handler(slow_echo)})
    arn = sfn.create_state_machine(name="echo", definition=json.dumps(ECHO), roleArn=ROLE)["stateMachineArn"]
    runs = [sfn.start_execution(stateMachineArn=arn, name=n, input=json.dumps({"n": n}))["executionArn"]
            for n in ("a", "b")]  # fmt: skip
    poller = poller_factory(functions)
    outcomes = [poller.wait(run) for run in runs]
    assert [o.status for o in outcomes] == ["SUCCEEDED", "SUCCEEDED"]
    assert outcomes[0].output["Payload"] == {"input": {"n": "a"}, "name": "a"}
    assert not sfn.list_executions(stateMachineArn=arn, statusFilter="RUNNING")["executions"]
    assert poller.poll_once() == [] and sorted(calls) == ["a", "b"]


def test_the_poller_records_failures_and_keeps_running_later_executions(sfn, poller_factory):
    def echo(event):
        if event["input"].get("fail"):
            raise RuntimeError("the handler broke")
        return event

    functions = LocalFunctions({"Echo": handler(echo)})
    arn = sfn.create_state_machine(name="echo", definition=json.dumps(ECHO), roleArn=ROLE)["stateMachineArn"]
    wait_state = {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 1, "End": True}}}
    unsupported = sfn.create_state_machine(name="waits", definition=json.dumps(wait_state), roleArn=ROLE)
    poller = poller_factory(functions)
    failing = sfn.start_execution(stateMachineArn=arn, input='{"fail": true}')["executionArn"]
    refused = sfn.start_execution(stateMachineArn=unsupported["stateMachineArn"])["executionArn"]
    outcome = poller.wait(failing)
    assert (outcome.status, outcome.error) == ("FAILED", "RuntimeError")
    assert json.loads(outcome.cause)["errorMessage"] == "the handler broke"
    assert sfn.describe_execution(executionArn=failing)["status"] == "ABORTED"  # no longer looks RUNNING
    refusal = poller.wait(refused)
    assert refusal.error == "Local.UnsupportedState" and "States.W.Type" in refusal.cause
    later = sfn.start_execution(stateMachineArn=arn, input="{}")["executionArn"]
    assert poller.wait(later).status == "SUCCEEDED" and poller.is_alive()


def test_template_state_machines_are_created_in_moto_and_run_with_in_process_functions(
    aws, sfn, poller_factory
):
    template = {
        "Resources": {
            "DataBucket": {"Type": "AWS::S3::Bucket"},
            "StarterFunction": {
                "Type": "AWS::Serverless::Function",
                "Properties": {"Environment": {"Variables": {"PIPELINE": {"Ref": "Pipeline"}}}},
            },
            "ScoreFunction": {"Type": "AWS::Serverless::Function", "Properties": {"Timeout": 900}},
            "Pipeline": {
                "Type": "AWS::Serverless::StateMachine",
                "Properties": {
                    "DefinitionSubstitutions": {"ScoreArn": {"GetAtt": "ScoreFunction.Arn"}},
                    "Definition": {
                        "StartAt": "T",
                        "States": {
                            "T": invoke_task("${ScoreArn}", {"bucket": {"Ref": "DataBucket"}}, End=True)
                        },
                    },
                },
            },
        }
    }
    resources = create_resources(template, aws)
    (arn,) = create_state_machines(template, sfn, resources).values()
    assert resources.function_env["StarterFunction"]["PIPELINE"] == arn  # a function can start it
    seen = []
    functions = LocalFunctions({"ScoreFunction": handler(lambda e: seen.append(e) or {"ok": True})})
    poller = poller_factory(functions)
    run = sfn.start_execution(stateMachineArn=arn)["executionArn"]
    assert poller.wait(run).output["Payload"] == {"ok": True}
    assert seen == [{"bucket": "churnguard-local-databucket"}]
