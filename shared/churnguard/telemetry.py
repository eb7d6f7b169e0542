"""Metrics the functions share (Powertools EMF): the drift figures of a batch file or a dataset, and
figures per value of a dimension that belongs to one metric only (a feature group, a model version).

Only names, numbers and fixed labels: nothing here ever carries a customer or a row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric


def emit_by_dimension(metrics: Metrics, name: str, dimension: str, values: Mapping[str, float]) -> None:
    """One ``name`` datapoint per entry, with ``dimension`` = its key and ``metrics``' service: a
    metric of its own (``single_metric``), so the dimension does not spread to the function's other
    metrics. Nothing when metrics are disabled (``POWERTOOLS_METRICS_DISABLED``, which
    ``single_metric`` itself does not read: the local stack runs quiet)."""
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true", "yes", "on"):
        return
    service = {"service": str(metrics.service)} if metrics.service else {}
    for key, value in values.items():
        with single_metric(
            name=name,
            unit=MetricUnit.NoUnit,
            value=value,
            namespace=metrics.namespace,
            default_dimensions=service,
        ) as metric:
            metric.add_dimension(name=dimension, value=key)


def emit_drift(metrics: Metrics, drift: Mapping[str, Any] | None) -> None:
    """``ScorePSI`` (the drift alarm's metric) and ``FeatureGroupPSI`` per feature group (dimension
    ``group``: the model's reason groups, about ten fixed names), when the PSI was computed
    (``churnguard.drift``; a summary's ``drift`` section)."""
    if not drift or drift.get("score_psi") is None:
        return
    metrics.add_metric(name="ScorePSI", unit=MetricUnit.NoUnit, value=drift["score_psi"])
    emit_by_dimension(metrics, "FeatureGroupPSI", "group", drift.get("group_psi", {}))
