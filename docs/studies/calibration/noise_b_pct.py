"""Where each observed test ECE falls under noise.py's scenario B (perfectly specified model, Platt
fitted on a simulated validation draw of the published size): 1000 replicates per draw. Also the
model's oracle calibration for information: Platt refitted on the test split itself, its test ECE
(what a perfect linear-logit map would score; pure test-sample noise plus any non-linear miscalibration)."""
import numpy as np
from noise import sim_platt, platt
from common import DATASETS, SEEDS, ece, load, sigmoid

print("| dataset | seed | observed | pct under B | B mean / 95th | test-oracle Platt (slope, intercept) | its test ECE | val Platt (slope, intercept) |")
print("|---|---|---|---|---|---|---|---|")
for ds in DATASETS:
    for seed in SEEDS:
        d = load(ds, seed)
        p_val, p_test = d["p_val"].astype(float), d["p_test"].astype(float)
        obs = ece(d["y_test"], p_test)
        b = sim_platt(p_val, p_test, len(p_val), reps=1000)
        zt = d["z_test"].astype(float)
        a_o, c_o = platt(zt, d["y_test"])
        print(f"| {ds} | {seed} | {obs:.4f} | {(b < obs).mean():.2f} | {b.mean():.4f} / {np.percentile(b, 95):.4f} | "
              f"({a_o:.3f}, {c_o:+.3f}) | {ece(d['y_test'], sigmoid(a_o * zt + c_o)):.4f} | ({d['platt'][0]:.3f}, {d['platt'][1]:+.3f}) |", flush=True)
