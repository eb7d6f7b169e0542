"""Calibration maps compared on validation only (cross-fitted inside the validation slice).

For each of the 10 published models (logits from extract.py): the pre-calibration logit z on the
validation slice, 5-fold stratified cross-fitting repeated 20 times (each calibrator fitted on 4/5 of
validation, predicting the held-out 1/5; the out-of-fold predictions of the whole slice are scored):
log-loss, ECE (bench's, 10 equal-mass bins on n_val), Brier. Then (for information only) each map
fitted on the whole validation slice and applied to the test split.

Maps (all exportable as builtin TFLite ops on top of the logit):
  raw      sigmoid(z)                                  (no calibration)
  bias     sigmoid(z + c)
  platt    sigmoid(a z + c)                            (today)
  beta     sigmoid(a log s(z) - b log(1 - s(z)) + c)   s = sigmoid; = logistic on (-softplus(-z), softplus(z))
  pl3      sigmoid(a z + sum_k w_k relu(z - t_k) + c), t_k = validation quartiles of z (Dense+ReLU+Dense)
  isotonic isotonic regression of y on z (interpolated; exportable only as a PL map with many knots)
Usage: .venv/bin/python docs/studies/calibration/methods.py  (writes methods.{md,json} next to it)
"""
import json
from pathlib import Path
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from common import DATASETS, SEEDS, ece, load, log_loss, sigmoid

HERE = Path(__file__).parent
REPEATS, FOLDS = 20, 5


def softplus(z):
    return np.logaddexp(0, z)


def _lr(X, y):
    return LogisticRegression(C=np.inf, max_iter=5000).fit(X, y)


def fit(method, z, y):
    """Returns predict(z_new) -> probability."""
    if method == "raw":
        return sigmoid
    if method == "bias":
        # offset fit: 1-d Newton on c with z as offset
        cc = 0.0
        for _ in range(50):
            p = sigmoid(z + cc)
            cc -= (p - y).sum() / max((p * (1 - p)).sum(), 1e-12)
        return lambda zn, cc=cc: sigmoid(zn + cc)
    if method == "platt":
        f = _lr(z.reshape(-1, 1), y)
        return lambda zn: f.predict_proba(zn.reshape(-1, 1))[:, 1]
    if method == "beta":
        feats = lambda zz: np.column_stack([-softplus(-zz), softplus(zz)])
        f = _lr(feats(z), y)
        return lambda zn: f.predict_proba(feats(zn))[:, 1]
    if method == "pl3":
        knots = np.quantile(z, [0.25, 0.5, 0.75])
        feats = lambda zz: np.column_stack([zz] + [np.maximum(zz - t, 0) for t in knots])
        f = _lr(feats(z), y)
        return lambda zn: f.predict_proba(feats(zn))[:, 1]
    if method == "isotonic":
        f = IsotonicRegression(y_min=1e-4, y_max=1 - 1e-4, out_of_bounds="clip").fit(z, y)
        return f.predict
    raise ValueError(method)


METHODS = ("raw", "bias", "platt", "beta", "pl3", "isotonic")


def crossfit(method, z, y, rng_seed):
    out = np.empty(len(z))
    skf = StratifiedKFold(FOLDS, shuffle=True, random_state=rng_seed)
    for tr, te in skf.split(z, y):
        out[te] = fit(method, z[tr], y[tr])(z[te])
    return out


def main():
    rows = []
    for ds in DATASETS:
        for seed in SEEDS:
            d = load(ds, seed)
            zv, yv, zt, yt = d["z_val"].astype(float), d["y_val"], d["z_test"].astype(float), d["y_test"]
            for m in METHODS:
                ll, ec, br = [], [], []
                for r in range(REPEATS):
                    p = crossfit(m, zv, yv, r)
                    ll.append(log_loss(yv, p)); ec.append(ece(yv, p)); br.append(float(np.mean((p - yv) ** 2)))
                pt = fit(m, zv, yv)(zt)
                rows.append({
                    "dataset": ds, "seed": seed, "method": m,
                    "val_cf_log_loss": float(np.mean(ll)), "val_cf_ece": float(np.mean(ec)),
                    "val_cf_brier": float(np.mean(br)),
                    "test_log_loss": log_loss(yt, pt), "test_ece": ece(yt, pt),
                    "test_auc": float(roc_auc_score(yt, pt)),
                })
            print(ds, seed, "done", flush=True)
    (HERE / "methods.json").write_text(json.dumps(rows, indent=1))

    lines = ["# Calibration maps on the published models' logits", "",
             f"Validation: out-of-fold predictions of {REPEATS}x {FOLDS}-fold cross-fitting inside the "
             "validation slice (mean over repeats). Test: the map fitted on the whole validation slice "
             "(information only, not used to choose). ECE = the bench's (10 equal-mass bins).", ""]
    for ds in DATASETS:
        lines += [f"## {ds}", "", "Means over the 5 draws (max over draws in brackets for ECE); Δ = vs platt, mean [min, max] over draws.", "",
                  "| method | val log-loss | Δ val log-loss | val ECE [max] | test log-loss | Δ test log-loss | test ECE [max] | test AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        R = [r for r in rows if r["dataset"] == ds]
        ref = {r["seed"]: r for r in R if r["method"] == "platt"}
        for m in METHODS:
            rs = [r for r in R if r["method"] == m]
            dv = [r["val_cf_log_loss"] - ref[r["seed"]]["val_cf_log_loss"] for r in rs]
            dt = [r["test_log_loss"] - ref[r["seed"]]["test_log_loss"] for r in rs]
            f = lambda k: np.mean([r[k] for r in rs])
            g = lambda k: np.max([r[k] for r in rs])
            lines.append(
                f"| {m} | {f('val_cf_log_loss'):.4f} | {np.mean(dv):+.4f} [{min(dv):+.4f}, {max(dv):+.4f}] | "
                f"{f('val_cf_ece'):.4f} [{g('val_cf_ece'):.4f}] | {f('test_log_loss'):.4f} | "
                f"{np.mean(dt):+.4f} [{min(dt):+.4f}, {max(dt):+.4f}] | {f('test_ece'):.4f} [{g('test_ece'):.4f}] | {f('test_auc'):.4f} |")
        lines += ["", "Per draw, test ECE: " + "; ".join(
            f"{m}: " + ", ".join(f"{r['test_ece']:.4f}" for r in R if r["method"] == m) for m in METHODS), ""]
    (HERE / "methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
