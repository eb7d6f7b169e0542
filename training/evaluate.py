"""Metrics, decision thresholds, segment reports and plots for a churn scorer."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from churnguard.model_metadata import ABOVE_EVERY_PROBABILITY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The headline metrics recorded in metadata.json and shown by `make demo`.
SUMMARY_METRICS = (
    "roc_auc",
    "pr_auc_churn",
    "pr_auc_active",
    "log_loss",
    "brier",
    "ece",
    "f1",
    "precision",
    "recall",
    "accuracy",
)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Equal-mass ECE: weighted |mean(p) - mean(y)| over probability deciles."""
    order = np.argsort(probs, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if len(chunk):
            total += len(chunk) * abs(float(np.mean(probs[chunk])) - float(np.mean(labels[chunk])))
    return total / max(len(probs), 1)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels).astype(int)
    probs = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (probs >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    return {
        "n": len(labels),
        "churn_rate": float(labels.mean()) if len(labels) else float("nan"),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(labels, pred)),
        "precision": float(precision_score(labels, pred, zero_division=0)),
        "recall": float(recall_score(labels, pred, zero_division=0)),
        "f1": float(f1_score(labels, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "pr_auc_churn": float(average_precision_score(labels, probs)) if both else None,
        "pr_auc_active": float(average_precision_score(1 - labels, 1 - probs)) if both else None,
        "log_loss": float(log_loss(labels, probs, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, probs)),
        "ece": expected_calibration_error(labels, probs),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


@dataclass(frozen=True)
class ThresholdPolicy:
    """``max_f1`` or ``min_cost``.

    ``min_cost`` minimises the expected cost of acting on the flagged customers: every offer costs
    ``promotion_cost``; an offer to a real churner wins back ``uplift * customer_value`` on average.
    """

    name: str = "max_f1"
    promotion_cost: float = 5.0
    customer_value: float = 60.0
    uplift: float = 0.15

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "promotion_cost": self.promotion_cost,
            "customer_value": self.customer_value,
            "uplift": self.uplift,
        }


def choose_threshold(labels: np.ndarray, probs: np.ndarray, policy: ThresholdPolicy) -> float:
    """A decision threshold chosen on *validation* scores."""
    labels = np.asarray(labels).astype(int)
    if policy.name == "max_f1":
        precision, recall, thresholds = precision_recall_curve(labels, probs)
        f1 = np.where(
            precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0
        )
        return float(thresholds[int(np.argmax(f1[:-1]))])
    if policy.name == "min_cost":
        order = np.argsort(-probs, kind="stable")
        gain_per_tp = policy.uplift * policy.customer_value
        tp = np.cumsum(labels[order])
        flagged = np.arange(1, len(order) + 1)
        cost = policy.promotion_cost * flagged - gain_per_tp * tp
        best = int(np.argmin(cost))
        if cost[best] >= 0:  # no offer pays for itself: flag nobody
            return ABOVE_EVERY_PROBABILITY
        return float(probs[order][best])
    raise ValueError(f"unknown threshold policy {policy.name!r} (max_f1 | min_cost)")


def risk_tiers(probs: np.ndarray, decision_threshold: float) -> dict:
    """Probability cut points: ``high`` = the decision threshold, ``medium`` = validation median below it."""
    below = probs[probs < decision_threshold]
    medium = float(np.quantile(below, 0.5)) if len(below) else float(decision_threshold)
    return {"medium": min(medium, decision_threshold), "high": float(decision_threshold)}


def segment_metrics(
    labels: np.ndarray, probs: np.ndarray, threshold: float, segments: Mapping[str, np.ndarray]
) -> dict:
    out = {}
    for segment_name, segment_labels in segments.items():
        out[segment_name] = {}
        for band in sorted(set(segment_labels.tolist())):
            mask = segment_labels == band
            if mask.sum() >= 20:
                out[segment_name][str(band)] = classification_metrics(labels[mask], probs[mask], threshold)
    return out


def band(values: np.ndarray, edges: list[float], names: list[str]) -> np.ndarray:
    return np.asarray(names, dtype=object)[np.digitize(values, edges)]


def write_plots(
    directory: str,
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    history: Mapping[str, list[float]] | None,
) -> list[str]:
    """The report's figures as PNG files in ``directory``; returns their names in writing order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    written: list[str] = []

    def save(fig: Figure, name: str) -> None:
        path = os.path.join(directory, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(name)

    save(_roc_figure(labels, probs), "roc.png")
    save(_precision_recall_figure(labels, probs), "pr.png")
    save(_calibration_figure(labels, probs), "calibration.png")
    save(_confusion_figure(labels, probs, threshold), "confusion_matrix.png")
    if history:
        save(_learning_curves_figure(history), "learning_curves.png")
    return written


def _roc_figure(labels: np.ndarray, probs: np.ndarray) -> Figure:
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(labels, probs):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (test)")
    ax.legend(loc="lower right")
    return fig


def _precision_recall_figure(labels: np.ndarray, probs: np.ndarray) -> Figure:
    import matplotlib.pyplot as plt

    precision, recall, _ = precision_recall_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(recall, precision, label=f"AP {average_precision_score(labels, probs):.3f}")
    ax.axhline(labels.mean(), ls="--", color="grey", lw=1, label="base rate")
    ax.set(xlabel="Recall (churn)", ylabel="Precision (churn)", title="Precision-recall (test)")
    ax.legend(loc="lower left")
    return fig


def _calibration_figure(labels: np.ndarray, probs: np.ndarray) -> Figure:
    """Observed churn rate against mean predicted probability, per decile of the prediction."""
    import matplotlib.pyplot as plt

    order = np.argsort(probs, kind="stable")
    chunks = np.array_split(order, 10)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.plot([probs[c].mean() for c in chunks], [labels[c].mean() for c in chunks], "o-")
    ax.set(
        xlabel="Predicted churn probability",
        ylabel="Observed churn rate",
        title=f"Calibration (ECE {expected_calibration_error(labels, probs):.3f})",
    )
    return fig


def _confusion_figure(labels: np.ndarray, probs: np.ndarray, threshold: float) -> Figure:
    import matplotlib.pyplot as plt

    cm = confusion_matrix(labels, (probs >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["active", "churn"],
        yticklabels=["active", "churn"],
        xlabel="Predicted",
        ylabel="Actual",
        title=f"Confusion @ {threshold:.3f}",
    )
    return fig


def _learning_curves_figure(history: Mapping[str, list[float]]) -> Figure:
    """Loss and AUC per epoch, training solid and validation dashed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key in zip(axes, ("loss", "auc"), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(history[prefix + key], style, label=(prefix or "train_") + key)
        ax.set(xlabel="epoch", title=key)
        ax.legend()
    return fig
