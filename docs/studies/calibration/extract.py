"""Validation/test logits of the 10 published bench models (quality.md, K=5 x cdnow/tafeng).

Copies of artifacts/bench-model/<ds>-seed<s> were taken to /tmp/calib/models first. For each model:
rebuild the draw's split with training.train's own loader (same protocol, same seed), take the
serving Keras model's pre-calibration logit (layer 'logit'), and the exported TFLite probabilities
(through data.inputs, i.e. the training-side features), and save them to /tmp/calib/logits/.
Usage: nice -n 15 .venv/bin/python docs/studies/calibration/extract.py
"""
import os, sys, json
from pathlib import Path
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np

sys.path[:0] = ["/work/main", "/work/main/shared"]
from training.train import parse_args, load_training_data
from training.evaluate import expected_calibration_error

MODELS = Path("/tmp/calib/models")
OUT = Path("/tmp/calib/logits"); OUT.mkdir(parents=True, exist_ok=True)

def main():
    import keras
    from churnguard.scorer import TFLiteScorer
    cache = {}
    for ds in ("cdnow", "tafeng"):
        for seed in range(42, 47):
            d = MODELS / f"{ds}-seed{seed}"
            meta = json.loads((d / "metadata.json").read_text())
            args = parse_args(["--dataset", ds, "--seed", str(seed)])
            training = load_training_data(args)
            data = training.data
            m = keras.models.load_model(d / "model.keras", compile=False)
            logit_model = keras.Model(m.inputs, m.get_layer("logit").output)
            res = {}
            for name, split in (("val", data.validation), ("test", data.test)):
                x = data.inputs(split)
                res[f"z_{name}"] = logit_model.predict(list(x), batch_size=4096, verbose=0).reshape(-1)
                res[f"p_{name}"] = TFLiteScorer((d / "model.tflite").read_bytes()).predict(*x).reshape(-1)
                res[f"y_{name}"] = split.labels.astype(int)
                res[f"u_{name}"] = np.asarray(split.user_ids)
            a, b = meta["calibration"]["slope"], meta["calibration"]["intercept"]
            res["platt"] = np.array([a, b])
            pt = 1 / (1 + np.exp(-(a * res["z_test"] + b)))
            print(ds, seed, "n_val", len(res["y_val"]), "n_test", len(res["y_test"]),
                  "max|tflite-platt(z)|", float(np.abs(pt - res["p_test"]).max()),
                  "test ECE (tflite, train features)", round(expected_calibration_error(res["y_test"], res["p_test"]), 4),
                  "published", round(meta["metrics"]["test"]["ece"], 4), flush=True)
            np.savez(OUT / f"{ds}-{seed}.npz", **res)

if __name__ == "__main__":
    main()
