"""The model directory's drift reference (``drift_reference.json``, ``churnguard.drift``).

Training writes it with the model: every customer at the cutoff (training, validation and test
splits), their monitored features through the serving feature path (``monitored_values`` of the
same raw features the model was fitted on) and their churn probabilities from the exported
float32 ``model.tflite`` (what serving scores with).

A model directory written before drift references can get one without retraining::

    python -m training.drift_reference MODEL_DIR --train EVENTS_DIR [--validation EVENTS_DIR]

The events are prepared again with the directory's protocol and feature config; unless that refits
the very feature spec the directory holds (same events, same protocol), nothing is written. The
reference is added to metadata.json's ``files`` (sha256, bytes); the model version is unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    _root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_root), str(_root / "shared")]

import numpy as np

from churnguard.drift import DriftReference, monitored_columns, monitored_values
from churnguard.model_metadata import DRIFT_REFERENCE, FLOAT32_MODEL, ModelMetadata
from training.data import PreparedData


def build_drift_reference(data: PreparedData, model_content: bytes) -> DriftReference:
    """The binned distributions of every customer at the cutoff, scored by ``model_content``."""
    from churnguard.scorer import TFLiteScorer

    scorer = TFLiteScorer(model_content)
    splits = (data.train, data.validation, data.test)
    scores = np.concatenate([scorer.predict(*data.inputs(split)) for split in splits])
    values = np.concatenate([monitored_values(data.spec, split.raw) for split in splits])
    return DriftReference.build(scores, values, monitored_columns(data.spec))


def file_entry(text: str) -> dict[str, object]:
    """The reference's entry in metadata.json's ``files``."""
    content = text.encode()
    return {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}


def add_to_model_directory(model_dir: Path, reference: DriftReference) -> None:
    """Write the reference into an existing model directory and list it in metadata.json (last)."""
    metadata = json.loads((model_dir / "metadata.json").read_text())
    text = reference.to_json()
    metadata["files"][DRIFT_REFERENCE] = file_entry(text)
    ModelMetadata.from_dict(metadata)  # still a valid metadata.json
    (model_dir / DRIFT_REFERENCE).write_text(text)
    (model_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))


def backfill(model_dir: Path, train: str, validation: str | None = None) -> DriftReference:
    """The reference of a model directory from its training events (see the module doc)."""
    from churnguard.features import FeatureSpec
    from training.data import Protocol, load_channel, prepare

    metadata = ModelMetadata.from_directory(model_dir)
    spec_text = (model_dir / "feature_spec.json").read_text()
    spec = FeatureSpec.from_json(spec_text)
    source = load_channel(train, channel="train")
    validation_source = load_channel(validation, channel="validation") if validation else None
    protocol = Protocol(**metadata.protocol.model_dump())
    data = prepare(source, protocol, config=spec.config, validation_source=validation_source)
    if data.spec.to_json() != spec_text:
        raise ValueError(
            "these events, prepared with the model's protocol, fit another feature spec than the "
            "model's: not its training data"
        )
    reference = build_drift_reference(data, (model_dir / FLOAT32_MODEL).read_bytes())
    add_to_model_directory(model_dir, reference)
    return reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.drift_reference", description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--train", required=True, help="the model's training events (a channel directory)")
    parser.add_argument("--validation", help="its validation events, when it had a validation channel")
    args = parser.parse_args(argv)
    reference = backfill(args.model_dir, args.train, args.validation)
    print(f"{DRIFT_REFERENCE}: {reference.customers} customers, {len(reference.features)} features")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
