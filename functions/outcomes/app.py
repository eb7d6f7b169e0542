"""The outcome job, daily (issue 10 §2): decisions + later events -> the outcome report and metrics.

``churnguard.outcome_job.run`` reads the decision log and the event history, writes the report (JSON,
PNG, HTML) under ``outcomes/<day>/`` and ``outcomes/latest/``, and this handler emits its key figures
as CloudWatch metrics: counts and uplift without dimensions, live quality per model version (dimension
``ModelVersion``). Logs carry counts and versions only.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from churnguard.adapters import S3ObjectStore
from churnguard.aws import BATCH, client
from churnguard.outcome_job import run
from churnguard.settings import OutcomeSettings
from churnguard.telemetry import emit_by_dimension

SERVICE = "churnguard-outcomes"
NAMESPACE = "ChurnGuard"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)


@functools.cache
def runtime() -> tuple[OutcomeSettings, S3ObjectStore]:
    """Cold-start wiring: settings validated, the S3 client built, once per container."""
    return OutcomeSettings.from_env(), S3ObjectStore(client("s3", BATCH))


def emit(figures: dict[str, float]) -> None:
    """``Name`` -> a metric; ``Name:<model version>`` -> ``Name`` with dimension ``ModelVersion``."""
    per_version: dict[str, dict[str, float]] = {}
    for name, value in figures.items():
        metric, _, version = name.partition(":")
        if version:
            per_version.setdefault(metric, {})[version] = value
        else:
            metrics.add_metric(name=metric, unit=MetricUnit.NoUnit, value=value)
    for metric, values in per_version.items():
        emit_by_dimension(metrics, metric, "ModelVersion", values)


@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings, store = runtime()
    result = run(
        store,
        settings.data_bucket,
        decisions_prefix=settings.decisions_prefix,
        events_prefix=settings.events_prefix,
        reports_prefix=settings.reports_prefix,
    )
    emit(result.figures)
    counts = result.report["counts"]
    logger.info(
        "outcomes measured",
        extra={
            "decisions": counts["decisions"],
            "matured": counts["matured"],
            "model_versions": sorted(result.report["live_quality"]),
            "objects": len(result.keys),
        },
    )
    return {
        "counts": counts,
        "figures": result.figures,
        "report": f"{settings.reports_prefix}latest/report.json",
    }
