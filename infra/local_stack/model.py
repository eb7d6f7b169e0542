"""The model the local stack serves and the holdout its promote gate compares models on (also used by
``make deploy`` and the ``sam local`` stack)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from churnguard.model_metadata import ModelMetadata
from infra.template import ROOT

MODEL_DIR = ROOT / "artifacts" / "model"


def training_inputs_hash() -> str:
    """What a trained model depends on: the feature path, the training code, the data and the deps."""
    digest = hashlib.sha256()
    shared = ROOT / "shared" / "churnguard"
    used_by_training = [
        shared / f"{name}.py" for name in ("features", "events", "tabular", "datasets", "scorer")
    ]
    files = sorted([*used_by_training, *(ROOT / "training").glob("*.py"), ROOT / "pyproject.toml"])
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    from churnguard.datasets import CDNOW_SHA256

    digest.update(CDNOW_SHA256.encode())
    return digest.hexdigest()


def ensure_model(model_dir: Path = MODEL_DIR) -> tuple[Path, bool]:
    """A CDNOW model whose inputs match the current code; trains only when they changed."""
    marker = model_dir / ".inputs-sha256"
    expected = training_inputs_hash()
    if (model_dir / "metadata.json").exists() and marker.exists() and marker.read_text() == expected:
        return model_dir, False
    from training import train

    if train.main(["--model-dir", str(model_dir), "--verbose", "0"]) != 0:
        raise SystemExit("training failed")
    marker.write_text(expected)
    return model_dir, True


def cdnow_holdout() -> tuple[Any, Any, Any, str]:
    """The CDNOW benchmark protocol's test customers: (user ids, churn labels, their events, as_of)."""
    from training.data import CDNOW_PROTOCOL, load_cdnow_source, prepare

    data = prepare(load_cdnow_source(), CDNOW_PROTOCOL)
    users, labels, events = data.test.user_ids, data.test.labels, data.source.events
    return users, labels, events[events["user_id"].isin(set(users))], str(CDNOW_PROTOCOL.as_of)


def put_holdout(s3: Any, bucket: str, users: Any, labels: Any, events: Any, as_of: str) -> int:
    """Write the gate's labelled holdout: events before ``as_of``, labels, and the cutoff."""
    import pandas as pd

    before = events[events["timestamp"] < pd.Timestamp(as_of)].drop(columns=["source_row"], errors="ignore")
    s3.put_object(Bucket=bucket, Key="holdout/events.csv", Body=before.to_csv(index=False).encode())
    labels_csv = pd.DataFrame({"user_id": users, "churned": labels}).to_csv(index=False)
    s3.put_object(Bucket=bucket, Key="holdout/labels.csv", Body=labels_csv.encode())
    s3.put_object(Bucket=bucket, Key="holdout/meta.json", Body=json.dumps({"as_of": as_of}).encode())
    return len(users)


def write_holdout(s3: Any, bucket: str, model_dir: Path) -> int:
    """The labelled holdout the promote gate compares models on, matching the model's data.

    CDNOW models: the benchmark protocol's test customers. Other models (e.g. the synthetic test
    fixture): a fresh synthetic sample at the model's cutoff.
    """
    from churnguard.tabular import churn_labels, cohort

    metadata = ModelMetadata.from_directory(model_dir)
    as_of = metadata.protocol.as_of
    horizon = metadata.protocol.horizon_weeks
    if metadata.data.source == "cdnow":
        users, labels, events, _ = cdnow_holdout()
    else:
        from churnguard.datasets import generate_synthetic_events
        from churnguard.events import validate_events

        events = validate_events(generate_synthetic_events(800, seed=42, weeks=78)).events
        users = cohort(events, as_of)
        labels = churn_labels(events, users, as_of, horizon)
    return put_holdout(s3, bucket, users, labels, events, as_of)
