"""Closed-form check of noise.py's column A: for a perfectly calibrated p, bin b's mean(p) - mean(y) is
~Normal(0, sd_b), sd_b = sqrt(sum_{i in b} p_i(1 - p_i)) / n_b, so E[ECE] ~ sqrt(2/pi) * mean_b sd_b."""
import numpy as np
from common import DATASETS, SEEDS, load

for ds in DATASETS:
    v = []
    for s in SEEDS:
        p = load(ds, s)["p_test"].astype(float)
        order = np.argsort(p, kind="stable")
        v.append(np.sqrt(2 / np.pi) * np.mean([np.sqrt((p[c] * (1 - p[c])).sum()) / len(c) for c in np.array_split(order, 10)]))
    print(ds, "analytic E[ECE] of a perfectly calibrated model, per draw:", " ".join(f"{x:.4f}" for x in v))
