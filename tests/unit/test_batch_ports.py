"""Batch scoring of one object through the ``ObjectStore`` port, with an in-memory store: outputs,
admission (split), and the error semantics the queue relies on — a bad file ends in a summary, a
transient AWS error propagates — without moto or network."""

from __future__ import annotations

import gzip
import io
import json

import pandas as pd
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from churnguard.admission import HEAD_SAMPLE_BYTES
from churnguard.batch import process_s3_object, split_object
from churnguard.bundle import ModelBundle
from churnguard.datasets import generate_synthetic_events
from churnguard.promotions import PromotionPolicy
from tests.helpers import FIXTURE_MODEL
from tests.unit.fakes import MemoryObjectStore, RecordingPublisher, client_error

BUCKET = "data"
KEY = "incoming/2024/export.csv"
AS_OF = "2024-09-30"


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.from_directory(FIXTURE_MODEL)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    events = generate_synthetic_events(120, seed=11, weeks=60)
    events = events[events["timestamp"] < AS_OF].reset_index(drop=True)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    bad = pd.DataFrame([{"user_id": "bad-1", "timestamp": "not a date", "event_type": "order", "amount": 1}])
    return pd.concat([events.iloc[:4], bad, events.iloc[4:]], ignore_index=True)  # data row 5 is bad


def _process(store, bundle, key=KEY, publisher=None, **kwargs):
    return process_s3_object(
        store,
        BUCKET,
        key,
        bundle,
        policy=PromotionPolicy(),
        publisher=publisher or RecordingPublisher(),
        **kwargs,
    )


def _store(frame: pd.DataFrame, key: str = KEY, as_of: str | None = AS_OF) -> MemoryObjectStore:
    store = MemoryObjectStore()
    store.add(BUCKET, key, frame.to_csv(index=False).encode(), {"as-of": as_of} if as_of else None)
    return store


def test_an_object_is_scored_from_a_stream_and_its_three_outputs_written_through_the_port(frame, bundle):
    store = _store(frame)
    publisher = RecordingPublisher()

    summary = _process(store, bundle, publisher=publisher)

    assert summary.status == "ok" and summary.as_of == f"{AS_OF}T00:00:00"
    assert summary.rows_in == len(frame) == summary.rows_used + summary.rows_rejected
    assert summary.rows_rejected == 1 and summary.customers_queued == len(publisher.messages) > 0
    assert store.calls == [
        ("head", KEY),
        (f"get_range 0-{HEAD_SAMPLE_BYTES}", KEY),  # the admission estimate's sample
        ("open", KEY),  # streamed, never read whole
        ("upload_file", "scored/2024/export.parquet"),
        ("upload_file", "rejected/2024/export.csv"),
        ("put_bytes", "scored/2024/export.summary.json"),
    ]
    scored = pd.read_parquet(io.BytesIO(store.body(BUCKET, "scored/2024/export.parquet")))
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(frame["user_id"]) - {"bad-1"}
    assert pd.read_csv(io.BytesIO(store.body(BUCKET, "rejected/2024/export.csv")))["source_row"].tolist() == [
        5
    ]
    assert store.objects[(BUCKET, "rejected/2024/export.csv")].content_type == "text/csv"
    written = store.objects[(BUCKET, "scored/2024/export.summary.json")]
    assert written.content_type == "application/json" and json.loads(written.body)["rows_in"] == len(frame)


def test_an_object_beyond_one_invocation_is_split_into_parts_that_score_to_the_whole(frame, bundle):
    store = _store(frame, as_of=None)  # the parts carry the as-of the whole file would have had
    size = len(store.body(BUCKET, KEY))

    summary = _process(store, bundle, max_object_bytes=size // 3)

    assert summary.status == "split" and summary.rows_in == 0 and len(summary.parts) >= 6
    assert store.keys(BUCKET, "incoming/_parts/") == sorted(summary.parts)
    parts = [
        pd.read_csv(io.BytesIO(gzip.decompress(store.body(BUCKET, k))), dtype=str) for k in summary.parts
    ]
    assert sorted(int(r) for p in parts for r in p["_source_row"]) == list(range(1, len(frame) + 1))
    assert sum(p["user_id"].nunique() for p in parts) == frame["user_id"].nunique()  # each in one part
    latest = pd.to_datetime(frame["timestamp"], errors="coerce", utc=True).max()
    expected_as_of = (latest.normalize() + pd.Timedelta(days=1)).date().isoformat()
    assert {store.objects[(BUCKET, k)].metadata["as-of"] for k in summary.parts} == {expected_as_of}

    publisher = RecordingPublisher()
    results = [_process(store, bundle, key=k, publisher=publisher) for k in summary.parts]
    assert all(r.status == "ok" for r in results)
    assert sum(r.rows_in for r in results) == len(frame)
    assert (
        sum(r.customers_scored for r in results) == frame["user_id"].nunique() - 1
    )  # bad-1 had no valid row
    assert len({m["user_id"] for m in publisher.messages}) == len(publisher.messages)


def test_split_object_reads_one_stream_and_uploads_only_parts_that_got_rows(frame):
    three = frame[frame["user_id"].isin(frame["user_id"].unique()[:3])]
    store = _store(three)

    keys = split_object(store, BUCKET, KEY, 16, as_of="2024-10-01")

    assert store.calls[0] == ("open", KEY) and [c for c, _ in store.calls[1:]] == ["upload_file"] * len(keys)
    assert 1 <= len(keys) <= 3 and keys == store.keys(BUCKET, "incoming/_parts/2024/export/")
    parts = [pd.read_csv(io.BytesIO(gzip.decompress(store.body(BUCKET, k))), dtype=str) for k in keys]
    assert all(len(p) for p in parts) and sum(len(p) for p in parts) == len(three)
    assert all(store.objects[(BUCKET, k)].metadata == {"as-of": "2024-10-01"} for k in keys)


def test_a_corrupt_file_ends_in_a_failed_summary_not_an_exception(bundle):
    store = MemoryObjectStore()
    store.add(BUCKET, "incoming/broken.csv.gz", b"\x1f\x8b\x08\x00 not really gzip" * 100)

    summary = _process(store, bundle, key="incoming/broken.csv.gz")

    assert summary.status == "failed" and "gzip" in (summary.error or "")
    assert json.loads(store.body(BUCKET, "scored/broken.summary.json"))["status"] == "failed"


def test_a_read_timeout_in_the_middle_of_the_body_propagates_so_the_queue_retries(frame, bundle):
    """botocore's ReadTimeoutError is an OSError (a FILE_ERROR) and a BotoCoreError: transient, so it
    is re-raised rather than written as a failed summary."""
    store = _store(frame)
    store.stream_faults[KEY] = (2_000, ReadTimeoutError(endpoint_url="http://s3"))

    with pytest.raises(ReadTimeoutError):
        _process(store, bundle)

    assert store.keys(BUCKET, "scored/") == [] and store.keys(BUCKET, "rejected/") == []


def test_a_read_timeout_while_splitting_propagates_too(frame, bundle):
    store = _store(frame)
    store.stream_faults[KEY] = (2_000, ReadTimeoutError(endpoint_url="http://s3"))

    with pytest.raises(ReadTimeoutError):
        _process(store, bundle, max_object_bytes=len(store.body(BUCKET, KEY)) // 3)

    assert store.keys(BUCKET, "incoming/_parts/") == [] and store.keys(BUCKET, "scored/") == []


@pytest.mark.parametrize(
    ("operation", "key"),
    [
        ("head", KEY),
        ("open", KEY),
        ("upload_file", "rejected/2024/export.csv"),
        ("put_bytes", "scored/2024/export.summary.json"),
    ],
)
def test_an_aws_error_answer_propagates_unchanged_and_later_outputs_are_not_written(
    frame, bundle, operation, key
):
    store = _store(frame)
    error = client_error("SlowDown", "PutObject")
    store.faults[(operation, key)] = error

    with pytest.raises(ClientError) as raised:
        _process(store, bundle)

    assert raised.value is error
    assert store.calls[-1] == (operation, key)  # nothing after the failing call
    assert (BUCKET, "scored/2024/export.summary.json") not in store.objects


def test_split_parts_keep_a_value_with_a_bare_carriage_return_in_one_field():
    """The splitter's parts quote every field: a padded id or event type with a bare '\\r' (valid:
    validation strips it) reads back as one row, not two (review 12, r7_cr)."""
    source = (
        b"user_id,timestamp,event_type,amount\n"
        b'"c1\r",2024-03-01T00:00:00Z,order,10\n'
        b'c2,2024-03-02T00:00:00Z,"order\r",5\n'
        b"c3,2024-03-02T00:00:00Z,order,5\n"
    )
    store = MemoryObjectStore()
    store.add(BUCKET, KEY, source)

    keys = split_object(store, BUCKET, KEY, 2, as_of="2024-10-01")

    parts = [pd.read_csv(io.BytesIO(gzip.decompress(store.body(BUCKET, k))), dtype=str) for k in keys]
    rows = pd.concat(parts, ignore_index=True).sort_values("_source_row")
    assert rows["user_id"].tolist() == ["c1\r", "c2", "c3"]
    assert rows["event_type"].tolist() == ["order", "order\r", "order"]
