"""Model directories for tests, benchmarks and the demo: the fixture model, variants of it, and a
directory packed as SageMaker's ``model.tar.gz``."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

from infra.template import ROOT

FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "model"


def model_variant(tmp_path: Path, version: str, *, corrupt: bool = False, degrade: bool = False) -> Path:
    """A copy of the fixture model under a new version: intact, corrupt (truncated TFLite file, so the
    hash check fails) or degraded (valid directory, scrambled fitted scaling, so it scores worse)."""
    import numpy as np

    target = tmp_path / version
    shutil.copytree(FIXTURE_MODEL, target)
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["model_version"] = version
    if degrade:
        spec = json.loads((target / "feature_spec.json").read_text())
        order = np.random.default_rng(0).permutation(len(spec["static"]["mean"]))
        for key in ("mean", "std"):
            spec["static"][key] = [spec["static"][key][i] for i in order]
        text = json.dumps(spec, indent=2)
        (target / "feature_spec.json").write_text(text)
        metadata["files"]["feature_spec.json"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (target / "metadata.json").write_text(json.dumps(metadata))
    if corrupt:
        content = (target / "model.tflite").read_bytes()
        (target / "model.tflite").write_bytes(content[: len(content) // 2])
    return target


def tarball(model_dir: Path) -> bytes:
    """A model directory as SageMaker's model.tar.gz, with its top-level files only: the gate reads
    nothing else (``champion.files_from_tarball``), so a trained model's ``report/`` is left out."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in model_dir.iterdir():
            if path.is_file():
                archive.add(path, arcname=path.name)
    return buffer.getvalue()
