"""Multi-part dataset drops (``churnguard.dataset_drops``) through the ports, with an in-memory store and
the fixture model: which drop a key is, the manifest, the plan, and the two-phase run on the shape of
issue 12's reproduction (an export sorted by time, split by size, so customers span parts and one part
ends early) — one as-of, every customer once on their whole history, promotions once per customer."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from churnguard.admission import MemoryModel
from churnguard.batch import read_columns, score_file
from churnguard.bundle import ModelBundle
from churnguard.dataset_drops import (
    DatasetError,
    DatasetPlan,
    DropKey,
    DropKind,
    ManifestError,
    PartResult,
    ShardResult,
    Shuffle,
    classify_key,
    finish_dataset,
    parse_manifest,
    partition_part,
    pending_datasets,
    plan_dataset,
    plan_shards,
    score_shard,
    shards_for_rows,
)
from churnguard.datasets import generate_synthetic_events
from churnguard.idempotency import LedgeredPublisher
from churnguard.ports import ListedObject
from churnguard.promotions import PromotionPolicy
from churnguard.scoring import ReasonsFor
from tests.helpers import FIXTURE_MODEL
from tests.unit.fakes import MemoryLedger, MemoryObjectStore, RecordingPublisher

BUCKET = "data"
DATASET = "export-2026-11-28"
PREFIX = f"incoming/{DATASET}/"
NOW = dt.datetime(2026, 11, 28, 12, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.from_directory(FIXTURE_MODEL)


# --- which drop a key is --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("incoming/export.csv", DropKey(DropKind.SINGLE)),
        ("incoming/export.CSV.GZ", DropKey(DropKind.SINGLE)),
        ("incoming/export.parquet", DropKey(DropKind.SINGLE)),
        ("incoming/ds/part-0000.csv.gz", DropKey(DropKind.DATASET_PART, "ds", "part-0000.csv.gz")),
        (
            "incoming/ds/date=2024-01-01/p.parquet",
            DropKey(DropKind.DATASET_PART, "ds", "date=2024-01-01/p.parquet"),
        ),
        ("incoming/ds/_SUCCESS", DropKey(DropKind.MARKER, "ds", "_SUCCESS")),
        ("incoming/ds/_manifest.json", DropKey(DropKind.MARKER, "ds", "_manifest.json")),
        # the splitter's parts keep their meaning: scored alone, as today
        ("incoming/_parts/big/part-00003.csv.gz", DropKey(DropKind.SPLIT_PART)),
        ("incoming/_parts2/big/part-00003/part-00001.csv.gz", DropKey(DropKind.SPLIT_PART)),
        # never data
        ("incoming/_SUCCESS", DropKey(DropKind.IGNORED)),
        ("incoming/_manifest.json", DropKey(DropKind.IGNORED)),
        ("incoming/_other/x.csv", DropKey(DropKind.IGNORED)),
        ("incoming/.hidden.csv", DropKey(DropKind.IGNORED)),
        ("incoming/ds/_temporary/0/part-0.csv", DropKey(DropKind.IGNORED, "ds", "_temporary/0/part-0.csv")),
        ("incoming/ds/.part-0.csv.crc", DropKey(DropKind.IGNORED, "ds", ".part-0.csv.crc")),
        ("incoming/ds/sub/_SUCCESS", DropKey(DropKind.IGNORED, "ds", "sub/_SUCCESS")),  # markers: top only
        ("incoming/ds/", DropKey(DropKind.IGNORED, "ds", "")),  # a console "folder"
        ("incoming/ds//x.csv", DropKey(DropKind.IGNORED, "ds", "/x.csv")),
        # reported, not scored
        ("incoming/notes.txt", DropKey(DropKind.UNSUPPORTED)),
        ("incoming/ds/part-0.json", DropKey(DropKind.UNSUPPORTED, "ds", "part-0.json")),
        ("scored/x.csv", DropKey(DropKind.OUTSIDE)),
    ],
)
def test_the_rule_tells_single_drops_dataset_parts_markers_and_non_data_apart(key, expected):
    assert classify_key(key) == expected


# --- the manifest ---------------------------------------------------------------------------------------


def test_a_manifest_reads_its_parts_sizes_and_as_of():
    manifest = parse_manifest(
        b'{"format_version": 1, "as_of": "2024-10-01", '
        b'"parts": [{"key": "a.csv", "size": 3}, {"key": "b/c.parquet"}]}'
    )
    assert manifest.as_of == dt.date(2024, 10, 1)
    assert [(p.key, p.size) for p in manifest.parts] == [("a.csv", 3), ("b/c.parquet", None)]
    assert parse_manifest(b'{"parts": [{"key": "a.csv"}]}').format_version == 1  # the version is optional


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"format_version": 2, "parts": [{"key": "a.csv"}]}', "format_version"),
        (b'{"parts": [{"key": "a.csv"}], "as_of": "yesterday"}', "as_of"),
        (b'{"parts": []}', "parts"),
        (b'{"part": [{"key": "a.csv"}]}', "part"),  # a typo is refused, not ignored
        (b'{"parts": [{"key": "a.csv"}, {"key": "../b.csv"}]}', "parts[1].key"),
        (b'{"parts": [{"key": "a.csv"}, {"key": "_SUCCESS"}]}', "parts[1].key"),
        (b'{"parts": [{"key": "a.json"}]}', "parts[0].key"),
        (b'{"parts": [{"key": "a.csv", "size": -1}]}', "parts[0].size"),
        (b'{"parts": [{"key": "a.csv"}, {"key": "a.csv"}]}', "parts"),
        (b"not json", "manifest"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_field(body, named):
    with pytest.raises(ManifestError) as raised:
        parse_manifest(body)
    message = str(raised.value)
    assert message.startswith("_manifest.json is not valid: ") and f" {named}: " in message


# --- the plan -------------------------------------------------------------------------------------------


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _score_as_one_file(events: pd.DataFrame, bundle, as_of: str):
    """The reference a dataset is checked against: the same customers scored as one file, same as-of."""
    return score_file(
        _csv(events), "all.csv", bundle, as_of=as_of, policy=PromotionPolicy(), publisher=None, source="s"
    )


def _tiny_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {"user_id": ["a", "b"], "timestamp": ["2024-01-01", "2024-01-02"], "event_type": "order"}
    )


def _tiny_dataset(store: MemoryObjectStore, manifest: dict | None = None) -> None:
    rows = _tiny_rows()
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(rows))
    store.add(BUCKET, PREFIX + "part-0001.csv", _csv(rows))
    store.add(BUCKET, PREFIX + "notes.txt", b"hello")
    store.add(BUCKET, PREFIX + "_temporary/part-0009.csv", _csv(rows))
    if manifest is None:
        store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    else:
        store.add(BUCKET, PREFIX + "_manifest.json", json.dumps(manifest).encode())


def test_with_success_the_parts_are_the_supported_files_listed_and_the_rest_is_reported():
    store = MemoryObjectStore()
    _tiny_dataset(store)

    plan = plan_dataset(store, BUCKET, DATASET)

    assert [p.relative for p in plan.parts] == ["part-0000.csv", "part-0001.csv"]
    assert plan.marker == "_SUCCESS" and plan.as_of is None and plan.shards == 1
    assert [(i.relative, i.reason) for i in plan.ignored] == [
        ("notes.txt", "unsupported file type: not scored")
    ]
    assert plan.estimated_rows == 4
    assert DatasetPlan.model_validate_json(plan.model_dump_json()) == plan  # passed between steps as JSON


def test_with_a_manifest_its_parts_and_as_of_are_the_dataset_and_a_part_not_in_it_is_ignored():
    store = MemoryObjectStore()
    size = len(_csv(_tiny_rows()))
    _tiny_dataset(store, {"as_of": "2024-02-01", "parts": [{"key": "part-0001.csv", "size": size}]})

    plan = plan_dataset(store, BUCKET, DATASET)

    assert [p.relative for p in plan.parts] == ["part-0001.csv"] and plan.as_of == dt.date(2024, 2, 1)
    assert ("part-0000.csv", "not in the manifest: not scored") in [
        (i.relative, i.reason) for i in plan.ignored
    ]


def test_a_manifest_naming_a_missing_or_resized_part_fails_naming_it():
    store = MemoryObjectStore()
    _tiny_dataset(store, {"parts": [{"key": "part-0000.csv"}, {"key": "part-0007.csv"}]})
    with pytest.raises(DatasetError, match=r"not in the dataset: \['part-0007.csv'\]"):
        plan_dataset(store, BUCKET, DATASET)

    store = MemoryObjectStore()
    _tiny_dataset(store, {"parts": [{"key": "part-0000.csv", "size": 1}]})
    with pytest.raises(DatasetError, match=r"part-0000.csv \(\d+ bytes, the manifest says 1\)"):
        plan_dataset(store, BUCKET, DATASET)


def test_a_dataset_without_a_marker_is_not_planned_and_is_reported_pending_with_its_age():
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv", b"user_id\n")
    store.add(BUCKET, "incoming/closed/part-0000.csv", b"user_id\n")
    store.add(BUCKET, "incoming/closed/_SUCCESS", b"")
    store.add(BUCKET, "incoming/single.csv", b"user_id\n")
    store.objects[(BUCKET, PREFIX + "part-0000.csv")].last_modified = NOW - dt.timedelta(hours=2)

    with pytest.raises(DatasetError, match="not closed"):
        plan_dataset(store, BUCKET, DATASET)
    pending = pending_datasets(store.list_objects(BUCKET, "incoming/"), NOW)
    assert [(p.dataset, p.parts, p.age_s) for p in pending] == [(DATASET, 1, 7200.0)]


def test_the_number_of_shards_grows_with_the_dataset_so_one_shard_fits_one_invocation():
    memory = MemoryModel(budget_mb=3008)
    counts = [shards_for_rows(rows, memory) for rows in (0, 1_000_000, 10_000_000, 100_000_000, 300_000_000)]
    assert counts[:2] == [1, 1] and counts == sorted(counts) and counts[-1] > counts[-2] > counts[-3] > 1
    # each shard, at the assumed one customer per two rows, is predicted within the invocation's memory
    rows = -(-300_000_000 // counts[-1])
    assert memory.fits(rows, rows // 2, 0) and memory.fits(rows, rows, 0)  # even one-event customers

    store = MemoryObjectStore()  # through the plan: a bigger export gets more shards
    small = MemoryModel(budget_mb=(560 + 2) / 0.85)  # ~2 MB for data
    events = generate_synthetic_events(60, seed=3, weeks=30)
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(events))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    one = plan_dataset(store, BUCKET, DATASET, memory=small)
    store.add(BUCKET, PREFIX + "part-0001.csv.gz", gzip.compress(_csv(pd.concat([events] * 4))))
    more = plan_dataset(store, BUCKET, DATASET, memory=small)
    assert 1 <= one.shards < more.shards and one.run_id != more.run_id


# --- the two-phase run on the reproduction's shape ------------------------------------------------------


@pytest.fixture(scope="module")
def export() -> list[pd.DataFrame]:
    """~500 customers sorted by time, cut by size into 3 parts (the first ends early in time); two
    planted bad rows (part 1 data row 3, part 2 data row 5)."""
    events = generate_synthetic_events(500, seed=5, weeks=40)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    n = len(events)
    parts = [events.iloc[: n // 5], events.iloc[n // 5 : n * 3 // 5], events.iloc[n * 3 // 5 :]]
    parts = [p.reset_index(drop=True) for p in parts]
    bad = pd.DataFrame([{"user_id": "bad-1", "timestamp": "not a date", "event_type": "order"}])
    parts[1] = pd.concat([parts[1].iloc[:2], bad, parts[1].iloc[2:]], ignore_index=True)
    parts[2] = parts[2].astype({"amount": object})
    parts[2].loc[4, "amount"] = -3  # a valid customer's bad row
    return parts


def _dataset_store(parts: list[pd.DataFrame]) -> MemoryObjectStore:
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(parts[0]))
    store.add(BUCKET, PREFIX + "part-0001.csv.gz", gzip.compress(_csv(parts[1])))
    buffer = io.BytesIO()
    parts[2].astype(str).to_parquet(buffer, index=False)
    store.add(BUCKET, PREFIX + "part-0002.parquet", buffer.getvalue())
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    return store


@dataclass
class Run:
    store: MemoryObjectStore
    plan: DatasetPlan
    parts: list[PartResult]
    shuffle: Shuffle
    shards: list[ShardResult]
    publisher: RecordingPublisher
    ledger: MemoryLedger


def _run(store, bundle, *, shards: int = 4, score_twice: int | None = None) -> Run:
    plan = plan_dataset(store, BUCKET, DATASET, shards=shards)
    parts = [partition_part(store, plan, p.index, columns=read_columns(bundle, p.key)) for p in plan.parts]
    shuffle = plan_shards(plan, parts)
    recording, ledger = RecordingPublisher(), MemoryLedger()
    publisher = LedgeredPublisher(recording, ledger)
    policy = PromotionPolicy()
    results = [
        score_shard(store, plan, task, bundle, policy=policy, publisher=publisher, now=NOW)
        for task in shuffle.tasks
    ]
    if score_twice is not None:  # a retried shard: scored and published again
        task = shuffle.tasks[score_twice]
        results[score_twice] = score_shard(
            store, plan, task, bundle, policy=policy, publisher=publisher, now=NOW
        )
    return Run(store, plan, parts, shuffle, results, recording, ledger)


@pytest.fixture(scope="module")
def run(export, bundle) -> Run:
    return _run(_dataset_store(export), bundle, score_twice=1)


def test_customers_span_parts_as_in_the_reproduction(export):
    ids = [set(p["user_id"]) for p in export]
    assert len(ids[0] & ids[1]) > 100 and len(ids[0] & ids[2]) > 100
    assert export[0]["timestamp"].max() < export[2]["timestamp"].max()  # the first part ends early


def test_the_dataset_is_scored_as_of_one_day_every_customer_once_on_their_whole_history(run, export, bundle):
    summary = finish_dataset(run.store, run.plan, run.parts, run.shards)

    assert summary.status == "ok", summary.errors
    whole = pd.concat(export, ignore_index=True)
    latest = pd.to_datetime(whole["timestamp"], errors="coerce", utc=True).max()
    assert summary.as_of == (latest.normalize() + pd.Timedelta(days=1)).date().isoformat()
    assert {s.as_of for s in run.shards} == {f"{summary.as_of}T00:00:00"}
    assert len(run.shuffle.tasks) == 4 and summary.outputs == [
        f"scored/{DATASET}/{run.plan.run_id}/part-{s:04d}.parquet" for s in range(4)
    ]
    scored = pd.concat([pd.read_parquet(io.BytesIO(run.store.body(BUCKET, k))) for k in summary.outputs])
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(whole["user_id"]) - {"bad-1"}
    assert summary.customers_scored == len(scored)

    # the same customers scored from the whole export as one file, as of the same day
    single = _score_as_one_file(whole, bundle, summary.as_of)
    assert single.scored is not None and single.summary.rows_used == summary.rows_used
    expected = single.scored.set_index("user_id").loc[scored["user_id"]]
    np.testing.assert_allclose(
        scored["churn_probability"], expected["churn_probability"], rtol=1e-6, atol=1e-6
    )
    assert scored["risk_tier"].tolist() == expected["risk_tier"].tolist()


def test_rows_in_are_used_plus_rejected_and_the_rejects_carry_part_and_row(run, export):
    summary = finish_dataset(run.store, run.plan, run.parts, run.shards)

    assert summary.rows_in == sum(len(p) for p in export) == summary.rows_used + summary.rows_rejected
    rejects = pd.read_csv(
        io.BytesIO(run.store.body(BUCKET, f"scored/{DATASET}/{run.plan.run_id}/_rejects.csv"))
    )
    assert rejects[["part", "source_row"]].values.tolist() == [
        ["part-0001.csv.gz", 3],
        ["part-0002.parquet", 5],
    ]
    assert (
        "timestamp is not ISO-8601" in rejects["reason"][0] and "amount is negative" in rejects["reason"][1]
    )
    assert summary.rejects == f"scored/{DATASET}/{run.plan.run_id}/_rejects.csv"


def test_no_customer_is_promoted_twice_even_when_a_shard_is_scored_twice(run):
    keys = [m["idempotency_key"] for m in run.publisher.messages]
    users = [m["user_id"] for m in run.publisher.messages]
    assert users and len(set(users)) == len(users) and len(set(keys)) == len(keys)
    assert {m["source"] for m in run.publisher.messages} == {
        f"s3://{BUCKET}/{PREFIX}"
    }  # keyed on the dataset
    # the retried shard counts the promotions the ledger had as sent, and sent none of them again
    assert run.shards[1].customers_queued > 0 and len(run.ledger.keys) == len(keys)
    summary = finish_dataset(run.store, run.plan, run.parts, run.shards)
    assert summary.customers_queued == len(users)
    assert summary.customers_queued <= summary.customers_at_or_above_promotion <= summary.customers_scored


def test_the_marker_is_never_read_nor_scored(run):
    marker = PREFIX + "_SUCCESS"
    assert not [c for c in run.store.calls if c[1] == marker]
    assert not [k for k in run.store.keys(BUCKET) if "_SUCCESS" in k and k != marker]


def test_partitioning_a_part_again_writes_the_same_objects(run, bundle):
    part = run.plan.parts[1]
    before = {k: run.store.body(BUCKET, k) for k in run.parts[1].keys_written}

    again = partition_part(run.store, run.plan, 1, columns=read_columns(bundle, part.key))

    assert again.model_copy(update={"duration_s": 0}) == run.parts[1].model_copy(update={"duration_s": 0})
    assert {k: run.store.body(BUCKET, k) for k in again.keys_written} == before
    pieces = [pd.read_csv(io.BytesIO(gzip.decompress(before[k]))) for k in before if "/shard-" in k]
    assert {tuple(p.columns[-2:]) for p in pieces} == {("_source_part", "_source_row")}
    assert "event_id" not in pieces[0].columns


def test_a_failed_part_fails_the_dataset_before_scoring_and_nothing_is_published(export, bundle):
    store = _dataset_store(export)
    store.add(BUCKET, PREFIX + "part-0001.csv.gz", b"\x1f\x8b\x08\x00 not really gzip" * 50)

    run = _run(store, bundle)

    assert run.parts[1].status == "failed" and run.shuffle.tasks == [] and run.shards == []
    summary = finish_dataset(run.store, run.plan, run.parts, run.shards)
    assert summary.status == "failed" and summary.error_type == "PartFailed"
    assert "part-0001.csv.gz failed" in summary.errors[0]
    assert store.keys(BUCKET, "scored/") == [f"scored/{DATASET}/_summary.json"]
    assert json.loads(store.body(BUCKET, f"scored/{DATASET}/_summary.json"))["status"] == "failed"
    assert run.publisher.messages == []


def test_a_shard_missing_a_piece_fails_before_anything_is_scored_or_sent(export, bundle):
    store = _dataset_store(export)
    plan = plan_dataset(store, BUCKET, DATASET, shards=2)
    parts = [partition_part(store, plan, p.index, columns=read_columns(bundle, p.key)) for p in plan.parts]
    task = plan_shards(plan, parts).tasks[0]
    del store.objects[(BUCKET, task.pieces[0])]
    task = task.model_copy(update={"pieces": task.pieces[1:]})  # as if a piece went missing
    publisher = RecordingPublisher()

    result = score_shard(store, plan, task, bundle, policy=PromotionPolicy(), publisher=publisher)

    assert (
        result.status == "failed" and result.error_type == "ShardMismatchError" and result.scored_key is None
    )
    assert publisher.messages == [] and store.keys(BUCKET, plan.work_prefix + "scored/") == []
    summary = finish_dataset(store, plan, parts, [result])
    assert summary.status == "failed" and store.keys(BUCKET, f"scored/{DATASET}/") == [
        f"scored/{DATASET}/_summary.json"
    ]


def test_a_violated_invariant_is_a_failed_summary_not_a_report(run):
    tampered = [run.shards[0].model_copy(update={"rows_used": run.shards[0].rows_used - 1}), *run.shards[1:]]
    store = MemoryObjectStore()
    store.objects = dict(run.store.objects)
    for key in store.keys(BUCKET, f"scored/{DATASET}"):
        del store.objects[(BUCKET, key)]

    summary = finish_dataset(store, run.plan, run.parts, tampered)

    assert summary.status == "failed" and summary.error_type == "InvariantViolated"
    assert any("rows in" in e for e in summary.errors) and summary.outputs == []
    assert store.keys(BUCKET, "scored/") == [f"scored/{DATASET}/_summary.json"]


def test_the_listing_of_the_store_fake_matches_the_port():
    store = MemoryObjectStore()
    store.add(BUCKET, "incoming/b.csv", b"12")
    store.add(BUCKET, "incoming/a.csv", b"1")
    store.add("other", "incoming/c.csv", b"1")
    listed = store.list_objects(BUCKET, "incoming/")
    assert [(o.key, o.size) for o in listed] == [("incoming/a.csv", 1), ("incoming/b.csv", 2)]
    assert all(isinstance(o, ListedObject) for o in listed)


def test_a_datasets_summary_and_rejects_never_overwrite_a_single_drop_of_the_same_name(run):
    """``incoming/<dataset>.csv`` (a single drop) writes ``scored/<dataset>.summary.json``; the
    dataset's own objects are inside its folder, under names no part output can have."""
    finish_dataset(run.store, run.plan, run.parts, run.shards)
    single_drop_summary = f"scored/{DATASET}.summary.json"
    assert run.plan.summary_key == f"scored/{DATASET}/_summary.json" != single_drop_summary
    assert run.plan.rejects_key == f"scored/{DATASET}/{run.plan.run_id}/_rejects.csv"
    assert (BUCKET, single_drop_summary) not in run.store.objects
    published = run.store.keys(BUCKET, f"scored/{DATASET}/")
    run_folder = f"scored/{DATASET}/{run.plan.run_id}/"
    summary_key = f"scored/{DATASET}/_summary.json"
    assert summary_key in published and f"{run_folder}_rejects.csv" in published
    parts = set(published) - {summary_key, f"{run_folder}_rejects.csv"}
    assert parts and all(k.startswith(f"{run_folder}part-") for k in parts)


# --- review 12: a run is what was planned (model, parts, content), whatever lands meanwhile ----------


def _steps(store: MemoryObjectStore, bundle: ModelBundle, *, shards: int = 4, models=None, scorer=None):
    """Every step of a run in order through ``churnguard.dataset_steps`` (as the state machine calls
    them); ``models``/``scorer``: what phase 1 / phase 2 get (default: ``bundle``). The summary."""
    from churnguard.dataset_steps import (
        FinishStep,
        PartitionStep,
        PlanStep,
        ScoreStep,
        Scoring,
        ShardsStep,
        run_finish,
        run_partition,
        run_plan,
        run_plan_shards,
        run_score,
    )

    memory = MemoryModel(budget_mb=3008)
    planned = run_plan(
        store, PlanStep(step="plan", bucket=BUCKET, dataset=DATASET, shards=shards), memory, bundle
    )
    assert planned["status"] == "planned", planned
    for item in json.loads(store.body(BUCKET, planned["parts_key"])):
        run_partition(store, PartitionStep(step="partition", **item), models or bundle)
    ready = run_plan_shards(
        store, ShardsStep(step="shards", bucket=BUCKET, plan_key=planned["plan_key"]), memory
    )
    if ready["status"] == "ready":
        publisher = LedgeredPublisher(RecordingPublisher(), MemoryLedger())
        scoring = Scoring(scorer or bundle, PromotionPolicy(), publisher, ReasonsFor.PROMOTED, memory)
        for item in json.loads(store.body(BUCKET, ready["shards_key"])):
            run_score(store, ScoreStep(step="score", **item), scoring)
    finish = FinishStep(step="finish", bucket=BUCKET, plan_key=planned["plan_key"])
    run_finish(store, finish, memory, models=scorer or bundle)
    return json.loads(store.body(BUCKET, f"scored/{DATASET}/_summary.json")), planned


def _events(customers: int = 60, seed: int = 3) -> pd.DataFrame:
    events = generate_synthetic_events(customers, seed=seed, weeks=30).sort_values("timestamp", kind="stable")
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return events.reset_index(drop=True)


def test_a_rerun_with_fewer_shards_leaves_only_its_own_outputs_and_a_failed_one_removes_none(bundle):
    """Each run publishes into a folder of its own and the summary names it; once an ok summary is
    written the earlier runs' outputs go, so no stale part sits beside the current ones."""
    events = _events(customers=80)
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(events))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    store.add(BUCKET, f"scored/{DATASET}/part-0007.parquet", b"from a release before run folders")
    first, _ = _steps(store, bundle, shards=4)
    assert first["status"] == "ok" and len(first["outputs"]) == 4

    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(events.iloc[:-1]))  # corrected and dropped again
    second, _ = _steps(store, bundle, shards=2)
    assert second["status"] == "ok" and second["run_id"] != first["run_id"] and len(second["outputs"]) == 2
    published = store.keys(BUCKET, f"scored/{DATASET}/")
    assert sorted(published) == sorted(
        [*second["outputs"], second["rejects"], f"scored/{DATASET}/_summary.json"]
    )
    summary_key = f"scored/{DATASET}/_summary.json"
    assert all(k.startswith(f"scored/{DATASET}/{second['run_id']}/") for k in published if k != summary_key)

    # a third run whose shards are never scored: finish fails it, and removes nothing
    from churnguard.dataset_steps import FinishStep, PlanStep, run_finish, run_plan

    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(events.iloc[:-2]))
    memory = MemoryModel(budget_mb=3008)
    planned = run_plan(store, PlanStep(step="plan", bucket=BUCKET, dataset=DATASET, shards=2), memory, bundle)
    finish, _ = run_finish(
        store, FinishStep(step="finish", bucket=BUCKET, plan_key=planned["plan_key"]), memory
    )
    assert finish["status"] == "failed"
    assert sorted(store.keys(BUCKET, f"scored/{DATASET}/")) == sorted(published)


def test_a_part_that_lands_after_the_marker_fails_the_run_before_scoring_and_nothing_is_published(bundle):
    """``aws s3 cp --recursive`` may upload ``_SUCCESS`` before the last part: the run's listing is
    incomplete. The shards step re-lists the dataset: the run stops before phase 2, and finish
    writes a failed summary naming the added part (r3_marker_first)."""
    from churnguard.dataset_steps import (
        FinishStep,
        PartitionStep,
        PlanStep,
        ShardsStep,
        run_finish,
        run_partition,
        run_plan,
        run_plan_shards,
    )

    events = _events()
    half = len(events) // 2
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv.gz", gzip.compress(_csv(events.iloc[:half])))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    memory = MemoryModel(budget_mb=3008)
    planned = run_plan(store, PlanStep(step="plan", bucket=BUCKET, dataset=DATASET, shards=2), memory, bundle)
    run_partition(
        store, PartitionStep(step="partition", bucket=BUCKET, plan_key=planned["plan_key"], part=0), bundle
    )
    store.add(BUCKET, PREFIX + "part-0001.csv.gz", gzip.compress(_csv(events.iloc[half:])))  # the late part

    shards = run_plan_shards(
        store, ShardsStep(step="shards", bucket=BUCKET, plan_key=planned["plan_key"]), memory
    )
    finish, _ = run_finish(
        store, FinishStep(step="finish", bucket=BUCKET, plan_key=planned["plan_key"]), memory
    )

    assert shards["status"] == "failed" and finish["status"] == "failed"
    # The late part's own event starts a newer run, which writes the dataset's summary: this run's
    # failed summary stays in its work area, and nothing is written under scored/.
    summary = json.loads(store.body(BUCKET, finish["summary_key"]))
    assert finish["summary_key"].startswith(f"work/{DATASET}/")
    assert summary["error_type"] == "DatasetChanged" and "part-0001.csv.gz" in " ".join(summary["errors"])
    assert store.keys(BUCKET, "scored/") == []


def test_a_part_uploaded_again_mid_run_fails_finish_naming_it(bundle):
    """The same check at finish: a part replaced after phase 2 (same name and size, other bytes)."""
    from churnguard.dataset_drops import dataset_changes

    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(_tiny_rows()))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    plan = plan_dataset(store, BUCKET, DATASET, bundle=bundle)
    assert dataset_changes(store, plan).errors == []
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(_tiny_rows().assign(user_id=["x", "y"])))
    changes = dataset_changes(store, plan)
    assert changes.superseded and changes.errors == [
        "part(s) changed (uploaded again) since the dataset was planned: ['part-0000.csv']"
    ]
    # a part removed: no newer run will come, so finish writes the dataset's failed summary
    del store.objects[(BUCKET, PREFIX + "part-0000.csv")]
    store.add(BUCKET, PREFIX + "part-0001.csv", _csv(_tiny_rows()))
    changes = dataset_changes(store, plan)
    assert changes.removed == ["part-0000.csv"] and changes.added == ["part-0001.csv"]
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(_tiny_rows()))
    del store.objects[(BUCKET, PREFIX + "part-0001.csv")]
    assert dataset_changes(store, plan).errors == []  # the same bytes again: the same ETag
    del store.objects[(BUCKET, PREFIX + "part-0000.csv")]
    summary = finish_dataset(store, plan, [], [], changes=dataset_changes(store, plan))
    assert summary.status == "failed" and summary.error_type == "DatasetChanged"
    assert json.loads(store.body(BUCKET, plan.summary_key))["status"] == "failed"
    # a manifest written after a _SUCCESS run planned: the manifest's own run writes the summary
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(_tiny_rows()))
    store.add(BUCKET, PREFIX + "_manifest.json", json.dumps({"parts": [{"key": "part-0000.csv"}]}).encode())
    changes = dataset_changes(store, plan)
    assert changes.superseded and changes.errors == [
        "_manifest.json was added after the run started from _SUCCESS"
    ]


@pytest.mark.parametrize("empty", [gzip.compress(b""), b""], ids=["empty-gzip", "zero-bytes"])
def test_a_part_holding_no_rows_is_an_empty_part_not_a_failed_one(bundle, empty):
    """Spark writes empty partitions: a compressed part of no bytes has no rows (r1_empty_parts)."""
    events = _events()
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv.gz", gzip.compress(_csv(events)))
    store.add(BUCKET, PREFIX + "part-0001.csv.gz", empty)
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")

    summary, _ = _steps(store, bundle, shards=2)

    assert summary["status"] == "ok", summary["errors"]
    assert summary["parts"] == 2 and summary["rows_in"] == len(events)


def test_a_re_drop_with_other_bytes_of_the_same_size_is_a_new_run_and_stale_results_are_not_read(bundle):
    """The run id hashes each part's ETag, so a corrected re-export of the same sizes gets a work
    area of its own; and finish reads the results of the planned shards (shards.json), never a
    listing that may hold an earlier attempt's (r6_same_run_id)."""

    def part(ids: list[str]) -> bytes:
        n = len(ids)
        frame = pd.DataFrame(
            {"user_id": ids, "timestamp": ["2024-03-01T00:00:00Z"] * n, "event_type": ["order"] * n}
        )
        return _csv(frame.assign(amount=["10.00"] * n))

    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv", part([f"c{i:03d}" for i in range(40)]))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    first, _ = _steps(store, bundle, shards=8)
    store.add(BUCKET, PREFIX + "part-0000.csv", part(["c900"] * 40))  # same size, one customer
    second, planned2 = _steps(store, bundle, shards=8)

    assert first["status"] == "ok" and second["status"] == "ok", second["errors"]
    assert first["run_id"] != second["run_id"] and second["customers_scored"] == 1

    # a stale result of a shard the run did not plan, left in its work area: not read
    from churnguard.dataset_steps import FinishStep, load_plan, result_key, run_finish

    plan = load_plan(store, BUCKET, planned2["plan_key"])
    stale = ShardResult(shard=7, customers_scored=5, rows_in=5, rows_used=5)
    store.put_bytes(BUCKET, result_key(plan, "shard", 7), stale.model_dump_json().encode())
    again, _ = run_finish(
        store,
        FinishStep(step="finish", bucket=BUCKET, plan_key=planned2["plan_key"]),
        MemoryModel(budget_mb=3008),
    )
    assert again["status"] == "ok" and again["customers_scored"] == 1


def test_a_value_with_a_bare_carriage_return_scores_as_in_a_single_file(bundle):
    """An id or event type padded with '\\r' is valid (validation strips it): the shard pieces quote
    every field, so phase 2 reads the row back whole, as the single file is read (r7_cr)."""
    source = (
        b"user_id,timestamp,event_type,amount\n"
        b'"c1\r",2024-03-01T00:00:00Z,order,10\n'
        b'c2,2024-03-02T00:00:00Z,"order\r",5\n'
        b"c3,2024-03-02T00:00:00Z,order,5\n"
    )
    single = score_file(source, "x.csv", bundle, policy=PromotionPolicy(), publisher=None, source="s")
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0.csv", source)
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")

    summary, _ = _steps(store, bundle, shards=1)

    assert single.summary.status == "ok" and single.summary.customers_scored == 3
    assert summary["status"] == "ok", summary["errors"]
    assert (summary["rows_in"], summary["rows_rejected"], summary["customers_scored"]) == (
        single.summary.rows_in,
        single.summary.rows_rejected,
        single.summary.customers_scored,
    )


def test_the_plan_records_the_model_and_every_step_scores_with_that_version(bundle, tmp_path):
    """The plan fixes the run's model version and the columns phase 1 keeps; a step given another
    version raises ``ModelVersionError`` rather than score with it (r5_model_moves)."""
    import shutil

    from churnguard.dataset_steps import ModelVersionError, load_plan

    events = _events()
    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv.gz", gzip.compress(_csv(events)))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    other_dir = tmp_path / "model_b"
    shutil.copytree(FIXTURE_MODEL, other_dir)
    meta = json.loads((other_dir / "metadata.json").read_text())
    meta["model_version"] = "20261201T000000Z-bbbbbbbb"
    (other_dir / "metadata.json").write_text(json.dumps(meta))
    other = ModelBundle.from_directory(other_dir)

    with pytest.raises(ModelVersionError, match="planned with model"):
        _steps(store, bundle, shards=2, scorer=other)

    summary, planned = _steps(store, bundle, shards=2, scorer=lambda plan: bundle)
    plan = load_plan(store, BUCKET, planned["plan_key"])
    assert plan.model_version == bundle.version == summary["model_version"]
    assert plan.columns == list(read_columns(bundle, PREFIX))


# --- drift: the dataset's PSI is the one of its customers scored as one file --------------------------


@pytest.fixture(scope="module")
def drift_bundle(bundle) -> ModelBundle:
    """The fixture model with a drift reference of its own (whatever the fixture directory holds):
    binned like training's (deciles, a missing bin), over values in the ranges batch features take."""
    from dataclasses import replace

    from churnguard.drift import DriftReference, monitored_columns

    columns = monitored_columns(bundle.spec)
    rng = np.random.default_rng(7)
    values = rng.gamma(1.0, 4.0, size=(3000, len(columns))).round()
    values[rng.random(values.shape) < 0.1] = np.nan
    reference = DriftReference.build(rng.beta(1.5, 4.0, size=3000), values, columns)
    return replace(bundle, drift_reference=reference)


@pytest.fixture(scope="module")
def drift_run(export, drift_bundle) -> Run:
    return _run(_dataset_store(export), drift_bundle, shards=4)


def test_each_shard_carries_its_drift_counts_through_its_json(drift_run, drift_bundle):
    from churnguard.drift import DriftCounts

    reference = drift_bundle.drift_reference
    assert len(drift_run.shards) == 4 and all(s.status == "ok" for s in drift_run.shards)
    for shard in drift_run.shards:
        text = shard.model_dump_json()
        assert len(text) < 20_000  # one count per bin, whatever the shard's size
        again = ShardResult.model_validate_json(text)
        assert again == shard
        counts = DriftCounts.from_dict(again.drift_counts)
        assert counts.customers + counts.outside_population == shard.customers_scored
        assert counts.score.sum() == counts.customers
        assert [len(c) for c in counts.features] == [f.binned.n_bins for f in reference.features]
        assert all(c.sum() == counts.customers for c in counts.features)


def test_the_datasets_psi_is_the_psi_of_its_customers_scored_as_one_file(drift_run, export, drift_bundle):
    """Finish merges the shards' bin counts and computes the PSI once: the whole ``drift`` section is
    the one batch gives the same customers in one file, not an average of the shards' PSIs."""
    from churnguard.drift import DriftCounts, drift_summary

    reference = drift_bundle.drift_reference
    summary = finish_dataset(
        drift_run.store, drift_run.plan, drift_run.parts, drift_run.shards, reference=reference
    )
    assert summary.status == "ok", summary.errors
    single = _score_as_one_file(pd.concat(export, ignore_index=True), drift_bundle, summary.as_of)
    assert summary.drift is not None and summary.drift["status"] == "ok"
    assert summary.drift == single.summary.drift
    assert summary.drift["customers"] + summary.drift["outside_population"] == summary.customers_scored
    assert set(summary.drift["group_psi"]) == set(reference.groups)

    per_shard = [
        drift_summary(reference, DriftCounts.from_dict(s.drift_counts), min_customers=0)["score_psi"]
        for s in drift_run.shards
    ]
    assert summary.drift["score_psi"] != pytest.approx(np.mean(per_shard), abs=1e-6)  # not averaged
    written = json.loads(drift_run.store.body(BUCKET, f"scored/{DATASET}/_summary.json"))
    assert written["drift"] == summary.drift


def test_a_small_dataset_has_no_psi_and_a_model_without_a_reference_says_so(drift_bundle, bundle):
    """Through the steps (finish gets the planned model for its reference): fewer customers than
    ``MIN_CUSTOMERS`` over the whole dataset give a null PSI with the status, as a small file."""
    from dataclasses import replace

    from churnguard.drift import MIN_CUSTOMERS

    store = MemoryObjectStore()
    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(_events(customers=60)))
    store.add(BUCKET, PREFIX + "_SUCCESS", b"")
    summary, _ = _steps(store, drift_bundle, shards=2)
    assert summary["status"] == "ok"
    drift = summary["drift"]
    assert drift["status"] == "too_few_customers" and drift["score_psi"] is None and drift["group_psi"] == {}
    assert drift["min_customers"] == MIN_CUSTOMERS and 0 < drift["customers"] <= 60

    store.add(BUCKET, PREFIX + "part-0000.csv", _csv(_events(customers=61)))  # another run
    summary, planned = _steps(store, replace(bundle, drift_reference=None), shards=2)
    assert summary["status"] == "ok" and summary["drift"]["status"] == "no_reference"

    # finish cannot get the planned version any more: no reference, the dataset is not failed for it
    from churnguard.dataset_steps import FinishStep, run_finish

    other = replace(drift_bundle, version="20261201T000000Z-bbbbbbbb")
    finish = FinishStep(step="finish", bucket=BUCKET, plan_key=planned["plan_key"])
    answer, again = run_finish(store, finish, MemoryModel(budget_mb=3008), models=other)
    assert answer["status"] == "ok" and again.drift is not None and again.drift["status"] == "no_reference"


def test_a_failed_dataset_reports_no_drift(drift_run, drift_bundle):
    broken = [drift_run.shards[0].model_copy(update={"rows_used": 0}), *drift_run.shards[1:]]
    summary = finish_dataset(
        drift_run.store, drift_run.plan, drift_run.parts, broken, reference=drift_bundle.drift_reference
    )
    assert summary.status == "failed" and summary.drift is None


def test_the_dataset_function_emits_the_batch_functions_drift_metrics(capsys, monkeypatch):
    from tests.helpers import load_handler

    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "churnguard-dataset-score")  # as the template sets it
    handler = load_handler("dataset_score")
    capsys.readouterr()
    handler.emit_drift(handler.metrics, {"status": "too_few_customers", "score_psi": None, "group_psi": {}})
    handler.emit_drift(
        handler.metrics, {"status": "ok", "score_psi": 0.31, "group_psi": {"recency": 0.4, "value": 0.02}}
    )
    handler.metrics.flush_metrics()
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    score = [b for b in blobs if "ScorePSI" in b]
    assert len(score) == 1 and score[0]["service"] == "churnguard-dataset-score"  # the alarm's dimension
    assert np.atleast_1d(score[0]["ScorePSI"]).tolist() == [0.31]
    groups = {
        b["group"]: np.atleast_1d(b["FeatureGroupPSI"]).tolist() for b in blobs if "FeatureGroupPSI" in b
    }
    assert groups == {"recency": [0.4], "value": [0.02]}
    assert all(
        [sorted(d) for d in b["_aws"]["CloudWatchMetrics"][0]["Dimensions"]] == [["group", "service"]]
        for b in blobs
        if "FeatureGroupPSI" in b
    )


def test_the_drift_alarm_and_dashboard_watch_the_score_psi_of_batch_files_and_datasets():
    """Metric math over the two functions' ScorePSI (each with its service dimension): only the
    expression returns data, against the same threshold and actions as before."""
    from infra.template import load_template
    from tests.helpers import load_handler

    template = load_template()
    alarm = template["Resources"]["ScoreDriftAlarm"]["Properties"]
    assert "MetricName" not in alarm and alarm["Threshold"] == {"Ref": "DriftPsiThreshold"}
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and "AlarmActions" in alarm
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    returned = [q for q in alarm["Metrics"] if q.get("ReturnData", True)]
    assert len(returned) == 1 and returned[0]["Expression"].startswith(
        "MAX([FILL(batch, 0), FILL(dataset, 0)])"
    )
    for query, function in (("batch", "batch_score"), ("dataset", "dataset_score")):
        stat = queries[query]["MetricStat"]
        assert stat["Stat"] == "Maximum" and stat["Metric"]["MetricName"] == "ScorePSI"
        assert stat["Metric"]["Dimensions"] == [{"Name": "service", "Value": load_handler(function).SERVICE}]
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]
    text = json.dumps(body)
    assert text.count('\\"ScorePSI\\"') >= 2 and "churnguard-dataset-score" in text
