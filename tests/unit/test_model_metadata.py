"""metadata.json through one typed class: what training writes is what every reader reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from churnguard.model_metadata import (
    ABOVE_EVERY_PROBABILITY,
    MODEL_FORMAT,
    ModelMetadata,
    ModelMetadataError,
    RiskThresholds,
)

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


def test_a_field_from_a_newer_trainer_is_ignored_by_this_reader():
    data = fixture_dict()
    data["surprise"] = {"added": "by a newer trainer"}
    data["thresholds"]["surprise"] = 1
    metadata = ModelMetadata.from_dict(data)
    assert metadata.model_version == data["model_version"]
    assert "surprise" not in metadata.to_dict()


def test_a_metric_undefined_on_a_one_class_split_may_be_null():
    data = fixture_dict()
    data["metrics"]["validation"]["roc_auc"] = None
    assert ModelMetadata.from_dict(data).summary_metrics("validation")["roc_auc"] is None


def test_a_model_whose_policy_flags_nobody_is_valid_and_promotes_nobody():
    # min_cost when no offer pays for itself: the cut sits just above 1.0
    thresholds = RiskThresholds(medium=0.4, high=ABOVE_EVERY_PROBABILITY, promotion=ABOVE_EVERY_PROBABILITY)
    assert ABOVE_EVERY_PROBABILITY > 1.0
    probabilities = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    assert not (probabilities >= thresholds.promotion).any()
    assert thresholds.tier(probabilities).tolist() == ["low", "medium", "medium"]
    with pytest.raises(ValueError, match="not probabilities"):
        RiskThresholds(medium=0.4, high=0.5, promotion=1.5)
