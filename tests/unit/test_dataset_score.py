"""The dataset function's handler, step by step as the state machine calls it, and the batch
function's routing of drops — through the in-memory fakes (no moto, no network)."""

from __future__ import annotations

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
    runtime = BatchRuntime(
        settings=_settings(),
        models=DirectoryModelProvider(FIXTURE_MODEL),
        publisher=None,
        policy=PromotionPolicy(),
        store=MemoryObjectStore(),
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
