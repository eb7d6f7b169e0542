"""The model directory's ``metadata.json``: one typed, versioned class, written by training and read
by everything that loads or judges a model (the bundle, the promotion gate, ``GET /v1/model``, the
local stack, deployment and the benchmarks).

``format`` and ``format_version`` are checked on read: a directory written by a newer, incompatible
trainer is refused with a message naming the version instead of failing on a missing key later.
Keys this code does not know are ignored: a newer trainer may add a field without breaking the
serving functions still deployed (a change old readers cannot live with bumps ``FORMAT_VERSION``).
What training writes is pinned key by key by ``tests/unit/test_train_metadata.py``.

The export tolerances live here because two places enforce them: the exporter refuses to write a
model above them and the promotion gate refuses to promote one whose recorded parity is above them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

MODEL_FORMAT = "churnguard-model"
FORMAT_VERSION = 1
FLOAT32_MODEL = "model.tflite"
DYNAMIC_RANGE_MODEL = "model_dynamic_range.tflite"
# Exact group Shapley reasons (training/reasons_model.py); optional: older directories have none.
REASONS_MODEL = "model_reasons.tflite"
# Training's binned feature and score distributions (churnguard.drift); optional: older directories have none.
DRIFT_REFERENCE = "drift_reference.json"
# Max |TFLite - Keras| on held-out customers a model file may have (the reasons model: its
# probability column).
PARITY_TOLERANCE: dict[str, float] = {FLOAT32_MODEL: 1e-5, DYNAMIC_RANGE_MODEL: 5e-3, REASONS_MODEL: 1e-5}
# A cut above every probability a float32 model outputs: "flag nobody" (the min_cost policy when no
# offer pays for itself). The one threshold outside [0, 1] a model may carry.
ABOVE_EVERY_PROBABILITY = float(np.nextafter(np.float32(1.0), np.float32(2.0)))


class ModelMetadataError(ValueError):
    """metadata.json is not JSON, or not a model directory this code can read; the message names the
    field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RiskThresholds(_Section):
    """The probabilities serving uses: tiers (medium, high) and the promotion cut."""

    medium: float
    high: float
    promotion: float

    @model_validator(mode="after")
    def _probabilities_in_order(self) -> Self:
        values = {"risk_tiers.medium": self.medium, "risk_tiers.high": self.high, "promotion": self.promotion}
        outside = [  # NaN fails too
            name
            for name, value in values.items()
            if not (0.0 <= value <= 1.0 or value == ABOVE_EVERY_PROBABILITY)
        ]
        if outside:
            raise ValueError(f"thresholds {outside} are not probabilities in [0, 1]")
        if self.medium > self.high:
            raise ValueError("risk_tiers.medium is above risk_tiers.high")
        return self

    def tier(self, probabilities: np.ndarray) -> np.ndarray:
        tiers = np.full(len(probabilities), "low", dtype=object)
        tiers[probabilities >= self.medium] = "medium"
        tiers[probabilities >= self.high] = "high"
        return tiers


class SplitCounts(_Section):
    train: int
    validation: int
    test: int


class DataSection(_Section):
    source: str
    sha256: str
    rows_in: int
    rows_rejected: int
    event_types: list[str]
    customers: SplitCounts
    augmentation_rows: int = 0


class ProtocolSection(_Section):
    """Cutoff, label horizon and split rules the model was trained and evaluated under."""

    as_of: str
    horizon_weeks: int
    test_fraction: float
    validation_fraction: float
    seed: int


class Calibration(_Section):
    method: Literal["platt"]
    slope: float
    intercept: float


class ThresholdPolicySection(_Section):
    name: str
    promotion_cost: float
    customer_value: float
    uplift: float


class TierCuts(_Section):
    medium: float
    high: float


class Thresholds(_Section):
    policy: ThresholdPolicySection
    decision: float
    promotion: float
    risk_tiers: TierCuts

    @model_validator(mode="after")
    def _valid_for_serving(self) -> Self:
        self.risk()  # raises the specific reason
        return self

    def risk(self) -> RiskThresholds:
        cuts = self.risk_tiers
        return RiskThresholds(medium=cuts.medium, high=cuts.high, promotion=self.promotion)


class InputShapes(_Section):
    sequence: list[int | None]
    static: list[int | None]


class ReasonBaseline(_Section):
    """Per-feature medians of the training inputs: what "typical" means for occlusion reasons."""

    static: list[float]
    sequence: list[list[float]]


class ReasonReference(_Section):
    """Who the reasons are relative to: a real retained training customer (training/reasons_model.py)
    and the groups, in the reasons model's output order. Contributions add up to ``p - probability``."""

    method: Literal["exact_group_shapley"]
    model_file: str
    groups: list[str]
    probability: float
    selection: str  # the rule that chose the reference, in words
    features: dict[str, float]  # a few of its raw features (recency_days, n_order_days, ...)
    static: list[float]  # its model inputs
    sequence: list[list[float]]
    efficiency_max_abs_error: float  # measured at export on the test customers


class ModelFile(_Section):
    sha256: str
    bytes: int
    ops: list[str] | None = None
    parity_max_abs_diff: float | None = None
    parity_tolerance: float | None = None


class KerasFile(_Section):
    file: str
    sha256: str


class ModelMetadata(_Section):
    format: Literal["churnguard-model"]
    format_version: Literal[1]
    model_version: str
    created_at: str
    code_version: str
    data: DataSection
    protocol: ProtocolSection
    hyperparameters: dict[str, int | float | str]
    hpo_trials: int
    epochs_trained: int
    calibration: Calibration
    thresholds: Thresholds
    # split -> metric -> value; a metric undefined on a split (one class only) is None or NaN
    metrics: dict[str, dict[str, float | None]]
    inputs: InputShapes
    reason_baseline: ReasonBaseline  # occlusion reasons: what serving code before reason_reference reads
    reason_reference: ReasonReference | None = None
    files: dict[str, ModelFile]
    dynamic_range_refused: str | None = None
    keras_model: KerasFile | None = None
    report: list[str]
    training_seconds: float
    runtime: dict[str, str]

    @model_validator(mode="before")
    @classmethod
    def _known_format_first(cls, data: Any) -> Any:
        # Say "this is not a model directory / not this version" before listing missing fields.
        if isinstance(data, dict):
            if data.get("format") != MODEL_FORMAT:
                raise ValueError(f"format {data.get('format')!r} is not {MODEL_FORMAT!r}")
            if data.get("format_version") != FORMAT_VERSION:
                raise ValueError(
                    f"format_version {data.get('format_version')!r} is not {FORMAT_VERSION} (written by a "
                    "different ChurnGuard version)"
                )
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ModelMetadataError(f"metadata.json: {_problems(exc)}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)  # json, not pydantic's parser: metrics may hold NaN
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelMetadataError(f"metadata.json is not JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_directory(cls, model_dir: str | os.PathLike[str]) -> Self:
        return cls.from_json(Path(model_dir, "metadata.json").read_bytes())

    def to_dict(self) -> dict[str, Any]:
        # exclude_unset: a file entry without ops (feature_spec.json) is written without them, as before
        return self.model_dump(mode="python", exclude_unset=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def file_sha256(self, name: str) -> str | None:
        entry = self.files.get(name)
        return entry.sha256 if entry else None

    def parity(self, name: str) -> float | None:
        entry = self.files.get(name)
        return entry.parity_max_abs_diff if entry else None

    def summary_metrics(self, split: str) -> dict[str, float | None]:
        """A split's metrics with NaN as None (JSON has no NaN)."""
        return {
            k: (None if v is None or math.isnan(v) else v) for k, v in self.metrics.get(split, {}).items()
        }


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'metadata'}: {error['msg']}" for error in exc.errors()
    )
