"""The decision-log writer and the outcome job through their lambda_handler with the real wiring
(settings from the environment, S3 and the decisions ledger on moto's server over HTTP): rows become
one Parquet object per as-of day, a redelivered batch adds nothing, a malformed message fails alone,
and the outcome job turns the log and the event history into its report and metrics."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from churnguard.adapters import S3ObjectStore
from churnguard.decision_store import read_decisions
from tests.helpers import FakeLambdaContext, load_event, load_handler

BUCKET = "churnguard-data"
TABLE = "churnguard-idempotency"


@pytest.fixture
def bucket(aws):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    aws["dynamodb"].create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return BUCKET


def test_the_writer_logs_each_row_once_and_fails_only_the_malformed_message(
    aws, bucket, monkeypatch, capsys, caplog
):
    # the service's logger may have been made (its stream bound) by an in-process stack earlier in the
    # worker: caplog sees its records wherever its handler writes
    caplog.set_level(logging.DEBUG, logger="churnguard-decision-log")
    monkeypatch.setenv("CHURNGUARD_DATA_BUCKET", bucket)
    monkeypatch.setenv("CHURNGUARD_IDEMPOTENCY_TABLE", TABLE)
    handler = load_handler("decision_log")
    event = load_event("decision_log/sqs_decisions.json")
    try:
        answer = handler.lambda_handler(event, FakeLambdaContext())
        assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][2]["messageId"]}]}
        keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket=bucket, Prefix="decisions/")["Contents"]]
        assert len(keys) == 1 and keys[0].startswith("decisions/as_of_date=2025-06-02/")
        store = S3ObjectStore(aws["s3"])
        logged = read_decisions(store, bucket)
        assert len(logged) == 4 and logged["churn_probability"].dtype == "float64"

        # SQS delivers the good messages again, with others: the ledger writes nothing twice
        again = {"Records": event["Records"][1:2]}
        assert handler.lambda_handler(again, FakeLambdaContext()) == {"batchItemFailures": []}
        assert len(aws["s3"].list_objects_v2(Bucket=bucket, Prefix="decisions/")["Contents"]) == 1
        assert len(read_decisions(store, bucket)) == 4
    finally:
        handler.runtime.cache_clear()
    reasons = [getattr(r, "reason", "") for r in caplog.records]  # Powertools puts extras on the record
    logs = capsys.readouterr().out + caplog.text + " ".join(map(str, reasons))
    assert "records[0]: churn_probability must be a finite number" in logs
    for row in logged.itertuples():
        assert row.user_id not in logs and row.decision_id not in logs


def test_the_outcome_job_writes_its_report_and_emits_live_quality_per_model_version(
    aws, bucket, monkeypatch, capsys
):
    monkeypatch.setenv("CHURNGUARD_DATA_BUCKET", bucket)
    monkeypatch.setenv("CHURNGUARD_IDEMPOTENCY_TABLE", TABLE)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "churnguard-outcomes")
    monkeypatch.setenv("MPLCONFIGDIR", "/tmp/matplotlib")
    writer = load_handler("decision_log")
    try:
        writer.lambda_handler(load_event("decision_log/sqs_decisions.json"), FakeLambdaContext())
    finally:
        writer.runtime.cache_clear()
    # the decisions' customers: c0 ordered inside its 13-week window, the others never did
    history = pd.DataFrame(
        {
            "user_id": ["c0", "c1", "zz"],
            "timestamp": ["2025-06-20", "2025-05-01", "2025-12-01"],
            "event_type": ["order", "order", "view"],
            "amount": [20.0, 20.0, 0.0],
        }
    )
    aws["s3"].put_object(
        Bucket=bucket, Key="training-events/h.csv", Body=history.to_csv(index=False).encode()
    )
    handler = load_handler("outcomes")
    try:
        answer = handler.lambda_handler(load_event("outcomes/scheduled.json"), FakeLambdaContext())
    finally:
        handler.runtime.cache_clear()
    assert answer["counts"]["matured"] == 4 and answer["report"] == "outcomes/latest/report.json"
    report = json.loads(aws["s3"].get_object(Bucket=bucket, Key="outcomes/latest/report.json")["Body"].read())
    assert report["arms"]["treated"]["n"] == 3 and report["arms"]["control"]["n"] == 1
    assert report["arms"]["control"]["churn_rate"] == 0.0 and report["arms"]["treated"]["churn_rate"] == 1.0
    png = aws["s3"].get_object(Bucket=bucket, Key="outcomes/latest/uplift.png")
    assert png["ContentType"] == "image/png" and png["Body"].read().startswith(b"\x89PNG")
    metrics = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    dimensions = {frozenset(d) for m in metrics for d in m["_aws"]["CloudWatchMetrics"][0]["Dimensions"]}
    assert dimensions == {frozenset({"service"}), frozenset({"ModelVersion", "service"})}
    assert any(m.get("TreatedDecisions") == [3.0] or m.get("TreatedDecisions") == 3.0 for m in metrics)
