"""Metrics, calibration and decision thresholds."""

import numpy as np
import pytest

from training.evaluate import (
    ThresholdPolicy,
    choose_threshold,
    classification_metrics,
    expected_calibration_error,
    risk_tiers,
)
from training.model import fit_platt


def test_platt_scaling_recovers_a_known_slope_and_intercept():
    rng = np.random.default_rng(0)
    z = rng.normal(size=50_000) * 2
    y = (rng.random(50_000) < 1 / (1 + np.exp(-(0.5 * z - 0.3)))).astype(int)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.03) and b == pytest.approx(-0.3, abs=0.03)


def test_ece_is_zero_for_calibrated_scores_and_large_for_shifted_ones():
    rng = np.random.default_rng(1)
    p = rng.random(100_000)
    y = (rng.random(100_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.1


def test_metrics_include_both_pr_aucs_and_confusion_matrix():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m = classification_metrics(y, p, threshold=0.5)
    assert m["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 2}
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert 0 < m["pr_auc_active"] < 1 and 0 < m["pr_auc_churn"] < 1


def test_max_f1_threshold_beats_every_other_cut_on_the_same_scores():
    rng = np.random.default_rng(2)
    y = (rng.random(2000) < 0.4).astype(int)
    p = np.clip(0.4 + 0.3 * (y - 0.4) + rng.normal(0, 0.2, 2000), 0, 1)
    t = choose_threshold(y, p, ThresholdPolicy("max_f1"))
    best = classification_metrics(y, p, t)["f1"]
    for other in np.linspace(0.05, 0.95, 19):
        assert best >= classification_metrics(y, p, other)["f1"] - 1e-12


def test_min_cost_threshold_flags_nobody_when_offers_never_pay():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.3, 0.1])
    expensive = ThresholdPolicy("min_cost", promotion_cost=100, customer_value=10, uplift=0.1)
    assert choose_threshold(y, p, expensive) > 1
    cheap = ThresholdPolicy("min_cost", promotion_cost=1, customer_value=100, uplift=0.5)
    assert choose_threshold(y, p, cheap) == pytest.approx(0.3)  # every churner is worth an offer


def test_risk_tiers_are_ordered():
    tiers = risk_tiers(np.linspace(0, 1, 101), 0.6)
    assert tiers["medium"] < tiers["high"] == 0.6
