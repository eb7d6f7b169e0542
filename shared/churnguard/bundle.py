"""A loaded, verified model: TFLite scorer + feature spec + metadata + reasons explainer.

The drift reference (``drift_reference.json``, ``churnguard.drift``) is loaded when metadata.json
lists it; a directory written before it loads without one (``drift_reference`` None: batch summaries
then report drift as unavailable).

The reasons come from the directory's reasons model (exact group Shapley, when metadata.json has a
``reason_reference``) or, for directories written before it, from occlusion against the median
training inputs (churnguard.reasons).

``ModelBundle.from_files`` refuses a model whose files are missing, whose sha256 does not match
metadata.json, whose feature spec is malformed or does not fit the model's input shapes, or whose
TFLite file does not load. Callers (the scoring Lambdas) keep serving the previous bundle when a
new one is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from churnguard.drift import DriftReference, DriftReferenceError
from churnguard.features import FeatureSpec, FeatureSpecError
from churnguard.model_metadata import (
    DRIFT_REFERENCE,
    FLOAT32_MODEL,
    MODEL_FORMAT,
    ModelMetadata,
    ModelMetadataError,
    RiskThresholds,
)
from churnguard.reasons import Explainer, OcclusionExplainer, ShapleyExplainer, reason_groups
from churnguard.scorer import ModelLoadError, TFLiteScorer

__all__ = ["MODEL_FORMAT", "REQUIRED_FILES", "ModelBundle", "RiskThresholds"]

REQUIRED_FILES = ("metadata.json", "feature_spec.json", "model.tflite")
# Rows per reasons-model call ~ customers x 2^groups: keep one call's tensors to tens of MB.
REASON_ROWS_PER_CALL = 1 << 16


def files_to_load(metadata: ModelMetadata, model_file: str) -> tuple[str, ...]:
    """The files a bundle of this directory reads: the spec, the served model, the drift reference
    and the reasons model (those two when metadata.json names them)."""
    reasons = metadata.reason_reference
    drift = (DRIFT_REFERENCE,) if DRIFT_REFERENCE in metadata.files else ()
    return ("feature_spec.json", model_file, *drift, *((reasons.model_file,) if reasons is not None else ()))


@dataclass
class ModelBundle:
    version: str
    metadata: ModelMetadata
    spec: FeatureSpec
    scorer: TFLiteScorer
    explainer: Explainer
    thresholds: RiskThresholds
    drift_reference: DriftReference | None = None  # None: a directory written before drift references

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, model_file: str = "model.tflite") -> ModelBundle:
        missing = [name for name in (*REQUIRED_FILES[:2], model_file) if name not in files]
        if missing:
            raise ModelLoadError(f"model directory is missing {missing}")
        try:
            metadata = ModelMetadata.from_json(files["metadata.json"])
        except ModelMetadataError as exc:
            raise ModelLoadError(str(exc)) from exc
        names = files_to_load(metadata, model_file)
        missing = [name for name in names if name not in files]
        if missing:
            raise ModelLoadError(f"model directory is missing {missing} (named by metadata.json)")
        for name in names:
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
        explainer = _explainer(metadata, spec, scorer, files, model_file)
        drift = _drift_reference(metadata, spec, files)
        return cls(
            metadata.model_version, metadata, spec, scorer, explainer, metadata.thresholds.risk(), drift
        )

    @classmethod
    def from_directory(cls, directory: str | Path, *, model_file: str = "model.tflite") -> ModelBundle:
        directory = Path(directory)
        files = {}
        names: tuple[str, ...] = (*REQUIRED_FILES[:2], model_file)
        with contextlib.suppress(OSError, ModelMetadataError):  # from_files names what is wrong
            names = ("metadata.json", *files_to_load(ModelMetadata.from_directory(directory), model_file))
        for name in names:
            path = directory / name
            if path.exists():
                files[name] = path.read_bytes()
        return cls.from_files(files, model_file=model_file)


def _drift_reference(
    metadata: ModelMetadata, spec: FeatureSpec, files: Mapping[str, bytes]
) -> DriftReference | None:
    if DRIFT_REFERENCE not in metadata.files:
        return None
    try:
        reference = DriftReference.from_json(files[DRIFT_REFERENCE])
        reference.check_fits(spec)
    except DriftReferenceError as exc:
        raise ModelLoadError(f"{DRIFT_REFERENCE} refused: {exc}") from exc
    return reference


def _explainer(
    metadata: ModelMetadata,
    spec: FeatureSpec,
    scorer: TFLiteScorer,
    files: Mapping[str, bytes],
    model_file: str,
) -> Explainer:
    reference = metadata.reason_reference
    if reference is None:
        baseline = metadata.reason_baseline
        try:
            return OcclusionExplainer(
                spec.static_groups, np.asarray(baseline.static), np.asarray(baseline.sequence), scorer
            )
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"metadata.json has no valid reason baselines: {exc}") from exc
    groups = reason_groups(spec.static_groups)
    if tuple(reference.groups) != groups:
        raise ModelLoadError(
            f"reason_reference.groups {reference.groups} are not the feature spec's groups {list(groups)}"
        )
    reasons_model = TFLiteScorer(
        files[reference.model_file], max_batch=max(1, REASON_ROWS_PER_CALL >> len(groups))
    )
    if (reasons_model.weeks, reasons_model.channels, reasons_model.n_static) != (
        scorer.weeks,
        scorer.channels,
        scorer.n_static,
    ):
        raise ModelLoadError(f"{reference.model_file} takes other inputs than {model_file}")
    try:
        # Serving the float32 model, the reasons model's probability column is that model's score;
        # serving another flavour, that flavour scores and the contributions explain the float32 score.
        return ShapleyExplainer(
            reasons_model,
            groups,
            reference.probability,
            served=None if model_file == FLOAT32_MODEL else scorer,
        )
    except ValueError as exc:
        raise ModelLoadError(f"{reference.model_file} refused: {exc}") from exc
