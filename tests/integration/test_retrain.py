"""Scheduled retraining: the CreateTrainingJob request, sent over HTTP to moto's SageMaker API."""

import json

import pytest

from tests.helpers import ROOT, FakeLambdaContext, load_handler

ENV = {
    "CHURNGUARD_DATA_BUCKET": "churnguard-data",
    "CHURNGUARD_TRAINING_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training:latest",
    "CHURNGUARD_TRAINING_ROLE_ARN": "arn:aws:iam::123456789012:role/churnguard-training",
    "CHURNGUARD_TRAINING_HYPERPARAMETERS": '{"epochs": 40, "threshold_policy": "min_cost"}',
}


@pytest.fixture
def retrain(aws, monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    handler = load_handler("retrain")
    yield handler, aws
    handler.runtime.cache_clear()


def test_the_schedule_starts_a_script_mode_training_job_on_the_events_prefix(retrain):
    handler, _ = retrain
    import boto3

    result = handler.lambda_handler({"source": "aws.scheduler"}, FakeLambdaContext())
    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=result["training_job"])
    assert result["training_job"].startswith("churnguard-")  # the promote rule matches this prefix
    channel = job["InputDataConfig"][0]
    assert channel["ChannelName"] == "train"
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == "s3://churnguard-data/training-events/"
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://churnguard-data/training/"
    assert job["AlgorithmSpecification"]["TrainingImage"] == ENV["CHURNGUARD_TRAINING_IMAGE"]
    hp = job["HyperParameters"]
    assert not [k for k in hp if k.startswith("sagemaker_")]  # the code is in the image, not a tarball
    assert hp["epochs"] == "40" and hp["threshold-policy"] == "min_cost"  # train.py's --threshold-policy


def test_hyperparameters_sent_are_ones_train_py_accepts(retrain):
    handler, _ = retrain
    from training.train import parse_args

    settings, _ = handler.runtime()
    request = handler.training_job_request(settings, "churnguard-x")
    argv = [a for k, v in request["HyperParameters"].items() for a in (f"--{k}", v)]
    args = parse_args(argv)  # SystemExit on an unknown or malformed hyperparameter
    assert args.epochs == 40 and args.threshold_policy == "min_cost"


def test_metric_definitions_cover_the_hpo_objective():
    handler = load_handler("retrain")
    hpo = json.loads((ROOT / "infra/sagemaker/hpo.json").read_text())
    for metric in hpo["MetricDefinitions"]:
        assert metric in handler.METRIC_DEFINITIONS


def test_bad_settings_fail_the_cold_start_naming_the_variable(monkeypatch):
    from churnguard.settings import RetrainSettings, SettingsError

    with pytest.raises(SettingsError, match="CHURNGUARD_TRAINING_ROLE_ARN"):
        RetrainSettings.from_env({**ENV, "CHURNGUARD_TRAINING_ROLE_ARN": "not-an-arn"})


@pytest.mark.parametrize(
    "image",
    [
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training:",  # TrainingImageTag left empty
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training",
        "",
    ],
)
def test_a_training_image_without_a_pushed_tag_fails_the_cold_start(image):
    from churnguard.settings import RetrainSettings, SettingsError

    with pytest.raises(SettingsError, match="CHURNGUARD_TRAINING_IMAGE"):
        RetrainSettings.from_env({**ENV, "CHURNGUARD_TRAINING_IMAGE": image})


def test_a_local_registry_image_with_a_port_is_accepted():
    from churnguard.settings import RetrainSettings

    image = "localhost:5000/churnguard-training:abc123"
    assert RetrainSettings.from_env({**ENV, "CHURNGUARD_TRAINING_IMAGE": image}).training_image == image


def test_a_schedule_tick_delivered_twice_starts_one_job(retrain):
    handler, _ = retrain
    import boto3

    tick = {"scheduled_time": "2026-11-29T02:00:00Z"}
    first = handler.lambda_handler(tick, FakeLambdaContext())
    again = handler.lambda_handler(tick, FakeLambdaContext())
    assert first["training_job"] == again["training_job"] == "churnguard-20261129-020000"
    assert (first["already_started"], again["already_started"]) == (False, True)
    assert again["arn"] == first["arn"]
    jobs = boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in jobs] == ["churnguard-20261129-020000"]


def test_the_template_passes_the_tick_time_the_function_names_jobs_after():
    from infra.template import load_template

    schedule = load_template()["Resources"]["RetrainFunction"]["Properties"]["Events"]["Schedule"]
    assert json.loads(schedule["Properties"]["Input"]) == {"scheduled_time": "<aws.scheduler.scheduled-time>"}
