"""The baselines a churn model must beat, and how two methods' test AUCs are compared.

Each baseline sees what it can use: the recency rule and BG/NBD see purchase history only; logistic
regression and LightGBM also get the profile columns, encoded as the model's feature spec does.
Every choice (LightGBM tuning, the logistic C, Platt maps of the rules) uses the validation slice.

Used by training (``report/baselines.json``: the comparison for the run, ``--baselines``) and by the
quality benchmark (``benchmarks/quality.py``: the same comparison over datasets and split draws).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from training.data import PreparedData, Split
from training.evaluate import ThresholdPolicy, choose_threshold, classification_metrics
from training.model import fit_platt

# The test metrics kept per method (classification_metrics computes more).
METRICS = ("roc_auc", "log_loss", "pr_auc_churn", "pr_auc_active", "f1", "ece", "brier")
BOOTSTRAP_RESAMPLES = 2000

# method -> (validation probabilities, test probabilities)
Scores = dict[str, tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------------------------------------
# Baselines.
# ---------------------------------------------------------------------------------------------


def _platt_probs(score_val: np.ndarray, y_val: np.ndarray, score: np.ndarray) -> np.ndarray:
    a, b = fit_platt(score_val, y_val)
    return 1 / (1 + np.exp(-(a * score + b)))


def _col(data: PreparedData, split: Split, name: str) -> np.ndarray:
    return split.raw.static[:, list(data.spec.static_names).index(name)]


def _profile_inputs(data: PreparedData, split: Split) -> np.ndarray:
    """The profile columns as the model gets them: one-hot categories (vocabulary fitted on train)
    and scaled numbers with a missing flag; zero columns when the data has no profile."""
    _, static = data.inputs(split)
    return static[:, len(data.spec.static_names) :].astype(np.float64)


def recency_rule(data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    """Days since the last purchase; mapped to probabilities by a 1-D logistic fit on validation."""

    def score(split: Split) -> np.ndarray:
        return np.log1p(_col(data, split, "recency_days"))

    return (
        _platt_probs(score(data.validation), data.validation.labels, score(data.validation)),
        _platt_probs(score(data.validation), data.validation.labels, score(data.test)),
    )


def _bgnbd_inputs(data: PreparedData, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lifetimes' (frequency, recency, T) in whole days, observation ending the day before the cutoff.

    Ages are rounded up to calendar days (an order at any time of the day before the cutoff is 1 day
    old), as BG/NBD counts purchase days: with a time of day, a same-day repeat would otherwise give
    recency > T (lifetimes refuses it). Midnight timestamps (CDNOW, Ta-Feng) are whole days already.
    """
    first = np.ceil(_col(data, split, "first_order_age_days"))  # days from first order to as_of
    last = np.ceil(_col(data, split, "recency_days"))
    frequency = _col(data, split, "n_order_days") - 1
    return frequency, first - last, first - 1


def fit_bgnbd(data: PreparedData) -> Any:
    """BG/NBD (lifetimes' BetaGeoFitter) fitted on the training customers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter

        model = BetaGeoFitter(penalizer_coef=0.0)
        model.fit(*_bgnbd_inputs(data, data.train))
    return model


def bgnbd_p_no_purchase(
    model: Any, frequency: np.ndarray, recency: np.ndarray, T: np.ndarray, horizon_days: float
) -> np.ndarray:
    """P(no purchase in the next ``horizon_days``) under a fitted BG/NBD."""
    r, alpha = model.params_["r"], model.params_["alpha"]
    alive = np.asarray(model.conditional_probability_alive(frequency, recency, T), dtype=np.float64)
    # Dropout happens only right after a purchase: alive-and-silent is a Poisson zero.
    silent_if_alive = ((alpha + T) / (alpha + T + horizon_days)) ** (r + frequency)
    return (1 - alive) + alive * silent_if_alive


def bgnbd(data: PreparedData) -> Scores:
    """BG/NBD scored by P(no purchase in the label horizon) and by -E[purchases in it]; the horizon
    is the protocol's (39 weeks = 273 days on CDNOW, 4 weeks on Ta-Feng)."""
    model = fit_bgnbd(data)
    horizon_days = 7 * data.protocol.horizon_weeks

    def neg_expected(split: Split) -> np.ndarray:
        expected = model.conditional_expected_number_of_purchases_up_to_time(
            horizon_days, *_bgnbd_inputs(data, split)
        )
        return -np.asarray(expected, dtype=np.float64)

    pv, pt = (
        bgnbd_p_no_purchase(model, *_bgnbd_inputs(data, s), horizon_days)
        for s in (data.validation, data.test)
    )
    ev, et = neg_expected(data.validation), neg_expected(data.test)
    return {
        "bgnbd_p_no_purchase": (pv, pt),
        "bgnbd_neg_expected_purchases": (
            _platt_probs(ev, data.validation.labels, ev),
            _platt_probs(ev, data.validation.labels, et),
        ),
    }


def _rfm(data: PreparedData, split: Split) -> np.ndarray:
    """Recency both ways (days since last order, first-to-last span), frequency, monetary, T."""
    first = _col(data, split, "first_order_age_days")
    last = _col(data, split, "recency_days")
    columns = [
        last,
        first - last,
        _col(data, split, "n_order_days") - 1,
        _col(data, split, "n_orders"),
        _col(data, split, "avg_order_value"),
        _col(data, split, "total_spend"),
        first,
    ]
    return np.log1p(np.column_stack(columns))


def logistic_rfm(data: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on log RFM plus the profile encoding, C chosen on validation log-loss."""
    x_train, x_val, x_test = (
        np.hstack([_rfm(data, s), _profile_inputs(data, s)]) for s in (data.train, data.validation, data.test)
    )
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)  # a profile category absent from train is a constant column
    x_train, x_val, x_test = ((x - mean) / std for x in (x_train, x_val, x_test))
    best: tuple[float, LogisticRegression] | None = None
    for c in (0.01, 0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, data.train.labels)
        loss = log_loss(data.validation.labels, model.predict_proba(x_val)[:, 1])
        if best is None or loss < best[0]:
            best = (loss, model)
    assert best is not None
    model = best[1]
    return model.predict_proba(x_val)[:, 1], model.predict_proba(x_test)[:, 1]


def _lightgbm_fit(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, **params: Any
) -> Any:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        n_estimators=2000,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        reg_lambda=1.0,
        n_jobs=1,
        random_state=42,
        verbose=-1,
        **params,
    )
    with warnings.catch_warnings():
        # LightGBM 4.6 renamed eval_set (eval_X/eval_y); the old name works and older versions need it.
        warnings.filterwarnings("ignore", message=".*'eval_set' is deprecated")
        model.fit(
            x_train,
            y_train,
            eval_set=[(x_val, y_val)],
            eval_metric="binary_logloss",
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
    return model


def lightgbm_static(data: PreparedData) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """LightGBM on the raw static features plus the profile encoding, tuned on validation (n_jobs=1)."""
    x_train, x_val, x_test = (
        np.hstack([s.raw.static, _profile_inputs(data, s)]) for s in (data.train, data.validation, data.test)
    )
    y_train, y_val = data.train.labels, data.validation.labels
    best: tuple[float, Any, dict[str, Any]] | None = None
    for num_leaves in (4, 8, 16, 31):
        for min_child in (20, 50, 100):
            for lr in (0.02, 0.05):
                params = {"num_leaves": num_leaves, "min_child_samples": min_child, "learning_rate": lr}
                model = _lightgbm_fit(x_train, y_train, x_val, y_val, **params)
                loss = log_loss(y_val, model.predict_proba(x_val)[:, 1])
                if best is None or loss < best[0]:
                    best = (loss, model, {**params, "n_estimators": int(model.best_iteration_)})
    assert best is not None
    _, model, chosen = best
    return model.predict_proba(x_val)[:, 1], model.predict_proba(x_test)[:, 1], chosen


def baseline_scores(data: PreparedData) -> tuple[Scores, dict[str, Any]]:
    """(validation, test) probabilities of every baseline, and LightGBM's chosen parameters."""
    scores: Scores = {"recency_rule": recency_rule(data)}
    scores.update(bgnbd(data))
    scores["logistic_rfm"] = logistic_rfm(data)
    p_val, p_test, lgb_params = lightgbm_static(data)
    scores["lightgbm_static"] = (p_val, p_test)
    return scores, lgb_params


def method_metrics(scores: Scores, y_val: np.ndarray, y_test: np.ndarray) -> dict[str, dict[str, Any]]:
    """Test metrics per method at the threshold its validation scores choose (max F1)."""
    methods = {}
    for name, (pv, pt) in scores.items():
        threshold = choose_threshold(y_val, pv, ThresholdPolicy("max_f1"))
        m = classification_metrics(y_test, pt, threshold)
        methods[name] = {k: m[k] for k in METRICS}
        methods[name]["threshold_from_validation"] = threshold
        methods[name]["validation_roc_auc"] = float(roc_auc_score(y_val, pv))
        methods[name]["validation_log_loss"] = float(log_loss(y_val, np.clip(pv, 1e-7, 1 - 1e-7)))
    return methods


# ---------------------------------------------------------------------------------------------
# Paired bootstrap of the AUC difference, on one test split or pooled over several.
# ---------------------------------------------------------------------------------------------


class _WeightedAuc:
    """ROC-AUC of fixed scores under per-customer resampling weights (a customer drawn c times
    counts c times, ties count one half): the scores are sorted once, each resample is two
    ``bincount`` calls instead of a sort."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(scores, kind="stable")
        ranked = np.asarray(scores)[order]
        self.order = order
        self.group = np.concatenate([[0], np.cumsum(ranked[1:] != ranked[:-1])]).astype(np.int64)
        self.n_groups = int(self.group[-1]) + 1 if len(ranked) else 0
        self.positive = np.asarray(labels)[order].astype(np.float64)

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.order]
        pos = np.bincount(self.group, w * self.positive, self.n_groups)
        neg = np.bincount(self.group, w * (1 - self.positive), self.n_groups)
        below = np.cumsum(neg) - neg
        return float(pos @ (below + 0.5 * neg) / (pos.sum() * neg.sum()))


@dataclass(frozen=True)
class PairedDraw:
    """One test split: its customers, labels, and the two methods' test probabilities."""

    user_ids: np.ndarray
    labels: np.ndarray
    ours: np.ndarray
    theirs: np.ndarray


def paired_bootstrap_auc_diff(
    draws: Sequence[PairedDraw], n: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, Any]:
    """AUC(ours) - AUC(theirs), averaged over the draws, under a paired bootstrap of customers.

    Each resample draws customers with replacement from the union of the draws' test customers and
    reweights every draw by it, so a customer in several test splits moves them together (the splits
    overlap, and treating them as independent would narrow the interval). With one draw this is the
    plain paired bootstrap of a test split. Resamples where a draw loses a class are skipped."""
    ids = pd.unique(np.concatenate([np.asarray(d.user_ids, dtype=object) for d in draws]))
    index = pd.Index(ids)
    positions = [index.get_indexer(np.asarray(d.user_ids, dtype=object)) for d in draws]
    aucs = [(_WeightedAuc(d.labels, d.ours), _WeightedAuc(d.labels, d.theirs)) for d in draws]
    classes = [np.asarray(d.labels).astype(bool) for d in draws]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        counts = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)).astype(np.float64)
        per_draw = []
        for pos, is_pos, (ours, theirs) in zip(positions, classes, aucs, strict=True):
            w = counts[pos]
            if not w[is_pos].any() or not w[~is_pos].any():
                break
            per_draw.append(ours(w) - theirs(w))
        else:
            diffs.append(float(np.mean(per_draw)))
    full = [roc_auc_score(d.labels, d.ours) - roc_auc_score(d.labels, d.theirs) for d in draws]
    values = np.asarray(diffs)
    return {
        "estimate": float(np.mean(full)),
        "mean": float(values.mean()),
        "ci95": [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))],
        "resamples": len(values),
        "p_ours_not_better": float(np.mean(values <= 0)),
        "splits": len(draws),
    }


def compare_with_baselines(
    data: PreparedData, ours: tuple[np.ndarray, np.ndarray], name: str = "churnguard_tflite"
) -> dict[str, Any]:
    """The run's comparison (``report/baselines.json``): every method's test metrics at its own
    validation-chosen threshold, and ``name`` against the best baseline by test AUC (the strictest
    comparison for us) with a paired bootstrap CI of the AUC difference."""
    scores, lgb_params = baseline_scores(data)
    methods = method_metrics({name: ours, **scores}, data.validation.labels, data.test.labels)
    best = max(scores, key=lambda method: methods[method]["roc_auc"])
    diff = paired_bootstrap_auc_diff(
        [PairedDraw(data.test.user_ids, data.test.labels, ours[1], scores[best][1])]
    )
    return {
        "model": name,
        "methods": methods,
        "best_baseline": best,
        "auc_diff_to_best_baseline": {**diff, "significantly_worse": diff["ci95"][1] < 0},
        "log_loss_diff_to_best_baseline": methods[name]["log_loss"] - methods[best]["log_loss"],
        "lightgbm_params": lgb_params,
        "test_customers": len(data.test.labels),
    }
