"""Tables for retrain.py's runs against the published models (reference = vf 0.15, today).

The 0.15 validation slice is a subset of the 0.3 one (same seed: scikit-learn's shuffle), so every
config is also scored on the reference's validation slice V15 (held out from training in all of them;
used for early stopping by 'ref' and 'vf30', only partly by the half-split configs).
Calibration variants: platt_all = Platt on the config's whole validation slice; platt_B = Platt on
the half not used for early stopping (cross-fitted); platt_avg = mean of the (slope, intercept) fitted
on each half. Test numbers are for information.
Usage: .venv/bin/python docs/studies/calibration/analyze_retrain.py  (writes retrain.{md,json})
"""
import json
import sys
from pathlib import Path
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from common import DATASETS, SEEDS, ece, load, log_loss, sigmoid
from training.train import load_training_data, parse_args

HERE = Path(__file__).parent
RT = Path("/tmp/calib/retrain")


def platt(z, y):
    f = LogisticRegression(C=np.inf, max_iter=1000).fit(z.reshape(-1, 1), y)
    return np.array([f.coef_[0, 0], f.intercept_[0]])


def metrics(ab, zt, yt):
    p = sigmoid(ab[0] * zt + ab[1])
    return {"test_auc": float(roc_auc_score(yt, zt)), "test_log_loss": log_loss(yt, p), "test_ece": ece(yt, p)}


rows = []
for ds in DATASETS:
    for seed in SEEDS:
        ref = load(ds, seed)
        if not (RT / f"{ds}-{seed}-vf30.npz").exists() and not (RT / f"{ds}-{seed}-vf15h.npz").exists():
            continue
        u15 = ref["u_val"]
        ab_ref = ref["platt"]
        rows.append({"dataset": ds, "seed": seed, "config": "ref", "calibration": "platt_all",
                     "epochs": None, "slope": ab_ref[0], "intercept": ab_ref[1],
                     "val15_auc": float(roc_auc_score(ref["y_val"], ref["z_val"])),
                     "val15_log_loss": log_loss(ref["y_val"], sigmoid(ab_ref[0] * ref["z_val"] + ab_ref[1])),
                     **metrics(ab_ref, ref["z_test"], ref["y_test"])})
        u30 = None
        for cfg in ("vf30", "vf30h", "vf15h"):
            f = RT / f"{ds}-{seed}-{cfg}.npz"
            if not f.exists():
                continue
            r = dict(np.load(f))
            zv, yv, a, b = r["z_val"], r["y_val"], r["a_idx"], r["b_idx"]
            if cfg.startswith("vf30"):
                if u30 is None:
                    u30 = np.asarray(load_training_data(parse_args(["--dataset", ds, "--seed", str(seed), "--validation-fraction", "0.3"])).data.validation.user_ids)
                in15 = np.isin(u30, u15)
                assert in15.sum() == len(u15)
            else:
                in15 = np.ones(len(yv), bool)
            cals = {"platt_all": platt(zv, yv)}
            if len(b):
                cals["platt_B"] = platt(zv[b], yv[b])
                cals["platt_avg"] = (platt(zv[a], yv[a]) + cals["platt_B"]) / 2
            for name, ab in cals.items():
                rows.append({"dataset": ds, "seed": seed, "config": cfg, "calibration": name,
                             "epochs": int(r["epochs"]), "slope": float(ab[0]), "intercept": float(ab[1]),
                             "val15_auc": float(roc_auc_score(yv[in15], zv[in15])),
                             "val15_log_loss": log_loss(yv[in15], sigmoid(ab[0] * zv[in15] + ab[1])),
                             **metrics(ab, r["z_test"], r["y_test"])})
(HERE / "retrain.json").write_text(json.dumps(rows, indent=1, default=float))

lines = ["# Calibration slice: retrained draws vs the published models", "",
         "ref = published model (validation fraction 0.15, early stopping + Platt on it). vf30 = fraction 0.3; "
         "vf30h = fraction 0.3, early stopping on half A, calibration slice B; vf15h = fraction 0.15, same halving. "
         "val15 = the reference's validation slice (nested in the 0.3 slice). Δ = vs ref on the same draw: mean [min, max]. "
         "Test: information only.", ""]
for ds in DATASETS:
    R = [r for r in rows if r["dataset"] == ds]
    seeds = sorted({r["seed"] for r in R if r["config"] != "ref"})
    if not seeds:
        continue
    lines += [f"## {ds} (draws {', '.join(map(str, seeds))})", "",
              "| config | calibration | draws | epochs | val15 AUC | Δ val15 AUC | test AUC | Δ test AUC | test log-loss | Δ test log-loss | test ECE per draw | ECE max |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ref = {r["seed"]: r for r in R if r["config"] == "ref"}
    for cfg, cal in [("ref", "platt_all"), ("vf30", "platt_all"), ("vf30h", "platt_B"), ("vf30h", "platt_all"),
                     ("vf30h", "platt_avg"), ("vf15h", "platt_B"), ("vf15h", "platt_all"), ("vf15h", "platt_avg")]:
        rs = [r for r in R if r["config"] == cfg and r["calibration"] == cal and r["seed"] in seeds]
        if not rs:
            continue
        def d(k):
            v = [r[k] - ref[r["seed"]][k] for r in rs]
            return f"{np.mean(v):+.4f} [{min(v):+.4f}, {max(v):+.4f}]"
        m = lambda k: f"{np.mean([r[k] for r in rs]):.4f}"
        ep = "-" if cfg == "ref" else f"{np.mean([r['epochs'] for r in rs]):.0f}"
        lines.append(f"| {cfg} | {cal} | {len(rs)} | {ep} | {m('val15_auc')} | {d('val15_auc')} | {m('test_auc')} | {d('test_auc')} | "
                     f"{m('test_log_loss')} | {d('test_log_loss')} | {', '.join('%.4f' % r['test_ece'] for r in rs)} | {max(r['test_ece'] for r in rs):.4f} |")
    lines.append("")
(HERE / "retrain.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
