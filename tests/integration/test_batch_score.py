"""Batch scoring end to end over the boto3 HTTP path: S3 drop -> SQS record -> handler -> outputs."""

import gzip
import io
import json
import logging
from urllib.parse import quote_plus

import pandas as pd
import pytest

from churnguard.datasets import generate_synthetic_events
from tests.helpers import PLANTED, ROOT, FakeLambdaContext, load_event, load_handler

BUCKET = "churnguard-data"
KEY = "incoming/démo events+v1.csv"  # what the URL-encoded key in the event fixtures decodes to
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "model"


@pytest.fixture
def batch(aws, monkeypatch):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    queue_url = aws["sqs"].create_queue(QueueName="churnguard-promotions")["QueueUrl"]
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.setenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", queue_url)
    monkeypatch.setenv("CHURNGUARD_BATCH_REASONS", "promoted")
    handler = load_handler("batch_score")
    yield handler, aws, queue_url
    handler.runtime.cache_clear()


def events_file():
    events = generate_synthetic_events(400, seed=5, weeks=78)
    events = events[events["timestamp"] < "2024-09-30"].reset_index(drop=True)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    bad = pd.DataFrame(
        [
            {"user_id": f"{PLANTED}-bad-1", "timestamp": "2024-05-01", "event_type": "order", "amount": -3},
            {"user_id": f"{PLANTED}-bad-2", "timestamp": "not a date", "event_type": "order", "amount": 3},
            {"user_id": f"{PLANTED}-bad-3", "timestamp": "2024-05-01", "event_type": "wishlist", "amount": 0},
        ]
    )
    # bad rows at data rows 11, 12, 13 of the file
    return pd.concat([events.iloc[:10], bad, events.iloc[10:]], ignore_index=True)


def put(aws, frame, key=KEY, as_of="2024-09-30", body=None):
    extra = {"Metadata": {"as-of": as_of}} if as_of else {}
    aws["s3"].put_object(
        Bucket=BUCKET, Key=key, Body=body if body is not None else frame.to_csv(index=False).encode(), **extra
    )


def read(aws, key):
    return aws["s3"].get_object(Bucket=BUCKET, Key=key)["Body"].read()


def drain(aws, queue_url):
    messages = []
    while True:
        got = aws["sqs"].receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not got.get("Messages"):
            return messages
        messages += [json.loads(m["Body"]) for m in got["Messages"]]
        aws["sqs"].delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got["Messages"])
            ],
        )


def test_s3_drop_via_sqs_writes_scores_rejects_summary_and_promotions(batch):
    handler, aws, queue_url = batch
    frame = events_file()
    put(aws, frame)
    response = handler.lambda_handler(load_event("batch_score/sqs_s3_put.json"), FakeLambdaContext())
    assert response == {"batchItemFailures": []}

    scored = pd.read_parquet(io.BytesIO(read(aws, "scored/démo events+v1.parquet")))
    valid_users = set(frame["user_id"]) - {f"{PLANTED}-bad-{n}" for n in (1, 2, 3)}
    assert set(scored["user_id"]) == valid_users and scored["user_id"].is_unique
    assert scored["churn_probability"].between(0, 1).all()

    rejected = pd.read_csv(io.BytesIO(read(aws, "rejected/démo events+v1.csv")))
    assert rejected["source_row"].tolist() == [11, 12, 13]
    assert (
        "amount is negative" in rejected["reason"][0]
        and "unknown event_type 'wishlist'" in rejected["reason"][2]
    )

    summary = json.loads(read(aws, "scored/démo events+v1.summary.json"))
    assert summary["status"] == "ok" and summary["as_of"].startswith("2024-09-30")
    assert summary["rows_in"] == len(frame) == summary["rows_used"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 3 and summary["customers_scored"] == len(valid_users)

    messages = drain(aws, queue_url)
    assert len(messages) == summary["customers_queued"] > 0
    promoted = scored.set_index("user_id")
    for m in messages:
        assert m["schema"] == "churnguard.promotion/v1" and m["source"] == f"s3://{BUCKET}/{KEY}"
        assert m["reasons"] and m["expected_value"] > 0
        assert m["churn_probability"] == pytest.approx(
            promoted.loc[m["user_id"], "churn_probability"], abs=1e-6
        )
    with_reasons = scored[scored["reasons"] != "[]"]
    assert set(m["user_id"] for m in messages) <= set(with_reasons["user_id"])


def test_direct_s3_event_and_parquet_input_work_too(batch):
    handler, aws, _ = batch
    frame = events_file()
    frame = frame[~frame["user_id"].str.startswith(PLANTED)]
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    put(aws, frame, key="incoming/démo events+v1.csv", body=frame.to_csv(index=False).encode())
    assert handler.lambda_handler(load_event("batch_score/s3_put.json"), FakeLambdaContext()) == {
        "batchItemFailures": []
    }
    summary = json.loads(read(aws, "scored/démo events+v1.summary.json"))
    assert summary["rows_rejected"] == 0 and summary["customers_scored"] == frame["user_id"].nunique()

    event = load_event("batch_score/s3_put.json")
    event["Records"][0]["s3"]["object"]["key"] = "incoming/weekly.parquet"
    put(aws, frame, key="incoming/weekly.parquet", body=buffer.getvalue())
    handler.lambda_handler(event, FakeLambdaContext())
    parquet_summary = json.loads(read(aws, "scored/weekly.summary.json"))
    assert parquet_summary["customers_scored"] == summary["customers_scored"]


def test_the_s3_test_event_is_ignored(batch):
    handler, aws, _ = batch
    response = handler.lambda_handler(load_event("batch_score/sqs_s3_test_event.json"), FakeLambdaContext())
    assert response == {"batchItemFailures": []}
    assert aws["s3"].list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty"),
        (b"user_id,timestamp\n1,2024-01-01\n", "missing required column"),
        (gzip.compress(b"\x00\xff garbage"), ""),
    ],
    ids=["empty", "wrong-columns", "not-a-csv"],
)
def test_a_bad_file_gets_a_failed_summary_not_a_retry_loop(batch, body, error):
    handler, aws, _ = batch
    put(aws, None, body=body)
    response = handler.lambda_handler(load_event("batch_score/sqs_s3_put.json"), FakeLambdaContext())
    assert response == {"batchItemFailures": []}  # retrying cannot fix the file
    summary = json.loads(read(aws, "scored/démo events+v1.summary.json"))
    assert summary["status"] == "failed" and error in summary["error"]


def _corrupt_parquet(seed: int) -> bytes:
    """A Parquet file (fastparquet-written) whose data pages are random bytes, footer intact."""
    import struct
    import tempfile

    import fastparquet
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/events.parquet"
        fastparquet.write(path, generate_synthetic_events(300, seed=3, weeks=20))
        data = bytearray(open(path, "rb").read())  # noqa: SIM115
    footer = struct.unpack("<I", data[-8:-4])[0]
    start, end = 4, len(data) - 8 - footer
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda: _corrupt_parquet(0), id="data-pages-random-segfaulted-fastparquet"),
        pytest.param(lambda: _corrupt_parquet(2), id="data-pages-random-unbounded-allocation"),
        pytest.param(lambda: bytes(range(256)) * 16, id="4KiB-of-bytes-named-parquet"),
    ],
)
def test_a_corrupt_parquet_file_gets_a_summary_and_cannot_crash_the_runtime(batch, body):
    """fastparquet's decoder segfaulted (10 of 10) or grew to 24 GB on these, in the function's own
    process: no summary, the API of the local stack gone too. It now runs in a limited child."""
    handler, aws, _ = batch
    event = load_event("batch_score/sqs_s3_put.json")
    record = json.loads(event["Records"][0]["body"])
    record["Records"][0]["s3"]["object"]["key"] = "incoming/corrupt.parquet"
    event["Records"][0]["body"] = json.dumps(record)
    put(aws, None, key="incoming/corrupt.parquet", body=body())
    assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
    summary = json.loads(read(aws, "scored/corrupt.summary.json"))
    assert summary["status"] == "failed" and summary["error_type"] == "EventLogError"
    assert "not a readable Parquet file" in summary["error"]


def _logged(caplog) -> str:
    """Everything the log records carry: message, extras and all other attributes."""
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


def test_no_data_value_or_key_reaches_the_logs_of_a_failed_or_scored_file(batch, caplog):
    """A header-less CSV makes its first row the "column names", which the summary's error quotes for
    the data owner; the log records (ERROR and INFO) carry only counts, categories and the key's hash."""
    handler, aws, _ = batch
    caplog.set_level(logging.INFO)
    marker = f"{PLANTED}-USER"
    put(aws, None, body=f"{marker},1997-01-01,order,5,1\nu-2,1997-01-02,order,6,1\n".encode())
    handler.lambda_handler(load_event("batch_score/sqs_s3_put.json"), FakeLambdaContext())
    summary = json.loads(read(aws, "scored/démo events+v1.summary.json"))
    assert summary["status"] == "failed" and marker in summary["error"]  # the owner sees what was wrong
    assert summary["error_type"] == "EventLogError"
    failed = [r for r in caplog.records if r.getMessage() == "batch file failed"]
    assert failed and failed[0].levelname == "ERROR" and failed[0].error_type == "EventLogError"
    assert failed[0].key_hash and failed[0].rows_in == 0
    assert marker not in _logged(caplog) and "démo" not in _logged(caplog)

    caplog.clear()
    put(aws, events_file())  # a good file with rejected rows: still no key, no user id, no row
    handler.lambda_handler(load_event("batch_score/sqs_s3_put.json"), FakeLambdaContext())
    logged = _logged(caplog)
    assert "batch file scored" in logged and "démo" not in logged
    assert PLANTED not in logged and "wishlist" not in logged


def test_a_file_beyond_one_invocation_is_split_by_customer_and_every_part_scored(batch, monkeypatch):
    handler, aws, _ = batch
    frame = events_file()
    body = frame.to_csv(index=False).encode()
    monkeypatch.setenv("CHURNGUARD_BATCH_MAX_OBJECT_BYTES", str(len(body) // 3))
    handler.runtime.cache_clear()
    put(aws, frame, body=body)
    handler.lambda_handler(load_event("batch_score/sqs_s3_put.json"), FakeLambdaContext())
    summary = json.loads(read(aws, "scored/démo events+v1.summary.json"))
    assert summary["status"] == "split" and len(summary["parts"]) >= 6
    assert all(p.startswith("incoming/_parts/démo events+v1/part-") for p in summary["parts"])

    scored, rejected, rows_in = [], [], 0
    for part in summary["parts"]:  # in production each part's S3 notification does this
        event = load_event("batch_score/s3_put.json")
        event["Records"][0]["s3"]["object"]["key"] = quote_plus(part, safe="/")
        handler.lambda_handler(event, FakeLambdaContext())
        stem = part[len("incoming/") : -len(".csv.gz")]
        part_summary = json.loads(read(aws, f"scored/{stem}.summary.json"))
        assert part_summary["status"] == "ok", part_summary
        rows_in += part_summary["rows_in"]
        scored.append(pd.read_parquet(io.BytesIO(read(aws, f"scored/{stem}.parquet"))))
        rejected.append(pd.read_csv(io.BytesIO(read(aws, f"rejected/{stem}.csv"))))
    scored, rejected = pd.concat(scored), pd.concat(rejected)
    assert rows_in == len(frame)
    assert scored["user_id"].is_unique  # hashing put every customer in exactly one part
    assert set(scored["user_id"]) == set(frame["user_id"]) - {f"{PLANTED}-bad-{n}" for n in (1, 2, 3)}
    assert sorted(rejected["source_row"]) == [11, 12, 13]  # original row numbers survive the split


def test_a_message_that_is_not_an_s3_notification_is_reported_for_retry_and_dlq(batch):
    handler, aws, _ = batch
    put(aws, events_file())
    event = load_event("batch_score/sqs_s3_put.json")
    broken = {**event["Records"][0], "messageId": "broken-1", "body": "{not json"}
    event["Records"].append(broken)
    response = handler.lambda_handler(event, FakeLambdaContext())
    assert response == {"batchItemFailures": [{"itemIdentifier": "broken-1"}]}
    assert json.loads(read(aws, "scored/démo events+v1.summary.json"))["status"] == "ok"
