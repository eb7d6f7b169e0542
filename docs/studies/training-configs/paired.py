"""Paired bootstrap on VALIDATION: each config's exported model.tflite vs config A, same split seed.

Rebuilds the validation split exactly as train.py does (same args/seed), scores it with each model
dir's model.tflite, checks the AUC matches metadata.json, then 2000 paired resamples of customers.
"""
import json, sys
from pathlib import Path
import numpy as np
sys.path[:0] = ["/work/main", "/work/main/shared"]
from scipy.stats import rankdata
from churnguard.scorer import TFLiteScorer
from training.train import parse_args, load_training_data

ROOT = Path("/tmp/exp9")
B = 2000

def auc(y, p):
    r = rankdata(p); n1 = y.sum(); n0 = len(y) - n1
    return (r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)

def ll(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))

out = {}
configs = sys.argv[1].split(",") if len(sys.argv) > 1 else ["B", "C", "D"]
for d in ("cdnow", "tafeng"):
    pooled = {c: [] for c in configs}
    for s in (42, 43, 44):
        if not (ROOT / f"A-{d}-{s}" / "metadata.json").exists():
            continue
        data = load_training_data(parse_args(["--dataset", d, "--seed", str(s)])).data
        xv = data.inputs(data.validation); y = data.validation.labels.astype(int)
        preds = {}
        for c in ["A", *configs]:
            md = ROOT / f"{c}-{d}-{s}"
            if not (md / "metadata.json").exists():
                continue
            p = TFLiteScorer((md / "model.tflite").read_bytes()).predict(*xv).reshape(-1)
            meta = json.loads((md / "metadata.json").read_text())["metrics"]["validation"]["roc_auc"]
            assert abs(auc(y, p) - meta) < 1e-6, (c, d, s, auc(y, p), meta)
            preds[c] = p
        rng = np.random.default_rng(s)
        idx = rng.integers(0, len(y), size=(B, len(y)))
        for c in configs:
            if c not in preds:
                continue
            da = auc(y, preds[c]) - auc(y, preds["A"]); dl = ll(y, preds[c]) - ll(y, preds["A"])
            bs_a = np.array([auc(y[i], preds[c][i]) - auc(y[i], preds["A"][i]) for i in idx])
            bs_l = np.array([ll(y[i], preds[c][i]) - ll(y[i], preds["A"][i]) for i in idx])
            row = {"dAUC": da, "dAUC_ci": np.percentile(bs_a, [2.5, 97.5]).tolist(),
                   "dLL": dl, "dLL_ci": np.percentile(bs_l, [2.5, 97.5]).tolist()}
            out[f"{c}-{d}-{s}"] = row
            pooled[c].append((da, dl))
            print(f"{d} seed {s} {c}-A: dAUC {da:+.4f} [{row['dAUC_ci'][0]:+.4f}, {row['dAUC_ci'][1]:+.4f}]  "
                  f"dLL {dl:+.4f} [{row['dLL_ci'][0]:+.4f}, {row['dLL_ci'][1]:+.4f}]", flush=True)
    for c, v in pooled.items():
        if v:
            print(f"{d} {c}-A mean over {len(v)} seeds: dAUC {np.mean([a for a, _ in v]):+.4f} dLL {np.mean([l for _, l in v]):+.4f}")
(ROOT / "paired.json").write_text(json.dumps(out, indent=2))
