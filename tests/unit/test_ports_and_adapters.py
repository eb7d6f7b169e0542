"""The ports and their boto3 adapters (no network): what each adapter sends and how it reads the answer,
errors passing through unchanged, the model store / holdout / publishers driven through in-memory
ports, and the Lambda code importing without the type stubs."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from churnguard.adapters import S3ObjectStore, SqsMessageQueue, SsmParameterStore
from churnguard.champion import Holdout
from churnguard.idempotency import LedgeredPublisher
from churnguard.model_store import (
    ModelFetchError,
    ModelPointer,
    S3PointerModelProvider,
    download_model_files,
    publish,
    rollback_model,
)
from churnguard.ports import ListedObject, ObjectInfo, ParameterVersion, QueueMessage, SendFailure
from churnguard.promotions import QueuePromotionsPublisher
from tests.helpers import FIXTURE_MODEL, ROOT, model_variant
from tests.unit.fakes import MemoryLedger, MemoryObjectStore, MemoryParameterStore, MemoryQueue, client_error


class RecordingClient:
    """A boto3 client stand-in: records (operation, kwargs) and answers from ``answers``."""

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers = answers

    def __getattr__(self, operation: str):
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((operation, {"args": args, **kwargs} if args else kwargs))
            answer = self.answers.get(operation)
            if isinstance(answer, BaseException):
                raise answer
            return answer() if callable(answer) else answer

        return call


# --- S3ObjectStore -----------------------------------------------------------------------------------


def test_s3_store_gets_whole_ranged_and_streamed_bodies():
    body = io.BytesIO(b"0123456789")
    client = RecordingClient(get_object=lambda: {"Body": body})
    store = S3ObjectStore(client)  # type: ignore[arg-type]

    assert store.get_range("b", "k", 0, 1024) == b"0123456789"
    assert client.calls[-1] == ("get_object", {"Bucket": "b", "Key": "k", "Range": "bytes=0-1023"})
    assert store.open("b", "k") is body  # the streaming body itself, never read here
    assert client.calls[-1] == ("get_object", {"Bucket": "b", "Key": "k"})
    body.seek(0)
    assert store.get_bytes("b", "k") == b"0123456789"


def test_s3_store_head_answers_size_and_user_metadata():
    client = RecordingClient(head_object={"ContentLength": 42, "Metadata": {"as-of": "2024-09-30"}})
    assert S3ObjectStore(client).head("b", "k") == ObjectInfo(42, {"as-of": "2024-09-30"})  # type: ignore[arg-type]
    client.answers["head_object"] = {"ContentLength": 0}
    assert S3ObjectStore(client).head("b", "k") == ObjectInfo(0, {})  # type: ignore[arg-type]


def test_s3_store_lists_every_page_of_a_prefix_and_copies_within_the_bucket():
    when = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)

    class Paginator:
        def paginate(self, Bucket, Prefix):
            assert (Bucket, Prefix) == ("b", "incoming/ds/")
            yield {"Contents": [{"Key": "incoming/ds/a.csv", "Size": 3, "LastModified": when}]}
            yield {"KeyCount": 0}  # a page without Contents
            yield {"Contents": [{"Key": "incoming/ds/_SUCCESS", "Size": 0, "LastModified": when}]}

    client = RecordingClient(get_paginator=Paginator)
    store = S3ObjectStore(client)  # type: ignore[arg-type]

    assert store.list_objects("b", "incoming/ds/") == [
        ListedObject("incoming/ds/a.csv", 3, when),
        ListedObject("incoming/ds/_SUCCESS", 0, when),
    ]
    assert client.calls == [("get_paginator", {"args": ("list_objects_v2",)})]
    store.copy("b", "work/x.parquet", "scored/x.parquet")
    assert client.calls[-1] == (
        "copy",
        {"args": ({"Bucket": "b", "Key": "work/x.parquet"}, "b", "scored/x.parquet")},
    )


def test_s3_store_writes_with_only_the_extras_asked_for(tmp_path):
    client = RecordingClient()
    store = S3ObjectStore(client)  # type: ignore[arg-type]
    path = tmp_path / "f.csv"
    path.write_text("x\n")

    store.put_bytes("b", "plain", b"{}")
    store.put_bytes("b", "typed", b"{}", content_type="application/json")
    store.upload_file(path, "b", "u1")
    store.upload_file(path, "b", "u2", content_type="text/csv")
    store.upload_file(str(path), "b", "u3", metadata={"as-of": "2024-09-30"})

    assert client.calls == [
        ("put_object", {"Bucket": "b", "Key": "plain", "Body": b"{}"}),
        ("put_object", {"Bucket": "b", "Key": "typed", "Body": b"{}", "ContentType": "application/json"}),
        ("upload_file", {"args": (str(path), "b", "u1"), "ExtraArgs": None}),
        ("upload_file", {"args": (str(path), "b", "u2"), "ExtraArgs": {"ContentType": "text/csv"}}),
        ("upload_file", {"args": (str(path), "b", "u3"), "ExtraArgs": {"Metadata": {"as-of": "2024-09-30"}}}),
    ]


@pytest.mark.parametrize(
    "error", [client_error("NoSuchKey", "GetObject"), EndpointConnectionError(endpoint_url="http://s3")]
)
def test_adapters_let_botocore_errors_through_unchanged(error):
    store = S3ObjectStore(RecordingClient(get_object=error, head_object=error))  # type: ignore[arg-type]
    for call in (
        lambda: store.get_bytes("b", "k"),
        lambda: store.open("b", "k"),
        lambda: store.head("b", "k"),
    ):
        with pytest.raises(type(error)) as raised:
            call()
        assert raised.value is error
    queue = SqsMessageQueue(RecordingClient(send_message_batch=error), "q")  # type: ignore[arg-type]
    with pytest.raises(type(error)):
        queue.send_batch([QueueMessage("0", "{}")])


# --- SqsMessageQueue / SsmParameterStore ---------------------------------------------------------------


def test_sqs_queue_sends_string_attributes_and_reads_failures_with_their_defaults():
    client = RecordingClient(
        send_message_batch={
            "Successful": [{"Id": "0", "MessageId": "m0"}],
            "Failed": [
                {"Id": "1", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad"},
                {"Id": "2", "Code": "ServiceUnavailable"},
            ],
        }
    )
    result = SqsMessageQueue(client, "https://queue").send_batch(  # type: ignore[arg-type]
        [QueueMessage(str(i), f'{{"n":{i}}}', {"schema": "s", "idempotency_key": f"k{i}"}) for i in range(3)]
    )
    operation, request = client.calls[0]
    assert operation == "send_message_batch" and request["QueueUrl"] == "https://queue"
    assert request["Entries"][1] == {
        "Id": "1",
        "MessageBody": '{"n":1}',
        "MessageAttributes": {
            "schema": {"DataType": "String", "StringValue": "s"},
            "idempotency_key": {"DataType": "String", "StringValue": "k1"},
        },
    }
    assert result.sent == 1
    assert result.failed == [
        SendFailure("1", "InvalidMessageContents", "bad", sender_fault=True),
        SendFailure("2", "ServiceUnavailable", "", sender_fault=False),
    ]


def test_ssm_parameters_get_put_and_read_the_whole_history_across_pages():
    class Paginator:
        def paginate(self, Name):
            assert Name == "/p"
            yield {"Parameters": [{"Version": 2, "Value": "b"}, {"Version": 1, "Value": "a"}]}
            yield {"Parameters": [{"Version": 3, "Value": "c"}]}

    client = RecordingClient(get_parameter={"Parameter": {"Value": "c"}}, get_paginator=Paginator)
    parameters = SsmParameterStore(client)  # type: ignore[arg-type]

    assert parameters.get("/p") == "c"
    parameters.put("/p", "d")
    assert client.calls[1] == (
        "put_parameter",
        {"Name": "/p", "Value": "d", "Type": "String", "Overwrite": True},
    )
    assert parameters.history("/p") == [
        ParameterVersion(2, "b"),
        ParameterVersion(1, "a"),
        ParameterVersion(3, "c"),
    ]


# --- the model store through the ports -----------------------------------------------------------------


def test_publish_uploads_metadata_last_then_moves_the_pointer_and_the_provider_follows(tmp_path):
    store, parameters = MemoryObjectStore(), MemoryParameterStore()
    provider = S3PointerModelProvider(
        parameter_name="/ptr",
        store=store,
        get_parameter=lambda name, max_age: parameters.get(name),
        max_age_s=0,
        cache_dir=tmp_path / "cache",
    )
    for version in ("v1", "v2"):
        pointer = publish(
            model_variant(tmp_path, version),
            store=store,
            parameters=parameters,
            bucket="b",
            parameter_name="/ptr",
        )
        assert pointer == ModelPointer(version, f"s3://b/models/{version}/")
        assert store.calls[-1] == ("put_bytes", f"models/{version}/metadata.json")  # marks it complete
        assert provider.current().version == version

    assert rollback_model(parameters, "/ptr") == ModelPointer("v1", "s3://b/models/v1/")
    assert provider.current().version == "v1"  # from its /tmp cache: nothing downloaded again
    assert [c for c in store.calls if c[0] == "get_bytes"][-1][1] == "models/v2/model_reasons.tflite"


def test_download_turns_any_aws_error_into_a_fetch_error_that_names_it(tmp_path):
    store = MemoryObjectStore()
    publish(
        model_variant(tmp_path, "v1"),
        store=store,
        parameters=MemoryParameterStore(),
        bucket="b",
        parameter_name="/p",
    )
    pointer = ModelPointer("v1", "s3://b/models/v1/")
    assert set(download_model_files(store, pointer, "model.tflite")) == {
        "metadata.json",
        "feature_spec.json",
        "model.tflite",
        "model_reasons.tflite",  # named by metadata.json's reason_reference
        "drift_reference.json",  # named by metadata.json's files (churnguard.drift)
    }
    with pytest.raises(
        ModelFetchError, match=r"models/v1/model_dynamic_range\.tflite could not be read: NoSuchKey"
    ):
        download_model_files(store, pointer, "model_dynamic_range.tflite")  # not in the fixture
    store.faults[("get_bytes", "models/v1/feature_spec.json")] = EndpointConnectionError(endpoint_url="x")
    with pytest.raises(ModelFetchError, match="could not be read: EndpointConnectionError"):
        download_model_files(store, pointer, "model.tflite")


def test_holdout_reads_its_three_objects_through_the_store():
    store = MemoryObjectStore()
    store.add("b", "gate/meta.json", json.dumps({"as_of": "2024-09-30"}).encode())
    store.add("b", "gate/labels.csv", b"user_id,churned\n007,1\n")
    store.add("b", "gate/events.csv", b"user_id,timestamp,event_type,amount\n007,2024-08-01,order,3\n")
    holdout = Holdout.from_s3(store, "b", prefix="gate/")
    assert list(holdout.user_ids) == ["007"] and holdout.as_of == "2024-09-30"
    with pytest.raises(ClientError, match="NoSuchKey"):
        Holdout.from_s3(store, "b")  # nothing under holdout/: the gate fails loudly


# --- publishers through the ports ----------------------------------------------------------------------


def _messages(n: int) -> list[dict[str, Any]]:
    return [{"user_id": f"u{i}", "idempotency_key": f"k{i}"} for i in range(n)]


def test_queue_publisher_retries_a_transient_failure_and_reports_a_sender_fault_once():
    queue = MemoryQueue()
    queue.fail = {
        "u3": SendFailure("", "ServiceUnavailable", "later", sender_fault=False),
        "u12": SendFailure("", "InvalidMessageContents", "bad", sender_fault=True),
    }
    result = QueuePromotionsPublisher(queue, sleep=lambda s: None).publish(_messages(23))
    assert result.sent == 22 and queue.batches == [10, 1, 10, 3]
    assert result.failed == [
        {"user_id": "u12", "idempotency_key": "k12", "code": "InvalidMessageContents", "message": "bad"}
    ]
    assert json.loads(queue.messages[0].body) == {"user_id": "u0", "idempotency_key": "k0"}
    assert queue.messages[0].attributes == {"schema": "churnguard.promotion/v1", "idempotency_key": "k0"}


def test_ledgered_publisher_skips_what_the_ledger_has_and_records_each_chunk_as_it_goes():
    queue, ledger = MemoryQueue(), MemoryLedger()
    ledger.keys = {"k0", "k1"}
    queue.fail = {"u5": SendFailure("", "Throttled", "x", sender_fault=False)}
    inner = QueuePromotionsPublisher(queue, max_attempts=1, sleep=lambda s: None)  # u5 stays unsent

    result = LedgeredPublisher(inner, ledger).publish(_messages(25))

    assert result.sent == 2 + 22 and [f["user_id"] for f in result.failed] == ["u5"]  # 2 sent before
    assert [len(m) for m in ledger.marks] == [9, 10, 3]  # one mark per chunk, the failed one left out
    assert "k5" not in ledger.keys and len(ledger.keys) == 24


# --- the Lambda code imports without the stubs ----------------------------------------------------------

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0].startswith(tuple(sys.argv[1].split(","))):
            raise ImportError(f"{name} is not in the Lambda packages")
sys.meta_path.insert(0, Block())
"""


def _run_blocked(
    blocked: str, code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + code, blocked],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_domain_and_the_handlers_import_and_wire_up_without_the_type_stubs():
    code = """
import importlib, importlib.util
domain = "ports adapters aws wiring batch model_store promotions idempotency champion".split()
for name in domain:
    importlib.import_module("churnguard." + name)
for function in ("score_api", "batch_score", "promote"):
    spec = importlib.util.spec_from_file_location("fn_" + function, f"functions/{function}/app.py")
    module = sys.modules["fn_" + function] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if function != "promote":
        module.runtime()  # the cold-start wiring, adapters included
print("imported")
"""
    env = {
        "CHURNGUARD_MODEL_DIR": str(ROOT / "tests" / "fixtures" / "model"),
        "CHURNGUARD_PROMOTIONS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/q",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    result = _run_blocked("mypy_boto3_", code, env)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-3000:]


def test_the_scoring_api_wiring_does_not_pull_in_pandas():
    code = """
from churnguard.wiring import api_runtime
api_runtime(on_model_event=lambda name, details: None)
import sys
assert "pandas" not in sys.modules
print("wired")
"""
    env = {"CHURNGUARD_MODEL_DIR": str(ROOT / "tests" / "fixtures" / "model")}
    result = _run_blocked("mypy_boto3_,pandas", code, env)
    assert result.returncode == 0 and "wired" in result.stdout, result.stderr[-3000:]


# --- the gate's handler on the ports ---------------------------------------------------------------------


@pytest.fixture
def gate():
    from churnguard.champion import GatePolicy
    from tests.helpers import load_handler

    handler = load_handler("promote")
    store, parameters = MemoryObjectStore(), MemoryParameterStore()
    handler.runtime = lambda: handler.Runtime("churnguard-data", "/ptr", GatePolicy(), store, parameters)
    return handler, store


def _completed_job():
    from tests.helpers import load_event

    return load_event("promote/training_job_completed.json")


def test_the_gate_records_a_refusal_when_the_challenger_artifact_does_not_exist(gate):
    from tests.helpers import FakeLambdaContext

    handler, store = gate
    result = handler.lambda_handler(_completed_job(), FakeLambdaContext())
    assert result["accepted"] is False and "challenger refused" in result["reasons"][0]
    assert "NoSuchKey" in result["reasons"][0]
    decision = json.loads(store.body("churnguard-data", "model-decisions/churnguard-20261127-0200.json"))
    assert decision["accepted"] is False
    assert store.objects[
        ("churnguard-data", "model-decisions/churnguard-20261127-0200.json")
    ].content_type == ("application/json")


@pytest.mark.parametrize(
    "error", [client_error("AccessDenied", "GetObject"), EndpointConnectionError(endpoint_url="http://s3")]
)
def test_any_other_aws_error_fetching_the_artifact_fails_the_gate_without_a_decision(gate, error):
    from tests.helpers import FakeLambdaContext

    handler, store = gate
    artifact = "training/churnguard-20261127-0200/output/model.tar.gz"
    store.add("churnguard-data", artifact, b"whatever")
    store.faults[("get_bytes", artifact)] = error
    with pytest.raises(type(error)):
        handler.lambda_handler(_completed_job(), FakeLambdaContext())
    assert store.keys("churnguard-data", "model-decisions/") == []


def test_the_step_functions_starter_names_its_runs_and_answers_false_for_a_name_taken():
    import boto3
    from botocore.stub import Stubber

    from churnguard.adapters import StepFunctionsWorkflowStarter

    client = boto3.client(
        "stepfunctions", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    arn = "arn:aws:states:eu-west-1:123456789012:stateMachine:m"
    expected = {"stateMachineArn": arn, "name": "ds-1", "input": '{"bucket": "b"}'}
    with Stubber(client) as stub:
        stub.add_response(
            "start_execution", {"executionArn": arn + ":ds-1", "startDate": "2026-01-01"}, expected
        )
        stub.add_client_error("start_execution", "ExecutionAlreadyExists", expected_params=expected)
        stub.add_client_error("start_execution", "ThrottlingException", expected_params=expected)
        starter = StepFunctionsWorkflowStarter(client, arn)
        assert starter.start("ds-1", {"bucket": "b"}) is True
        assert starter.start("ds-1", {"bucket": "b"}) is False
        with pytest.raises(ClientError, match="ThrottlingException"):  # every other error passes through
            starter.start("ds-1", {"bucket": "b"})


@pytest.mark.parametrize(
    ("build", "who"), [("sweep_runtime", "the sweep"), ("events_queue_runtime", "the events queue")]
)
def test_the_state_table_functions_refuse_to_cold_start_without_one(monkeypatch, build, who):
    import churnguard.wiring as wiring
    from churnguard.settings import SettingsError

    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.delenv("CHURNGUARD_STATE_TABLE", raising=False)
    with pytest.raises(SettingsError, match=f"{who} needs CHURNGUARD_STATE_TABLE"):
        getattr(wiring, build)(on_model_event=lambda name, details: None)
