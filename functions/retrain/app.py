"""Scheduled retraining: EventBridge Scheduler -> one SageMaker training job (boto3 CreateTrainingJob).

With the template's ``RetrainOnDrift``, the score-drift alarm entering ALARM (an EventBridge
"CloudWatch Alarm State Change" event) starts a job the same way; the job's model still has to pass
the promotion gate (``functions/promote``) like any other. Persistent drift must not start a job per
alarm transition: a drift-triggered start is skipped (logged, metric ``RetrainSkippedCooldown``) when
a ChurnGuard training job was created within ``CHURNGUARD_RETRAIN_COOLDOWN_HOURS`` (default 24; 0 turns
the cooldown off), found with ListTrainingJobs. Scheduled runs are never skipped.

The job runs our training image (training/Containerfile: the code of the deployed commit baked in,
SageMaker's ``train`` entry point) on the training-events prefix (the ``train`` channel) and writes
model.tar.gz under ``training/<job>/output/``; its completion event triggers ``promote``.
No sagemaker SDK here: it is ~1 GB, and CreateTrainingJob is one API call.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard import aws
from churnguard.settings import RetrainSettings

SERVICE = "churnguard-retrain"
JOB_PREFIX = "churnguard-"  # every job this function names (and the promote rule matches)
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)

# The objective lines train.py logs (same regexes as infra/sagemaker/hpo.json).
METRIC_DEFINITIONS = [
    {"Name": "validation:auc", "Regex": "validation_auc=([0-9.]+)"},
    {"Name": "validation:log_loss", "Regex": "validation_log_loss=([0-9.]+)"},
    {"Name": "test:auc", "Regex": "test_auc=([0-9.]+)"},
    {"Name": "test:log_loss", "Regex": "test_log_loss=([0-9.]+)"},
]


@functools.cache
def runtime() -> tuple[RetrainSettings, Any]:
    return RetrainSettings.from_env(), aws.client("sagemaker", aws.CONTROL)


def training_job_request(settings: RetrainSettings, job_name: str) -> dict[str, Any]:
    hyperparameters = {
        "verbose": "0",
        **{k.replace("_", "-"): str(v) for k, v in (settings.hyperparameters or {}).items()},
    }
    return {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": settings.training_image,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
        },
        "RoleArn": settings.training_role_arn,
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"s3://{settings.data_bucket}/{settings.events_prefix}",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{settings.data_bucket}/training/"},
        "ResourceConfig": {"InstanceType": settings.instance_type, "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": settings.max_runtime_s},
        "HyperParameters": hyperparameters,
        "Tags": [{"Key": "app", "Value": "churnguard"}],
    }


@tracer.capture_method(capture_response=False)
def _existing_job(sagemaker: Any, job_name: str) -> dict[str, Any] | None:
    try:
        job: dict[str, Any] = sagemaker.describe_training_job(TrainingJobName=job_name)
        return job
    except sagemaker.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
            return None  # SageMaker answers an unknown job name with ValidationException
        raise


def job_name_for(event: dict[str, Any], now: dt.datetime) -> str:
    """One name per schedule tick: the tick's scheduled time (the template passes it as
    ``scheduled_time``), so a tick delivered twice names the same job and starts it once; an
    EventBridge event (the drift alarm's state change) is named after its ``time`` the same way. A
    manual invocation without either is named after the current time."""
    try:
        tick = dt.datetime.fromisoformat(
            str(event.get("scheduled_time") or event["time"]).replace("Z", "+00:00")
        )
    except (KeyError, TypeError, ValueError):
        tick = now
    return f"{JOB_PREFIX}{tick.astimezone(dt.UTC):%Y%m%d-%H%M%S}"


def drift_triggered(event: dict[str, Any]) -> bool:
    """The drift alarm's state change (the template's ``RetrainOnDriftRule``), not a schedule tick."""
    return (
        event.get("source") == "aws.cloudwatch"
        and event.get("detail-type") == "CloudWatch Alarm State Change"
    )


@tracer.capture_method(capture_response=False)
def recent_job(sagemaker: Any, hours: float, now: dt.datetime) -> dict[str, Any] | None:
    """The newest ChurnGuard training job created within the last ``hours``, any status (a failing
    job retried on every alarm would be a storm too); None if there is none."""
    jobs = sagemaker.list_training_jobs(
        CreationTimeAfter=now - dt.timedelta(hours=hours),
        NameContains=JOB_PREFIX,
        SortBy="CreationTime",
        SortOrder="Descending",
    )["TrainingJobSummaries"]
    return jobs[0] if jobs else None


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings, sagemaker = runtime()
    now = dt.datetime.now(dt.UTC)
    job_name = job_name_for(event, now)
    # This tick delivered before: its job exists. (The function's reserved concurrency of 1 keeps two
    # deliveries from racing here; SageMaker's unique job names would refuse a second one anyway.)
    existing = _existing_job(sagemaker, job_name)
    cooldown = settings.retrain_cooldown_hours
    if existing is None and drift_triggered(event) and cooldown > 0:
        recent = recent_job(sagemaker, cooldown, now)
        if recent is not None:
            metrics.add_metric(name="RetrainSkippedCooldown", unit=MetricUnit.Count, value=1)
            logger.info(
                "drift-triggered retraining skipped: a training job was created within the cooldown",
                extra={"job": job_name, "recent_job": recent["TrainingJobName"], "cooldown_hours": cooldown},
            )
            return {"training_job": None, "skipped": "cooldown", "recent_job": recent["TrainingJobName"]}
    if existing is None:
        try:
            response = sagemaker.create_training_job(**training_job_request(settings, job_name))
        except sagemaker.exceptions.ResourceInUse:
            existing = _existing_job(sagemaker, job_name)
    if existing is not None:
        logger.info("training job already started for this tick", extra={"job": job_name})
        return {"training_job": job_name, "arn": existing["TrainingJobArn"], "already_started": True}
    metrics.add_metric(name="TrainingJobsStarted", unit=MetricUnit.Count, value=1)
    trigger = "drift alarm" if drift_triggered(event) else "schedule"
    logger.info(
        "training job started", extra={"job": job_name, "arn": response["TrainingJobArn"], "trigger": trigger}
    )
    return {"training_job": job_name, "arn": response["TrainingJobArn"], "already_started": False}
