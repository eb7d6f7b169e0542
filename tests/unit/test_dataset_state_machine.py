"""The dataset state machine (statemachine/dataset.asl.json) stays true to the template and the code:
its Tasks call the template's dataset function with steps the function knows, its maps read the
item lists the plan steps write, every step retries Lambda's faults and ends a failure in a failed
summary, and the batch function may start exactly this machine."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import pandas as pd
import pytest

from churnguard.dataset_steps import (
    PlanStep,
    ShardsStep,
    parse_step,
    run_plan,
    run_plan_shards,
)
from churnguard.datasets import generate_synthetic_events
from churnguard.settings import ServingSettings
from infra.template import load_template
from tests.helpers import ROOT
from tests.unit.fakes import MemoryObjectStore
from tests.unit.test_template import DEPLOYED, FUNCTIONS, _ref, _resolved, function_environment

TEMPLATE = load_template()
MACHINE = TEMPLATE["Resources"]["DatasetStateMachine"]
DEFINITION = json.loads((ROOT / MACHINE["Properties"]["DefinitionUri"]).read_text())
LAMBDA_FAULTS = {"Lambda.ServiceException", "Lambda.AWSLambdaException", "Lambda.TooManyRequestsException"}
BUCKET = "data"


def _states(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every state, those inside the maps' item processors included, by name."""
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        if state["Type"] == "Map":
            found.update(_states(state["ItemProcessor"]))
    return found


STATES = _states(DEFINITION)
TASKS = {name: s for name, s in STATES.items() if s["Type"] == "Task"}
MAPS = {name: s for name, s in DEFINITION["States"].items() if s["Type"] == "Map"}


def _path(document: Any, path: str) -> Any:
    """A plain ``$.a.b`` JSONPath (all this definition uses)."""
    assert re.fullmatch(r"\$(\.\w+)*", path), path
    for part in path.split(".")[1:]:
        document = document[part]
    return document


def _payload(task: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The Lambda payload a Task builds from its state input (``.$`` keys are JSONPaths)."""
    template = task["Parameters"]["Payload"]
    return {k.removesuffix(".$"): _path(state, v) if k.endswith(".$") else v for k, v in template.items()}


def _selected(task: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """A Task's ResultSelector applied to the Lambda invoke result of ``answer``."""
    return {k.removesuffix(".$"): _path({"Payload": answer}, v) for k, v in task["ResultSelector"].items()}


def test_every_task_invokes_the_template_dataset_function_with_a_step_it_knows():
    substitutions = MACHINE["Properties"]["DefinitionSubstitutions"]
    for name, task in TASKS.items():
        assert task["Resource"] == "arn:aws:states:::lambda:invoke", name
        (placeholder,) = re.fullmatch(r"\$\{(\w+)\}", task["Parameters"]["FunctionName"]).groups()
        assert substitutions[placeholder] == {"GetAtt": "DatasetScoreFunction.Arn"}, name
        step = task["Parameters"]["Payload"]["step"]
        assert step in {"plan", "partition", "shards", "score", "finish", "fail"}, name
    assert FUNCTIONS["DatasetScoreFunction"]["Properties"]["CodeUri"] == "functions/dataset_score/"
    invoke = [p["LambdaInvokePolicy"] for p in MACHINE["Properties"]["Policies"] if "LambdaInvokePolicy" in p]
    assert invoke == [{"FunctionName": {"Ref": "DatasetScoreFunction"}}]


def test_every_step_retries_lambda_faults_with_backoff_and_every_failure_ends_in_a_failed_summary():
    for name, task in TASKS.items():
        retried = {e for r in task["Retry"] for e in r["ErrorEquals"] if r["BackoffRate"] > 1}
        assert retried >= LAMBDA_FAULTS, name
    for name, state in DEFINITION["States"].items():  # the top-level steps; map items fail their map
        if state["Type"] in ("Task", "Map") and name != "FailSummary":
            assert state["Catch"] == [
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "FailSummary"}
            ]
    fail_summary = DEFINITION["States"]["FailSummary"]
    assert fail_summary["Parameters"]["Payload"]["step"] == "fail"
    assert fail_summary["Next"] == fail_summary["Catch"][0]["Next"] == "DatasetFailed"
    ends = {n: s for n, s in DEFINITION["States"].items() if s["Type"] in ("Fail", "Succeed")}
    assert {n: s["Type"] for n, s in ends.items()} == {
        "DatasetRefused": "Fail",
        "DatasetFailed": "Fail",
        "Published": "Succeed",
        "MarkerSuperseded": "Succeed",  # a _SUCCESS next to a manifest: nothing run, nothing written
    }
    # only a finished, ok summary reaches Succeed
    published = DEFINITION["States"]["IsPublished"]["Choices"]
    assert published == [{"Variable": "$.summary.status", "StringEquals": "ok", "Next": "Published"}]


def test_every_step_retries_transient_aws_errors_by_names_the_handler_raises_and_not_refusals():
    """A Retry names error classes: botocore's (ClientError, ReadTimeoutError) never reach it, since
    the handler renames AWS errors (a modeled botocore error is a subclass no list can name)."""
    from churnguard import aws, decisions, idempotency, model_store

    raised = {
        "TransientAwsError": aws.TransientAwsError,
        "PromotionsNotSentError": idempotency.PromotionsNotSentError,
        "DecisionLogUnavailableError": decisions.DecisionLogUnavailableError,
        "ModelFetchError": model_store.ModelFetchError,
    }
    for name, task in TASKS.items():
        ours = [e for r in task["Retry"] for e in r["ErrorEquals"] if not e.startswith("Lambda.")]
        assert sorted(ours) == sorted(raised), name
        assert "RefusedAwsError" not in ours and "States.ALL" not in ours
    assert all(cls.__name__ == name for name, cls in raised.items())


def test_both_maps_are_distributed_read_their_items_from_s3_and_fail_on_any_failed_item():
    assert set(MAPS) == {"PartitionParts", "ScoreShards"}
    for name, state in MAPS.items():
        assert state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED", name
        reader = state["ItemReader"]
        assert reader["Resource"] == "arn:aws:states:::s3:getObject"
        assert reader["ReaderConfig"] == {"InputType": "JSON"}
        assert state["ToleratedFailurePercentage"] == 0
        assert state["MaxConcurrencyPath"] == "$.max_concurrency"
        assert state["ResultPath"] is None  # results live in S3, not in the 256 KB state
        (inner,) = state["ItemProcessor"]["States"].values()
        assert inner["OutputPath"] is None  # an item's output is {}: thousands of items stay small


def _dataset(store: MemoryObjectStore) -> None:
    events = generate_synthetic_events(60, seed=3, weeks=20)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for i, part in enumerate((events.iloc[: len(events) // 2], events.iloc[len(events) // 2 :])):
        store.add(BUCKET, f"incoming/ds/part-{i}.csv.gz", gzip.compress(part.to_csv(index=False).encode()))
    store.add(BUCKET, "incoming/ds/_SUCCESS", b"")


def _item_payloads(store: MemoryObjectStore, state: dict[str, Any], map_name: str) -> list[dict[str, Any]]:
    """What the map's ItemReader reads from the key the earlier step answered, as its Task's payloads."""
    reader = MAPS[map_name]["ItemReader"]["Parameters"]
    items = json.loads(store.body(_path(state, reader["Bucket.$"]), _path(state, reader["Key.$"])))
    assert isinstance(items, list) and items
    (task,) = MAPS[map_name]["ItemProcessor"]["States"].values()
    return [_payload(task, item) for item in items]


def test_the_maps_item_readers_read_exactly_what_the_plan_steps_write(tmp_path):
    """The definition's paths applied to the real steps' answers: the plan step's answer, selected
    into the state, names the parts' item list; each item makes a valid partition payload; the same
    for the shards' step and list."""
    from churnguard.dataset_drops import PartResult
    from churnguard.dataset_steps import load_plan, result_key

    store = MemoryObjectStore()
    _dataset(store)
    state: dict[str, Any] = {
        "bucket": BUCKET,
        "dataset": "ds",
        "marker": "incoming/ds/_SUCCESS",
        "max_concurrency": 5,
    }
    plan_payload = _payload(TASKS["Plan"], state)
    answer = run_plan(store, PlanStep.model_validate({**plan_payload, "shards": 3}), memory=_memory())
    state[TASKS["Plan"]["ResultPath"].removeprefix("$.")] = _selected(TASKS["Plan"], answer)
    assert _path(state, DEFINITION["States"]["IsPlanned"]["Choices"][0]["Variable"]) == "planned"

    partitions = [parse_step(p) for p in _item_payloads(store, state, "PartitionParts")]
    assert [p.step for p in partitions] == ["partition", "partition"] and [p.part for p in partitions] == [
        0,
        1,
    ]
    plan = load_plan(store, BUCKET, partitions[0].plan_key)
    for p in partitions:  # phase 1 stands in: an empty ok result per part
        result = PartResult(
            part=p.part,
            relative=plan.parts[p.part].relative,
            rows_per_shard={1: 4},
            customers_per_shard={1: 2},
            latest_event=pd.Timestamp("2024-01-01").to_pydatetime(),
        )
        store.put_bytes(BUCKET, result_key(plan, "part", p.part), result.model_dump_json().encode())

    shards_payload = _payload(TASKS["PlanShards"], state)
    answer = run_plan_shards(store, ShardsStep.model_validate(shards_payload), memory=_memory())
    state[TASKS["PlanShards"]["ResultPath"].removeprefix("$.")] = _selected(TASKS["PlanShards"], answer)
    assert _path(state, DEFINITION["States"]["AreShardsReady"]["Choices"][0]["Variable"]) == "ready"
    scores = [parse_step(p) for p in _item_payloads(store, state, "ScoreShards")]
    assert [(s.step, s.shard) for s in scores] == [("score", 1)]
    assert parse_step(_payload(TASKS["Finish"], state)).step == "finish"
    failed = {**state, "error": {"Error": "States.TaskFailed", "Cause": "boom"}}
    assert parse_step(_payload(TASKS["FailSummary"], failed)).error.error == "States.TaskFailed"


def _memory():
    from churnguard.admission import MemoryModel

    return MemoryModel(budget_mb=3008)


def test_the_batch_function_starts_exactly_this_machine_and_nothing_else():
    settings = ServingSettings.from_env(function_environment("BatchScoreFunction", DEPLOYED))
    assert settings.dataset_state_machine_arn == _ref("DatasetStateMachine")
    assert settings.dataset_max_concurrency == int(TEMPLATE["Parameters"]["DatasetMaxConcurrency"]["Default"])
    for name, function in FUNCTIONS.items():
        grants = [
            _resolved(statement)
            for policy in function["Properties"].get("Policies", [])
            for statement in policy.get("Statement", [])
            if any(str(a).startswith("states:") for a in statement["Action"])
        ]
        if name == "InactivitySweepFunction":  # its plan step lists its own machine's runs, nothing more
            (grant,) = grants
            machine = TEMPLATE["Resources"]["InactivitySweepStateMachine"]["Properties"]["Name"]
            assert grant["Action"] == ["states:ListExecutions"]
            assert str(grant["Resource"]).endswith(f":stateMachine:{_resolved(machine)}")
            continue
        expected = (
            []
            if name != "BatchScoreFunction"
            else [
                {
                    "Effect": "Allow",
                    "Action": ["states:StartExecution"],
                    "Resource": _ref("DatasetStateMachine"),
                }
            ]
        )
        assert grants == expected, name


def test_the_dataset_function_reads_and_writes_only_its_prefixes():
    statements = [
        _resolved(s)
        for p in FUNCTIONS["DatasetScoreFunction"]["Properties"]["Policies"]
        for s in p.get("Statement", [])
    ]
    by_action = {a: s for s in statements for a in s["Action"]}
    bucket = _resolved({"GetAtt": "DataBucket.Arn"})
    assert sorted(by_action["s3:GetObject"]["Resource"]) == sorted(
        f"{bucket}/{p}/*" for p in ("incoming", "work", "models")
    )
    assert sorted(by_action["s3:PutObject"]["Resource"]) == [f"{bucket}/scored/*", f"{bucket}/work/*"]
    assert by_action["s3:DeleteObject"]["Resource"] == f"{bucket}/scored/*"  # earlier runs' outputs only
    listing = by_action["s3:ListBucket"]
    assert listing["Resource"] == bucket
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["incoming/*", "work/*", "scored/*"]}}


@pytest.mark.parametrize("alarm", ["DatasetRunsFailedAlarm", "DatasetRunsTimedOutAlarm"])
def test_failed_and_timed_out_runs_alarm(alarm):
    props = TEMPLATE["Resources"][alarm]["Properties"]
    assert props["Namespace"] == "AWS/States"
    assert props["Dimensions"] == [{"Name": "StateMachineArn", "Value": {"Ref": "DatasetStateMachine"}}]
    assert (props["Threshold"], props["ComparisonOperator"]) == (0, "GreaterThanThreshold")


def test_a_dataset_pending_too_long_alarms_on_the_hourly_checks_metric():
    function = FUNCTIONS["DatasetScoreFunction"]["Properties"]
    schedule = function["Events"]["PendingCheck"]
    assert schedule["Type"] == "ScheduleV2"
    check = json.loads(_resolved(schedule["Properties"]["Input"]))
    assert parse_step(check).step == "pending" and check["bucket"] == _ref("DataBucket")
    alarm = TEMPLATE["Resources"]["DatasetPendingTooLongAlarm"]["Properties"]
    service = function["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("ChurnGuard", "OldestPendingDatasetAge")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": service}]
    assert alarm["Threshold"] == {"Ref": "DatasetPendingAlarmSeconds"}
    source = (ROOT / "functions/dataset_score/app.py").read_text()
    assert 'SERVICE = "churnguard-dataset-score"' in source and "OldestPendingDatasetAge" in source
