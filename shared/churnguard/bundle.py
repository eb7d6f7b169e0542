"""A loaded, verified model: TFLite scorer + feature spec + metadata + reasons explainer.

``ModelBundle.from_files`` refuses a model whose files are missing, whose sha256 does not match
metadata.json, whose feature spec is malformed or does not fit the model's input shapes, or whose
TFLite file does not load. Callers (the scoring Lambdas) keep serving the previous bundle when a
new one is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from churnguard.features import FeatureSpec, FeatureSpecError
from churnguard.reasons import OcclusionExplainer
from churnguard.scorer import ModelLoadError, TFLiteScorer

REQUIRED_FILES = ("metadata.json", "feature_spec.json", "model.tflite")
MODEL_FORMAT = "churnguard-model"


@dataclass(frozen=True)
class RiskThresholds:
    medium: float
    high: float
    promotion: float

    def __post_init__(self) -> None:
        values = {"risk_tiers.medium": self.medium, "risk_tiers.high": self.high, "promotion": self.promotion}
        outside = [name for name, value in values.items() if not 0.0 <= value <= 1.0]  # NaN fails too
        if outside:
            raise ValueError(f"thresholds {outside} are not probabilities in [0, 1]")
        if self.medium > self.high:
            raise ValueError("risk_tiers.medium is above risk_tiers.high")

    def tier(self, probabilities: np.ndarray) -> np.ndarray:
        tiers = np.full(len(probabilities), "low", dtype=object)
        tiers[probabilities >= self.medium] = "medium"
        tiers[probabilities >= self.high] = "high"
        return tiers


@dataclass
class ModelBundle:
    version: str
    metadata: dict[str, Any]
    spec: FeatureSpec
    scorer: TFLiteScorer
    explainer: OcclusionExplainer
    thresholds: RiskThresholds

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, model_file: str = "model.tflite") -> ModelBundle:
        missing = [name for name in (*REQUIRED_FILES[:2], model_file) if name not in files]
        if missing:
            raise ModelLoadError(f"model directory is missing {missing}")
        try:
            metadata = json.loads(files["metadata.json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"metadata.json is not JSON: {exc}") from exc
        if metadata.get("format") != MODEL_FORMAT:
            raise ModelLoadError(f"metadata.json format {metadata.get('format')!r} is not {MODEL_FORMAT!r}")
        for name in ("feature_spec.json", model_file):
            expected = metadata.get("files", {}).get(name, {}).get("sha256")
            actual = hashlib.sha256(files[name]).hexdigest()
            if expected != actual:
                raise ModelLoadError(
                    f"{name}: sha256 {actual[:12]}… does not match metadata ({str(expected)[:12]}…)"
                )
        try:
            spec = FeatureSpec.from_json(files["feature_spec.json"].decode("utf-8"))
        except (FeatureSpecError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"feature_spec.json refused: {exc}") from exc
        scorer = TFLiteScorer(files[model_file])
        if (scorer.weeks, scorer.channels, scorer.n_static) != (spec.weeks, spec.n_channels, spec.n_static):
            raise ModelLoadError(
                f"feature spec makes inputs ({spec.weeks}, {spec.n_channels}) + {spec.n_static}, the model "
                f"takes ({scorer.weeks}, {scorer.channels}) + {scorer.n_static}"
            )
        try:
            baseline = metadata["reason_baseline"]
            explainer = OcclusionExplainer(
                spec.static_groups, np.asarray(baseline["static"]), np.asarray(baseline["sequence"])
            )
            t = metadata["thresholds"]
            thresholds = RiskThresholds(
                medium=float(t["risk_tiers"]["medium"]),
                high=float(t["risk_tiers"]["high"]),
                promotion=float(t["promotion"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"metadata.json has no valid reason baselines or thresholds: {exc}") from exc
        return cls(metadata["model_version"], metadata, spec, scorer, explainer, thresholds)

    @classmethod
    def from_directory(cls, directory: str | Path, *, model_file: str = "model.tflite") -> ModelBundle:
        directory = Path(directory)
        files = {}
        for name in (*REQUIRED_FILES[:2], model_file):
            path = directory / name
            if path.exists():
                files[name] = path.read_bytes()
        return cls.from_files(files, model_file=model_file)
