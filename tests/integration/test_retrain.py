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


# --- the drift trigger's cooldown: persistent drift starts no job per alarm transition ----------------


def drift_alarm(time: str) -> dict:
    """What EventBridge delivers for the template's RetrainOnDriftRule (the alarm entering ALARM)."""
    return {
        "version": "0",
        "id": f"alarm-{time}",
        "detail-type": "CloudWatch Alarm State Change",
        "source": "aws.cloudwatch",
        "account": "123456789012",
        "time": time,
        "region": "eu-west-1",
        "resources": ["arn:aws:cloudwatch:eu-west-1:123456789012:alarm:churnguard-ScoreDriftAlarm"],
        "detail": {"alarmName": "churnguard-ScoreDriftAlarm", "state": {"value": "ALARM"}},
    }


def job_names() -> list[str]:
    import boto3

    return sorted(
        j["TrainingJobName"] for j in boto3.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]
    )


def emitted(out: str) -> set[str]:
    blobs = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    return {m["Name"] for b in blobs for d in b["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def test_a_drift_alarm_within_the_cooldown_of_a_job_starts_none(retrain, capsys, caplog):
    """The first ALARM transition starts a job; the alarm going OK and back to ALARM an hour later
    (persistent drift) is skipped, logged and counted, while a training job is younger than 24 hours."""
    handler, _ = retrain
    first = handler.lambda_handler(drift_alarm("2026-11-29T01:00:00Z"), FakeLambdaContext())
    assert first["training_job"] == "churnguard-20261129-010000" and not first["already_started"]
    capsys.readouterr()

    second = handler.lambda_handler(drift_alarm("2026-11-29T02:00:00Z"), FakeLambdaContext())
    out = capsys.readouterr().out
    assert second == {"training_job": None, "skipped": "cooldown", "recent_job": first["training_job"]}
    assert job_names() == [first["training_job"]]
    assert "RetrainSkippedCooldown" in emitted(out) and "TrainingJobsStarted" not in emitted(out)
    assert any(r.getMessage().startswith("drift-triggered retraining skipped") for r in caplog.records)


def test_a_redelivered_alarm_is_its_own_job_not_a_cooldown_skip(retrain):
    handler, _ = retrain
    event = drift_alarm("2026-11-29T01:02:03Z")
    first = handler.lambda_handler(event, FakeLambdaContext())
    again = handler.lambda_handler(event, FakeLambdaContext())  # EventBridge delivers at least once
    assert again == {**first, "already_started": True}


def test_a_recent_scheduled_job_holds_the_drift_trigger_but_the_schedule_is_never_held(retrain):
    handler, _ = retrain
    tick = handler.lambda_handler({"scheduled_time": "2026-11-29T00:00:00Z"}, FakeLambdaContext())
    held = handler.lambda_handler(drift_alarm("2026-11-29T01:00:00Z"), FakeLambdaContext())
    assert held["skipped"] == "cooldown" and held["recent_job"] == tick["training_job"]
    later_tick = handler.lambda_handler({"scheduled_time": "2026-11-29T03:00:00Z"}, FakeLambdaContext())
    assert later_tick["training_job"] == "churnguard-20261129-030000" and not later_tick["already_started"]
    assert job_names() == ["churnguard-20261129-000000", "churnguard-20261129-030000"]


def test_the_cooldown_counts_churnguard_jobs_of_its_window_only(retrain):
    import datetime as dt

    import boto3

    handler, _ = retrain
    settings, _ = handler.runtime()
    assert settings.retrain_cooldown_hours == 24  # the default
    sagemaker = boto3.client("sagemaker")
    other = handler.training_job_request(settings, "someone-elses-job")
    sagemaker.create_training_job(**other)
    now = dt.datetime.now(dt.UTC)
    assert handler.recent_job(sagemaker, 24, now) is None  # not a ChurnGuard job
    sagemaker.create_training_job(**handler.training_job_request(settings, "churnguard-20261129-000000"))
    assert handler.recent_job(sagemaker, 24, now)["TrainingJobName"] == "churnguard-20261129-000000"
    assert handler.recent_job(sagemaker, 24, now + dt.timedelta(hours=25)) is None  # older than the window


def test_a_cooldown_of_zero_lets_every_alarm_start_a_job(retrain, monkeypatch):
    handler, _ = retrain
    monkeypatch.setenv("CHURNGUARD_RETRAIN_COOLDOWN_HOURS", "0")
    handler.runtime.cache_clear()
    first = handler.lambda_handler(drift_alarm("2026-11-29T01:00:00Z"), FakeLambdaContext())
    second = handler.lambda_handler(drift_alarm("2026-11-29T02:00:00Z"), FakeLambdaContext())
    assert not first["already_started"] and not second["already_started"]
    assert job_names() == [first["training_job"], second["training_job"]]


def test_the_function_may_list_training_jobs_for_its_cooldown():
    from infra.template import load_template

    statements = load_template()["Resources"]["RetrainFunction"]["Properties"]["Policies"][0]["Statement"]
    listing = [s for s in statements if "sagemaker:ListTrainingJobs" in s["Action"]]
    assert listing and listing[0]["Resource"] == "*"  # ListTrainingJobs has no resource-level permissions
    actions = {
        a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
    } <= actions  # what the handler calls
