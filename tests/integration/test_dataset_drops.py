"""Dataset drops over the boto3 HTTP path (moto server): the batch function starts one run of the
state machine per marker (moto keeps it RUNNING: it does not execute the definition), never scores
a part or a marker; the dataset function, run step by step as the definition orders them, publishes
a 3-part time-sorted dataset as one."""

from __future__ import annotations

import gzip
import io
import json
from urllib.parse import quote_plus

import pandas as pd
import pytest

from infra.template_checks import substituted_definition
from tests.helpers import ROOT, FakeLambdaContext, load_event, load_handler
from tests.integration.test_batch_score import drain
from tests.unit.test_dataset_score import three_parts

BUCKET = "churnguard-data"
DATASET = "export-2026-11-28"
PREFIX = f"incoming/{DATASET}/"
FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "model"


@pytest.fixture
def stack(aws, monkeypatch):
    import boto3

    sfn = boto3.client("stepfunctions")
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    # versioned, as in the template: each write of the marker is a version of its own
    aws["s3"].put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    queue_url = aws["sqs"].create_queue(QueueName="churnguard-promotions")["QueueUrl"]
    function = "arn:aws:lambda:eu-west-1:123456789012:function:churnguard-dataset-score"
    definition = substituted_definition(
        ROOT / "statemachine/dataset.asl.json", {"DatasetScoreFunctionArn": function}
    )
    machine = sfn.create_state_machine(
        name="churnguard-dataset",
        definition=json.dumps(definition),
        roleArn="arn:aws:iam::123456789012:role/churnguard-dataset",
    )["stateMachineArn"]
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(FIXTURE_MODEL))
    monkeypatch.setenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", queue_url)
    monkeypatch.setenv("CHURNGUARD_DATASET_STATE_MACHINE_ARN", machine)
    monkeypatch.setenv("CHURNGUARD_DATASET_MAX_CONCURRENCY", "7")
    for i, part in enumerate(three_parts()):
        body = gzip.compress(part.to_csv(index=False).encode())
        aws["s3"].put_object(Bucket=BUCKET, Key=f"{PREFIX}part-{i:04d}.csv.gz", Body=body)
    batch, dataset = load_handler("batch_score"), load_handler("dataset_score")
    yield aws, sfn, machine, queue_url, batch, dataset
    batch.runtime.cache_clear()
    dataset.runtime.cache_clear()


def _delivery(aws, key: str) -> dict:
    """The SQS record the scoring-jobs queue delivers for ``key`` (its real eTag and version id)."""
    head = aws["s3"].head_object(Bucket=BUCKET, Key=key)
    event = load_event("batch_score/sqs_s3_put.json")
    notification = json.loads(event["Records"][0]["body"])
    notification["Records"][0]["s3"]["bucket"]["name"] = BUCKET
    notification["Records"][0]["s3"]["object"].update(
        key=quote_plus(key, safe="/"), eTag=head["ETag"].strip('"'), versionId=head.get("VersionId", "")
    )
    event["Records"][0]["body"] = json.dumps(notification)
    return event


def _outputs(aws) -> list[str]:
    listed = aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return [o["Key"] for o in listed if o["Key"].startswith(("scored/", "rejected/"))]


def test_a_marker_starts_exactly_one_run_and_neither_parts_nor_the_marker_are_scored(stack):
    aws, sfn, machine, _, batch, _ = stack
    for i in range(3):  # the parts arrive first: each is acknowledged, none scored alone
        response = batch.lambda_handler(_delivery(aws, f"{PREFIX}part-{i:04d}.csv.gz"), FakeLambdaContext())
        assert response == {"batchItemFailures": []}
    assert _outputs(aws) == [] and sfn.list_executions(stateMachineArn=machine)["executions"] == []

    aws["s3"].put_object(Bucket=BUCKET, Key=f"{PREFIX}_SUCCESS", Body=b"")
    marker = _delivery(aws, f"{PREFIX}_SUCCESS")
    for _ in range(2):  # the same S3 event delivered twice (SQS at-least-once)
        assert batch.lambda_handler(marker, FakeLambdaContext()) == {"batchItemFailures": []}

    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    described = sfn.describe_execution(executionArn=execution["executionArn"])
    assert json.loads(described["input"]) == {
        "bucket": BUCKET,
        "dataset": DATASET,
        "marker": f"{PREFIX}_SUCCESS",
        "max_concurrency": 7,
    }
    assert _outputs(aws) == []  # the marker never gets a summary of its own

    # the dataset dropped again (new parts, a new marker version): a second run
    aws["s3"].put_object(Bucket=BUCKET, Key=f"{PREFIX}_SUCCESS", Body=b"")
    assert batch.lambda_handler(_delivery(aws, f"{PREFIX}_SUCCESS"), FakeLambdaContext()) == {
        "batchItemFailures": []
    }
    assert len(sfn.list_executions(stateMachineArn=machine)["executions"]) == 2


def test_the_dataset_steps_in_definition_order_publish_one_scored_dataset(stack):
    aws, _, _, queue_url, _, dataset = stack
    s3 = aws["s3"]
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}_SUCCESS", Body=b"")

    def call(event):
        return dataset.lambda_handler(event, FakeLambdaContext(timeout_s=900))

    def items(key):
        return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 3})
    assert planned["status"] == "planned"
    assert [call({"step": "partition", **i})["status"] for i in items(planned["parts_key"])] == ["ok"] * 3
    shards = call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    assert shards["status"] == "ready"
    assert {call({"step": "score", **i})["status"] for i in items(shards["shards_key"])} == {"ok"}
    finish = call({"step": "finish", "bucket": BUCKET, "plan_key": planned["plan_key"]})
    assert finish["status"] == "ok"

    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=f"scored/{DATASET}/_summary.json")["Body"].read())
    whole = pd.concat(three_parts(), ignore_index=True)
    assert summary["rows_in"] == len(whole) == summary["rows_used"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 1 and summary["shards"] == 3 and summary["parts"] == 3
    scored = pd.concat(
        pd.read_parquet(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()))
        for k in summary["outputs"]
    )
    valid = whole[~whole["user_id"].str.startswith("PLANTED")]["user_id"]
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(valid)
    assert scored["model_version"].nunique() == 1
    promoted = [m["user_id"] for m in drain(aws, queue_url)]
    assert 0 < len(promoted) == len(set(promoted)) == summary["customers_queued"]
    published = sorted(_outputs(aws))
    assert published == sorted([*summary["outputs"], summary["rejects"], f"scored/{DATASET}/_summary.json"])


def test_a_part_uploaded_again_after_planning_fails_the_run_with_nothing_published(stack):
    """Over boto3: the listing carries each part's ETag, which the plan records; a part re-uploaded
    with other bytes of the same size after planning stops the run at the shards step, and finish
    writes only the failed summary naming the part (review 12)."""
    from churnguard.adapters import S3ObjectStore

    aws, _, _, _, _, dataset = stack
    s3 = aws["s3"]
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}_SUCCESS", Body=b"")
    listed = S3ObjectStore(s3).list_objects(BUCKET, PREFIX)
    heads = {o.key: s3.head_object(Bucket=BUCKET, Key=o.key)["ETag"].strip('"') for o in listed}
    assert all(o.etag and o.etag == heads[o.key] for o in listed)

    def call(event):
        return dataset.lambda_handler(event, FakeLambdaContext(timeout_s=900))

    planned = call({"step": "plan", "bucket": BUCKET, "dataset": DATASET, "shards": 2})
    key = f"{PREFIX}part-0001.csv.gz"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(reversed(body)))  # same size, other bytes
    for item in json.loads(s3.get_object(Bucket=BUCKET, Key=planned["parts_key"])["Body"].read()):
        call({"step": "partition", **item})
    assert call({"step": "shards", "bucket": BUCKET, "plan_key": planned["plan_key"]})["status"] == "failed"
    finish = call({"step": "finish", "bucket": BUCKET, "plan_key": planned["plan_key"]})

    # Written after the marker (a later second), the re-upload's own event starts a newer run, which
    # writes the dataset's summary: this run's stays in its work area. In the marker's second no
    # newer run is started: this run writes the dataset's failed summary. Never anything else.
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=finish["summary_key"])["Body"].read())
    assert finish["status"] == "failed" and summary["error_type"] == "DatasetChanged"
    assert "part-0001.csv.gz" in summary["errors"][0]
    superseded = finish["summary_key"].startswith("work/")
    assert _outputs(aws) == ([] if superseded else [f"scored/{DATASET}/_summary.json"])


def test_the_s3_store_deletes_more_than_one_request_of_keys_and_ignores_keys_already_gone(aws):
    """The adapter's delete over HTTP: DeleteObjects takes 1,000 keys per request, so 1,005 keys
    need two; a key that is already gone is no error (a retried finish deletes again)."""
    from churnguard.adapters import S3ObjectStore

    s3 = aws["s3"]
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    keys = [f"scored/{DATASET}/old-run/part-{i:04d}.parquet" for i in range(1_005)]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"scored/{DATASET}/_summary.json", Body=b"{}")
    store = S3ObjectStore(s3)
    store.delete(BUCKET, [*keys, f"scored/{DATASET}/never-written.parquet"])
    assert [o.key for o in store.list_objects(BUCKET, "scored/")] == [f"scored/{DATASET}/_summary.json"]
