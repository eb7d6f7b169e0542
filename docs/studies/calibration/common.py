"""Shared helpers: the logits extract.py saved, the bench's ECE, calibrators."""
import sys
from pathlib import Path
import numpy as np

sys.path[:0] = ["/work/main", "/work/main/shared"]
from training.evaluate import expected_calibration_error as ece  # the bench's ECE: 10 equal-mass bins

LOGITS = Path("/tmp/calib/logits")
DATASETS = ("cdnow", "tafeng")
SEEDS = tuple(range(42, 47))


def load(ds, seed):
    return dict(np.load(LOGITS / f"{ds}-{seed}.npz", allow_pickle=True))


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def log_loss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
