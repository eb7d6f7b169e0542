"""The dataset function's handler, step by step as the state machine calls it, and the batch
function's routing of drops — through the in-memory fakes (no moto, no network)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
from typing import Any

import pandas as pd
import pytest

from churnguard.admission import MemoryModel
from churnguard.dataset_steps import Route, execution_name, route_drop
from churnguard.datasets import generate_synthetic_events
from churnguard.idempotency import LedgeredPublisher, PromotionsNotSentError
from churnguard.model_provider import DirectoryModelProvider
from churnguard.promotions import PromotionPolicy, PublishResult
from churnguard.settings import ServingSettings
from churnguard.wiring import BatchRuntime, DatasetRuntime
from tests.helpers import FIXTURE_MODEL, PLANTED, FakeLambdaContext, load_event, load_handler
from tests.unit.fakes import MemoryLedger, MemoryObjectStore, MemoryWorkflowStarter, RecordingPublisher

BUCKET = "churnguard-data"
DATASET = "export-2026-11-28"
PREFIX = f"incoming/{DATASET}/"


def _settings() -> ServingSettings:
    return ServingSettings.from_env({"CHURNGUARD_MODEL_DIR": str(FIXTURE_MODEL)})


def three_parts() -> list[pd.DataFrame]:
    """~300 customers sorted by time, cut by size into 3 parts: most customers span parts; one
    bad row (a planted user id) in the middle part."""
    events = generate_synthetic_events(300, seed=7, weeks=40).sort_values("timestamp", kind="stable")
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    n = len(events)
    parts = [events.iloc[: n // 3], events.iloc[n // 3 : 2 * n // 3], events.iloc[2 * n // 3 :]]
    bad = pd.DataFrame([{"user_id": f"{PLANTED}-1", "timestamp": "not a date", "event_type": "order"}])
    parts[1] = pd.concat([parts[1].iloc[:4], bad, parts[1].iloc[4:]], ignore_index=True)
    return [p.reset_index(drop=True) for p in parts]


@pytest.fixture
def dataset_handler(monkeypatch):
    """The dataset handler on fakes: a store with the 3-part dataset and its marker, the fixture
    model, a ledgered recording publisher."""
    store = MemoryObjectStore()
    for i, part in enumerate(three_parts()):
        store.add(BUCKET, f"{PREFIX}part-{i:04d}.csv.gz", gzip.compress(part.to_csv(index=False).encode()))
    store.add(BUCKET, f"{PREFIX}_SUCCESS", b"")
    recording, ledger = RecordingPublisher(), MemoryLedger()
    runtime = DatasetRuntime(
        settings=_settings(),
        models=DirectoryModelProvider(FIXTURE_MODEL),
        publisher=LedgeredPublisher(recording, ledger),
        policy=PromotionPolicy(),
        store=store,
        memory=MemoryModel(budget_mb=3008),
    )
    handler = load_handler("dataset_score")
    monkeypatch.setattr(handler, "runtime", lambda: runtime)

    def call(event: dict[str, Any]) -> dict[str, Any]:
        return handler.lambda_handler(event, FakeLambdaContext())

    call.handler, call.runtime = handler, runtime  # type: ignore[attr-defined]  # to rewire the model
    return call, store, recording


def _run_all_steps(call, store) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 4})
    assert planned["status"] == "planned" and planned["parts"] == 3 and planned["shards"] == 4
    parts = json.loads(store.body(BUCKET, planned["parts_key"]))
    answers = [call({"step": "partition", **item}) for item in parts]
    assert [a["status"] for a in answers] == ["ok"] * 3
    shards = call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    assert shards["status"] == "ready"
    items = json.loads(store.body(BUCKET, shards["shards_key"]))
    scored = [call({"step": "score", **item}) for item in items]
    finish = call({"step": "finish", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    return finish, scored


def test_the_steps_in_order_publish_the_dataset_with_its_invariants(dataset_handler):
    call, store, recording = dataset_handler
    finish, scored = _run_all_steps(call, store)

    assert finish["status"] == "ok" and [s["status"] for s in scored] == ["ok"] * len(scored)
    summary = json.loads(store.body(BUCKET, f"scored/{DATASET}/_summary.json"))
    parts = three_parts()
    whole = pd.concat(parts, ignore_index=True)
    assert summary["rows_in"] == len(whole) == summary["rows_used"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 1 and summary["parts"] == 3
    output = pd.concat(pd.read_parquet(io.BytesIO(store.body(BUCKET, k))) for k in summary["outputs"])
    valid = set(whole["user_id"]) - {f"{PLANTED}-1"}
    assert output["user_id"].is_unique and set(output["user_id"]) == valid
    assert summary["customers_scored"] == len(valid)
    # one as-of for all: the day after the latest valid event over all parts
    latest = pd.to_datetime(whole["timestamp"], errors="coerce", utc=True).max()
    assert summary["as_of"] == (latest.normalize() + pd.Timedelta(days=1)).date().isoformat()
    promoted = [m["user_id"] for m in recording.messages]
    assert 0 < len(promoted) == len(set(promoted)) == summary["customers_queued"]
    rejects = pd.read_csv(io.BytesIO(store.body(BUCKET, summary["rejects"])))
    assert rejects[["part", "source_row"]].values.tolist() == [["part-0001.csv.gz", 5]]
    assert (BUCKET, f"scored/{DATASET}.summary.json") not in store.objects  # a single drop's key


def test_a_shard_scored_again_by_a_retry_sends_no_promotion_twice(dataset_handler):
    call, store, recording = dataset_handler
    _run_all_steps(call, store)
    sent = len(recording.messages)
    plan_key = next(k for k in store.keys(BUCKET, "work/") if k.endswith("/plan.json"))
    items = json.loads(store.body(BUCKET, plan_key.replace("plan.json", "shards.json")))
    assert call({"step": "score", **items[0]})["status"] == "ok"
    assert len(recording.messages) == sent


def test_promotions_not_sent_fail_the_score_step_so_the_state_machine_retries_it(
    dataset_handler, monkeypatch
):
    call, store, _ = dataset_handler
    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 1})
    for item in json.loads(store.body(BUCKET, planned["parts_key"])):
        call({"step": "partition", **item})
    shards = call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    (item,) = json.loads(store.body(BUCKET, shards["shards_key"]))

    def failing(self, messages):  # the queue refuses every message (after the publisher's retries)
        keys = [{"user_id": m["user_id"], "idempotency_key": m["idempotency_key"]} for m in messages]
        return PublishResult(0, [{**k, "code": "Throttling", "message": "x"} for k in keys])

    monkeypatch.setattr(RecordingPublisher, "publish", failing)
    with pytest.raises(PromotionsNotSentError):
        call({"step": "score", **item})
    assert not [k for k in store.keys(BUCKET, "work/") if "/results/shard-" in k]  # nothing to finish on


def test_a_bad_part_fails_the_shards_step_and_finish_writes_only_the_failed_summary(dataset_handler):
    """The definition's path when a part is bad: partition answers failed (not an error: retrying
    cannot fix a file), the shards step answers failed, finish (the Choice's default) publishes
    nothing but the failed summary; no shard is scored, no promotion sent."""
    call, store, recording = dataset_handler
    store.add(BUCKET, f"{PREFIX}part-0001.csv.gz", b"\x1f\x8b\x08\x00 not really gzip" * 50)
    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 2})
    answers = [call({"step": "partition", **i}) for i in json.loads(store.body(BUCKET, planned["parts_key"]))]
    assert [a["status"] for a in answers] == ["ok", "failed", "ok"]
    shards = call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    assert shards == {"status": "failed", "shards_key": None, "shards": 0}
    finish = call({"step": "finish", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    assert finish["status"] == "failed" and finish["error_type"] == "PartFailed"
    assert store.keys(BUCKET, "scored/") == [f"scored/{DATASET}/_summary.json"]
    assert recording.messages == []


def test_a_dataset_that_cannot_be_planned_is_refused_with_its_failed_summary(dataset_handler):
    call, store, _ = dataset_handler
    store.add(BUCKET, "incoming/empty/_SUCCESS", b"")
    answer = call({"step": "plan", "bucket": BUCKET, "dataset": "empty"})
    assert answer["status"] == "refused" and answer["plan_key"] is None and answer["parts_key"] is None
    summary = json.loads(store.body(BUCKET, "scored/empty/_summary.json"))
    assert summary["status"] == "failed" and "no data files" in summary["errors"][0]
    assert store.keys(BUCKET, "scored/empty/") == ["scored/empty/_summary.json"]


def test_the_fail_step_writes_the_cause_to_the_summary_and_never_to_the_logs(dataset_handler, caplog):
    call, store, _ = dataset_handler
    event = load_event("dataset_score/fail.json")
    event.update(bucket=BUCKET, dataset=DATASET)
    event["error"]["Cause"] = f"could not read {PLANTED}-in-a-file"
    with caplog.at_level(logging.DEBUG):
        answer = call(event)
    assert answer == {
        "status": "failed",
        "error_type": "DatasetRunError",
        "summary_key": f"scored/{DATASET}/_summary.json",
    }
    summary = json.loads(store.body(BUCKET, answer["summary_key"]))
    assert summary["status"] == "failed" and PLANTED in summary["errors"][0]
    assert summary["outputs"] == [] and "Lambda.TooManyRequestsException" in summary["errors"][0]
    assert PLANTED not in caplog.text and DATASET not in caplog.text


def test_the_fail_step_keeps_a_lambda_errors_type_and_message_but_not_its_stack_trace(dataset_handler):
    call, store, _ = dataset_handler
    event = load_event("dataset_score/fail.json")
    event.update(bucket=BUCKET, dataset=DATASET)
    event["error"] = {
        "Error": "ShardTooLarge",
        "Cause": json.dumps(
            {
                "errorMessage": "the shard does not fit",
                "errorType": "ShardTooLarge",
                "requestId": "r-1",
                "stackTrace": ['  File "/var/task/app.py", line 12, in lambda_handler\n'],
            }
        ),
    }
    call(event)
    (error,) = json.loads(store.body(BUCKET, f"scored/{DATASET}/_summary.json"))["errors"]
    assert error.endswith("ShardTooLarge: ShardTooLarge: the shard does not fit")
    assert "/var/task" not in error and "stackTrace" not in error


def _client_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    answer = {"Error": {"Code": code, "Message": f"about s3://{BUCKET}/{PREFIX}{PLANTED}"}}
    answer["ResponseMetadata"] = {"HTTPStatusCode": status}
    return ClientError(answer, "ListObjectsV2")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (_client_error("SlowDown", 503), "TransientAwsError"),
        (_client_error("ProvisionedThroughputExceededException", 400), "TransientAwsError"),
        (_client_error("InternalError", 500), "TransientAwsError"),
        (_client_error("AccessDenied", 403), "RefusedAwsError"),
        (_client_error("NoSuchBucket", 404), "RefusedAwsError"),
    ],
)
def test_aws_errors_reach_the_state_machine_as_retried_or_refused_by_a_name_its_retry_knows(
    dataset_handler, monkeypatch, error, raised
):
    """Step Functions matches Retry on the error's class name, and botocore names a class per code:
    the handler renames them so throttling is retried and access denied is not, quoting no key."""
    import botocore.exceptions

    call, store, _ = dataset_handler
    modeled = type(error.response["Error"]["Code"], (botocore.exceptions.ClientError,), {})
    specific = modeled(error.response, "ListObjectsV2")  # as a client's exceptions.<Code> is raised

    def failing(*args, **kwargs):
        raise specific

    monkeypatch.setattr(store, "list_objects", failing)
    from churnguard.aws import AwsCallError

    with pytest.raises(AwsCallError) as caught:
        call({"step": "plan", "bucket": BUCKET, "dataset": DATASET})
    assert type(caught.value).__name__ == raised
    assert str(caught.value).startswith("ListObjectsV2 failed: ")
    assert PLANTED not in str(caught.value) and BUCKET not in str(caught.value)


def test_a_timeout_without_any_answer_is_transient():
    from botocore.exceptions import ReadTimeoutError

    from churnguard.aws import TransientAwsError, classify_aws_error

    assert isinstance(classify_aws_error(ReadTimeoutError(endpoint_url="http://s3")), TransientAwsError)


def test_the_pending_check_counts_datasets_without_a_marker(dataset_handler):
    call, store, _ = dataset_handler
    store.add(BUCKET, "incoming/open/part-0.csv", b"user_id\n")
    answer = call(load_event("dataset_score/pending.json") | {"bucket": BUCKET})
    assert answer["status"] == "ok" and answer["pending"] == 1 and answer["oldest_age_s"] >= 0


def test_every_step_fixture_is_a_valid_payload():
    from churnguard.dataset_steps import parse_step

    for step in ("plan", "partition", "shards", "score", "finish", "fail", "pending"):
        assert parse_step(load_event(f"dataset_score/{step}.json")).step == step


# --- the batch function's routing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "route"),
    [
        ("incoming/weekly.csv", Route.SCORE),
        ("incoming/_parts/weekly/part-0001.csv.gz", Route.SCORE),
        ("incoming/notes.txt", Route.SCORE),  # a single unsupported file: its failed summary, as before
        (f"{PREFIX}part-0000.csv.gz", Route.ACKNOWLEDGE),
        (f"{PREFIX}_SUCCESS", Route.START_DATASET),
        (f"{PREFIX}_manifest.json", Route.START_DATASET),
        (f"{PREFIX}notes.json", Route.ACKNOWLEDGE),
        ("incoming/_SUCCESS", Route.ACKNOWLEDGE),
        (f"{PREFIX}_temporary/0/part-0.csv", Route.ACKNOWLEDGE),
        ("scored/x.csv", Route.ACKNOWLEDGE),
    ],
)
def test_the_routing_table(key, route):
    assert route_drop(key).route is route


@pytest.fixture
def batch_handler(monkeypatch):
    processed: list[str] = []
    starter = MemoryWorkflowStarter()
    store = MemoryObjectStore()
    runtime = BatchRuntime(
        settings=_settings(),
        models=DirectoryModelProvider(FIXTURE_MODEL),
        publisher=None,
        policy=PromotionPolicy(),
        store=store,
        memory=MemoryModel(budget_mb=3008),
        process=lambda bucket, key, etag: processed.append(key) or {},
        workflow=starter,
    )
    handler = load_handler("batch_score")
    monkeypatch.setattr(handler, "runtime", lambda: runtime)

    def deliver(key: str, etag: str = "e1", sequencer: str = "01") -> dict[str, Any]:
        event = load_event("batch_score/sqs_s3_put.json")
        notification = json.loads(event["Records"][0]["body"])
        notification["Records"][0]["s3"]["bucket"]["name"] = BUCKET
        notification["Records"][0]["s3"]["object"].update(key=key, eTag=etag, sequencer=sequencer)
        event["Records"][0]["body"] = json.dumps(notification)
        return handler.lambda_handler(event, FakeLambdaContext())

    deliver.store = store  # type: ignore[attr-defined]  # what the bucket holds when an event comes
    return deliver, processed, starter


def test_a_marker_starts_one_run_and_its_redelivery_none(batch_handler, caplog):
    deliver, processed, starter = batch_handler
    with caplog.at_level(logging.DEBUG):
        assert deliver(f"{PREFIX}part-0000.csv.gz") == {"batchItemFailures": []}
        assert deliver(f"{PREFIX}_SUCCESS") == {"batchItemFailures": []}
        assert deliver(f"{PREFIX}_SUCCESS") == {"batchItemFailures": []}  # the same event again
    assert processed == []  # neither the part nor the marker is scored as a file
    (name,) = starter.runs
    assert starter.calls == [name, name]
    assert starter.runs[name] == {
        "bucket": BUCKET,
        "dataset": DATASET,
        "marker": f"{PREFIX}_SUCCESS",
        "max_concurrency": 100,
    }
    assert DATASET not in caplog.text  # keys are logged as hashes only
    deliver(f"{PREFIX}_SUCCESS", sequencer="02")  # the marker written again: a re-drop
    assert len(starter.runs) == 2


def test_single_drops_and_split_parts_are_scored_as_before(batch_handler):
    deliver, processed, starter = batch_handler
    deliver("incoming/weekly.csv")
    deliver("incoming/_parts/weekly/part-0001.csv.gz")
    deliver("incoming/notes.txt")
    deliver("incoming/_SUCCESS")
    assert processed == [
        "incoming/weekly.csv",
        "incoming/_parts/weekly/part-0001.csv.gz",
        "incoming/notes.txt",
    ]
    assert starter.runs == {}


def test_execution_names_are_valid_and_tell_marker_versions_apart():
    names = {
        execution_name("export 2026/11 ✓", "b", "incoming/export 2026/11 ✓/_SUCCESS", "d41d8c", version)
        for version in ("01", "02")
    }
    assert len(names) == 2
    for name in names:
        assert len(name) <= 80 and name.isascii()
        assert not set(name) & set(' <>{}[]?*"#%\\^|~`$&,;:/')


# --- review 12 --------------------------------------------------------------------------------------------


def _other_model(tmp_path) -> DirectoryModelProvider:
    """The fixture model under another version (a promotion of a new model)."""
    import shutil

    directory = tmp_path / "model_b"
    shutil.copytree(FIXTURE_MODEL, directory)
    meta = json.loads((directory / "metadata.json").read_text())
    meta["model_version"] = "20261201T000000Z-bbbbbbbb"
    (directory / "metadata.json").write_text(json.dumps(meta))
    return DirectoryModelProvider(directory)


class _MovingProvider:
    """A pointer that moves: ``current`` serves ``serving``; versions load from their directory."""

    def __init__(self, serving: DirectoryModelProvider) -> None:
        self.serving = serving

    def current(self):
        return self.serving.current()

    def status(self):
        return self.serving.status()

    def location(self, version: str) -> str | None:
        return self.serving.location(version)

    def load_version(self, version: str, location: str):
        return self.serving.load_version(version, location)


def test_a_run_scores_every_shard_with_its_planned_model_when_the_pointer_moves(
    dataset_handler, monkeypatch, tmp_path
):
    """The model is promoted between the plan and phase 2 (r5_model_moves): every later step loads
    the planned version from where the plan recorded it, so the dataset is published, one version."""
    call, store, recording = dataset_handler
    handler, runtime = call.handler, call.runtime
    planned_version = runtime.models.current().version
    moving = _MovingProvider(DirectoryModelProvider(FIXTURE_MODEL))
    monkeypatch.setattr(handler, "runtime", lambda: dataclasses.replace(runtime, models=moving))

    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 4})
    for item in json.loads(store.body(BUCKET, planned["parts_key"])):
        call({"step": "partition", **item})
    moving.serving = _other_model(tmp_path)  # promoted mid-run
    assert moving.current().version != planned_version
    shards = call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    for item in json.loads(store.body(BUCKET, shards["shards_key"])):
        call({"step": "score", **item})
    finish = call({"step": "finish", "bucket": BUCKET, "plan_key": planned["plan_key"]})

    summary = json.loads(store.body(BUCKET, finish["summary_key"]))
    assert finish["status"] == "ok" and summary["model_version"] == planned_version
    assert {m["model_version"] for m in recording.messages} <= {planned_version}


def test_a_provider_that_cannot_load_the_planned_version_fails_the_step_without_scoring(
    dataset_handler, monkeypatch, tmp_path
):
    """No way to load the planned version: the step raises ``ModelVersionError`` (not in the state
    machine's retriers: the run fails with its summary) and nothing is scored with another model."""
    from churnguard.dataset_steps import ModelVersionError

    call, store, recording = dataset_handler
    handler, runtime = call.handler, call.runtime
    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 4})
    other = _other_model(tmp_path)

    class CurrentOnly:  # a provider without load_version
        def current(self):
            return other.current()

        def status(self):
            return other.status()

    monkeypatch.setattr(handler, "runtime", lambda: dataclasses.replace(runtime, models=CurrentOnly()))
    for item in json.loads(store.body(BUCKET, planned["parts_key"])):  # phase 1 keeps the plan's columns
        assert call({"step": "partition", **item})["status"] == "ok"
    shards = call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    item = json.loads(store.body(BUCKET, shards["shards_key"]))[0]
    with pytest.raises(ModelVersionError, match="planned with model"):
        call({"step": "score", **item})
    assert not [k for k in store.keys(BUCKET, "work/") if "/scored/" in k or "/results/shard-" in k]
    assert recording.messages == []


def test_a_success_next_to_a_manifest_starts_no_run_only_the_manifest_does(batch_handler):
    """r4_two_markers: an exporter writing both markers gets one run, the manifest's."""
    deliver, _, starter = batch_handler
    deliver.store.add(BUCKET, f"{PREFIX}part-0000.csv.gz", b"x")
    deliver.store.add(BUCKET, f"{PREFIX}_manifest.json", b"{}")
    deliver.store.add(BUCKET, f"{PREFIX}_SUCCESS", b"")

    deliver(f"{PREFIX}_SUCCESS")
    assert starter.runs == {}
    deliver(f"{PREFIX}_manifest.json")
    assert [run["marker"] for run in starter.runs.values()] == [f"{PREFIX}_manifest.json"]


def test_the_plan_step_of_a_success_run_next_to_a_manifest_is_superseded_and_writes_nothing(dataset_handler):
    """The same at the plan step (the manifest landed after the _SUCCESS event was routed)."""
    call, store, _ = dataset_handler
    store.add(
        BUCKET, f"{PREFIX}_manifest.json", json.dumps({"parts": [{"key": "part-0000.csv.gz"}]}).encode()
    )
    before = store.keys(BUCKET)

    answer = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "marker": f"{PREFIX}_SUCCESS"})

    assert answer["status"] == "superseded" and store.keys(BUCKET) == before
    manifest_run = call(
        {"step": "plan", "bucket": BUCKET, "dataset": DATASET, "marker": f"{PREFIX}_manifest.json"}
    )
    assert manifest_run["status"] == "planned" and manifest_run["parts"] == 1


def test_a_part_landing_after_the_marker_starts_a_run_of_its_own_once(batch_handler):
    """r3_marker_first: ``_SUCCESS`` uploaded before a part. The part's event starts a run (named by
    the part's version: its redelivery starts none), which plans the complete dataset."""
    deliver, processed, starter = batch_handler
    deliver.store.add(BUCKET, f"{PREFIX}part-0000.csv.gz", b"x")  # written before the marker
    deliver.store.add(BUCKET, f"{PREFIX}_SUCCESS", b"")
    deliver.store.add(BUCKET, f"{PREFIX}part-0001.csv.gz", b"y")  # written after it
    deliver(f"{PREFIX}_SUCCESS")
    deliver(f"{PREFIX}part-0000.csv.gz", etag="p0", sequencer="03")  # its event comes late: no run
    assert len(starter.runs) == 1
    deliver(f"{PREFIX}part-0001.csv.gz", etag="p1", sequencer="05")
    deliver(f"{PREFIX}part-0001.csv.gz", etag="p1", sequencer="05")  # redelivered

    assert processed == [] and len(starter.runs) == 2 and len(starter.calls) == 3
    assert all(run["marker"] == f"{PREFIX}_SUCCESS" for run in starter.runs.values())


def test_the_s3_model_provider_loads_a_planned_version_without_moving_what_it_serves(tmp_path):
    """What ``planned_model`` relies on in the deployed function: the serving version's S3 prefix
    (recorded in the plan), and that version loaded from it after the pointer moved."""
    from churnguard.model_provider import ModelUnavailableError
    from churnguard.model_store import S3PointerModelProvider, publish
    from tests.helpers import model_variant
    from tests.unit.fakes import MemoryParameterStore

    store, parameters = MemoryObjectStore(), MemoryParameterStore()
    provider = S3PointerModelProvider(
        parameter_name="/ptr",
        store=store,
        get_parameter=lambda name, max_age: parameters.get(name),
        max_age_s=0,
        cache_dir=tmp_path / "cache",
    )
    publish(
        model_variant(tmp_path, "v1"), store=store, parameters=parameters, bucket="b", parameter_name="/ptr"
    )
    assert provider.current().version == "v1"
    location = provider.location("v1")
    assert location == "s3://b/models/v1/" and provider.location("v2") is None
    publish(
        model_variant(tmp_path, "v2"), store=store, parameters=parameters, bucket="b", parameter_name="/ptr"
    )
    assert provider.current().version == "v2"  # promoted mid-run

    assert provider.load_version("v1", location).version == "v1"
    assert provider.current().version == "v2"  # what it serves is unchanged
    with pytest.raises(ModelUnavailableError, match="not v3"):
        provider.load_version("v3", location)  # files of another version are refused
    assert not (tmp_path / "cache" / "v3").exists()  # and not cached as v3
