"""Submit the ChurnGuard training job from a laptop with the SageMaker Python SDK v3 (ModelTrainer).

    python training/launch.py --role arn:aws:iam::123456789012:role/churnguard-training \\
        --bucket churnguard-data --image <training image with Python 3.11>

The job is the one the scheduled ``retrain`` function starts (same channel, output path, entry point
and job-name prefix, so the ``promote`` rule picks it up). Runs in an environment with
``sagemaker>=3`` (not the project's venv: the SDK is ~1 GB); it imports nothing from the project, it
only packages the source: ``training/``, ``churnguard/`` and a requirements.txt made from the
``train`` extra in pyproject.toml. Against moto: ``SAGEMAKER_VALIDATE_ROLE=false`` and
``AWS_ENDPOINT_URL`` set (see tests/integration/test_launch.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_source(target: Path) -> Path:
    """training/ + churnguard/ + requirements.txt (the train extra) in one source directory."""
    shutil.copytree(ROOT / "training", target / "training", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "shared" / "churnguard", target / "churnguard", ignore=shutil.ignore_patterns("__pycache__")
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["train"]]
    (target / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return target


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Submit the ChurnGuard SageMaker training job (SDK v3 ModelTrainer)"
    )
    p.add_argument("--role", required=True, help="SageMaker execution role ARN")
    p.add_argument("--bucket", required=True, help="data bucket: training-events/ in, training/ out")
    p.add_argument("--image", required=True, help="training image URI (Python 3.11)")
    p.add_argument("--instance-type", default="ml.m5.xlarge")
    p.add_argument("--events-prefix", default="training-events/")
    p.add_argument("--max-runtime", type=int, default=7200)
    p.add_argument("--wait", action="store_true", help="wait for the job and stream its logs")
    p.add_argument(
        "--hyperparameter",
        "-H",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="train.py argument, e.g. -H epochs=40 -H threshold-policy=min_cost",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import boto3
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import OutputDataConfig, StoppingCondition
    from sagemaker.core.training.configs import Compute, InputData, SourceCode
    from sagemaker.train import ModelTrainer

    hyperparameters = dict(item.split("=", 1) for item in args.hyperparameter)
    session = Session(boto_session=boto3.Session(), default_bucket=args.bucket)
    with tempfile.TemporaryDirectory() as tmp:
        source = package_source(Path(tmp))
        trainer = ModelTrainer(
            sagemaker_session=session,
            role=args.role,
            base_job_name="churnguard",
            training_image=args.image,
            source_code=SourceCode(
                source_dir=str(source), entry_script="training/train.py", requirements="requirements.txt"
            ),
            compute=Compute(instance_type=args.instance_type, instance_count=1),
            stopping_condition=StoppingCondition(max_runtime_in_seconds=args.max_runtime),
            hyperparameters={"verbose": "0", **hyperparameters},
            input_data_config=[
                InputData(channel_name="train", data_source=f"s3://{args.bucket}/{args.events_prefix}")
            ],
            output_data_config=OutputDataConfig(s3_output_path=f"s3://{args.bucket}/training/"),
        )
        trainer.train(wait=args.wait, logs=args.wait)
    job = trainer._latest_training_job  # the SDK keeps the submitted job here
    print(job.training_job_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
