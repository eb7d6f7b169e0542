"""Per-dimension metrics (churnguard.telemetry): the function's service, and silence when disabled."""

from __future__ import annotations

import json

from aws_lambda_powertools import Metrics

from churnguard.telemetry import emit_drift

DRIFT = {"status": "ok", "score_psi": 0.3, "group_psi": {"recency": 0.5, "tenure": 0.01}}


def test_group_psi_carries_the_functions_service_whatever_the_environment_says(capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "another-function")  # in-process stacks share os.environ
    metrics = Metrics(namespace="ChurnGuard", service="churnguard-batch-score")
    emit_drift(metrics, DRIFT)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert {(b["group"], b["service"]) for b in blobs} == {
        ("recency", "churnguard-batch-score"),
        ("tenure", "churnguard-batch-score"),
    }
    metrics.clear_metrics()


def test_nothing_is_printed_when_metrics_are_disabled(capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    metrics = Metrics(namespace="ChurnGuard", service="churnguard-batch-score")
    emit_drift(metrics, DRIFT)
    assert '"_aws"' not in capsys.readouterr().out
    metrics.clear_metrics()
