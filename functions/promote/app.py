"""Champion/challenger gate: on "SageMaker Training Job State Change" (Completed), validate the new
model, compare it with the serving one on the holdout in the data bucket, and move the model pointer
only if it is not worse. Every decision is written to ``model-decisions/<version>.json``.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard import aws
from churnguard.adapters import S3ObjectStore, SsmParameterStore
from churnguard.bundle import ModelBundle
from churnguard.champion import (
    GateDecision,
    GatePolicy,
    Holdout,
    decide,
    files_from_tarball,
    validate_challenger,
)
from churnguard.model_store import ModelPointer, download_model_files, publish
from churnguard.ports import ObjectStore, ParameterStore
from churnguard.scorer import ModelLoadError
from churnguard.settings import GateSettings

SERVICE = "churnguard-promote"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
# The gate's evaluation as its own trace segment (the domain code stays free of Powertools).
_decide = tracer.capture_method(capture_response=False)(decide)
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)


@dataclass(frozen=True)
class Runtime:
    bucket: str
    pointer: str
    policy: GatePolicy
    store: ObjectStore
    parameters: ParameterStore


@functools.cache
def runtime() -> Runtime:
    """Cold-start wiring: settings validated once, adapters built once per container."""
    settings = GateSettings.from_env()
    policy = GatePolicy(settings.max_auc_drop, settings.max_log_loss_increase, settings.min_holdout_customers)
    return Runtime(
        settings.data_bucket,
        settings.model_pointer_parameter,
        policy,
        S3ObjectStore(aws.client("s3", aws.CONTROL)),
        SsmParameterStore(aws.client("ssm", aws.CONTROL)),
    )


@tracer.capture_method(capture_response=False)
def _champion(rt: Runtime) -> ModelBundle | None:
    try:
        pointer = ModelPointer.parse(rt.parameters.get(rt.pointer))
        return ModelBundle.from_files(download_model_files(rt.store, pointer, "model.tflite"))
    except ModelLoadError as exc:  # a fresh stack's placeholder pointer, or an unreadable champion
        logger.warning("no usable champion", extra={"reason": str(exc)})
        return None


@tracer.capture_method(capture_response=False)
def _record(rt: Runtime, decision: GateDecision, job: str) -> dict[str, Any]:
    body = {"training_job": job, **decision.to_dict()}
    name = decision.challenger_version or job
    rt.store.put_bytes(
        rt.bucket,
        f"model-decisions/{name}.json",
        json.dumps(body, indent=2).encode(),
        content_type="application/json",
    )
    metrics.add_metric(
        name="ChallengerAccepted" if decision.accepted else "ChallengerRejected",
        unit=MetricUnit.Count,
        value=1,
    )
    logger.info("gate decision", extra=body)
    return body


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    detail = event.get("detail", {})
    job, status = detail.get("TrainingJobName", "?"), detail.get("TrainingJobStatus")
    if status != "Completed":
        logger.info("training job not completed; nothing to promote", extra={"job": job, "status": status})
        return {"training_job": job, "status": status, "accepted": False}
    rt = runtime()
    artifact = urlparse(detail["ModelArtifacts"]["S3ModelArtifacts"])
    try:
        content = rt.store.get_bytes(artifact.netloc, artifact.path.lstrip("/"))
        files = files_from_tarball(content)
        challenger = validate_challenger(files)
    except (ModelLoadError, *aws.aws_errors()) as exc:  # type: ignore[misc]  # mypy cannot size a starred tuple
        if not isinstance(exc, ModelLoadError) and aws.error_code(exc) != "NoSuchKey":
            raise  # any other AWS error fails the invocation, as before: no decision recorded
        return _record(rt, GateDecision(False, None, None, reasons=[f"challenger refused: {exc}"]), job)
    decision = _decide(challenger, _champion(rt), Holdout.from_s3(rt.store, rt.bucket), rt.policy)
    if decision.accepted:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            publish(
                tmp, store=rt.store, parameters=rt.parameters, bucket=rt.bucket, parameter_name=rt.pointer
            )
    return _record(rt, decision, job)
