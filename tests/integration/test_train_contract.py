"""train.py as SageMaker runs it: a subprocess with SM_* variables over an /opt/ml-like tree."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from churnguard.scorer import TFLiteScorer

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--epochs", "15", "--patience", "3", "--batch-size", "64", "--verbose", "0"]


def run_train(opt_ml: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "SM_CHANNEL_TRAIN": str(opt_ml / "input/data/train"),
        "SM_MODEL_DIR": str(opt_ml / "model"),
        "SM_OUTPUT_DATA_DIR": str(opt_ml / "output/data"),
        "PYTHONPATH": "",  # the script must find its own packages, as in a SageMaker container
    }
    # Run by path from another directory, like SageMaker's `python train.py ...` in /opt/ml/code.
    return subprocess.run(
        [sys.executable, str(ROOT / "training/train.py"), *FAST, *extra],
        cwd=opt_ml,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def channel(tmp_path: Path) -> Path:
    path = tmp_path / "opt/ml/input/data/train"
    path.mkdir(parents=True)
    (tmp_path / "opt/ml/model").mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cdnow_subset):
    root = tmp_path_factory.mktemp("sm")
    data = channel(root)
    half = len(cdnow_subset) // 2
    cdnow_subset.iloc[:half].to_csv(data / "part-1.csv", index=False)
    cdnow_subset.iloc[half:].to_parquet(data / "part-2.parquet")  # mixed formats in one channel
    result = run_train(root / "opt/ml", "--as-of", "1997-10-01")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "opt/ml", result


def test_model_directory_has_every_artifact_with_matching_hashes(trained):
    opt_ml, _ = trained
    model_dir = opt_ml / "model"
    metadata = json.loads((model_dir / "metadata.json").read_text())
    for name in ("model.tflite", "model_dynamic_range.tflite", "model_reasons.tflite", "feature_spec.json"):
        digest = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        assert metadata["files"][name]["sha256"] == digest, name
    for name in (
        "metrics.json",
        "roc.png",
        "pr.png",
        "calibration.png",
        "confusion_matrix.png",
        "learning_curves.png",
    ):
        assert (model_dir / "report" / name).stat().st_size > 0, name
    assert (opt_ml / "output/data/report/metrics.json").exists()  # SM_OUTPUT_DATA_DIR copy
    assert not list(opt_ml.glob(".staging-*"))


def test_metadata_records_protocol_hyperparameters_thresholds_and_metrics(trained):
    opt_ml, _ = trained
    metadata = json.loads((opt_ml / "model/metadata.json").read_text())
    assert metadata["protocol"]["as_of"] == "1997-10-01"
    assert metadata["hyperparameters"]["epochs"] == 15 and metadata["hyperparameters"]["batch_size"] == 64
    assert metadata["data"]["source"] == "channel:train"
    assert sum(metadata["data"]["customers"].values()) == 3000
    t = metadata["thresholds"]
    assert 0 < t["risk_tiers"]["medium"] <= t["risk_tiers"]["high"] == t["decision"] < 1
    test = metadata["metrics"]["test"]
    assert 0.6 < test["roc_auc"] < 0.9  # a real signal, not a constant
    metrics = json.loads((opt_ml / "model/report/metrics.json").read_text())
    assert set(metrics["test_by_segment"]) == {"tenure_band", "value_band"}
    cm = metrics["test"]["confusion_matrix"]
    assert sum(cm.values()) == metadata["data"]["customers"]["test"]


def test_the_report_compares_the_run_with_the_baselines_on_its_own_test_split(trained):
    opt_ml, _ = trained
    metadata = json.loads((opt_ml / "model/metadata.json").read_text())
    assert "baselines.json" in metadata["report"]
    comparison = json.loads((opt_ml / "model/report/baselines.json").read_text())
    methods = comparison["methods"]
    assert set(methods) == {
        "churnguard_tflite",
        "recency_rule",
        "bgnbd_p_no_purchase",
        "bgnbd_neg_expected_purchases",
        "logistic_rfm",
        "lightgbm_static",
    }
    # the model's row is this run's test metrics, and the best baseline is the best by test AUC
    assert methods["churnguard_tflite"]["roc_auc"] == pytest.approx(metadata["metrics"]["test"]["roc_auc"])
    best = comparison["best_baseline"]
    assert methods[best]["roc_auc"] == max(
        v["roc_auc"] for k, v in methods.items() if k != "churnguard_tflite"
    )
    diff = comparison["auc_diff_to_best_baseline"]
    assert diff["estimate"] == pytest.approx(
        methods["churnguard_tflite"]["roc_auc"] - methods[best]["roc_auc"]
    )
    assert diff["ci95"][0] <= diff["estimate"] <= diff["ci95"][1] and diff["resamples"] >= 1900
    assert comparison["test_customers"] == metadata["data"]["customers"]["test"]


def test_exported_model_is_builtin_only_and_resizes(trained):
    opt_ml, _ = trained
    for name in ("model.tflite", "model_dynamic_range.tflite"):
        scorer = TFLiteScorer.from_file(str(opt_ml / "model" / name), max_batch=4096)
        assert not [op for op in scorer.op_names() if op.startswith("Flex") or op == "CUSTOM"]
        for batch in (1, 256, 4096):
            out = scorer.predict(
                np.zeros((batch, scorer.weeks, scorer.channels), np.float32),
                np.zeros((batch, scorer.n_static), np.float32),
            )
            assert out.shape == (batch,) and np.all((out > 0) & (out < 1))


def test_progress_is_visible_in_the_log(trained):
    _, result = trained
    for marker in ("customers: train", "validation_auc=", "export: builtin ops", "test_auc=", "written to"):
        assert marker in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "has no rows|cannot read"),
        ("customer,day,value\n1,19970101,3.5\n", "missing required column"),
        ("user_id,timestamp,event_type,amount\n1,notadate,order,3\n2,also-bad,order,4\n", "no valid rows"),
        (None, "has no event files"),
    ],
    ids=["empty-file", "wrong-columns", "unparseable-dates", "empty-channel"],
)
def test_bad_input_fails_with_a_clear_message_and_leaves_no_valid_model(tmp_path, content, message):
    data = channel(tmp_path)
    if content is not None:
        (data / "events.csv").write_text(content)
    result = run_train(tmp_path / "opt/ml")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "churnguard-train: error:" in result.stderr
    import re

    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "opt/ml/model/metadata.json").exists()
    assert list((tmp_path / "opt/ml/model").iterdir()) == []


def test_validation_channel_and_random_search_choose_on_validation(tmp_path, cdnow_subset):
    data = channel(tmp_path)
    validation_dir = tmp_path / "opt/ml/input/data/validation"
    validation_dir.mkdir(parents=True)
    users = cdnow_subset["user_id"].unique()
    held = set(users[: len(users) // 3])
    is_val = cdnow_subset["user_id"].isin(held)
    cdnow_subset[~is_val].to_csv(data / "train.csv.gz", index=False)
    cdnow_subset[is_val].to_csv(validation_dir / "validation.csv", index=False)
    env_extra = ["--hpo-trials", "2", "--epochs", "3", "--as-of", "1997-10-01"]
    os.environ["SM_CHANNEL_VALIDATION"] = str(validation_dir)
    try:
        result = run_train(tmp_path / "opt/ml", *env_extra)
    finally:
        del os.environ["SM_CHANNEL_VALIDATION"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metadata = json.loads((tmp_path / "opt/ml/model/metadata.json").read_text())
    assert metadata["data"]["customers"]["validation"] == len(held)
    assert metadata["data"]["customers"]["train"] + metadata["data"]["customers"]["test"] == len(users) - len(
        held
    )
    trials = json.loads((tmp_path / "opt/ml/model/report/hpo_trials.json").read_text())
    assert len(trials) == metadata["hpo_trials"] == 2
    best = min(trials, key=lambda t: t["val_log_loss"])
    for name in ("conv_filters", "lstm_units", "learning_rate", "batch_size"):
        assert metadata["hyperparameters"][name] == best[name]


def test_model_directory_loads_as_a_verified_bundle_and_tampering_is_refused(trained):
    from churnguard.bundle import ModelBundle
    from churnguard.scorer import ModelLoadError

    model_dir = trained[0] / "model"
    bundle = ModelBundle.from_directory(model_dir)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert bundle.version == metadata["model_version"]
    assert bundle.thresholds.promotion == metadata["thresholds"]["decision"]
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    ModelBundle.from_files(files, model_file="model_dynamic_range.tflite")

    corrupt = {**files, "model.tflite": files["model.tflite"][:-100] + b"\0" * 100}
    with pytest.raises(ModelLoadError, match=r"model.tflite: sha256"):
        ModelBundle.from_files(corrupt)
    spec = json.loads(files["feature_spec.json"])
    spec["config"]["weeks"] = 20
    respec = json.dumps(spec).encode()
    meta = json.loads(files["metadata.json"])
    meta["files"]["feature_spec.json"]["sha256"] = hashlib.sha256(respec).hexdigest()
    with pytest.raises(ModelLoadError, match=r"does not fit|feature_spec\.json refused"):
        ModelBundle.from_files(
            {**files, "feature_spec.json": respec, "metadata.json": json.dumps(meta).encode()}
        )
    with pytest.raises(ModelLoadError, match="missing"):
        ModelBundle.from_files({k: v for k, v in files.items() if k != "feature_spec.json"})
