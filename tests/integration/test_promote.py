"""Champion/challenger gate over S3 + SSM (moto server): accept not-worse, reject degraded or corrupt."""

import json

import pytest

from churnguard.datasets import generate_synthetic_events
from churnguard.events import validate_events
from churnguard.model_store import publish_model
from churnguard.tabular import churn_labels, cohort
from tests.helpers import FakeLambdaContext, load_event, load_handler, model_variant, tarball

BUCKET = "churnguard-data"
POINTER = "/churnguard/model/current"
AS_OF = "2024-09-30"


@pytest.fixture
def gate(aws, tmp_path, monkeypatch):
    s3, ssm = aws["s3"], aws["ssm"]
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    events = validate_events(generate_synthetic_events(800, seed=42, weeks=78)).events
    users = cohort(events, AS_OF)
    labels = churn_labels(events, users, AS_OF, 39)
    before = events[events["timestamp"] < AS_OF].drop(columns="source_row")
    s3.put_object(Bucket=BUCKET, Key="holdout/events.csv", Body=before.to_csv(index=False).encode())
    s3.put_object(
        Bucket=BUCKET,
        Key="holdout/labels.csv",
        Body=b"user_id,churned\n"
        + "\n".join(f"{u},{y}" for u, y in zip(users, labels, strict=True)).encode(),
    )
    s3.put_object(Bucket=BUCKET, Key="holdout/meta.json", Body=json.dumps({"as_of": AS_OF}).encode())
    publish_model(
        model_variant(tmp_path, "champion"),
        s3_client=s3,
        ssm_client=ssm,
        bucket=BUCKET,
        parameter_name=POINTER,
    )
    monkeypatch.setenv("CHURNGUARD_DATA_BUCKET", BUCKET)
    monkeypatch.setenv("CHURNGUARD_MODEL_POINTER", POINTER)
    handler = load_handler("promote")
    yield handler, s3, ssm
    handler.runtime.cache_clear()


def submit(handler, s3, content, job="job-1"):
    key = f"training/{job}/output/model.tar.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=content)
    event = load_event("promote/training_job_completed.json")
    event["detail"]["TrainingJobName"] = job
    event["detail"]["ModelArtifacts"]["S3ModelArtifacts"] = f"s3://{BUCKET}/{key}"
    return handler.lambda_handler(event, FakeLambdaContext())


def pointer_version(ssm):
    return json.loads(ssm.get_parameter(Name=POINTER)["Parameter"]["Value"])["version"]


def test_a_challenger_that_is_not_worse_is_promoted(gate, tmp_path):
    handler, s3, ssm = gate
    result = submit(handler, s3, tarball(model_variant(tmp_path, "challenger-good")))
    assert result["accepted"] is True, result["reasons"]
    assert result["challenger"]["roc_auc"] == pytest.approx(result["champion"]["roc_auc"])
    assert pointer_version(ssm) == "challenger-good"
    record = json.loads(
        s3.get_object(Bucket=BUCKET, Key="model-decisions/challenger-good.json")["Body"].read()
    )
    assert record["accepted"] is True and record["training_job"] == "job-1"


def test_a_degraded_challenger_is_rejected_and_the_champion_keeps_serving(gate, tmp_path):
    handler, s3, ssm = gate
    result = submit(handler, s3, tarball(model_variant(tmp_path, "challenger-bad", degrade=True)))
    assert result["accepted"] is False
    assert result["challenger"]["roc_auc"] < result["champion"]["roc_auc"] - 0.005
    assert any("AUC" in r or "log-loss" in r for r in result["reasons"])
    assert pointer_version(ssm) == "champion"


def test_a_corrupt_artifact_is_refused(gate):
    handler, s3, ssm = gate
    result = submit(handler, s3, b"not a tarball")
    assert result["accepted"] is False and "challenger refused" in result["reasons"][0]
    assert pointer_version(ssm) == "champion"


def test_a_failed_training_job_is_ignored(gate):
    handler, _, ssm = gate
    event = load_event("promote/training_job_completed.json")
    event["detail"]["TrainingJobStatus"] = "Failed"
    assert handler.lambda_handler(event, FakeLambdaContext())["accepted"] is False
    assert pointer_version(ssm) == "champion"
