"""training/launch.py (SageMaker SDK v3 ModelTrainer) against moto's SageMaker, in the SDK's own venv."""

import os
import subprocess
from pathlib import Path

from tests.helpers import cached_venv

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training:latest"


def test_launcher_submits_the_script_mode_job_the_promote_rule_expects(aws):
    aws["s3"].create_bucket(
        Bucket="churnguard-data", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    env = {**os.environ, "SAGEMAKER_VALIDATE_ROLE": "false"}
    result = subprocess.run(
        [
            str(cached_venv("venv-sagemaker", "sagemaker==3.27.0")),
            str(ROOT / "training/launch.py"),
            "--role",
            "arn:aws:iam::123456789012:role/churnguard",
            "--bucket",
            "churnguard-data",
            "--image",
            IMAGE,
            "-H",
            "epochs=40",
            "-H",
            "threshold-policy=min_cost",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    job_name = result.stdout.strip().splitlines()[-1]
    assert job_name.startswith("churnguard-")

    import boto3

    job = boto3.client("sagemaker").describe_training_job(TrainingJobName=job_name)
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels["train"] == "s3://churnguard-data/training-events/"
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://churnguard-data/training/"
    # ModelTrainer passes string hyperparameters through unquoted (its safe_serialize keeps str as is),
    # like the retrain function; train.py's argparse would refuse a JSON-quoted '"min_cost"' (choices).
    hyperparameters = job["HyperParameters"]
    assert hyperparameters["epochs"] == "40"
    assert hyperparameters["threshold-policy"] == "min_cost"
    assert hyperparameters["verbose"] == "0"
    keys = [o["Key"] for o in aws["s3"].list_objects_v2(Bucket="churnguard-data").get("Contents", [])]
    assert any("train.py" in k or k.endswith(".tar.gz") for k in keys), keys  # the packaged source went up
