"""Quality benchmark on the fixed CDNOW protocol: the exported TFLite model against real baselines.

Protocol: calibration 1997-01-01..1997-09-30, holdout 1997-10-01..1998-06-30 (39 weeks), churn = no
purchase in the holdout; stratified 80/20 split by customer (seed 42); 15% of train as validation.
Every choice (hyperparameters, thresholds, calibration, LightGBM tuning, the logistic C) uses the
validation slice; the test split is scored once, for the table.

Usage: ``python -m benchmarks.quality`` (``make bench-quality``) -> benchmarks/results/quality.{json,md}
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from benchmarks.common import write_results
from churnguard.features import FeatureSpec, build_raw_features
from churnguard.model_metadata import ModelMetadata
from churnguard.scorer import TFLiteScorer
from churnguard.tabular import customer_events, to_epoch_seconds
from training.data import CDNOW_PROTOCOL, PreparedData, load_cdnow_source, prepare
from training.evaluate import (
    ThresholdPolicy,
    choose_threshold,
    classification_metrics,
)
from training.model import fit_platt

MODEL_DIR = Path("artifacts/bench-model")
HOLDOUT_DAYS = 273
log = logging.getLogger("churnguard.bench")


def _platt_probs(score_val: np.ndarray, y_val: np.ndarray, score: np.ndarray) -> np.ndarray:
    a, b = fit_platt(score_val, y_val)
    return 1 / (1 + np.exp(-(a * score + b)))


def _col(data: PreparedData, split, name: str) -> np.ndarray:
    return split.raw.static[:, list(data.spec.static_names).index(name)]


def recency_rule(data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    """Days since the last purchase; mapped to probabilities by a 1-D logistic fit on validation."""

    def score(split):
        return np.log1p(_col(data, split, "recency_days"))

    return (
        _platt_probs(score(data.validation), data.validation.labels, score(data.validation)),
        _platt_probs(score(data.validation), data.validation.labels, score(data.test)),
    )


def _bgnbd_inputs(data: PreparedData, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lifetimes' (frequency, recency, T) in days with observation end 1997-09-30."""
    first = _col(data, split, "first_order_age_days")  # days from first order to as_of (1997-10-01)
    last = _col(data, split, "recency_days")
    frequency = _col(data, split, "n_order_days") - 1
    return frequency, first - last, first - 1


def bgnbd(data: PreparedData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """BG/NBD fitted on training customers; scored by P(no purchase in holdout) and by -E[X]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter

        model = BetaGeoFitter(penalizer_coef=0.0)
        model.fit(*_bgnbd_inputs(data, data.train))
    r, alpha = model.params_["r"], model.params_["alpha"]

    def p_none(split):
        f, rec, T = _bgnbd_inputs(data, split)
        alive = np.asarray(model.conditional_probability_alive(f, rec, T), dtype=np.float64)
        # Dropout happens only right after a purchase: alive-and-silent is a Poisson zero.
        silent_if_alive = ((alpha + T) / (alpha + T + HOLDOUT_DAYS)) ** (r + f)
        return (1 - alive) + alive * silent_if_alive

    def neg_expected(split):
        f, rec, T = _bgnbd_inputs(data, split)
        return -np.asarray(model.conditional_expected_number_of_purchases_up_to_time(HOLDOUT_DAYS, f, rec, T))

    pv, pt = p_none(data.validation), p_none(data.test)
    ev, et = neg_expected(data.validation), neg_expected(data.test)
    return {
        "bgnbd_p_no_purchase": (pv, pt),
        "bgnbd_neg_expected_purchases": (
            _platt_probs(ev, data.validation.labels, ev),
            _platt_probs(ev, data.validation.labels, et),
        ),
    }


def _rfm(data: PreparedData, split) -> np.ndarray:
    """Recency both ways (days since last order, first-to-last span), frequency, monetary, T."""
    first = _col(data, split, "first_order_age_days")
    last = _col(data, split, "recency_days")
    return np.log1p(
        np.column_stack(
            [
                last,
                first - last,
                _col(data, split, "n_order_days") - 1,
                _col(data, split, "n_orders"),
                _col(data, split, "avg_order_value"),
                _col(data, split, "total_spend"),
                first,
            ]
        )
    )


def logistic_rfm(data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    x_train, x_val, x_test = (_rfm(data, s) for s in (data.train, data.validation, data.test))
    mean, std = x_train.mean(0), x_train.std(0)
    x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))
    best = None
    for c in (0.01, 0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, data.train.labels)
        loss = log_loss(data.validation.labels, model.predict_proba(x_val)[:, 1])
        if best is None or loss < best[0]:
            best = (loss, model)
    model = best[1]
    return model.predict_proba(x_val)[:, 1], model.predict_proba(x_test)[:, 1]


def lightgbm_static(data: PreparedData) -> tuple[np.ndarray, np.ndarray, dict]:
    """LightGBM on the same static features our model gets, tuned on validation (n_jobs=1)."""
    import lightgbm as lgb

    x_train, x_val, x_test = data.train.raw.static, data.validation.raw.static, data.test.raw.static
    best = None
    for num_leaves in (4, 8, 16, 31):
        for min_child in (20, 50, 100):
            for lr in (0.02, 0.05):
                model = lgb.LGBMClassifier(
                    n_estimators=2000,
                    learning_rate=lr,
                    num_leaves=num_leaves,
                    min_child_samples=min_child,
                    subsample=0.8,
                    subsample_freq=1,
                    colsample_bytree=0.8,
                    reg_lambda=1.0,
                    n_jobs=1,
                    random_state=42,
                    verbose=-1,
                )
                model.fit(
                    x_train,
                    data.train.labels,
                    eval_set=[(x_val, data.validation.labels)],
                    eval_metric="binary_logloss",
                    callbacks=[lgb.early_stopping(50, verbose=False)],
                )
                p_val = model.predict_proba(x_val)[:, 1]
                loss = log_loss(data.validation.labels, p_val)
                if best is None or loss < best[0]:
                    best = (
                        loss,
                        model,
                        {
                            "num_leaves": num_leaves,
                            "min_child_samples": min_child,
                            "learning_rate": lr,
                            "n_estimators": int(model.best_iteration_),
                        },
                    )
    _, model, params = best
    return model.predict_proba(x_val)[:, 1], model.predict_proba(x_test)[:, 1], params


def churnguard_tflite(data: PreparedData, model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The exported float32 TFLite model, fed through the serving route (spec JSON + raw events)."""
    spec = FeatureSpec.from_json((model_dir / "feature_spec.json").read_text())
    scorer = TFLiteScorer.from_file(str(model_dir / "model.tflite"))
    events = data.source.events
    out = []
    for split in (data.validation, data.test):
        customers = customer_events(events[events["user_id"].isin(split.user_ids)], user_ids=split.user_ids)
        raw = build_raw_features(
            customers.arrays,
            to_epoch_seconds(data.protocol.as_of),
            event_types=spec.event_types,
            config=spec.config,
        )
        out.append(scorer.predict(*spec.transform(raw)))
    return out[0], out[1]


def paired_bootstrap_auc_diff(
    y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, n: int = 2000, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(roc_auc_score(y[idx], ours[idx]) - roc_auc_score(y[idx], theirs[idx]))
    diffs = np.asarray(diffs)
    return {
        "mean": float(diffs.mean()),
        "ci95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
        "resamples": len(diffs),
        "p_ours_not_better": float(np.mean(diffs <= 0)),
    }


def score_all(data: PreparedData, model_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """(validation, test) probabilities of our model and every baseline, and LightGBM's chosen params."""
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scores["churnguard_tflite"] = churnguard_tflite(data, model_dir)
    scores["recency_rule"] = recency_rule(data)
    scores.update(bgnbd(data))
    scores["logistic_rfm"] = logistic_rfm(data)
    p_val, p_test, lgb_params = lightgbm_static(data)
    scores["lightgbm_static"] = (p_val, p_test)
    return scores, lgb_params


def method_metrics(
    scores: dict[str, tuple[np.ndarray, np.ndarray]], y_val: np.ndarray, y_test: np.ndarray
) -> dict[str, dict]:
    """Test metrics per method at the threshold its validation scores choose (max F1)."""
    methods = {}
    for name, (pv, pt) in scores.items():
        threshold = choose_threshold(y_val, pv, ThresholdPolicy("max_f1"))
        m = classification_metrics(y_test, pt, threshold)
        methods[name] = {
            k: m[k] for k in ("roc_auc", "log_loss", "pr_auc_churn", "pr_auc_active", "f1", "ece", "brier")
        }
        methods[name]["threshold_from_validation"] = threshold
        methods[name]["validation_roc_auc"] = float(roc_auc_score(y_val, pv))
        methods[name]["validation_log_loss"] = float(log_loss(y_val, np.clip(pv, 1e-7, 1 - 1e-7)))
    return methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(MODEL_DIR))
    parser.add_argument("--reuse-model", action="store_true", help="score an existing model dir, don't train")
    parser.add_argument("--train-args", default="", help="extra arguments for training.train")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    model_dir = Path(args.model_dir)
    started = time.time()
    if not args.reuse_model:
        from training import train

        code = train.main(["--model-dir", str(model_dir), "--verbose", "0", *args.train_args.split()])
        if code:
            return code
    metadata = ModelMetadata.from_directory(model_dir)
    if metadata.protocol.model_dump() != CDNOW_PROTOCOL.to_dict() or metadata.data.source != "cdnow":
        raise SystemExit(f"{model_dir} was not trained on the CDNOW benchmark protocol")

    data = prepare(load_cdnow_source(), CDNOW_PROTOCOL)
    log.info(
        "scoring baselines on %d validation / %d test customers",
        len(data.validation.labels),
        len(data.test.labels),
    )
    scores, lgb_params = score_all(data, model_dir)
    result = build_result(data, scores, lgb_params, model_dir, metadata)
    result["seconds"] = round(time.time() - started, 1)
    write_results("quality", result, render_markdown(result))
    return 0


def build_result(
    data: PreparedData,
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    lgb_params: dict,
    model_dir: Path,
    metadata: dict,
) -> dict:
    """The benchmark's JSON: protocol, metrics per method, our model against the best baseline."""
    y_val, y_test = data.validation.labels, data.test.labels
    methods = method_metrics(scores, y_val, y_test)
    baselines = [n for n in methods if n != "churnguard_tflite"]
    best = max(baselines, key=lambda n: methods[n]["roc_auc"])
    diff = paired_bootstrap_auc_diff(y_test, scores["churnguard_tflite"][1], scores[best][1])
    return {
        "protocol": {
            **CDNOW_PROTOCOL.to_dict(),
            "calibration_period": "1997-01-01..1997-09-30",
            "holdout_period": "1997-10-01..1998-06-30",
            "churn_definition": "no purchase in the holdout",
            "churn_rate": float(np.concatenate([data.train.labels, y_val, y_test]).mean()),
            "customers": {"train": len(data.train.labels), "validation": len(y_val), "test": len(y_test)},
            "data_sha256": data.source.data_sha256,
        },
        "methods": methods,
        "best_baseline": best,
        "auc_diff_vs_best_baseline": diff,
        "model": {
            "dir": str(model_dir),
            "model_version": metadata.model_version,
            "hyperparameters": metadata.hyperparameters,
            "code_version": metadata.code_version,
            "augmentation_rows": metadata.data.augmentation_rows,
        },
        "lightgbm_params": lgb_params,
    }


def render_markdown(result: dict) -> str:
    p = result["protocol"]
    lines = [
        "# ChurnGuard quality benchmark (CDNOW)",
        "",
        f"Cutoff {p['as_of']}, holdout {p['holdout_period']}, churn rate {p['churn_rate']:.4f}; customers "
        f"train/validation/test {'/'.join(str(v) for v in p['customers'].values())} "
        f"(stratified, seed {p['seed']}). Test split scored once; thresholds chosen on validation (max F1).",
        "",
        "| method | ROC-AUC | log-loss | PR-AUC churn | PR-AUC active | F1 | ECE | Brier |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in sorted(result["methods"].items(), key=lambda kv: -kv[1]["roc_auc"]):
        lines.append(
            f"| {name} | {m['roc_auc']:.4f} | {m['log_loss']:.4f} | {m['pr_auc_churn']:.4f} | "
            f"{m['pr_auc_active']:.4f} | {m['f1']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} |"
        )
    d = result["auc_diff_vs_best_baseline"]
    lines += [
        "",
        f"AUC difference churnguard_tflite − {result['best_baseline']} (paired bootstrap, {d['resamples']} "
        f"resamples): mean {d['mean']:+.4f}, 95% CI [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}].",
        "",
        f"Model {result['model']['model_version']} (code {result['model']['code_version']}); "
        f"LightGBM tuned on validation: {result['lightgbm_params']}. Run time {result['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
