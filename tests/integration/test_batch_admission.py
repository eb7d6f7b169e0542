"""Batch admission by memory, over the boto3 HTTP path: what one invocation takes, what it splits,
what it refuses — decided by rows (compression-aware) and the measured memory model, never by bytes.

The function's memory (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, set by Lambda from MemorySize) is set
just above the shipped model's base so that a few MB of data fill it: the same rules as for a
3,008 MB function and a multi-GB file, on files small enough for a test.
"""

import gzip
import io
import json
import zlib
from urllib.parse import quote_plus

import pandas as pd
import pytest

from churnguard.admission import BASE_MB, MemoryModel
from churnguard.datasets import generate_synthetic_events
from tests.helpers import FakeLambdaContext, load_event
from tests.integration.test_batch_score import batch, drain, read  # noqa: F401 (fixture)

BUCKET = "churnguard-data"


def _budget(monkeypatch, handler, data_mb: float) -> MemoryModel:
    """Give the function a memory size leaving ``data_mb`` for data after the model's base."""
    # Lambda sets whole MB; a fraction here keeps the few-MB data budgets of these tests exact.
    budget = round((BASE_MB + data_mb) / MemoryModel(budget_mb=1).headroom, 6)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", str(budget))
    handler.runtime.cache_clear()
    return MemoryModel(budget_mb=budget)


def _events(customers: int, seed: int = 3) -> pd.DataFrame:
    events = generate_synthetic_events(customers, seed=seed, weeks=60, with_profile=False)
    events = events[events["timestamp"] < "2025-02-01"].reset_index(drop=True)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return events


def _drop(handler, aws, key: str, body: bytes, as_of: str | None = "2025-02-01") -> dict:
    metadata = {"as-of": as_of} if as_of else {}
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=metadata)
    event = load_event("batch_score/s3_put.json")
    event["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
    event["Records"][0]["s3"]["object"]["size"] = len(body)
    handler.lambda_handler(event, FakeLambdaContext())
    return json.loads(read(aws, _summary_key(key)))


def _summary_key(key: str) -> str:
    stem = key[len("incoming/") :]
    for suffix in (".csv.gz", ".parquet", ".csv"):
        stem = stem.removesuffix(suffix)
    return f"scored/{stem}.summary.json"


def _score_parts(handler, aws, summary: dict) -> tuple[pd.DataFrame, int, list[dict]]:
    """Deliver every part of a split like its S3 notification would, a part split again included;
    return the union of the scored outputs, the rows in, and every part's summary."""
    scored, rows_in, summaries = [], 0, []
    for part in summary["parts"]:
        event = load_event("batch_score/s3_put.json")
        event["Records"][0]["s3"]["object"]["key"] = quote_plus(part, safe="/")
        handler.lambda_handler(event, FakeLambdaContext())
        part_summary = json.loads(read(aws, _summary_key(part)))
        summaries.append(part_summary)
        if part_summary["status"] == "split":
            sub_scored, sub_rows, sub_summaries = _score_parts(handler, aws, part_summary)
            scored.append(sub_scored)
            rows_in += sub_rows
            summaries += sub_summaries
            continue
        rows_in += part_summary["rows_in"]
        stem = part[len("incoming/") : -len(".csv.gz")]
        scored.append(pd.read_parquet(io.BytesIO(read(aws, f"scored/{stem}.parquet"))))
    return pd.concat(scored, ignore_index=True), rows_in, summaries


def _data_mb_for_parts(memory: MemoryModel, rows: int, parts: float) -> float:
    """Data memory that rows alone cannot fit, and that a split sized on events cuts into ~parts."""
    return rows * memory.bytes_per_event / 1024**2 * 2 / parts


def test_a_compressed_file_whose_rows_cannot_fit_is_split_before_it_is_read(batch, monkeypatch):  # noqa: F811
    handler, aws, queue_url = batch
    events = _events(600)
    body = gzip.compress(events.to_csv(index=False).encode())
    memory = _budget(monkeypatch, handler, _data_mb_for_parts(MemoryModel(budget_mb=1), len(events), 3.6))
    # Its bytes are far below any byte limit; its rows are not: only the decompressed sample says so.
    assert len(body) < 2 * 1024**2 and memory.cannot_fit(len(events))

    summary = _drop(handler, aws, "incoming/big-export.csv.gz", body)

    assert summary["status"] == "split" and len(summary["parts"]) == memory.parts_for_rows(len(events)) == 4
    assert summary["rows_in"] == 0 and drain(aws, queue_url) == []  # nothing scored or sent before the split
    scored, rows_in, parts = _score_parts(handler, aws, summary)
    assert [p["status"] for p in parts] == ["ok"] * 4  # customers with many events: the parts fit
    assert rows_in == len(events)
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(events["user_id"])
    promoted = [m["user_id"] for m in drain(aws, queue_url)]
    assert len(promoted) == len(set(promoted)) == sum(p["customers_queued"] for p in parts) > 0


def test_a_file_that_outgrows_its_estimate_is_split_while_read_before_anything_is_sent(batch, monkeypatch):  # noqa: F811
    handler, aws, queue_url = batch
    events = _events(600, seed=4)
    # The first rows carry a long comment column: the head sample promises few, long rows.
    events["comment"] = ""
    events.loc[:1_999, "comment"] = "x" * 900
    body = events.to_csv(index=False).encode()
    memory = _budget(monkeypatch, handler, _data_mb_for_parts(MemoryModel(budget_mb=1), len(events), 4))
    from churnguard.admission import estimate_csv_rows

    estimate = estimate_csv_rows(body[: 1024**2], len(body), gzipped=False)
    assert not memory.cannot_fit(estimate.rows)  # admitted on its estimate ...
    assert not memory.fits(len(events), events["user_id"].nunique(), 0)  # ... but it does not fit

    summary = _drop(handler, aws, "incoming/misleading.csv", body)

    assert summary["status"] == "split", summary
    assert drain(aws, queue_url) == []  # the read stopped before scoring: no promotion went out
    scored, rows_in, parts = _score_parts(handler, aws, summary)
    assert all(p["status"] == "ok" for p in parts)
    assert rows_in == len(events)
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(events["user_id"])
    promoted = [m["user_id"] for m in drain(aws, queue_url)]
    assert len(promoted) == len(set(promoted)) == sum(p["customers_queued"] for p in parts) > 0


def test_a_parquet_file_declaring_too_many_rows_is_split_without_decoding_it_in_the_function(
    batch,  # noqa: F811
    monkeypatch,
):
    handler, aws, _ = batch
    events = _events(800, seed=6)
    buffer = io.BytesIO()
    events.to_parquet(buffer, index=False)
    memory = _budget(monkeypatch, handler, _data_mb_for_parts(MemoryModel(budget_mb=1), len(events), 3.6))
    assert memory.cannot_fit(len(events))

    summary = _drop(handler, aws, "incoming/export.parquet", buffer.getvalue())

    assert summary["status"] == "split", summary
    scored, rows_in, parts = _score_parts(handler, aws, summary)
    assert all(p["status"] == "ok" for p in parts)
    assert rows_in == len(events) and set(scored["user_id"]) == set(events["user_id"])


def test_a_part_of_a_split_that_does_not_fit_ends_in_a_summary_saying_what_to_change(batch, monkeypatch):  # noqa: F811
    handler, aws, queue_url = batch
    events = _events(600, seed=7)
    _budget(monkeypatch, handler, data_mb=0.2)
    key = "incoming/_parts2/nightly/part-00003/part-00001.csv.gz"  # a part of a part

    summary = _drop(handler, aws, key, gzip.compress(events.to_csv(index=False).encode()))

    assert summary["status"] == "failed" and summary["error_type"] == "PartTooLarge"
    assert "MemorySize" in summary["error"]
    assert pd.read_csv(io.BytesIO(read(aws, "rejected/_parts2/nightly/part-00003/part-00001.csv"))).empty
    assert drain(aws, queue_url) == []


def test_a_file_needing_more_parts_than_one_split_pass_writes_is_refused_with_a_summary(batch, monkeypatch):  # noqa: F811
    handler, aws, queue_url = batch
    events = _events(600, seed=8)
    memory = _budget(monkeypatch, handler, data_mb=0.02)
    with pytest.raises(ValueError, match="parts"):
        memory.parts_for_rows(len(events))

    summary = _drop(handler, aws, "incoming/huge.csv.gz", gzip.compress(events.to_csv(index=False).encode()))

    assert summary["status"] == "failed" and summary["error_type"] == "TooLargeToSplit"
    assert "smaller files" in summary["error"] and summary["parts"] == []
    assert drain(aws, queue_url) == []


def test_parts_holding_more_customers_than_their_events_promised_are_split_once_more(batch, monkeypatch):  # noqa: F811
    handler, aws, queue_url = batch
    # One event per customer: a split sized on events gives parts with far more customers than fit.
    events = _events(1_500, seed=9).drop_duplicates("user_id", ignore_index=True)
    memory = _budget(monkeypatch, handler, _data_mb_for_parts(MemoryModel(budget_mb=1), len(events), 3.6))
    assert not memory.fits(len(events) // 4, len(events) // 4, 0)

    summary = _drop(
        handler, aws, "incoming/one-off-buyers.csv.gz", gzip.compress(events.to_csv(index=False).encode())
    )

    assert summary["status"] == "split" and len(summary["parts"]) == 4
    scored, rows_in, parts = _score_parts(handler, aws, summary)
    split_again = [p for p in parts if p["status"] == "split"]
    assert split_again and all(k.startswith("incoming/_parts2/") for p in split_again for k in p["parts"])
    assert all(p["status"] in ("ok", "split") for p in parts), [p for p in parts if p["status"] == "failed"]
    assert rows_in == len(events)
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(events["user_id"])
    promoted = [m["user_id"] for m in drain(aws, queue_url)]
    assert len(promoted) == len(set(promoted)) == sum(p["customers_queued"] for p in parts)


def _force_split(monkeypatch, handler, body: bytes, parts: int = 3) -> None:
    monkeypatch.setenv("CHURNGUARD_BATCH_MAX_OBJECT_BYTES", str(len(body) * 2 // parts))
    handler.runtime.cache_clear()


def test_a_customer_written_with_invisible_padding_lands_in_one_part_like_validation_sees_it(
    batch,  # noqa: F811
    monkeypatch,
):
    handler, aws, queue_url = batch
    events = _events(200, seed=10)
    # Half of each customer's rows carry a BOM / no-break space around the id: validation strips
    # them (JSON-Schema whitespace), so the split must hash the id the same way.
    padded = events["user_id"].where(events.index % 2 == 0, "\ufeff" + events["user_id"] + "\u00a0")
    body = events.assign(user_id=padded).to_csv(index=False).encode()
    _force_split(monkeypatch, handler, body)

    summary = _drop(handler, aws, "incoming/padded.csv", body)

    assert summary["status"] == "split"
    scored, rows_in, _ = _score_parts(handler, aws, summary)
    assert rows_in == len(events)
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(events["user_id"])
    promoted = [m["user_id"] for m in drain(aws, queue_url)]
    assert len(promoted) == len(set(promoted))


@pytest.mark.parametrize("as_of", ["2025-03-01", None])
def test_every_part_is_scored_as_of_the_same_day_as_the_whole_file(batch, monkeypatch, as_of):  # noqa: F811
    handler, aws, _ = batch
    events = _events(300, seed=11)
    body = events.to_csv(index=False).encode()
    whole = _drop(handler, aws, "incoming/whole.csv", body, as_of=as_of)
    assert whole["status"] == "ok"
    _force_split(monkeypatch, handler, body)

    summary = _drop(handler, aws, "incoming/split.csv", body, as_of=as_of)

    assert summary["status"] == "split"
    _, _, parts = _score_parts(handler, aws, summary)
    # without metadata: the day after the file's latest valid event, not each part's own latest
    assert {p["as_of"] for p in parts} == {whole["as_of"]}


def test_a_bad_file_found_bad_while_splitting_gets_a_failed_summary_not_a_retry_loop(batch, monkeypatch):  # noqa: F811
    handler, aws, _ = batch
    events = _events(200, seed=12).rename(columns={"user_id": "customer"})
    body = gzip.compress(events.to_csv(index=False).encode())
    _force_split(monkeypatch, handler, body)

    summary = _drop(handler, aws, "incoming/no-user-column.csv.gz", body)

    assert summary["status"] == "failed" and summary["error_type"] == "EventLogError"
    assert "user_id" in summary["error"] and summary["parts"] == []


def test_a_dropped_files_own_source_row_column_is_ignored_not_trusted(batch):  # noqa: F811
    handler, aws, _ = batch
    events = _events(100, seed=13)
    events["_source_row"] = "abc"
    events.loc[5, "amount"] = -1.0  # one bad row, reported at its real position

    summary = _drop(handler, aws, "incoming/own-numbers.csv", events.to_csv(index=False).encode())

    assert summary["status"] == "ok" and summary["rows_rejected"] == 1
    assert pd.read_csv(io.BytesIO(read(aws, "rejected/own-numbers.csv")))["source_row"].tolist() == [6]


def test_a_memory_size_that_leaves_nothing_for_data_fails_the_cold_start_naming_it(batch, monkeypatch):  # noqa: F811
    handler, _, _ = batch
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
    handler.runtime.cache_clear()
    with pytest.raises(Exception, match="AWS_LAMBDA_FUNCTION_MEMORY_SIZE=512 MB leaves no memory"):
        handler.runtime()


def test_a_field_of_a_hundred_megabytes_ends_in_a_summary_not_an_out_of_memory_kill(batch):  # noqa: F811
    handler, aws, queue_url = batch
    packer = zlib.compressobj(1, wbits=31)
    head = b"user_id,timestamp,event_type,amount,quantity\nc1,2024-01-01,order,5,1\nc2,2024-01-02,order,"
    block = b"7" * 1024**2
    body = b"".join(
        [packer.compress(head), *(packer.compress(block) for _ in range(100)), packer.compress(b",1\n")]
    )
    body += packer.flush()
    assert len(body) < 1024**2  # 100 MB of one field, in under 1 MB

    summary = _drop(handler, aws, "incoming/one-huge-field.csv.gz", body)

    assert summary["status"] == "failed" and "longer than 64 MiB" in summary["error"]
    assert drain(aws, queue_url) == []
