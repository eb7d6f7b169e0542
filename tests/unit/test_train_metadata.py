"""build_metadata: metadata.json's layout, pinned on stand-in training results (no network is fitted)."""

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from churnguard.events import validate_events
from training.data import EventSource, Protocol, prepare
from training.evaluate import SUMMARY_METRICS, ThresholdPolicy
from training.export import ExportedModel, Exports
from training.model import HyperParameters
from training.reasons_model import ReasonsExport, Reference
from training.train import (
    CalibratedExport,
    Evaluation,
    FitResult,
    TrainedNetwork,
    TrainingData,
    build_metadata,
)

TOP_LEVEL_KEYS = [
    "format",
    "format_version",
    "model_version",
    "created_at",
    "code_version",
    "data",
    "protocol",
    "hyperparameters",
    "hpo_trials",
    "epochs_trained",
    "calibration",
    "thresholds",
    "metrics",
    "inputs",
    "reason_baseline",
    "reason_reference",
    "files",
    "dynamic_range_refused",
    "keras_model",
    "report",
    "training_seconds",
    "runtime",
]
CREATED = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def training() -> TrainingData:
    rows = []
    for i in range(120):
        rows += [[f"u{i}", "1997-03-01", "order", 10.0 + i], [f"u{i}", "1997-04-01", "view", 0.0]]
        if i % 2:
            rows.append([f"u{i}", "1997-11-01", "order", 5.0])
    validated = validate_events(pd.DataFrame(rows, columns=["user_id", "timestamp", "event_type", "amount"]))
    source = EventSource("probe", validated.events, (), "0" * 64, validated.rows_in, 0)
    protocol = Protocol(as_of="1997-10-01")
    return TrainingData(source=source, protocol=protocol, data=prepare(source, protocol), extra=[])


def metadata_for(training: TrainingData, *, dynamic_range: bool, hpo_rows: int = 0) -> dict:
    """build_metadata's result as written to metadata.json."""
    float32 = ExportedModel("model.tflite", b"float32 model", ["ADD"], 1e-7, 1e-5)
    dr = ExportedModel("model_dynamic_range.tflite", b"dr", ["ADD", "MUL"], 1e-3, 5e-3)
    exports = Exports(float32, dr if dynamic_range else None, None if dynamic_range else "refused: too far")
    fit = FitResult(
        network=None, history={"loss": [0.6]}, val_logits=np.zeros(3), val_auc=0.7, val_log_loss=0.5, epochs=4
    )
    spec = training.data.spec
    groups = (*dict.fromkeys(spec.static_groups), "weekly_activity")
    reasons = ReasonsExport(
        model=ExportedModel("model_reasons.tflite", b"reasons", ["ADD", "GATHER"], 2e-7, 1e-5),
        reference=Reference(
            sequence=np.full((spec.weeks, spec.n_channels), 0.25, np.float32),
            static=np.full(spec.n_static, 0.5, np.float32),
            probability=0.2875,
            features={"recency_days": 53.0, "n_order_days": 4.0},
            retained_customers=61,
        ),
        groups=groups,
        efficiency_max_abs_error=3e-8,
        served_max_abs_diff=0.0,
    )
    summary = {k: 0.5 for k in SUMMARY_METRICS}
    evaluation = Evaluation(
        policy=ThresholdPolicy(),
        threshold=0.4,
        risk_tiers={"medium": 0.2, "high": 0.4},
        metrics={"validation": {**summary, "extra": 1}, "test": {**summary, "extra": 2}, "model": "m"},
        test_probs=np.zeros(3),
        scorer_runtime="tensorflow.lite",
    )
    return json.loads(
        build_metadata(
            training,
            TrainedNetwork(hp=HyperParameters(), fit=fit, hpo_table=[{"trial": i} for i in range(hpo_rows)]),
            CalibratedExport(
                serving_model=None, slope=1.5, intercept=-0.25, exports=exports, reasons=reasons
            ),
            evaluation,
            spec_json='{"spec": 1}',
            keras_sha256="k" * 64,
            plot_files=["roc.png", "pr.png"],
            created=CREATED,
            code="abc123",
            training_seconds=12.3,
        ).to_json()
    )


def test_metadata_keys_and_sections_are_the_documented_layout(training):
    metadata = metadata_for(training, dynamic_range=True, hpo_rows=3)
    assert list(metadata) == TOP_LEVEL_KEYS
    float_sha = ExportedModel("model.tflite", b"float32 model", [], 0, 0).sha256
    assert metadata["model_version"] == f"20240506T070809Z-{float_sha[:8]}"
    assert metadata["created_at"] == "2024-05-06T07:08:09+00:00"
    assert metadata["code_version"] == "abc123"
    data = training.data
    assert metadata["data"]["customers"] == {
        "train": len(data.train.labels),
        "validation": len(data.validation.labels),
        "test": len(data.test.labels),
    }
    assert metadata["data"]["event_types"] == ["order", "view"]
    assert metadata["hpo_trials"] == 3
    assert metadata["calibration"] == {"method": "platt", "slope": 1.5, "intercept": -0.25}
    assert metadata["thresholds"]["decision"] == metadata["thresholds"]["promotion"] == 0.4
    assert metadata["metrics"] == {
        "validation": dict.fromkeys(SUMMARY_METRICS, 0.5),
        "test": dict.fromkeys(SUMMARY_METRICS, 0.5),
    }
    assert metadata["inputs"] == {
        "sequence": [None, data.spec.weeks, data.spec.n_channels],
        "static": [None, data.spec.n_static],
    }
    assert len(metadata["reason_baseline"]["static"]) == data.spec.n_static
    assert np.shape(metadata["reason_baseline"]["sequence"]) == (data.spec.weeks, data.spec.n_channels)
    reference = metadata["reason_reference"]
    assert reference["method"] == "exact_group_shapley"
    assert reference["model_file"] == "model_reasons.tflite"
    assert reference["groups"][-1] == "weekly_activity" and len(reference["groups"]) == len(
        set(reference["groups"])
    )
    assert reference["probability"] == 0.2875 and reference["efficiency_max_abs_error"] == 3e-8
    assert "of the 61 retained" in reference["selection"]
    assert reference["features"] == {"recency_days": 53.0, "n_order_days": 4.0}
    assert np.shape(reference["sequence"]) == (data.spec.weeks, data.spec.n_channels)
    assert reference["static"] == [0.5] * data.spec.n_static
    assert metadata["report"] == ["history.json", "metrics.json", "pr.png", "roc.png"]
    assert metadata["runtime"]["tflite_runtime"] == "tensorflow.lite"


def test_files_list_the_dynamic_range_model_only_when_it_was_kept(training):
    kept = metadata_for(training, dynamic_range=True)
    assert list(kept["files"]) == [
        "feature_spec.json",
        "model.tflite",
        "model_dynamic_range.tflite",
        "model_reasons.tflite",
    ]
    assert kept["files"]["feature_spec.json"]["bytes"] == len('{"spec": 1}')
    assert kept["files"]["model_dynamic_range.tflite"]["parity_tolerance"] == 5e-3
    assert kept["dynamic_range_refused"] is None

    refused = metadata_for(training, dynamic_range=False)
    assert list(refused["files"]) == ["feature_spec.json", "model.tflite", "model_reasons.tflite"]
    assert refused["dynamic_range_refused"] == "refused: too far"
