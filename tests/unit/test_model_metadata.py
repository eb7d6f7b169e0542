"""metadata.json through one typed class: what training writes is what every reader reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from churnguard.model_metadata import MODEL_FORMAT, ModelMetadata, ModelMetadataError, RiskThresholds

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "model"


def fixture_dict() -> dict:
    return json.loads((FIXTURE / "metadata.json").read_text())


def test_the_committed_model_round_trips_to_the_same_json():
    text = (FIXTURE / "metadata.json").read_text()
    metadata = ModelMetadata.from_json(text)
    assert metadata.format == MODEL_FORMAT
    assert json.loads(metadata.to_json()) == json.loads(text)
    # entries written without optional fields stay without them (no "ops": null for the spec file)
    assert "ops" not in json.loads(metadata.to_json())["files"]["feature_spec.json"]


def test_typed_fields_are_read_without_string_keys():
    metadata = ModelMetadata.from_directory(FIXTURE)
    raw = fixture_dict()
    assert metadata.protocol.horizon_weeks == raw["protocol"]["horizon_weeks"]
    assert metadata.thresholds.risk().promotion == raw["thresholds"]["promotion"]
    assert metadata.file_sha256("model.tflite") == raw["files"]["model.tflite"]["sha256"]
    assert metadata.parity("model.tflite") == raw["files"]["model.tflite"]["parity_max_abs_diff"]
    assert metadata.file_sha256("model_dynamic_range.tflite") is None
    assert metadata.parity("no-such-file") is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.update(format="keras"), "format 'keras' is not 'churnguard-model'"),
        (lambda d: d.update(format_version=2), "format_version 2 is not 1"),
        (lambda d: d.pop("protocol"), "protocol: Field required"),
        (lambda d: d["data"].update(rows_in="many"), "data.rows_in"),
        (lambda d: d.update(surprise=1), "surprise: Extra inputs are not permitted"),
        (lambda d: d["thresholds"].update(promotion=1.5), "thresholds ['promotion'] are not probabilities"),
        (lambda d: d["thresholds"]["risk_tiers"].update(medium=0.9, high=0.1), "medium is above"),
        (lambda d: d["calibration"].update(method="isotonic"), "calibration.method"),
    ],
)
def test_a_bad_metadata_file_is_refused_naming_the_field(change, named):
    data = fixture_dict()
    change(data)
    with pytest.raises(ModelMetadataError) as refused:
        ModelMetadata.from_dict(data)
    assert named in str(refused.value)


def test_not_json_is_refused_as_such():
    with pytest.raises(ModelMetadataError, match="not JSON"):
        ModelMetadata.from_json(b"\xff{")


def test_an_undefined_metric_is_nan_on_disk_and_null_in_summaries():
    data = fixture_dict()
    data["metrics"]["test"]["roc_auc"] = float("nan")
    metadata = ModelMetadata.from_dict(data)
    assert math.isnan(metadata.metrics["test"]["roc_auc"])
    assert metadata.summary_metrics("test")["roc_auc"] is None
    assert metadata.summary_metrics("test")["f1"] == data["metrics"]["test"]["f1"]
    assert "NaN" in metadata.to_json()


def test_risk_tiers_cut_at_their_thresholds():
    thresholds = RiskThresholds(medium=0.3, high=0.6, promotion=0.5)
    tiers = thresholds.tier(np.array([0.0, 0.29, 0.3, 0.59, 0.6, 1.0]))
    assert tiers.tolist() == ["low", "low", "medium", "medium", "high", "high"]
    with pytest.raises(ValueError, match="not probabilities"):
        RiskThresholds(medium=math.nan, high=0.6, promotion=0.5)
