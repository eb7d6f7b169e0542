"""A loaded, verified model: TFLite scorer + feature spec + metadata + reasons explainer.

``ModelBundle.from_files`` refuses a model whose files are missing, whose sha256 does not match
metadata.json, whose feature spec is malformed or does not fit the model's input shapes, or whose
TFLite file does not load. Callers (the scoring Lambdas) keep serving the previous bundle when a
new one is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from churnguard.features import FeatureSpec, FeatureSpecError
from churnguard.model_metadata import MODEL_FORMAT, ModelMetadata, ModelMetadataError, RiskThresholds
from churnguard.reasons import OcclusionExplainer
from churnguard.scorer import ModelLoadError, TFLiteScorer

__all__ = ["MODEL_FORMAT", "REQUIRED_FILES", "ModelBundle", "RiskThresholds"]

REQUIRED_FILES = ("metadata.json", "feature_spec.json", "model.tflite")


@dataclass
class ModelBundle:
    version: str
    metadata: ModelMetadata
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
            metadata = ModelMetadata.from_json(files["metadata.json"])
        except ModelMetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        for name in ("feature_spec.json", model_file):
            expected = metadata.file_sha256(name)
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
        baseline = metadata.reason_baseline
        try:
            explainer = OcclusionExplainer(
                spec.static_groups, np.asarray(baseline.static), np.asarray(baseline.sequence)
            )
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"metadata.json has no valid reason baselines: {exc}") from exc
        return cls(metadata.model_version, metadata, spec, scorer, explainer, metadata.thresholds.risk())

    @classmethod
    def from_directory(cls, directory: str | Path, *, model_file: str = "model.tflite") -> ModelBundle:
        directory = Path(directory)
        files = {}
        for name in (*REQUIRED_FILES[:2], model_file):
            path = directory / name
            if path.exists():
                files[name] = path.read_bytes()
        return cls.from_files(files, model_file=model_file)
