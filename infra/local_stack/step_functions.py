"""Step Functions for the Docker-free local stack: the template's state machines run in-process.

moto stores state machines and executions but never runs them (they stay RUNNING forever), so this
module brings (1) an interpreter of the Amazon States Language subset our state machines use
(``StateMachine``), with Lambda tasks routed to in-process handlers (``LocalFunctions``), and (2) a
poller (``ExecutionPoller``) that runs each new moto execution exactly once and records its outcome.

The subset (JSONPath query language only): Task (``arn:aws:states:::lambda:invoke`` or a function
ARN), Pass, Choice, Succeed, Fail, Map (INLINE, DISTRIBUTED, legacy ``Iterator``; items from
``ItemsPath`` or an S3 JSON ``ItemReader``; ``ResultWriter`` to S3), InputPath / Parameters /
ResultSelector / ResultPath / OutputPath, Retry, Catch, a few intrinsics. Anything else is refused
when the definition is loaded, with ``UnsupportedState`` naming the field: a definition that runs
here uses nothing this runner would silently skip.

Local simplifications, on purpose (see ``ExecutionPoller`` for the execution side):
* timeouts (state machine and Task ``TimeoutSeconds``) are checked when a state ends: a handler is
  not interrupted, but an over-long one fails the state with ``States.Timeout`` as in the cloud;
* Retry intervals are multiplied by ``time_scale`` (0 in tests) and ``JitterStrategy`` is ignored;
* a Distributed Map's child executions run in this process on a thread pool of
  ``min(MaxConcurrency, local cap)``, sharing the parent's ``$$.Execution``; when failures are
  tolerated, a failed item contributes no entry to the Map's result (as observed on AWS by other
  emulators; the ResultWriter's ``FAILED_0.json`` does list it), and all items run before the
  threshold is judged (the service may stop early);
* the 256 KiB payload limit is enforced (``States.DataLimitExceeded``) on the execution input, each
  task or Map result and each state output, so a pipeline that would overflow in the cloud fails here.
"""

from __future__ import annotations

import copy
import json
import queue
import random
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from infra.lambda_harness import LambdaContext
from infra.local_aws import REGION
from infra.local_stack.resources import LocalResources
from infra.template import ROOT, resources_of_type

Invoke = Callable[[str, Any], Any]
"""``invoke(function name, logical id or ARN, payload) -> the handler's return value``."""

LAMBDA_INVOKE = "arn:aws:states:::lambda:invoke"
S3_GET_OBJECT = "arn:aws:states:::s3:getObject"
S3_PUT_OBJECT = "arn:aws:states:::s3:putObject"
LOCAL_ACCOUNT = "000000000000"
PAYLOAD_LIMIT_BYTES = 256 * 1024  # Step Functions' limit on any state's input, result or output
LOCAL_MAP_WORKERS = 4  # 2 shared cores: more threads only add GIL contention
# Errors no Retry or Catch sees, not even States.ALL (Step Functions' error-handling docs).
TERMINAL_ERRORS = {"States.Runtime", "States.DataLimitExceeded"}
COMMON_FIELDS = {"Type", "Comment"}
FLOW_FIELDS = {"Next", "End"}
IO_FIELDS = {"InputPath", "OutputPath"}
STATE_FIELDS: dict[str, set[str]] = {
    "Task": COMMON_FIELDS | FLOW_FIELDS | IO_FIELDS
    | {"Resource", "Parameters", "ResultSelector", "ResultPath", "Retry", "Catch", "TimeoutSeconds"},
    "Pass": COMMON_FIELDS | FLOW_FIELDS | IO_FIELDS | {"Result", "Parameters", "ResultPath"},
    "Choice": COMMON_FIELDS | IO_FIELDS | {"Choices", "Default"},
    "Succeed": COMMON_FIELDS | IO_FIELDS,
    "Fail": COMMON_FIELDS | {"Error", "Cause", "ErrorPath", "CausePath"},
    "Map": COMMON_FIELDS | FLOW_FIELDS | IO_FIELDS
    | {"ItemProcessor", "Iterator", "ItemsPath", "ItemReader", "ItemSelector", "Parameters",
       "MaxConcurrency", "MaxConcurrencyPath", "ToleratedFailurePercentage", "ToleratedFailureCount",
       "ToleratedFailurePercentagePath", "ToleratedFailureCountPath", "ResultWriter", "ResultSelector",
       "ResultPath", "Retry", "Catch", "Label"},
}  # fmt: skip
DISTRIBUTED_ONLY = {
    "ItemReader", "ResultWriter", "Label", "ToleratedFailurePercentage", "ToleratedFailureCount",
    "ToleratedFailurePercentagePath", "ToleratedFailureCountPath",
}  # fmt: skip
RETRIER_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds",
                  "JitterStrategy", "Comment"}  # fmt: skip
PATH_FIELDS = (
    "InputPath", "OutputPath", "ResultPath", "ItemsPath", "ErrorPath", "CausePath", "MaxConcurrencyPath",
    "ToleratedFailurePercentagePath", "ToleratedFailureCountPath",
)  # fmt: skip
CATCHER_FIELDS = {"ErrorEquals", "Next", "ResultPath", "Comment"}
COMPARISONS = ("Equals", "LessThan", "GreaterThan", "LessThanEquals", "GreaterThanEquals")
TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "String": lambda v: isinstance(v, str),
    "Numeric": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "Boolean": lambda v: isinstance(v, bool),
}


class UnsupportedState(ValueError):  # noqa: N818 - the name issue 12 and callers use
    """The definition uses something outside the local runner's subset; ``field`` says where."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail} (not supported by the local Step Functions runner)")
        self.field, self.detail = field, detail


class StatesError(Exception):
    """An error in the States language's sense (what Retry and Catch match): ``error`` is its name."""

    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(error)
        self.error, self.cause = error, cause


@dataclass
class ExecutionOutcome:
    """How an execution ended: ``status`` SUCCEEDED (with ``output``) or FAILED (``error``/``cause``);
    RUNNING while the poller is still executing it."""

    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None


# --- JSONPath: $, $$, .name, ['name'], [n] -------------------------------------------------------

_PATH_TOKENS = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_MISSING = object()


@lru_cache(maxsize=1024)
def _tokens(path: str) -> tuple[bool, tuple[str | int, ...]] | None:
    """(refers to the context object, tokens), or None if the path is outside the subset."""
    if not path.startswith("$"):
        return None
    context = path.startswith("$$")
    rest, pos, tokens = path[2 if context else 1 :], 0, []
    while pos < len(rest):
        match = _PATH_TOKENS.match(rest, pos)
        if not match:
            return None
        name, index, single, double = match.groups()
        tokens.append(
            int(index) if index is not None else next(t for t in (name, single, double) if t is not None)
        )
        pos = match.end()
    return context, tuple(tokens)


def parse_path(path: Any, field: str) -> tuple[bool, tuple[str | int, ...]]:
    """The path's tokens; ``UnsupportedState`` naming ``field`` for anything beyond the basics."""
    parsed = _tokens(path) if isinstance(path, str) else None
    if parsed is None:
        raise UnsupportedState(field, f"JSONPath {path!r} (supported: $, $$, .name, ['name'], [n])")
    return parsed


def _lookup(data: Any, tokens: Iterable[str | int]) -> Any:
    for token in tokens:
        if isinstance(token, int):
            if not isinstance(data, list) or token >= len(data):
                return _MISSING
        elif not isinstance(data, dict) or token not in data:
            return _MISSING
        data = data[token]
    return data


def select(path: str, data: Any, context: Mapping[str, Any], field: str) -> Any:
    """The value at ``path`` in ``data`` (``$$``: in the context object); ``States.Runtime`` if absent."""
    in_context, tokens = parse_path(path, field)
    value = _lookup(context if in_context else data, tokens)
    if value is _MISSING:
        raise StatesError("States.Runtime", f"Invalid path '{path}' in {field}: nothing found there")
    return value


def with_result(raw_input: Any, result_path: str | None, result: Any, field: str = "ResultPath") -> Any:
    """``ResultPath``: None keeps the input, ``$`` is the result, ``$.a.b`` puts the result into a
    copy of the input (creating ``a``), as the service does."""
    if result_path is None:
        return raw_input
    _, tokens = parse_path(result_path, field)
    if not tokens:
        return result
    output = copy.deepcopy(raw_input)
    node = output
    for depth, token in enumerate(tokens):
        if not isinstance(node, dict):
            raise StatesError(
                "States.ResultPathMatchFailure", f"{field} {result_path} does not match the input"
            )
        if depth == len(tokens) - 1:
            node[token] = result
        else:
            node = node.setdefault(token, {})
    return output


# --- Payload templates and intrinsic functions ---------------------------------------------------

INTRINSICS = {"Format", "StringToJson", "JsonToString", "Array", "ArrayLength", "ArrayGetItem", "MathAdd",
              "UUID"}  # fmt: skip
_LITERAL = re.compile(r"-?\d+(\.\d+)?|true|false|null")
_OPEN_BRACE, _CLOSE_BRACE = "\ue000", "\ue001"  # an escaped brace, kept apart from Format's {}


def _parse_intrinsic(text: str, field: str) -> tuple[Any, int]:
    """``States.Name(args)`` at the start of ``text`` -> (("call", name, args), characters read)."""
    match = re.match(r"States\.(\w+)\(", text)
    if not match or match.group(1) not in INTRINSICS:
        raise UnsupportedState(field, f"intrinsic {text[:40]!r} (supported: {sorted(INTRINSICS)})")
    pos, args = match.end(), list[Any]()
    while True:
        pos = len(text) - len(text[pos:].lstrip())
        if text[pos : pos + 1] == ")" and not args:
            return ("call", match.group(1), args), pos + 1
        arg, used = _parse_argument(text[pos:], field)
        args.append(arg)
        pos += used
        pos = len(text) - len(text[pos:].lstrip())
        if text[pos : pos + 1] == ")":
            return ("call", match.group(1), args), pos + 1
        if text[pos : pos + 1] != ",":
            raise UnsupportedState(field, f"intrinsic arguments in {text!r}")
        pos += 1


def _parse_argument(text: str, field: str) -> tuple[Any, int]:
    if text.startswith("States."):
        return _parse_intrinsic(text, field)
    if text.startswith("'"):
        out, pos = [], 1
        escapes = {"'": "'", "\\": "\\", "{": _OPEN_BRACE, "}": _CLOSE_BRACE}
        while pos < len(text) and text[pos] != "'":
            if text[pos] == "\\" and text[pos + 1 : pos + 2] in escapes:
                out.append(escapes[text[pos + 1]])
                pos += 2
            else:
                out.append(text[pos])
                pos += 1
        return ("literal", "".join(out)), pos + 1
    if text.startswith("$"):
        end = re.search(r"[,)]", text)
        path = text[: end.start() if end else len(text)].strip()
        parse_path(path, field)
        return ("path", path), end.start() if end else len(text)
    literal = _LITERAL.match(text)
    if not literal:
        raise UnsupportedState(field, f"intrinsic argument {text[:20]!r}")
    return ("literal", json.loads(literal.group(0))), literal.end()


def _evaluate_intrinsic(node: Any, data: Any, context: Mapping[str, Any], field: str) -> Any:
    kind = node[0]
    if kind == "literal":
        value = node[1]
        return value.replace(_OPEN_BRACE, "{").replace(_CLOSE_BRACE, "}") if isinstance(value, str) else value
    if kind == "path":
        return select(node[1], data, context, field)
    _, name, args = node
    values = [_evaluate_intrinsic(arg, data, context, field) for arg in args]
    try:
        if name == "Format":
            return _format(node[2][0][1] if node[2][0][0] == "literal" else values[0], values[1:])
        return _INTRINSIC_FUNCTIONS[name](*values)
    except StatesError:
        raise
    except Exception as exc:  # a wrong argument is the workflow's error, catchable like the service's
        raise StatesError(
            "States.IntrinsicFailure", f"States.{name} in {field}: {type(exc).__name__}"
        ) from exc


def _format(template: str, values: list[Any]) -> str:
    pieces = template.split("{}")
    if len(pieces) - 1 != len(values):
        raise StatesError("States.IntrinsicFailure", "States.Format: placeholders and arguments differ")
    rendered = [v if isinstance(v, str) else json.dumps(v) for v in values]
    text = "".join(p + r for p, r in zip(pieces, [*rendered, ""], strict=True))
    return text.replace(_OPEN_BRACE, "{").replace(_CLOSE_BRACE, "}")


_INTRINSIC_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "StringToJson": json.loads,
    "JsonToString": lambda v: json.dumps(v, separators=(",", ":")),
    "Array": lambda *v: list(v),
    "ArrayLength": len,
    "ArrayGetItem": lambda a, i: a[i],
    "MathAdd": lambda a, b: int(a) + int(b),
    "UUID": lambda: str(uuid.uuid4()),
}


def _expression(value: Any, field: str) -> Any:
    """A ``.$`` value parsed: ("path", p) or an intrinsic call; UnsupportedState otherwise."""
    if isinstance(value, str) and value.startswith("States."):
        node, used = _parse_intrinsic(value, field)
        if value[used:].strip():
            raise UnsupportedState(field, f"trailing text after the intrinsic in {value!r}")
        return node
    if isinstance(value, str) and value.startswith("$"):
        parse_path(value, field)
        return ("path", value)
    raise UnsupportedState(field, "a '.$' field must hold a JSONPath or an intrinsic function")


def apply_template(template: Any, data: Any, context: Mapping[str, Any], field: str) -> Any:
    """A payload template (``Parameters``, ``ItemSelector``, ``ResultSelector``, ...) evaluated: keys
    ending in ``.$`` take the value of their JSONPath / intrinsic, the rest are copied."""
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            where = f"{field}.{key}"
            if key.endswith(".$"):
                out[key[:-2]] = _evaluate_intrinsic(_expression(value, where), data, context, where)
            else:
                out[key] = apply_template(value, data, context, where)
        return out
    if isinstance(template, list):
        return [apply_template(v, data, context, f"{field}[{i}]") for i, v in enumerate(template)]
    return template


def _check_template(template: Any, field: str) -> None:
    if isinstance(template, dict):
        for key, value in template.items():
            if key.endswith(".$"):
                _expression(value, f"{field}.{key}")
            else:
                _check_template(value, f"{field}.{key}")
    elif isinstance(template, list):
        for i, value in enumerate(template):
            _check_template(value, f"{field}[{i}]")


# --- Validation: refuse what the runner would not do faithfully ----------------------------------


def validate_definition(definition: Mapping[str, Any]) -> None:
    """``UnsupportedState`` (naming the field) for anything outside the local subset, and for
    broken transitions, before anything runs."""
    unknown = set(definition) - {"StartAt", "States", "Comment", "Version", "TimeoutSeconds", "QueryLanguage"}
    if unknown:
        raise UnsupportedState(sorted(unknown)[0], "state machine field")
    if definition.get("QueryLanguage", "JSONPath") != "JSONPath":
        raise UnsupportedState("QueryLanguage", f"{definition['QueryLanguage']!r} (JSONPath only)")
    _validate_states(definition, "States")


def _validate_states(machine: Mapping[str, Any], where: str) -> None:
    states = machine.get("States")
    if not isinstance(states, dict) or machine.get("StartAt") not in states:
        raise UnsupportedState(f"{where}.StartAt", "StartAt must name one of the States")
    for name, state in states.items():
        at = f"{where}.{name}"
        kind = state.get("Type")
        if kind not in STATE_FIELDS:
            raise UnsupportedState(f"{at}.Type", f"state type {kind!r} (supported: {sorted(STATE_FIELDS)})")
        extra = set(state) - STATE_FIELDS[kind]
        if extra:
            raise UnsupportedState(f"{at}.{sorted(extra)[0]}", f"field of a {kind} state")
        targets = [state.get("Next"), state.get("Default")]
        targets += [c.get("Next") for c in state.get("Catch", [])] + [
            c.get("Next") for c in state.get("Choices", [])
        ]
        for target in filter(None, targets):
            if target not in states:
                raise UnsupportedState(at, f"transition to {target!r}, which is not a state here")
        if kind in ("Task", "Pass", "Map") and bool(state.get("End")) == ("Next" in state):
            raise UnsupportedState(at, "exactly one of Next and End: true")
        _validate_io(state, at)
        if kind in _VALIDATORS:
            _VALIDATORS[kind](state, at)


def _validate_io(state: Mapping[str, Any], at: str) -> None:
    for key in PATH_FIELDS:
        if state.get(key) is not None:
            in_context, tokens = parse_path(state[key], f"{at}.{key}")
            if key == "ResultPath" and (in_context or any(isinstance(t, int) for t in tokens)):
                raise UnsupportedState(
                    f"{at}.ResultPath", "a ResultPath must be a $.name.name reference path"
                )
    for key in ("Parameters", "ResultSelector", "ItemSelector"):
        if key in state:
            _check_template(state[key], f"{at}.{key}")
    for i, retrier in enumerate(state.get("Retry", [])):
        _validate_handler(retrier, RETRIER_FIELDS, f"{at}.Retry[{i}]", i == len(state["Retry"]) - 1)
    for i, catcher in enumerate(state.get("Catch", [])):
        _validate_handler(catcher, CATCHER_FIELDS, f"{at}.Catch[{i}]", i == len(state["Catch"]) - 1)
        if catcher.get("ResultPath") is not None:
            parse_path(catcher["ResultPath"], f"{at}.Catch[{i}].ResultPath")


def _validate_handler(handler: Mapping[str, Any], allowed: set[str], at: str, last: bool) -> None:
    extra = set(handler) - allowed
    if extra:
        raise UnsupportedState(f"{at}.{sorted(extra)[0]}", "field of a retrier/catcher")
    names = handler.get("ErrorEquals")
    if not names or not isinstance(names, list):
        raise UnsupportedState(f"{at}.ErrorEquals", "a non-empty list of error names is required")
    if "States.ALL" in names and (len(names) > 1 or not last):
        raise UnsupportedState(f"{at}.ErrorEquals", "States.ALL must be alone and in the last entry")
    if handler.get("JitterStrategy", "NONE") not in ("NONE", "FULL"):
        raise UnsupportedState(f"{at}.JitterStrategy", repr(handler["JitterStrategy"]))


def _validate_task(state: Mapping[str, Any], at: str) -> None:
    resource = state.get("Resource", "")
    if resource == LAMBDA_INVOKE:
        params = state.get("Parameters", {})
        if "FunctionName" not in params and "FunctionName.$" not in params:
            raise UnsupportedState(f"{at}.Parameters.FunctionName", "lambda:invoke needs a FunctionName")
        extra = {k.removesuffix(".$") for k in params} - {
            "FunctionName",
            "Payload",
            "Qualifier",
            "InvocationType",
        }
        if extra:
            raise UnsupportedState(f"{at}.Parameters.{sorted(extra)[0]}", "lambda:invoke parameter")
        if params.get("InvocationType", "RequestResponse") != "RequestResponse":
            raise UnsupportedState(f"{at}.Parameters.InvocationType", repr(params["InvocationType"]))
    elif not (isinstance(resource, str) and _function_arn_name(resource)):
        raise UnsupportedState(f"{at}.Resource", f"{resource!r} (lambda:invoke or a Lambda function ARN)")


def _validate_choice(state: Mapping[str, Any], at: str) -> None:
    if not state.get("Choices"):
        raise UnsupportedState(f"{at}.Choices", "a Choice state needs Choices")
    for i, rule in enumerate(state["Choices"]):
        if "Next" not in rule:
            raise UnsupportedState(f"{at}.Choices[{i}].Next", "a top-level choice rule needs Next")
        _validate_rule({k: v for k, v in rule.items() if k != "Next"}, f"{at}.Choices[{i}]")


def _validate_rule(rule: Mapping[str, Any], at: str) -> None:
    rule = {k: v for k, v in rule.items() if k != "Comment"}
    if set(rule) & {"And", "Or"}:
        ((operator, rules),) = rule.items()
        for i, sub in enumerate(rules):
            _validate_rule(sub, f"{at}.{operator}[{i}]")
        return
    if "Not" in rule:
        _validate_rule(rule["Not"], f"{at}.Not")
        return
    operators = set(rule) - {"Variable"}
    if "Variable" not in rule or len(operators) != 1:
        raise UnsupportedState(at, "a choice rule needs Variable and exactly one operator")
    parse_path(rule["Variable"], f"{at}.Variable")
    (operator,) = operators
    if _comparison(operator) is None:
        raise UnsupportedState(f"{at}.{operator}", "choice operator")
    if operator.endswith("Path"):
        parse_path(rule[operator], f"{at}.{operator}")


def _validate_map(state: Mapping[str, Any], at: str) -> None:
    processor = state.get("ItemProcessor", state.get("Iterator"))
    if processor is None or ("ItemProcessor" in state and "Iterator" in state):
        raise UnsupportedState(f"{at}.ItemProcessor", "a Map needs exactly one of ItemProcessor and Iterator")
    config = processor.get("ProcessorConfig", {})
    if set(config) - {"Mode", "ExecutionType"} or config.get("Mode", "INLINE") not in (
        "INLINE",
        "DISTRIBUTED",
    ):
        raise UnsupportedState(f"{at}.ItemProcessor.ProcessorConfig", repr(config))
    extra = set(processor) - {"StartAt", "States", "Comment", "ProcessorConfig"}
    if extra:
        raise UnsupportedState(f"{at}.ItemProcessor.{sorted(extra)[0]}", "ItemProcessor field")
    if config.get("Mode") != "DISTRIBUTED" and set(state) & DISTRIBUTED_ONLY:
        raise UnsupportedState(
            f"{at}.{sorted(set(state) & DISTRIBUTED_ONLY)[0]}", "only in a DISTRIBUTED Map"
        )
    if "ItemSelector" in state and "Parameters" in state:
        raise UnsupportedState(f"{at}.Parameters", "use ItemSelector or Parameters, not both")
    if "ItemReader" in state:
        _validate_reader(state["ItemReader"], f"{at}.ItemReader")
    if "ResultWriter" in state:
        writer = state["ResultWriter"]
        if set(writer) != {"Resource", "Parameters"} or writer["Resource"] != S3_PUT_OBJECT:
            raise UnsupportedState(
                f"{at}.ResultWriter", "only Resource s3:putObject with Parameters Bucket/Prefix"
            )
        _check_template(writer["Parameters"], f"{at}.ResultWriter.Parameters")
    _validate_states(processor, f"{at}.ItemProcessor.States")


def _validate_reader(reader: Mapping[str, Any], at: str) -> None:
    if reader.get("Resource") != S3_GET_OBJECT or set(reader) - {"Resource", "Parameters", "ReaderConfig"}:
        raise UnsupportedState(f"{at}.Resource", "only s3:getObject with Parameters and ReaderConfig")
    config = reader.get("ReaderConfig", {})
    if config.get("InputType") != "JSON" or set(config) - {"InputType", "MaxItems"}:
        raise UnsupportedState(f"{at}.ReaderConfig", f"{config!r} (InputType JSON, MaxItems)")
    params = {k.removesuffix(".$") for k in reader.get("Parameters", {})}
    if not {"Bucket", "Key"} <= params or params - {"Bucket", "Key", "VersionId"}:
        raise UnsupportedState(f"{at}.Parameters", "Bucket and Key (and VersionId) only")
    _check_template(reader["Parameters"], f"{at}.Parameters")


_VALIDATORS: dict[str, Callable[[Mapping[str, Any], str], None]] = {
    "Task": _validate_task,
    "Choice": _validate_choice,
    "Map": _validate_map,
}


def _comparison(operator: str) -> Callable[[Any, Any], bool] | None:
    """The test behind a choice operator (``StringEquals``, ``NumericLessThanPath``, ``IsNull``...);
    None if the operator is outside the subset. ``IsPresent`` is decided before (the value may be
    missing)."""
    if operator in ("IsPresent", "IsNull", "IsString", "IsNumeric", "IsBoolean"):
        return lambda value, expected: _is(operator, value) == expected
    base = operator.removesuffix("Path")
    for kind, test in TYPE_TESTS.items():
        op = base.removeprefix(kind)
        if base.startswith(kind) and op in COMPARISONS and (kind != "Boolean" or op == "Equals"):
            # A value of another type makes the rule false, as in the service.
            return lambda value, expected: test(value) and test(expected) and COMPARE[op](value, expected)
    return None


def _is(operator: str, value: Any) -> bool:
    if operator == "IsPresent":
        return True
    if operator == "IsNull":
        return value is None
    return TYPE_TESTS[operator.removeprefix("Is")](value)


COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": lambda a, b: a == b,
    "LessThan": lambda a, b: a < b,
    "GreaterThan": lambda a, b: a > b,
    "LessThanEquals": lambda a, b: a <= b,
    "GreaterThanEquals": lambda a, b: a >= b,
}


def _function_arn_name(resource: str) -> str | None:
    """The function name in a Lambda function ARN (qualifier dropped), else None."""
    match = re.fullmatch(r"arn:aws[\w-]*:lambda:[\w-]+:\d+:function:([\w-]+)(:[\w$-]+)?", resource)
    return match.group(1) if match else None


# --- The interpreter -----------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_size(value: Any, what: str) -> None:
    if len(json.dumps(value, separators=(",", ":")).encode()) > PAYLOAD_LIMIT_BYTES:
        raise StatesError("States.DataLimitExceeded", f"{what} exceeds {PAYLOAD_LIMIT_BYTES} bytes")


def _error_matches(names: list[str], error: str) -> bool:
    if error in TERMINAL_ERRORS:
        return False
    return any(
        n in (error, "States.ALL") or (n == "States.TaskFailed" and error != "States.Timeout") for n in names
    )


def _input(state: Mapping[str, Any], raw: Any, context: Mapping[str, Any]) -> Any:
    """``InputPath``: null -> {}, absent -> the whole input."""
    if "InputPath" in state and state["InputPath"] is None:
        return {}
    return select(state.get("InputPath", "$"), raw, context, "InputPath")


def _output(state: Mapping[str, Any], data: Any, context: Mapping[str, Any]) -> Any:
    if "OutputPath" in state and state["OutputPath"] is None:
        return {}
    return select(state.get("OutputPath", "$"), data, context, "OutputPath")


@dataclass
class _Run:
    """What the states of one execution share: the context object's Execution / StateMachine parts
    and the execution's deadline (``time.monotonic()``), if the definition sets TimeoutSeconds."""

    context: dict[str, Any]
    deadline: float | None = None


@dataclass
class _ItemOutcome:
    input: Any
    value: Any  # the iteration's output, or its StatesError
    started: str = field(default_factory=_now)
    stopped: str = ""


class StateMachine:
    """One definition, validated on construction (``UnsupportedState``), executed in-process.

    ``invoke(function, payload)`` runs Lambda functions; ``s3`` (a boto3 client) serves ``ItemReader``
    and ``ResultWriter``; Retry intervals are multiplied by ``time_scale``; Map iterations run on at
    most ``map_workers`` threads.
    """

    def __init__(
        self,
        definition: Mapping[str, Any],
        invoke: Invoke,
        *,
        s3: Any = None,
        name: str = "local",
        arn: str | None = None,
        role_arn: str = f"arn:aws:iam::{LOCAL_ACCOUNT}:role/local-state-machine",
        time_scale: float = 1.0,
        map_workers: int = LOCAL_MAP_WORKERS,
    ) -> None:
        validate_definition(definition)
        self.definition = copy.deepcopy(dict(definition))
        self._invoke, self._s3 = invoke, s3
        self.name, self.role_arn = name, role_arn
        self.arn = arn or f"arn:aws:states:{REGION}:{LOCAL_ACCOUNT}:stateMachine:{name}"
        self.time_scale, self.map_workers = time_scale, max(1, map_workers)

    def execute(
        self, execution_input: Any = None, *, name: str | None = None, execution_arn: str | None = None
    ) -> ExecutionOutcome:
        """Run one execution to its end: SUCCEEDED with the output, or FAILED with error and cause.
        A bug in a handler is a FAILED outcome; ``UnsupportedState`` cannot happen here any more."""
        name = name or str(uuid.uuid4())
        data = {} if execution_input is None else execution_input
        execution = {
            "Id": execution_arn or f"{self.arn.replace(':stateMachine:', ':execution:')}:{name}",
            "Name": name,
            "Input": data,
            "StartTime": _now(),
            "RoleArn": self.role_arn,
        }
        timeout = self.definition.get("TimeoutSeconds")
        run = _Run(
            {"Execution": execution, "StateMachine": {"Id": self.arn, "Name": self.name}},
            time.monotonic() + timeout if timeout else None,
        )
        try:
            _check_size(data, "The execution input")
            output = self._run_states(self.definition, data, run)
        except StatesError as err:
            return ExecutionOutcome("FAILED", error=err.error, cause=err.cause)
        return ExecutionOutcome("SUCCEEDED", output=output)

    def _run_states(self, machine: Mapping[str, Any], data: Any, run: _Run) -> Any:
        name = machine["StartAt"]
        while True:
            data, following = self._run_state(name, machine["States"][name], data, run)
            _check_size(data, f"The output of state {name}")
            if run.deadline is not None and time.monotonic() > run.deadline:
                raise StatesError("States.Timeout", "The execution ran longer than its TimeoutSeconds")
            if following is None:
                return data
            name = following

    def _run_state(self, name: str, state: Mapping[str, Any], raw: Any, run: _Run) -> tuple[Any, str | None]:
        """(the state's output, the next state's name or None at the end)."""
        context = {**run.context, "State": {"Name": name, "EnteredTime": _now(), "RetryCount": 0}}
        kind = state["Type"]
        if kind == "Pass":
            return self._pass(name, state, raw, context), state.get("Next")
        if kind == "Succeed":
            return _output(state, _input(state, raw, context), context), None
        if kind == "Fail":
            error = (
                select(state["ErrorPath"], raw, context, "ErrorPath")
                if "ErrorPath" in state
                else state.get("Error", "")
            )
            cause = (
                select(state["CausePath"], raw, context, "CausePath")
                if "CausePath" in state
                else state.get("Cause", "")
            )
            raise StatesError(str(error), str(cause))
        if kind == "Choice":
            return self._choose(name, state, raw, context)
        return self._with_retry_and_catch(name, state, raw, context, run)

    @staticmethod
    def _pass(name: str, state: Mapping[str, Any], raw: Any, context: Mapping[str, Any]) -> Any:
        """Result if given, else the (Parameters-shaped) input, placed by ResultPath."""
        effective = _input(state, raw, context)
        if "Parameters" in state:
            effective = apply_template(state["Parameters"], effective, context, f"{name}.Parameters")
        result = state.get("Result", effective)
        return _output(state, with_result(raw, state.get("ResultPath", "$"), result), context)

    def _choose(
        self, name: str, state: Mapping[str, Any], raw: Any, context: dict[str, Any]
    ) -> tuple[Any, str]:
        effective = _input(state, raw, context)
        for rule in state["Choices"]:
            if self._holds(rule, effective, context):
                return _output(state, effective, context), rule["Next"]
        if "Default" in state:
            return _output(state, effective, context), state["Default"]
        raise StatesError("States.NoChoiceMatched", f"No Choice Rule matched and no Default in state {name}")

    def _holds(self, rule: Mapping[str, Any], data: Any, context: Mapping[str, Any]) -> bool:
        if "And" in rule:
            return all(self._holds(r, data, context) for r in rule["And"])
        if "Or" in rule:
            return any(self._holds(r, data, context) for r in rule["Or"])
        if "Not" in rule:
            return not self._holds(rule["Not"], data, context)
        operator = next(k for k in rule if k not in ("Variable", "Next", "Comment"))
        in_context, tokens = parse_path(rule["Variable"], "Variable")
        value = _lookup(context if in_context else data, tokens)
        if operator == "IsPresent":
            return (value is not _MISSING) == bool(rule[operator])
        if value is _MISSING:
            raise StatesError(
                "States.Runtime", f"Invalid path '{rule['Variable']}': the choice Variable is absent"
            )
        expected = (
            select(rule[operator], data, context, operator) if operator.endswith("Path") else rule[operator]
        )
        test = _comparison(operator)
        return test is not None and test(value, expected)

    def _with_retry_and_catch(
        self, name: str, state: Mapping[str, Any], raw: Any, context: dict[str, Any], run: _Run
    ) -> tuple[Any, str | None]:
        """A Task or Map state, retried by the first retrier matching its error while that retrier has
        attempts left, then caught by the first matching catcher (or failing the execution)."""
        body = self._task if state["Type"] == "Task" else self._map
        attempts = [0] * len(state.get("Retry", []))
        while True:
            try:
                return body(name, state, raw, context, run), state.get("Next")
            except StatesError as err:
                delay = self._retry_delay(state.get("Retry", []), attempts, err)
                if delay is not None:
                    time.sleep(delay * self.time_scale)
                    context = {**context, "State": {**context["State"], "RetryCount": sum(attempts)}}
                    continue
                for catcher in state.get("Catch", []):
                    if _error_matches(catcher["ErrorEquals"], err.error):
                        error_output = {"Error": err.error, "Cause": err.cause}
                        path = catcher.get("ResultPath", "$")
                        return with_result(raw, path, error_output, f"{name}.Catch.ResultPath"), catcher[
                            "Next"
                        ]
                raise

    @staticmethod
    def _retry_delay(retriers: list[dict[str, Any]], attempts: list[int], err: StatesError) -> float | None:
        """Seconds to wait before the next attempt, or None: no retrier matches, or the first one that
        does has used its MaxAttempts (later retriers are not consulted, as in the service)."""
        for i, retrier in enumerate(retriers):
            if not _error_matches(retrier["ErrorEquals"], err.error):
                continue
            if attempts[i] >= retrier.get("MaxAttempts", 3):
                return None
            delay = retrier.get("IntervalSeconds", 1) * retrier.get("BackoffRate", 2.0) ** attempts[i]
            delay = min(delay, retrier.get("MaxDelaySeconds", delay))
            attempts[i] += 1
            return random.uniform(0, delay) if retrier.get("JitterStrategy") == "FULL" else delay
        return None

    def _finish(
        self, name: str, state: Mapping[str, Any], raw: Any, result: Any, context: Mapping[str, Any]
    ) -> Any:
        """ResultSelector, ResultPath (against the state's raw input) and OutputPath, in that order."""
        _check_size(result, f"The result of state {name}")
        if "ResultSelector" in state:
            result = apply_template(state["ResultSelector"], result, context, f"{name}.ResultSelector")
        return _output(state, with_result(raw, state.get("ResultPath", "$"), result), context)

    def _task(self, name: str, state: Mapping[str, Any], raw: Any, context: dict[str, Any], run: _Run) -> Any:
        effective = _input(state, raw, context)
        if "Parameters" in state:
            effective = apply_template(state["Parameters"], effective, context, f"{name}.Parameters")
        started = time.monotonic()
        if state["Resource"] == LAMBDA_INVOKE:
            # The optimised integration returns the invocation's response around the function's result.
            payload = self._call_lambda(effective["FunctionName"], effective.get("Payload", {}))
            result: Any = {"ExecutedVersion": "$LATEST", "Payload": payload, "StatusCode": 200}
        else:
            result = self._call_lambda(state["Resource"], effective)
        if "TimeoutSeconds" in state and time.monotonic() - started > state["TimeoutSeconds"]:
            raise StatesError("States.Timeout", f"State {name} ran longer than its TimeoutSeconds")
        return self._finish(name, state, raw, result, context)

    def _call_lambda(self, function: str, payload: Any) -> Any:
        """The function's result as the service sees it (through JSON); a handler's exception becomes
        the error Lambda reports for an unhandled one: its class name, and a JSON cause."""
        event = json.loads(json.dumps(payload))  # the handler gets its own copy, as over the wire
        try:
            result = self._invoke(function, event)
        except StatesError:  # already an error in the service's terms (Lambda.ServiceException, ...)
            raise
        except Exception as exc:
            cause = {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "requestId": str(uuid.uuid4()),
                "stackTrace": traceback.format_tb(exc.__traceback__),
            }
            raise StatesError(type(exc).__name__, json.dumps(cause)) from exc
        try:
            return json.loads(json.dumps(result))
        except (TypeError, ValueError) as exc:
            raise StatesError(
                "Runtime.MarshalError", f"Unable to marshal response: {type(exc).__name__}"
            ) from exc

    def _map(self, name: str, state: Mapping[str, Any], raw: Any, context: dict[str, Any], run: _Run) -> Any:
        effective = _input(state, raw, context)
        items = self._items(name, state, effective, context)
        selector = state.get("ItemSelector", state.get("Parameters"))
        inputs = items
        if selector is not None:  # the only place $$.Map.Item is defined
            inputs = [
                apply_template(selector, effective, {**context, "Map": {"Item": {"Index": i, "Value": item}}},
                               f"{name}.ItemSelector")
                for i, item in enumerate(items)
            ]  # fmt: skip
        processor = state.get("ItemProcessor") or state["Iterator"]
        distributed = processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"
        workers = self._workers(state, effective, context, len(inputs))
        outcomes = self._run_items(processor, inputs, workers, run, fail_fast=not distributed)
        failed = sum(isinstance(o.value, StatesError) for o in outcomes)
        if failed and self._exceeds_tolerance(state, effective, context, failed, len(outcomes)):
            cause = (
                f"Map state {name}: {failed} of {len(outcomes)} items failed, beyond the tolerated threshold"
            )
            raise StatesError("States.ExceedToleratedFailureThreshold", cause)
        if "ResultWriter" in state:
            result: Any = self._write_results(name, state, effective, context, outcomes)
        else:
            result = [o.value for o in outcomes if not isinstance(o.value, StatesError)]
        return self._finish(name, state, raw, result, context)

    def _items(
        self, name: str, state: Mapping[str, Any], effective: Any, context: Mapping[str, Any]
    ) -> list[Any]:
        if "ItemReader" in state:
            return self._read_items(name, state["ItemReader"], effective, context)
        items = select(state.get("ItemsPath", "$"), effective, context, f"{name}.ItemsPath")
        if not isinstance(items, list):
            raise StatesError("States.Runtime", f"Map state {name}: ItemsPath does not select an array")
        return items

    def _read_items(
        self, name: str, reader: Mapping[str, Any], effective: Any, context: Mapping[str, Any]
    ) -> list[Any]:
        """``ItemReader`` s3:getObject with InputType JSON: the object must hold a JSON array."""
        params = apply_template(reader["Parameters"], effective, context, f"{name}.ItemReader.Parameters")
        if self._s3 is None:
            raise StatesError("States.ItemReaderFailed", "the local runner was given no S3 client")
        try:
            body = self._s3.get_object(
                **{k: params[k] for k in ("Bucket", "Key", "VersionId") if k in params}
            )
            items = json.loads(body["Body"].read())
        except Exception as exc:  # S3 or JSON: the service reports both as the reader's failure
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise StatesError(
                "States.ItemReaderFailed", f"Map state {name}: reading items failed ({code})"
            ) from exc
        if not isinstance(items, list):
            raise StatesError("States.ItemReaderFailed", f"Map state {name}: the object is not a JSON array")
        max_items = reader.get("ReaderConfig", {}).get("MaxItems")
        return items[:max_items] if max_items else items

    def _workers(
        self, state: Mapping[str, Any], effective: Any, context: Mapping[str, Any], items: int
    ) -> int:
        limit = state.get("MaxConcurrency", 0)
        if "MaxConcurrencyPath" in state:
            limit = select(state["MaxConcurrencyPath"], effective, context, "MaxConcurrencyPath")
        # 0 means "as many as possible" in the service; locally that is the thread cap.
        return max(1, min(int(limit) or self.map_workers, self.map_workers, items))

    def _run_items(
        self, processor: Mapping[str, Any], inputs: list[Any], workers: int, run: _Run, *, fail_fast: bool
    ) -> list[_ItemOutcome]:
        """Each input through the processor's states on a thread pool. ``fail_fast`` (INLINE): the
        first failure cancels the iterations not started and, once the running ones end, fails the
        Map with that iteration's error; otherwise failures are returned for the threshold."""

        def one(item: Any) -> _ItemOutcome:
            outcome = _ItemOutcome(item, None)
            try:
                outcome.value = self._run_states(processor, item, run)
            except StatesError as err:
                if fail_fast:
                    raise
                outcome.value = err
            outcome.stopped = _now()
            return outcome

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sfn-map") as pool:
            futures: list[Future[_ItemOutcome]] = [pool.submit(one, item) for item in inputs]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
            if failed:
                for future in futures:
                    future.cancel()
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    @staticmethod
    def _exceeds_tolerance(
        state: Mapping[str, Any], data: Any, context: Mapping[str, Any], failed: int, total: int
    ) -> bool:
        """Tolerated failure threshold: with neither field, no failure is tolerated; with both, exceeding
        either fails the Map (the percentage is of all items)."""

        def tolerance(key: str) -> float | None:
            if key in state:
                return float(state[key])
            if f"{key}Path" in state:
                return float(select(state[f"{key}Path"], data, context, f"{key}Path"))
            return None

        count, percentage = tolerance("ToleratedFailureCount"), tolerance("ToleratedFailurePercentage")
        if count is None and percentage is None:
            return True
        return (count is not None and failed > count) or (
            percentage is not None and failed * 100 / total > percentage
        )

    def _write_results(
        self,
        name: str,
        state: Mapping[str, Any],
        effective: Any,
        context: Mapping[str, Any],
        outcomes: list[_ItemOutcome],
    ) -> dict[str, Any]:
        """``ResultWriter`` as the service lays it out: ``<Prefix>/<map run id>/SUCCEEDED_0.json`` and
        ``FAILED_0.json`` (JSON arrays of child execution records, written when not empty) and
        ``manifest.json`` listing them; the Map's result says where the manifest is."""
        params = apply_template(
            state["ResultWriter"]["Parameters"], effective, context, f"{name}.ResultWriter"
        )
        bucket, prefix, run_id = params["Bucket"], params.get("Prefix", ""), str(uuid.uuid4())
        label = state.get("Label", name)
        map_run_arn = f"{self.arn.replace(':stateMachine:', ':mapRun:')}/{label}:{run_id}"
        base = f"{prefix.rstrip('/')}/{run_id}" if prefix else run_id
        records: dict[str, list[dict[str, Any]]] = {"SUCCEEDED": [], "FAILED": []}
        for outcome in outcomes:
            record = self._child_record(label, outcome)
            records[record["Status"]].append(record)
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        for status, entries in records.items():
            if entries:
                key, body = f"{base}/{status}_0.json", json.dumps(entries).encode()
                self._put(bucket, key, body)
                files[status].append({"Key": key, "Size": len(body)})
        manifest = {"DestinationBucket": bucket, "MapRunArn": map_run_arn, "ResultFiles": files}
        self._put(bucket, f"{base}/manifest.json", json.dumps(manifest).encode())
        return {
            "MapRunArn": map_run_arn,
            "ResultWriterDetails": {"Bucket": bucket, "Key": f"{base}/manifest.json"},
        }

    def _child_record(self, label: str, outcome: _ItemOutcome) -> dict[str, Any]:
        child = str(uuid.uuid4())
        record: dict[str, Any] = {
            "ExecutionArn": f"{self.arn.replace(':stateMachine:', ':execution:')}/{label}:{child}",
            "Input": json.dumps(outcome.input),
            "InputDetails": {"Included": True},
            "Name": child,
            "StartDate": outcome.started,
            "StateMachineArn": f"{self.arn}/{label}",
            "StopDate": outcome.stopped,
        }
        if isinstance(outcome.value, StatesError):
            return record | {"Status": "FAILED", "Error": outcome.value.error, "Cause": outcome.value.cause}
        return record | {
            "Status": "SUCCEEDED",
            "Output": json.dumps(outcome.value),
            "OutputDetails": {"Included": True},
        }

    def _put(self, bucket: str, key: str, body: bytes) -> None:
        if self._s3 is None:
            raise StatesError("States.ResultWriterFailed", "the local runner was given no S3 client")
        try:
            self._s3.put_object(Bucket=bucket, Key=key, Body=body)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            raise StatesError("States.ResultWriterFailed", f"s3:putObject failed ({code})") from exc


# --- Lambda functions in-process -----------------------------------------------------------------


class LocalFunctions:
    """The ``invoke`` the local stack gives the runner: a FunctionName (logical id, name, ARN, with or
    without a qualifier) -> the function's warm in-process handler, called with a ``LambdaContext``.

    Each function has a pool of instances (``handlers[name]``: a module or a list of modules; one by
    default, like one container), and an invocation waits for a free one: handler modules keep
    state between invocations and are never entered by two threads at once.
    """

    def __init__(
        self,
        handlers: Mapping[str, Any],
        timeouts: Mapping[str, float] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self._pools: dict[str, queue.SimpleQueue[Any]] = {}
        for name, instances in handlers.items():
            pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
            for instance in instances if isinstance(instances, list | tuple) else [instances]:
                pool.put(instance)
            self._pools[name] = pool
        self._timeouts, self._aliases = dict(timeouts or {}), dict(aliases or {})

    def resolve(self, function: str) -> str:
        """The handler's name for ``function``; ``Lambda.ResourceNotFoundException`` if none."""
        name = _function_arn_name(function) or function.split(":")[0]
        name = self._aliases.get(name, name)
        if name not in self._pools:
            raise StatesError("Lambda.ResourceNotFoundException", f"Function not found: {name}")
        return name

    def __call__(self, function: str, payload: Any) -> Any:
        name = self.resolve(function)
        instance = self._pools[name].get()
        try:
            return instance.lambda_handler(
                payload, LambdaContext(name, timeout_s=self._timeouts.get(name, 3))
            )
        finally:
            self._pools[name].put(instance)


# --- The template's state machines ---------------------------------------------------------------

STATE_MACHINE_TYPES = ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine")
CFN_INTRINSICS = {"Ref", "GetAtt", "Sub", "If"}  # what LocalResources.resolve handles
UNRESOLVED_INTRINSICS = {"Join", "Select", "Split", "FindInMap", "ImportValue", "Base64", "GetAZs", "Cidr",
                         "Transform", "ToJsonString", "Length"}  # fmt: skip


def lambda_arn(function: str) -> str:
    return f"arn:aws:lambda:{REGION}:{LOCAL_ACCOUNT}:function:{function}"


def local_references(template: Mapping[str, Any], resources: LocalResources) -> LocalResources:
    """``resources`` as state machine definitions see them: a function's ``Ref`` is its logical id and
    its ``Arn`` a local Lambda ARN ending in it, so every FunctionName resolves to a logical id."""
    functions = resources_of_type(dict(template), "AWS::Serverless::Function")
    return replace(
        resources,
        refs={**resources.refs, **{f: f for f in functions}},
        arns={**resources.arns, **{f: lambda_arn(f) for f in functions}},
    )


def function_aliases(template: Mapping[str, Any], resources: LocalResources) -> dict[str, str]:
    """A function's deployed name (its ``FunctionName`` property, resolved) -> its logical id, for
    definitions that name a function literally."""
    functions = resources_of_type(dict(template), "AWS::Serverless::Function")
    return {
        str(resources.resolve(props["FunctionName"])): logical
        for logical, resource in functions.items()
        if "FunctionName" in (props := resource.get("Properties", {}))
    }


def function_timeouts(template: Mapping[str, Any]) -> dict[str, float]:
    """Each function's Timeout (its own, else Globals', else Lambda's default 3 s)."""
    default = template.get("Globals", {}).get("Function", {}).get("Timeout", 3)
    functions = resources_of_type(dict(template), "AWS::Serverless::Function")
    return {f: float(r.get("Properties", {}).get("Timeout", default)) for f, r in functions.items()}


def state_machine_definitions(
    template: Mapping[str, Any], resources: LocalResources, root: Path = ROOT
) -> dict[str, dict[str, Any]]:
    """Each state machine's definition (logical id -> ASL), with ``!Ref`` / ``!GetAtt`` / ``!Sub`` and
    ``DefinitionSubstitutions`` resolved (functions -> local Lambda ARNs), validated for the runner."""
    refs = local_references(template, resources)
    definitions = {}
    for type_ in STATE_MACHINE_TYPES:
        for logical, resource in resources_of_type(dict(template), type_).items():
            props = resource.get("Properties", {})
            try:
                definition = _definition_of(props, refs, root)
                validate_definition(definition)
            except UnsupportedState as exc:
                raise UnsupportedState(f"{logical}.{exc.field}", exc.detail) from exc
            definitions[logical] = definition
    return definitions


def _definition_of(props: Mapping[str, Any], refs: LocalResources, root: Path) -> dict[str, Any]:
    if "Definition" in props:
        definition = props["Definition"]
    elif "DefinitionString" in props:
        definition = json.loads(_resolve_intrinsics(props["DefinitionString"], refs))
    elif isinstance(props.get("DefinitionUri"), str):
        import yaml  # type: ignore[import-untyped]  # only for a definition in its own file (JSON is YAML too)

        definition = yaml.safe_load((root / props["DefinitionUri"]).read_text())
    else:
        raise UnsupportedState("DefinitionUri", "a definition in S3 (inline Definition or a local file only)")
    substitutions = {
        k: str(_resolve_intrinsics(v, refs)) for k, v in props.get("DefinitionSubstitutions", {}).items()
    }
    resolved: dict[str, Any] = _substitute(_resolve_intrinsics(definition, refs), substitutions)
    return resolved


def _resolve_intrinsics(value: Any, refs: LocalResources) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            (key,) = value
            if key in CFN_INTRINSICS:
                return refs.resolve(value)
            if key in UNRESOLVED_INTRINSICS:
                raise UnsupportedState(f"Fn::{key}", "intrinsic function in a state machine definition")
        return {k: _resolve_intrinsics(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_intrinsics(v, refs) for v in value]
    return value


def _substitute(value: Any, substitutions: Mapping[str, str]) -> Any:
    """``${Name}`` -> its DefinitionSubstitutions value, in every string (keys included)."""
    if isinstance(value, dict):
        return {_substitute(k, substitutions): _substitute(v, substitutions) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, substitutions) for v in value]
    if isinstance(value, str):
        return re.sub(r"\$\{([^}]+)\}", lambda m: substitutions.get(m.group(1), m.group(0)), value)
    return value


def create_state_machines(
    template: Mapping[str, Any], sfn: Any, resources: LocalResources, prefix: str = "churnguard-local"
) -> dict[str, str]:
    """The template's state machines created in moto (logical id -> ARN) with their resolved
    definitions; ``resources`` learns their Ref/Arn, and the functions' environments are resolved
    again so a function's ``!Ref`` to a state machine is its ARN."""
    from infra.local_stack.resources import _resolve_function_environments  # same package, one rule

    created = {}
    for logical, definition in state_machine_definitions(template, resources).items():
        props = template["Resources"][logical].get("Properties", {})
        name = f"{prefix}-{logical}"
        arn = sfn.create_state_machine(
            name=name,
            definition=json.dumps(definition),
            roleArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{name}",
            type=props.get("Type", props.get("StateMachineType", "STANDARD")),
        )["stateMachineArn"]
        resources.refs[logical] = resources.arns[logical] = arn
        resources.names[logical] = name
        resources.skipped.pop(logical, None)
        for event_id, event in props.get("Events", {}).items():
            # Not wired yet: say so rather than let a trigger silently do nothing.
            print(f"{logical}: event {event_id} ({event.get('Type')}) does not start executions locally",
                  file=sys.stderr, flush=True)  # fmt: skip
        created[logical] = arn
    _resolve_function_environments(dict(template), resources)
    return created


# --- Executions started in moto ------------------------------------------------------------------


class ExecutionPoller(threading.Thread):
    """What runs the executions moto only records: a daemon thread that lists every state machine's
    RUNNING executions every ``interval_s``, claims each new one (exactly once, by ARN) and runs it
    on a thread of its own with the definition moto holds (``describe_state_machine``).

    ``outcomes[execution ARN]`` is RUNNING, then SUCCEEDED (output) or FAILED (error, cause);
    ``wait()`` blocks until it ends. When an execution ends it is stopped in moto so it no longer
    looks RUNNING: moto has no call to record success, and its ``StopExecution`` keeps neither error
    nor cause, so moto shows ABORTED either way — ``outcomes`` is the record. A failed execution is
    stopped with its error and cause, as the real API would take them. A handler's exception is a
    FAILED outcome; anything else that goes wrong (a definition outside the subset, a runner bug) is
    FAILED with ``Local.*``; a failed poll is reported and retried.
    """

    def __init__(
        self,
        sfn: Any,
        invoke: Invoke,
        *,
        s3: Any = None,
        interval_s: float = 0.5,
        time_scale: float = 1.0,
        map_workers: int = LOCAL_MAP_WORKERS,
    ) -> None:
        super().__init__(daemon=True, name="step-functions")
        self._sfn, self._invoke, self._s3 = sfn, invoke, s3
        self._interval_s, self._time_scale, self._map_workers = interval_s, time_scale, map_workers
        self.outcomes: dict[str, ExecutionOutcome] = {}
        self._changed = threading.Condition()
        self._machines: dict[tuple[str, str], StateMachine] = {}
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the server is going away, or a hiccup: poll again
                if self._stopping.is_set():
                    return
                print(f"step functions poll failed: {type(exc).__name__}", file=sys.stderr, flush=True)
            self._stopping.wait(self._interval_s)

    def poll_once(self) -> list[str]:
        """Claim and start every RUNNING execution not seen before; returns their ARNs."""
        started = []
        for page in self._sfn.get_paginator("list_state_machines").paginate():
            for machine in page["stateMachines"]:
                for arn in self._running(machine["stateMachineArn"]):
                    with self._changed:
                        if arn in self.outcomes:
                            continue
                        self.outcomes[arn] = ExecutionOutcome("RUNNING")
                    threading.Thread(
                        target=self._execute,
                        args=(machine["stateMachineArn"], arn),
                        daemon=True,
                        name="sfn-run",
                    ).start()
                    started.append(arn)
        return started

    def _running(self, machine_arn: str) -> list[str]:
        pages = self._sfn.get_paginator("list_executions").paginate(
            stateMachineArn=machine_arn, statusFilter="RUNNING"
        )
        return [e["executionArn"] for page in pages for e in page["executions"]]

    def _execute(self, machine_arn: str, execution_arn: str) -> None:
        try:
            described = self._sfn.describe_execution(executionArn=execution_arn)
            machine = self._machine(machine_arn)
            outcome = machine.execute(
                json.loads(described.get("input") or "{}"),
                name=described["name"],
                execution_arn=execution_arn,
            )
        except UnsupportedState as exc:
            outcome = ExecutionOutcome("FAILED", error="Local.UnsupportedState", cause=str(exc))
        except Exception as exc:  # a runner bug must not end the poller: the execution fails instead
            outcome = ExecutionOutcome("FAILED", error="Local.RunnerError", cause=traceback.format_exc())
            print(f"step functions runner failed: {type(exc).__name__}", file=sys.stderr, flush=True)
        self._finish(execution_arn, outcome)

    def _machine(self, machine_arn: str) -> StateMachine:
        described = self._sfn.describe_state_machine(stateMachineArn=machine_arn)
        key = (machine_arn, described["definition"])  # an updated definition is a new runner
        if key not in self._machines:
            self._machines[key] = StateMachine(
                json.loads(described["definition"]),
                self._invoke,
                s3=self._s3,
                name=described["name"],
                arn=machine_arn,
                role_arn=described["roleArn"],
                time_scale=self._time_scale,
                map_workers=self._map_workers,
            )
        return self._machines[key]

    def _finish(self, execution_arn: str, outcome: ExecutionOutcome) -> None:
        try:
            if outcome.status == "FAILED":
                self._sfn.stop_execution(
                    executionArn=execution_arn,
                    error=(outcome.error or "")[:256],
                    cause=(outcome.cause or "")[:32768],
                )
                print(f"state machine execution failed: {outcome.error}", file=sys.stderr, flush=True)
            else:
                self._sfn.stop_execution(executionArn=execution_arn)
        except Exception as exc:  # the outcome is still recorded below
            print(f"stopping a finished execution failed: {type(exc).__name__}", file=sys.stderr, flush=True)
        with self._changed:
            self.outcomes[execution_arn] = outcome
            self._changed.notify_all()

    def wait(self, execution_arn: str, timeout_s: float = 30.0) -> ExecutionOutcome:
        """The execution's outcome once it has ended (TimeoutError after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while (outcome := self.outcomes.get(execution_arn)) is None or outcome.status == "RUNNING":
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"execution not finished within {timeout_s} s")
                self._changed.wait(min(remaining, 0.1))
            return outcome

    def stop(self) -> None:
        """No new executions are claimed; those running finish on their own threads."""
        self._stopping.set()
