"""Drift on every batch: the fixture model with its drift reference (training's code path), batches
from its training distribution and shifted ones, the summary, the metrics and the retraining trigger.

The fixture model was trained (tests/fixtures/make_model.py) on ``generate_synthetic_events(4000,
seed=21, weeks=78)`` with the cutoff 2024-09-30; its committed reference was backfilled from those
events by ``training.drift_reference.backfill`` (which refuses unless they refit the model's own
feature spec), and is rebuilt here the same way: the two must agree.
Measured with these seeds: same distribution score PSI ~0.004-0.015 (largest group ~0.015);
half the events ~0.26-0.28, a third ~0.59-0.65.
"""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from churnguard.batch import score_file
from churnguard.bundle import ModelBundle
from churnguard.datasets import generate_synthetic_events
from churnguard.promotions import PromotionPolicy
from infra.template import load_template
from tests.helpers import FIXTURE_MODEL, FakeLambdaContext, load_event, load_handler

AS_OF = "2024-09-30"  # the fixture model's cutoff (metadata.json protocol.as_of)
SAME_BOUND = 0.05  # measured <= 0.015 on these seeds
THRESHOLD = float(load_template()["Parameters"]["DriftPsiThreshold"]["Default"])


@pytest.fixture(scope="module")
def drift_model(tmp_path_factory):
    from training.drift_reference import backfill

    root = tmp_path_factory.mktemp("drift")
    channel = root / "train"
    channel.mkdir()
    generate_synthetic_events(4000, seed=21, weeks=78).to_parquet(channel / "events.parquet")
    shutil.copytree(FIXTURE_MODEL, root / "model")
    backfill(root / "model", str(channel))
    rebuilt = json.loads((root / "model" / "drift_reference.json").read_text())
    assert rebuilt == json.loads((FIXTURE_MODEL / "drift_reference.json").read_text())
    return root / "model"


@pytest.fixture(scope="module")
def bundle(drift_model):
    bundle = ModelBundle.from_directory(drift_model)
    assert bundle.drift_reference is not None
    return bundle


def batch_events(seed, keep=1.0):
    """Customers from the training distribution up to the cutoff; ``keep`` < 1: only that share of
    their events (a lower activity level)."""
    events = generate_synthetic_events(4000, seed=seed, weeks=78)
    events = events[events["timestamp"] < AS_OF]
    if keep < 1.0:
        events = events[np.random.default_rng(seed).random(len(events)) < keep]
    return events.reset_index(drop=True)


def drift_of(bundle, events, **kwargs):
    body = io.BytesIO()
    events.to_parquet(body)
    result = score_file(
        body.getvalue(),
        "drop.parquet",
        bundle,
        as_of=AS_OF,
        policy=PromotionPolicy(),
        publisher=None,
        source="s",
        **kwargs,
    )
    assert result.summary.status == "ok"
    return result.summary.drift


@pytest.mark.parametrize("seed", [5, 99])
def test_a_batch_from_the_training_distribution_has_psi_near_zero(bundle, seed):
    drift = drift_of(bundle, batch_events(seed))
    assert drift["status"] == "ok" and drift["reference"] == "model"
    assert drift["customers"] > 3000 and drift["outside_population"] > 0  # browsers are not compared
    assert 0 <= drift["score_psi"] < SAME_BOUND
    assert set(drift["group_psi"]) == set(bundle.drift_reference.groups)
    assert max(drift["group_psi"].values()) < SAME_BOUND


def test_a_batch_with_a_lower_activity_level_crosses_the_threshold(bundle):
    drift = drift_of(bundle, batch_events(5, keep=0.35))
    assert drift["score_psi"] > THRESHOLD == 0.2  # measured ~0.6
    groups = drift["group_psi"]
    assert groups["weekly_activity"] > THRESHOLD and groups["frequency"] > THRESHOLD
    assert groups["profile"] < SAME_BOUND  # who the customers are did not change, how active they are did


def test_counts_per_scoring_chunk_give_the_psi_of_one_chunk(bundle):
    events = batch_events(7, keep=0.5)
    assert drift_of(bundle, events, score_chunk_customers=700) == drift_of(bundle, events)


def test_a_model_without_a_reference_scores_and_reports_psi_unavailable(tmp_path):
    shutil.copytree(FIXTURE_MODEL, tmp_path / "old")  # a model directory from before drift references
    (tmp_path / "old" / "drift_reference.json").unlink()
    metadata = json.loads((tmp_path / "old" / "metadata.json").read_text())
    del metadata["files"]["drift_reference.json"]
    (tmp_path / "old" / "metadata.json").write_text(json.dumps(metadata))
    old = ModelBundle.from_directory(tmp_path / "old")
    assert old.drift_reference is None
    drift = drift_of(old, batch_events(5).iloc[:5000])
    assert drift["status"] == "no_reference" and drift["score_psi"] is None and drift["group_psi"] == {}


BUCKET = "churnguard-data"
KEY = "incoming/démo events+v1.csv"  # what the event fixture's key decodes to


def test_the_batch_function_writes_the_drift_and_emits_the_alarm_metric(
    aws, monkeypatch, drift_model, capsys
):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    queue_url = aws["sqs"].create_queue(QueueName="churnguard-promotions")["QueueUrl"]
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(drift_model))
    monkeypatch.setenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", queue_url)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "churnguard-batch-score")
    handler = load_handler("batch_score")
    try:
        frame = batch_events(11, keep=0.35)
        frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        aws["s3"].put_object(
            Bucket=BUCKET, Key=KEY, Body=frame.to_csv(index=False).encode(), Metadata={"as-of": AS_OF}
        )
        capsys.readouterr()
        response = handler.lambda_handler(load_event("batch_score/sqs_s3_put.json"), FakeLambdaContext())
        assert response == {"batchItemFailures": []}
    finally:
        handler.runtime.cache_clear()
    summary = json.loads(
        aws["s3"].get_object(Bucket=BUCKET, Key="scored/démo events+v1.summary.json")["Body"].read()
    )
    assert summary["drift"]["status"] == "ok" and summary["drift"]["score_psi"] > THRESHOLD
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    by_metric = {
        m["Name"]: blob for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    alarm = load_template()["Resources"]["ScoreDriftAlarm"]["Properties"]
    watched = [q["MetricStat"]["Metric"] for q in alarm["Metrics"] if "MetricStat" in q]  # metric math
    scored = by_metric["ScorePSI"]
    assert {
        "Namespace": "ChurnGuard",
        "MetricName": "ScorePSI",
        "Dimensions": [{"Name": "service", "Value": scored["service"]}],
    } in watched
    assert max(np.atleast_1d(scored["ScorePSI"])) > THRESHOLD  # the alarm's condition: Maximum > threshold
    groups = [b for b in blobs if "FeatureGroupPSI" in b]
    assert {b["group"] for b in groups} == set(summary["drift"]["group_psi"])
    assert all(
        [sorted(d) for d in b["_aws"]["CloudWatchMetrics"][0]["Dimensions"]] == [["group", "service"]]
        for b in groups
    )


def test_the_drift_alarm_starts_one_training_job(aws, monkeypatch):
    import boto3

    for key, value in {
        "CHURNGUARD_DATA_BUCKET": BUCKET,
        "CHURNGUARD_TRAINING_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training:v1",
        "CHURNGUARD_TRAINING_ROLE_ARN": "arn:aws:iam::123456789012:role/churnguard-training",
    }.items():
        monkeypatch.setenv(key, value)
    handler = load_handler("retrain")
    rule = load_template()["Resources"]["RetrainOnDriftRule"]["Properties"]["EventPattern"]
    event = {  # what EventBridge delivers for the rule's pattern
        "version": "0",
        "id": "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
        "detail-type": rule["detail-type"][0],
        "source": rule["source"][0],
        "account": "123456789012",
        "time": "2026-11-29T01:02:03Z",
        "region": "eu-west-1",
        "resources": ["arn:aws:cloudwatch:eu-west-1:123456789012:alarm:churnguard-ScoreDriftAlarm"],
        "detail": {
            "alarmName": "churnguard-ScoreDriftAlarm",
            "state": {"value": rule["detail"]["state"]["value"][0]},
        },
    }
    try:
        first = handler.lambda_handler(event, FakeLambdaContext())
        again = handler.lambda_handler(event, FakeLambdaContext())  # EventBridge redelivers
    finally:
        handler.runtime.cache_clear()
    assert first["training_job"] == "churnguard-20261129-010203" and not first["already_started"]
    assert again == {**first, "already_started": True}
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=first["training_job"])
    assert job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"].startswith(f"s3://{BUCKET}/")


def test_the_scored_output_is_the_same_with_and_without_a_reference(bundle):
    events = batch_events(5).iloc[:3000]
    body = io.BytesIO()
    events.to_parquet(body)
    kwargs = {"as_of": AS_OF, "policy": PromotionPolicy(), "publisher": None, "source": "s"}
    with_drift = score_file(body.getvalue(), "d.parquet", bundle, **kwargs).scored
    without = score_file(
        body.getvalue(), "d.parquet", ModelBundle.from_directory(FIXTURE_MODEL), **kwargs
    ).scored
    pd.testing.assert_frame_equal(with_drift, without)
