"""Retrain the published draws (seeds 42-46, cdnow and tafeng) under other calibration-slice choices,
and save validation/test logits to /tmp/calib/retrain/<ds>-<seed>-<cfg>.npz.

  vf30   --validation-fraction 0.3; early stopping and Platt on the whole (larger) validation slice
  vf30h  --validation-fraction 0.3; early stopping on a stratified half A of it (= 15% of train, as
         today), half B kept for calibration only (cross-fitted)
  vf15h  --validation-fraction 0.15 (today); early stopping on half A, half B for calibration only
The published models (vf 0.15, early stopping + Platt on the whole slice) are the reference.
Everything else is training.train's own code (load_training_data, fit_network, default hyperparameters).
Usage: nice -n 15 .venv/bin/python docs/studies/calibration/retrain.py [cfg ...]
"""
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np

sys.path[:0] = ["/work/main", "/work/main/shared"]
from training.data import stratified_split
from training.train import fit_network, hyperparameters_from, load_training_data, parse_args

OUT = Path("/tmp/calib/retrain"); OUT.mkdir(parents=True, exist_ok=True)
CFGS = {"vf30": (0.3, False), "vf30h": (0.3, True), "vf15h": (0.15, True)}


def run(ds, seed, cfg):
    out = OUT / f"{ds}-{seed}-{cfg}.npz"
    if out.exists():
        return
    vf, half = CFGS[cfg]
    args = parse_args(["--dataset", ds, "--seed", str(seed), "--validation-fraction", str(vf), "--verbose", "0"])
    training = load_training_data(args)
    data = training.data
    val = data.validation
    a_idx, b_idx = stratified_split(val.labels, 0.5, seed) if half else (np.arange(len(val.labels)), np.array([], int))
    fit_data = dataclasses.replace(data, validation=val.subset(a_idx)) if half else data
    started = time.time()
    fit = fit_network(fit_data, hyperparameters_from(args), training.extra, args.seed, 0)
    net = fit.network
    z_val = net.predict(list(data.inputs(val)), batch_size=4096, verbose=0).reshape(-1)
    z_test = net.predict(list(data.inputs(data.test)), batch_size=4096, verbose=0).reshape(-1)
    np.savez(out, z_val=z_val, y_val=val.labels.astype(int), z_test=z_test, y_test=data.test.labels.astype(int),
             a_idx=a_idx, b_idx=b_idx, epochs=fit.epochs, n_train=len(data.train.labels), seconds=time.time() - started)
    print(ds, seed, cfg, "epochs", fit.epochs, "n_train", len(data.train.labels), "n_val", len(val.labels),
          f"{time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    cfgs = sys.argv[1:] or list(CFGS)
    for seed in range(42, 47):
        for ds in ("cdnow", "tafeng"):
            for cfg in cfgs:
                run(ds, seed, cfg)
