"""The local stack's Step Functions runner: the States-language subset it interprets, checked against
the service's documented semantics with toy definitions and in-process fake Lambdas (no network)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from infra.local_stack.resources import LocalResources
from infra.local_stack.step_functions import (
    LAMBDA_INVOKE,
    LocalFunctions,
    StateMachine,
    StatesError,
    UnsupportedState,
    state_machine_definitions,
    validate_definition,
)
from infra.template import load_template


class Lambdas:
    """``invoke`` for the runner: function name -> a Python callable, every call recorded."""

    def __init__(self, **functions):
        self.functions, self.calls = functions, []
        self._lock = threading.Lock()

    def __call__(self, function, payload):
        with self._lock:
            self.calls.append((function, payload))
        return self.functions[function.rsplit(":", 1)[-1]](payload)


def task(function, **fields):
    """A lambda:invoke Task passing the whole effective input as the payload."""
    return {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": function, "Payload.$": "$"},
        **fields,
    }


def machine(states, start=None, **top):
    return {"StartAt": start or next(iter(states)), "States": states, **top}


def run(definition, lambdas=None, execution_input=None, **options):
    return StateMachine(definition, lambdas or Lambdas(), time_scale=0, **options).execute(execution_input)


DOC_INPUT = {"comment": "This is a test", "details": "Default example", "who": "Step Functions"}


# --- Input and output processing (AWS docs: input-output-resultpath, -inputpath-params, -outputpath)


@pytest.mark.parametrize(
    ("result_path", "expected"),
    [
        ("$", "Hello, Step Functions!"),  # the default: the result replaces the input
        (None, DOC_INPUT),  # null: the result is discarded, the original input kept
        ("$.taskresult", {**DOC_INPUT, "taskresult": "Hello, Step Functions!"}),
        ("$.a.b", {**DOC_INPUT, "a": {"b": "Hello, Step Functions!"}}),  # missing levels are created
        ("$.who", {**DOC_INPUT, "who": "Hello, Step Functions!"}),  # an existing field is replaced
    ],
)
def test_result_path_combines_input_and_result_as_documented(result_path, expected):
    state = {"Type": "Pass", "Result": "Hello, Step Functions!", "ResultPath": result_path, "End": True}
    assert run(machine({"P": state}), execution_input=DOC_INPUT).output == expected


def test_result_path_is_applied_to_the_raw_input_not_the_input_path_selection():
    lambdas = Lambdas(Echo=lambda p: {"echo": p})
    state = task("Echo", InputPath="$.inner", ResultPath="$.out", End=True)
    outcome = run(machine({"T": state}), lambdas, {"inner": {"x": 1}, "other": 2})
    assert lambdas.calls == [("Echo", {"x": 1})]
    assert outcome.output == {
        "inner": {"x": 1},
        "other": 2,
        "out": {"ExecutedVersion": "$LATEST", "Payload": {"echo": {"x": 1}}, "StatusCode": 200},
    }


def test_result_selector_then_result_path_then_output_path():
    lambdas = Lambdas(Score=lambda p: {"score": 0.7, "noise": "x"})
    state = task(
        "Score",
        ResultSelector={"score.$": "$.Payload.score", "status.$": "$.StatusCode", "fixed": "yes"},
        ResultPath="$.result",
        OutputPath="$.result",
        End=True,
    )
    assert run(machine({"T": state}), lambdas, {"id": 1}).output == {
        "score": 0.7,
        "status": 200,
        "fixed": "yes",
    }


def test_null_input_path_and_null_output_path_give_empty_objects():
    lambdas = Lambdas(Echo=lambda p: p)
    state = task("Echo", InputPath=None, OutputPath=None, End=True)
    outcome = run(machine({"T": state}), lambdas, {"secret": 1})
    assert lambdas.calls == [("Echo", {})]
    assert outcome.output == {}


def test_result_path_into_a_non_object_is_a_catchable_match_failure():
    state = {
        "Type": "Pass",
        "Result": 1,
        "ResultPath": "$.who.x",
        "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
        "End": True,
    }
    # Pass has no Catch: the definition is refused; a Task shows the error is catchable.
    with pytest.raises(UnsupportedState, match=r"States\.P\.Catch"):
        validate_definition(machine({"P": state}))
    definition = machine(
        {
            "T": task(
                "One",
                ResultPath="$.who.x",
                Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
                End=True,
            ),
            "Caught": {"Type": "Pass", "End": True},
        }
    )
    outcome = run(definition, Lambdas(One=lambda p: 1), DOC_INPUT)
    assert outcome.output["Error"] == "States.ResultPathMatchFailure"


def test_parameters_paths_context_object_and_array_index():
    state = {
        "Type": "Pass",
        "Parameters": {
            "first.$": "$.items[0]",
            "quoted.$": "$['odd key']",
            "name.$": "$$.Execution.Name",
            "state.$": "$$.State.Name",
            "whole.$": "$$.Execution.Input",
            "nested": {"n.$": "$.n", "list": [{"k.$": "$.n"}]},
        },
        "End": True,
    }
    data = {"items": ["a", "b"], "odd key": 3, "n": 5}
    outcome = StateMachine(machine({"P": state}), Lambdas()).execute(data, name="run-1")
    assert outcome.output == {
        "first": "a",
        "quoted": 3,
        "name": "run-1",
        "state": "P",
        "whole": data,
        "nested": {"n": 5, "list": [{"k": 5}]},
    }


def test_a_path_that_selects_nothing_fails_the_execution_and_is_not_caught_by_states_all():
    definition = machine(
        {
            "T": task(
                "One", InputPath="$.missing", Catch=[{"ErrorEquals": ["States.ALL"], "Next": "C"}], End=True
            ),
            "C": {"Type": "Succeed"},
        }
    )
    outcome = run(definition, Lambdas(One=lambda p: p), {"present": 1})
    assert (outcome.status, outcome.error) == ("FAILED", "States.Runtime")


def test_short_form_function_arn_passes_the_input_and_returns_the_raw_result():
    lambdas = Lambdas(Double=lambda p: {"v": p["v"] * 2})
    state = {"Type": "Task", "Resource": "arn:aws:lambda:eu-west-1:000000000000:function:Double", "End": True}
    assert run(machine({"T": state}), lambdas, {"v": 4}).output == {"v": 8}


def test_intrinsic_functions():
    state = {
        "Type": "Pass",
        "Parameters": {
            "text.$": "States.Format('part {} of {}: \\{ok\\}', $.i, $.n)",
            "parsed.$": "States.StringToJson($.raw)",
            "dumped.$": "States.JsonToString($.obj)",
            "array.$": "States.Array($.i, 'x', 2)",
            "length.$": "States.ArrayLength($.list)",
            "item.$": "States.ArrayGetItem($.list, 1)",
            "sum.$": "States.MathAdd($.i, 10)",
        },
        "End": True,
    }
    data = {"i": 1, "n": 3, "raw": '{"a": [1]}', "obj": {"b": True}, "list": [7, 8]}
    assert run(machine({"P": state}), execution_input=data).output == {
        "text": "part 1 of 3: {ok}",
        "parsed": {"a": [1]},
        "dumped": '{"b":true}',
        "array": [1, "x", 2],
        "length": 2,
        "item": 8,
        "sum": 11,
    }


def test_a_failing_intrinsic_is_a_catchable_intrinsic_failure():
    state = {"Type": "Pass", "Parameters": {"x.$": "States.StringToJson($.raw)"}, "End": True}
    outcome = run(machine({"P": state}), execution_input={"raw": "not json"})
    assert (outcome.status, outcome.error) == ("FAILED", "States.IntrinsicFailure")


# --- Errors: Retry, Catch, Fail ------------------------------------------------------------------


class Flaky:
    """Raises ``error`` for the first ``failures`` calls, then returns ``{"ok": attempt}``."""

    def __init__(self, failures, error):
        self.failures, self.error, self.attempts = failures, error, 0

    def __call__(self, payload):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        return {"ok": self.attempts}


def test_retry_then_success_with_backoff(monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    flaky = Flaky(3, StatesError("Lambda.ServiceException", "throttled"))
    retry = [
        {"ErrorEquals": ["Lambda.ServiceException", "Lambda.TooManyRequestsException"], "IntervalSeconds": 2,
         "MaxAttempts": 3, "BackoffRate": 3, "MaxDelaySeconds": 10},
    ]  # fmt: skip
    definition = machine({"T": task("Flaky", Retry=retry, ResultSelector={"ok.$": "$.Payload.ok"}, End=True)})
    outcome = StateMachine(definition, Lambdas(Flaky=flaky), time_scale=0.5).execute({})
    assert outcome.output == {"ok": 4} and flaky.attempts == 4
    assert slept == [1.0, 3.0, 5.0]  # 2, 6, min(18, 10) seconds, times the time scale


def test_retry_exhausted_then_catch_to_a_failure_step_with_error_and_cause():
    flaky = Flaky(10, ValueError("the shard is corrupt"))
    definition = machine(
        {
            "T": task(
                "Flaky",
                Retry=[{"ErrorEquals": ["ValueError"], "MaxAttempts": 2}],
                Catch=[{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.error", "Next": "Failed"}],
                Next="Done",
            ),
            "Done": {"Type": "Succeed"},
            "Failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"},
        }
    )
    outcome = run(definition, Lambdas(Flaky=flaky), {"dataset": "d1"})
    assert flaky.attempts == 3  # the first call and 2 retries
    assert (outcome.status, outcome.error) == ("FAILED", "ValueError")
    cause = json.loads(outcome.cause)
    assert cause["errorMessage"] == "the shard is corrupt" and cause["errorType"] == "ValueError"


def test_catch_keeps_the_input_and_adds_error_and_cause_at_its_result_path():
    definition = machine(
        {
            "T": task(
                "Boom",
                Catch=[{"ErrorEquals": ["KeyError"], "ResultPath": "$.err", "Next": "Recover"}],
                End=True,
            ),
            "Recover": {"Type": "Pass", "End": True},
        }
    )
    outcome = run(definition, Lambdas(Boom=lambda p: {}["nope"]), {"keep": 1})
    assert outcome.output["keep"] == 1
    assert outcome.output["err"]["Error"] == "KeyError"
    assert json.loads(outcome.output["err"]["Cause"])["errorType"] == "KeyError"


def test_only_the_first_matching_retrier_counts_and_retry_count_is_in_the_context():
    seen = []

    def record(payload):
        seen.append(payload["retry"])
        raise RuntimeError("again")

    state = {
        "Type": "Task",
        "Resource": LAMBDA_INVOKE,
        "Parameters": {"FunctionName": "Record", "Payload": {"retry.$": "$$.State.RetryCount"}},
        "Retry": [
            {"ErrorEquals": ["RuntimeError"], "MaxAttempts": 1},
            {"ErrorEquals": ["States.ALL"], "MaxAttempts": 5},  # not consulted once the first is used up
        ],
        "End": True,
    }
    outcome = run(machine({"T": state}), Lambdas(Record=record))
    assert seen == [0, 1] and outcome.error == "RuntimeError"


def test_fail_and_succeed_states():
    definition = machine(
        {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.ok", "BooleanEquals": True, "Next": "S"}],
                  "Default": "F"},
            "S": {"Type": "Succeed", "OutputPath": "$.v"},
            "F": {"Type": "Fail", "Error": "Dataset.Invalid", "Cause": "manifest missing"},
        }
    )  # fmt: skip
    assert run(definition, execution_input={"ok": True, "v": 3}).output == 3
    failed = run(definition, execution_input={"ok": False})
    assert (failed.status, failed.error, failed.cause) == ("FAILED", "Dataset.Invalid", "manifest missing")


def test_a_result_over_256_kib_fails_with_data_limit_exceeded_which_states_all_does_not_catch():
    definition = machine(
        {
            "T": task("Big", Catch=[{"ErrorEquals": ["States.ALL"], "Next": "C"}], ResultPath=None, End=True),
            "C": {"Type": "Succeed"},
        }
    )
    outcome = run(definition, Lambdas(Big=lambda p: "x" * 300_000))
    assert outcome.error == "States.DataLimitExceeded"  # even with ResultPath null, as in the service


def test_a_task_longer_than_its_timeout_fails_with_states_timeout():
    definition = machine({"T": task("Slow", TimeoutSeconds=0.01, End=True)})
    outcome = run(definition, Lambdas(Slow=lambda p: time.sleep(0.05)))
    assert outcome.error == "States.Timeout"


def test_a_handler_returning_something_not_json_is_a_marshal_error():
    outcome = run(machine({"T": task("Bad", End=True)}), Lambdas(Bad=lambda p: {1, 2}))
    assert outcome.error == "Runtime.MarshalError"


# --- Choice --------------------------------------------------------------------------------------

CHOICE = machine(
    {
        "C": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.kind", "StringEquals": "split", "Next": "Split"},
                {"Or": [{"Not": {"Variable": "$.rows", "IsPresent": True}},
                        {"Variable": "$.rows", "NumericEquals": 0}], "Next": "Empty"},
                {"And": [{"Variable": "$.rows", "NumericGreaterThan": 100},
                         {"Variable": "$.rows", "NumericLessThan": 1000}], "Next": "Medium"},
                {"Variable": "$.rows", "NumericGreaterThanPath": "$.limit", "Next": "Big"},
                {"Variable": "$.flag", "IsNull": True, "Next": "Null"},
            ],
            "Default": "Small",
        },
        **{name: {"Type": "Pass", "Result": name, "End": True} for name in
           ("Split", "Medium", "Empty", "Big", "Null", "Small")},
    }
)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"kind": "split"}, "Split"),
        ({"kind": "drop"}, "Empty"),  # Not IsPresent
        ({"kind": "drop", "rows": 0}, "Empty"),
        ({"kind": "drop", "rows": 500}, "Medium"),
        ({"kind": "drop", "rows": 5000, "limit": 2000}, "Big"),
        ({"kind": "drop", "rows": 5, "limit": 10, "flag": None}, "Null"),
        ({"kind": "drop", "rows": 5, "limit": 10, "flag": 1}, "Small"),
        ({"kind": "drop", "rows": "500", "limit": 10, "flag": 1}, "Small"),  # a string is not numeric
    ],
)
def test_choice_rules(data, expected):
    assert run(CHOICE, execution_input=data).output == expected


def test_a_choice_variable_that_is_absent_fails_the_execution():
    assert run(CHOICE, execution_input={"rows": 5}).error == "States.Runtime"  # $.kind


def test_no_matching_choice_and_no_default_fails_the_execution():
    definition = machine(
        {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringEquals": "a", "Next": "P"}]},
            "P": {"Type": "Pass", "End": True},
        }
    )
    assert run(definition, execution_input={"x": "b"}).error == "States.NoChoiceMatched"


# --- Map -----------------------------------------------------------------------------------------


def item_processor(states, mode="INLINE", **config):
    return {"ProcessorConfig": {"Mode": mode, **config}, "StartAt": next(iter(states)), "States": states}


class Concurrency:
    """A fake Lambda that records how many calls overlap."""

    def __init__(self, fail_on=()):
        self.running = self.peak = 0
        self.fail_on = set(fail_on)
        self._lock = threading.Lock()

    def __call__(self, payload):
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.02)
        with self._lock:
            self.running -= 1
        if payload["value"] in self.fail_on:
            raise ValueError("item failed")
        return {"done": payload["value"], "index": payload["index"]}


def score_map(mode="INLINE", **fields):
    return {
        "Type": "Map",
        "ItemsPath": "$.shards",
        "ItemSelector": {"value.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index", "run.$": "$.run"},
        "ItemProcessor": item_processor({"Score": task("Score", OutputPath="$.Payload", End=True)}, mode),
        "ResultPath": "$.results",
        "End": True,
        **fields,
    }


def test_inline_map_runs_items_in_order_of_the_input_with_at_most_max_concurrency():
    work = Concurrency()
    outcome = run(
        machine({"M": score_map(MaxConcurrency=2)}),
        Lambdas(Score=work),
        {"run": "r", "shards": list(range(6))},
    )
    assert outcome.output["results"] == [{"done": i, "index": i} for i in range(6)]
    assert work.peak == 2


def test_inline_map_fails_with_the_iterations_error():
    work = Concurrency(fail_on={3})
    outcome = run(
        machine({"M": score_map(MaxConcurrency=1)}), Lambdas(Score=work), {"run": "r", "shards": [1, 3, 5]}
    )
    assert (outcome.status, outcome.error) == ("FAILED", "ValueError")


def test_legacy_iterator_with_parameters():
    state = {
        "Type": "Map",
        "ItemsPath": "$.xs",
        "Parameters": {"x.$": "$$.Map.Item.Value"},
        "Iterator": {"StartAt": "P", "States": {"P": {"Type": "Pass", "OutputPath": "$.x", "End": True}}},
        "End": True,
    }
    assert run(machine({"M": state}), execution_input={"xs": [1, 2]}).output == [1, 2]


@pytest.mark.parametrize(
    ("tolerance", "failing", "succeeds"),
    [
        ({}, {2}, False),  # neither field: no failure is tolerated
        ({"ToleratedFailureCount": 1}, {2}, True),
        ({"ToleratedFailureCount": 1}, {2, 3}, False),
        ({"ToleratedFailurePercentage": 50}, {1, 2}, True),  # 2 of 4 = 50 %: not above
        ({"ToleratedFailurePercentage": 50}, {1, 2, 3}, False),
        ({"ToleratedFailurePercentage": 100, "ToleratedFailureCount": 0}, {1}, False),  # either exceeded
    ],
)
def test_distributed_map_tolerated_failure_threshold(tolerance, failing, succeeds):
    work = Concurrency(fail_on=failing)
    definition = machine({"M": score_map("DISTRIBUTED", **tolerance)})
    outcome = run(definition, Lambdas(Score=work), {"run": "r", "shards": [0, 1, 2, 3]})
    if succeeds:
        # A tolerated failure contributes no entry to the result.
        assert outcome.output["results"] == [{"done": i, "index": i} for i in range(4) if i not in failing]
    else:
        assert (outcome.status, outcome.error) == ("FAILED", "States.ExceedToleratedFailureThreshold")


def test_exceeding_the_threshold_is_catchable():
    catch = [{"ErrorEquals": ["States.ExceedToleratedFailureThreshold"], "Next": "Failed"}]
    mapped = {k: v for k, v in score_map("DISTRIBUTED").items() if k != "End"}
    definition = machine(
        {
            "M": {**mapped, "Next": "Done", "Catch": catch},
            "Done": {"Type": "Succeed"},
            "Failed": {"Type": "Pass", "Result": "caught", "End": True},
        }
    )
    outcome = run(definition, Lambdas(Score=Concurrency(fail_on={1})), {"run": "r", "shards": [0, 1]})
    assert outcome.output == "caught"


# --- Refused definitions -------------------------------------------------------------------------

TASK = task("F", End=True)


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        (machine({"P": {"Type": "Parallel", "Branches": [], "End": True}}), "States.P.Type"),
        (machine({"W": {"Type": "Wait", "Seconds": 1, "End": True}}), "States.W.Type"),
        (machine({"T": {**TASK, "HeartbeatSeconds": 5}}), "States.T.HeartbeatSeconds"),
        (machine({"T": {**TASK, "Resource": "arn:aws:states:::sns:publish"}}), "States.T.Resource"),
        (machine({"T": {**TASK, "Resource": f"{LAMBDA_INVOKE}.waitForTaskToken"}}), "States.T.Resource"),
        (machine({"T": {**TASK, "InputPath": "$..deep"}}), "States.T.InputPath"),
        (machine({"T": {**TASK, "Parameters": {"FunctionName": "F", "Payload.$": "$.a[*]"}}}),
         "States.T.Parameters.Payload.$"),
        (machine({"T": {**TASK, "Parameters": {"FunctionName": "F", "Payload.$": "States.Hash($.a,'MD5')"}}}),
         "States.T.Parameters.Payload.$"),
        (machine({"T": {**TASK, "Parameters": {"FunctionName": "F", "InvocationType": "Event"}}}),
         "States.T.Parameters.InvocationType"),
        (machine({"T": {**TASK, "Retry": [{"ErrorEquals": ["States.ALL"], "JitterStrategy": "X"}]}}),
         "States.T.Retry[0].JitterStrategy"),
        (machine({"T": TASK}, QueryLanguage="JSONata"), "QueryLanguage"),
        (machine({"T": {**TASK, "End": None, "Next": "Nowhere"}}), "States.T"),
        (machine({"M": score_map(ItemBatcher={"MaxItemsPerBatch": 2})}), "States.M.ItemBatcher"),
        (machine({"M": score_map(ToleratedFailureCount=1)}), "States.M.ToleratedFailureCount"),
        (machine({"M": score_map("DISTRIBUTED", ItemReader={
            "Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "CSV"},
            "Parameters": {"Bucket": "b", "Key": "k"}})}), "States.M.ItemReader.ReaderConfig"),
        (machine({"M": score_map("DISTRIBUTED", ResultWriter={"WriterConfig": {"OutputType": "JSONL"}})}),
         "States.M.ResultWriter"),
        (machine({"M": score_map()}, start="Missing"), "States.StartAt"),
    ],
)  # fmt: skip
def test_anything_outside_the_subset_is_refused_naming_the_field(definition, field):
    with pytest.raises(UnsupportedState) as refused:
        StateMachine(definition, Lambdas())
    assert refused.value.field == field
    assert "not supported by the local Step Functions runner" in str(refused.value)


# --- Lambda functions in-process, and the template -----------------------------------------------


def handler(function):
    return SimpleNamespace(lambda_handler=lambda event, context: function(event, context))


def test_local_functions_resolve_names_arns_qualifiers_and_deployed_names():
    functions = LocalFunctions(
        {
            "DatasetScoreFunction": handler(
                lambda e, c: {"event": e, "name": c.function_name, "t": c.timeout_s}
            )
        },
        timeouts={"DatasetScoreFunction": 900},
        aliases={"churnguard-dataset-score": "DatasetScoreFunction"},
    )
    for name in (
        "DatasetScoreFunction",
        "arn:aws:lambda:eu-west-1:000000000000:function:DatasetScoreFunction",
        "arn:aws:lambda:eu-west-1:000000000000:function:DatasetScoreFunction:live",
        "DatasetScoreFunction:$LATEST",
        "churnguard-dataset-score",
    ):
        assert functions(name, {"a": 1}) == {"event": {"a": 1}, "name": "DatasetScoreFunction", "t": 900}
    with pytest.raises(StatesError) as missing:
        functions("Other", {})
    assert missing.value.error == "Lambda.ResourceNotFoundException"


@pytest.mark.parametrize("instances", [1, 2])
def test_a_function_instance_is_never_entered_by_two_threads(instances):
    work = Concurrency()
    pool = [handler(lambda e, c: work(e)) for _ in range(instances)]
    definition = machine({"M": score_map(MaxConcurrency=4)})
    outcome = StateMachine(definition, LocalFunctions({"Score": pool}), time_scale=0).execute(
        {"run": "r", "shards": list(range(6))}
    )
    assert outcome.status == "SUCCEEDED" and work.peak == instances


TEMPLATE = {
    "Globals": {"Function": {"Timeout": 30}},
    "Resources": {
        "DataBucket": {"Type": "AWS::S3::Bucket"},
        "ScoreFunction": {"Type": "AWS::Serverless::Function", "Properties": {"Timeout": 900}},
        "Pipeline": {
            "Type": "AWS::Serverless::StateMachine",
            "Properties": {
                "DefinitionSubstitutions": {"Bucket": {"Ref": "DataBucket"}},
                "Definition": {
                    "StartAt": "T",
                    "States": {
                        "T": {
                            "Type": "Task",
                            "Resource": LAMBDA_INVOKE,
                            "Parameters": {
                                "FunctionName": {"GetAtt": "ScoreFunction.Arn"},
                                "Payload": {"bucket": "${Bucket}", "name": {"Ref": "ScoreFunction"}},
                            },
                            "End": True,
                        }
                    },
                },
            },
        },
    },
}


def test_template_definitions_resolve_references_to_local_function_arns_and_substitutions():
    resources = LocalResources(refs={"DataBucket": "local-bucket"})
    (definition,) = state_machine_definitions(TEMPLATE, resources).values()
    parameters = definition["States"]["T"]["Parameters"]
    assert parameters == {
        "FunctionName": "arn:aws:lambda:eu-west-1:000000000000:function:ScoreFunction",
        "Payload": {"bucket": "local-bucket", "name": "ScoreFunction"},
    }
    functions = LocalFunctions({"ScoreFunction": handler(lambda e, c: e)})
    assert StateMachine(definition, functions).execute().output["Payload"]["bucket"] == "local-bucket"


def test_a_template_definition_outside_the_subset_is_refused_naming_the_state_machine():
    template = json.loads(json.dumps(TEMPLATE))
    template["Resources"]["Pipeline"]["Properties"]["Definition"]["States"]["T"]["Parameters"][
        "FunctionName"
    ] = {"Join": ["", ["a", "b"]]}
    with pytest.raises(UnsupportedState) as refused:
        state_machine_definitions(template, LocalResources())
    assert refused.value.field == "Pipeline.Fn::Join"


def test_every_state_machine_in_template_yaml_is_inside_the_local_subset():
    # DatasetStateMachine (statemachine/dataset.asl.json): kept runnable by the local stack.
    definitions = state_machine_definitions(load_template(), LocalResources())  # validates each
    assert all(isinstance(d["States"], dict) for d in definitions.values())
