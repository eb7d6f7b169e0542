"""Outcomes and measured uplift (issue 10 §2): labels, intervals, the report, and known answers.

The known answers: hand-computed labels at the window's edges, Newcombe's published example, DeLong
against its O(m·n) definition, simulated two-arm experiments with a known difference (and with none),
and the synthetic generator with a planted treatment effect (won-back share 0.3) that the report must
recover — and must not "recover" when nothing was planted.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from benchmarks.outcomes import synthetic_decisions, window_end
from churnguard.control import ControlPolicy
from churnguard.datasets import generate_synthetic_events, plant_treatment_effect
from churnguard.decisions import DECISION_COLUMNS
from churnguard.outcomes import (
    delong_auc,
    expected_calibration_error,
    key_figures,
    label_outcomes,
    newcombe_difference,
    outcome_report,
    wilson_interval,
)
from churnguard.tabular import churn_labels

Z95 = 1.959963984540054
AS_OF = "2024-01-01T00:00:00Z"


def _decision(user: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "decision_id": f"d-{user}",
        "user_id": user,
        "decided_at": AS_OF,
        "as_of": AS_OF,
        "model_version": "v1",
        "horizon_weeks": 1,
        "churn_probability": 0.5,
        "risk_tier": "high",
        "action": "coupon_10",
        "action_cost": 5.0,
        "action_uplift": 0.1,
        "expected_value": 1.0,
        "customer_value": 100.0,
        "arm": "treated",
        "period": 0,
        "period_days": 36_500,  # every window inside its period, unless a test says otherwise
        "control_fraction": 0.2,
        "source": "batch",
        "trigger": "",
    }
    row.update(overrides)
    return row


def _orders(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [u for u, _ in rows],
            "timestamp": pd.to_datetime([t for _, t in rows]),
            "event_type": "order",
        }
    )


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def test_labels_at_the_window_edges_follow_the_training_definition():
    decisions = pd.DataFrame([_decision(u) for u in ("at_start", "at_end", "just_inside", "before", "none")])
    orders = _orders(
        ("at_start", "2024-01-01 00:00:00"),  # exactly at as_of: retained
        ("at_end", "2024-01-08 00:00:00"),  # exactly at as_of + horizon: not in the window
        ("just_inside", "2024-01-07 23:59:59"),
        ("before", "2023-12-31 23:59:59"),  # before as_of: does not count
    )
    labelled = label_outcomes(decisions, orders, pd.Timestamp("2024-02-01"))
    assert labelled["churned"].tolist() == [0, 1, 0, 1, 1]
    assert labelled["matured"].all()
    assert labelled["window_end"].iloc[0] == pd.Timestamp("2024-01-08")
    assert labelled["first_order_at"].iloc[0] == pd.Timestamp("2024-01-01")
    assert pd.isna(labelled["first_order_at"].iloc[3])


def test_a_decision_is_matured_only_once_its_whole_window_is_observed():
    decisions = pd.DataFrame([_decision("a"), _decision("b", horizon_weeks=2)])
    orders = _orders(("a", "2024-01-02 00:00:00"), ("b", "2024-01-02 00:00:00"))
    exactly = label_outcomes(decisions, orders, pd.Timestamp("2024-01-08"))
    assert exactly["matured"].tolist() == [True, False]
    assert exactly["churned"].iloc[0] == 0 and pd.isna(exactly["churned"].iloc[1])  # pending: no label
    early = label_outcomes(decisions, orders, pd.Timestamp("2024-01-07 23:59:59"))
    assert not early["matured"].any() and early["churned"].isna().all()
    aware = label_outcomes(decisions, orders, pd.Timestamp("2024-01-08", tz="UTC"))
    assert aware["matured"].tolist() == [True, False]


def test_only_orders_count_and_each_row_has_its_own_as_of():
    decisions = pd.DataFrame(
        [
            _decision("a", decision_id="early"),
            _decision("a", decision_id="late", as_of="2024-01-10T00:00:00Z"),
            _decision("v"),
        ]
    )
    events = pd.concat(
        [
            _orders(("a", "2024-01-03 00:00:00")),
            _orders(("v", "2024-01-03 00:00:00")).assign(event_type="view"),  # not an order
        ]
    )
    labelled = label_outcomes(decisions, events, pd.Timestamp("2024-03-01"))
    assert labelled["churned"].tolist() == [0, 1, 1]


def test_timestamps_may_be_timezone_aware():
    decisions = pd.DataFrame([_decision("a", as_of="2024-01-01T01:00:00+01:00")])  # = 00:00 UTC
    orders = _orders(("a", "2024-01-07 23:30:00"))
    orders["timestamp"] = orders["timestamp"].dt.tz_localize("UTC").dt.tz_convert("Europe/Berlin")
    labelled = label_outcomes(decisions, orders, pd.Timestamp("2024-02-01"))
    assert labelled["churned"].tolist() == [0]


def test_labels_match_training_labels_on_the_generator():
    events = generate_synthetic_events(2000, seed=3)
    users = np.sort(events["user_id"].unique())
    as_of = "2024-09-30"
    decisions = pd.DataFrame(
        [_decision(u, decision_id=u, as_of=f"{as_of}T00:00:00Z", horizon_weeks=26) for u in users]
    )
    labelled = label_outcomes(decisions, events, pd.Timestamp("2025-06-30"))
    expected = churn_labels(events, users, as_of, 26)
    np.testing.assert_array_equal(labelled["churned"].to_numpy(dtype=np.int64), expected)


# ---------------------------------------------------------------------------------------------
# Intervals
# ---------------------------------------------------------------------------------------------


def test_newcombe_interval_reproduces_the_published_example():
    # Newcombe (1998), Stat Med 17:873, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339
    d, low, high = newcombe_difference(56, 70, 48, 80, Z95)
    assert d == pytest.approx(0.2)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    assert wilson_interval(0, 10, Z95) == pytest.approx((0.0, 0.2775), abs=1e-4)


def test_newcombe_interval_has_its_nominal_coverage():
    rng = np.random.default_rng(0)
    p_control, p_treated, n_control, n_treated = 0.6, 0.45, 300, 1200
    covered = 0
    for _ in range(2000):
        x_c, x_t = rng.binomial(n_control, p_control), rng.binomial(n_treated, p_treated)
        _, low, high = newcombe_difference(x_c, n_control, x_t, n_treated, Z95)
        covered += low <= p_control - p_treated <= high
    assert 0.93 <= covered / 2000 <= 0.97


def _slow_delong(labels, probs):
    """DeLong's structural components straight from the definition (O(m·n), ties count 1/2)."""
    pos, neg = probs[labels == 1], probs[labels == 0]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    return kernel.mean(), np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg)


def test_delong_matches_its_definition_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = np.round(rng.random(300) * 0.5 + 0.3 * labels, 2)  # rounded: many ties
    auc, variance = delong_auc(labels, probs)
    slow_auc, slow_variance = _slow_delong(labels, probs)
    assert auc == pytest.approx(slow_auc) and variance == pytest.approx(slow_variance)
    from sklearn.metrics import roc_auc_score

    assert auc == pytest.approx(roc_auc_score(labels, probs))


def test_the_ece_is_the_training_definition():
    from training.evaluate import expected_calibration_error as training_ece

    rng = np.random.default_rng(2)
    probs = rng.random(5003)
    labels = (rng.random(5003) < probs**1.3).astype(int)
    assert expected_calibration_error(labels, probs) == pytest.approx(training_ece(labels, probs))


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _experiment(seed, *, n_treated, n_control, churn_treated, churn_control, auc_shift=1.0, monitoring=0):
    """A labelled two-arm experiment: Bernoulli outcomes, scores whose AUC is Phi(shift / sqrt 2)."""
    rng = np.random.default_rng(seed)
    arms = ["treated"] * n_treated + ["control"] * n_control + ["control"] * monitoring
    rates = [churn_treated] * n_treated + [churn_control] * (n_control + monitoring)
    churned = (rng.random(len(arms)) < np.array(rates)).astype(int)
    score = rng.normal(size=len(arms)) + auc_shift * churned
    frame = pd.DataFrame(
        {
            "arm": arms,
            "action": ["coupon_10"] * (n_treated + n_control) + ["none"] * monitoring,
            "action_cost": [5.0] * n_treated + [5.0] * n_control + [0.0] * monitoring,
            "action_uplift": 0.1,
            "customer_value": 100.0,
            "churn_probability": 1 / (1 + np.exp(-score)),
            "model_version": "v1",
            "matured": True,
            "churned": pd.array(churned, dtype="Int8"),
        }
    )
    return frame


def test_the_report_recovers_a_known_difference_and_its_net_value():
    labelled = _experiment(3, n_treated=4000, n_control=1000, churn_treated=0.42, churn_control=0.6)
    report = outcome_report(labelled)
    overall = report["uplift"]["overall"]
    ir, share = overall["incremental_retention"], overall["won_back_share"]
    assert ir["ci_low"] <= 0.18 <= ir["ci_high"] and ir["ci_low"] > 0.1
    assert share["ci_low"] <= 0.3 <= share["ci_high"]  # 1 - 0.42 / 0.6
    assert ir["value"] == pytest.approx(overall["control"]["churn_rate"] - overall["treated"]["churn_rate"])
    assert overall["cost"] == 4000 * 5.0  # treated only: control was sent nothing
    assert overall["net_value"]["value"] == pytest.approx(ir["value"] * 4000 * 100.0 - 20_000.0)
    assert overall["net_value"]["ci_low"] == pytest.approx(ir["ci_low"] * 400_000.0 - 20_000.0)
    assert overall["incremental_retained_customers"]["value"] == pytest.approx(ir["value"] * 4000)
    assert report["uplift"]["by_action"]["coupon_10"]["incremental_retention"] == ir


def test_a_zero_uplift_experiment_covers_zero_and_excludes_a_real_effect():
    labelled = _experiment(4, n_treated=4000, n_control=1000, churn_treated=0.6, churn_control=0.6)
    overall = outcome_report(labelled)["uplift"]["overall"]
    assert overall["incremental_retention"]["ci_low"] <= 0.0 <= overall["incremental_retention"]["ci_high"]
    assert not overall["won_back_share"]["ci_low"] <= 0.3 <= overall["won_back_share"]["ci_high"]


def test_live_quality_uses_every_control_row_and_its_auc_ci_covers_the_true_auc():
    labelled = _experiment(
        5, n_treated=3000, n_control=500, churn_treated=0.5, churn_control=0.5, monitoring=2500
    )
    quality = outcome_report(labelled)["live_quality"]["v1"]
    assert (
        quality["n"] == 3000 and quality["monitoring_sample"] == 2500 and quality["acted_on_control"] == 500
    )
    true_auc = 0.5 * (1 + math.erf(1 / 2))  # Phi(1 / sqrt 2)
    auc = quality["roc_auc"]
    assert auc["method"] == "delong" and auc["ci_low"] <= true_auc <= auc["ci_high"]
    assert auc["ci_high"] - auc["ci_low"] < 0.05
    assert len(quality["calibration"]) == 10 and sum(b["n"] for b in quality["calibration"]) == 3000
    assert quality["base_churn_rate"] == pytest.approx(quality["churned"] / 3000)
    assert quality["log_loss"] > 0 and 0 <= quality["ece"] < 1


def test_tiny_and_missing_groups_give_none_with_a_reason_and_the_report_is_strict_json():
    labelled = pd.concat(
        [
            _experiment(6, n_treated=5, n_control=0, churn_treated=0.0, churn_control=0.5),
            _experiment(7, n_treated=0, n_control=3, churn_treated=0.5, churn_control=0.5).assign(
                model_version="v2", action="coupon_20"
            ),
        ],
        ignore_index=True,
    )
    labelled.loc[len(labelled) - 1, "matured"] = False
    labelled.loc[len(labelled) - 1, "churned"] = pd.NA
    report = outcome_report(labelled)
    text = json.dumps(report, allow_nan=False)  # raises on NaN or infinity
    assert "NaN" not in text
    assert report["counts"] == {
        "decisions": 8,
        "matured": 7,
        "pending": 1,
        "crossing_period": 0,
        "treated": 5,
        "control": 3,
        "monitoring_sample": 0,
        "matured_treated": 5,
        "matured_control": 2,
        "matured_monitoring_sample": 0,
    }
    by_action = report["uplift"]["by_action"]
    assert by_action["coupon_10"]["incremental_retention"]["value"] is None
    assert "no matured decision" in by_action["coupon_10"]["incremental_retention"]["reason"]
    assert by_action["coupon_20"]["treated"]["churn_rate"] is None
    assert report["live_quality"]["v1"]["n"] == 0
    assert report["live_quality"]["v1"]["roc_auc"]["value"] is None
    assert report["live_quality"]["v1"]["log_loss"] is None
    assert "at least 2" in report["live_quality"]["v2"]["roc_auc"]["reason"]
    figures = key_figures(report)
    assert "LiveAUC:v1" not in figures and "LiveAUC:v2" not in figures
    assert report["uplift"]["overall"]["incremental_retention"]["value"] is not None  # v1 treated, v2 control
    assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values())


def test_an_empty_log_and_no_orders_give_a_report_of_zeros():
    from churnguard.decision_store import decisions_frame

    no_orders = pd.DataFrame(
        {"user_id": pd.Series(dtype=object), "timestamp": pd.Series(dtype="datetime64[ns]")}
    )
    report = outcome_report(label_outcomes(decisions_frame([]), no_orders, pd.Timestamp("2024-01-01")))
    assert report["counts"]["decisions"] == 0 and report["live_quality"] == {}
    assert report["uplift"]["overall"]["incremental_retention"]["value"] is None
    json.dumps(report, allow_nan=False)
    one = label_outcomes(decisions_frame([_decision("a")]), no_orders, pd.Timestamp("2024-02-01"))
    assert one["churned"].tolist() == [1]


def test_the_won_back_share_is_undefined_without_churners():
    labelled = _experiment(8, n_treated=200, n_control=200, churn_treated=0.0, churn_control=0.5)
    overall = outcome_report(labelled)["uplift"]["overall"]
    assert overall["incremental_retention"]["value"] is not None
    assert overall["won_back_share"]["value"] is None
    assert "treated arm" in overall["won_back_share"]["reason"]


def test_key_figures_name_the_headline_numbers():
    labelled = _experiment(
        9, n_treated=400, n_control=100, churn_treated=0.4, churn_control=0.6, monitoring=300
    )
    figures = key_figures(outcome_report(labelled))
    assert figures["TreatedDecisions"] == 400 and figures["ControlDecisions"] == 100
    assert figures["MonitoringDecisions"] == 300 and figures["MaturedDecisions"] == 800
    assert figures["IncrementalRetentionCILow"] < figures["IncrementalRetention"]
    assert figures["IncrementalRetention"] < figures["IncrementalRetentionCIHigh"]
    assert {"LiveAUC:v1", "LiveAUCCILow:v1", "LiveAUCCIHigh:v1", "WonBackShare", "NetValue"} <= figures.keys()


def test_the_pictures_and_the_page_are_written_and_the_page_escapes_text(tmp_path):
    pytest.importorskip("matplotlib")
    from churnguard.outcome_plots import render

    labelled = _experiment(
        10, n_treated=400, n_control=100, churn_treated=0.4, churn_control=0.6, monitoring=300
    ).assign(model_version="<script>v1</script>")
    paths = render(outcome_report(labelled), tmp_path / "out")
    assert [p.name for p in paths] == ["uplift.png", "live_calibration.png", "outcomes.html"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths[:2])
    page = paths[2].read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and 'src="uplift.png"' in page


# ---------------------------------------------------------------------------------------------
# The planted treatment effect: the known answer on generator data, scored by the fixture model
# ---------------------------------------------------------------------------------------------

PLANTED = 0.3


@pytest.fixture(scope="module")
def synthetic():
    """20k generator customers scored by the fixture model at its cutoff; arms with fraction 0.2."""
    events, decisions, as_of, horizon = synthetic_decisions(
        20_000, seed=11, control=ControlPolicy(fraction=0.2, salt="test-outcomes", period_days=3650)
    )
    assert list(decisions.columns) == [name for name, _ in DECISION_COLUMNS]
    return events, decisions, window_end(as_of, horizon)


def _overall(events, decisions, until):
    return outcome_report(label_outcomes(decisions, events, until))["uplift"]["overall"]


def test_the_planted_won_back_share_is_recovered_within_its_ci(synthetic):
    events, decisions, until = synthetic
    untreated = _overall(events, decisions, until)
    planted = _overall(plant_treatment_effect(events, decisions, won_back=PLANTED, seed=1), decisions, until)
    share, ir = planted["won_back_share"], planted["incremental_retention"]
    assert planted["treated"]["n"] > 1500 and planted["control"]["n"] > 400
    assert share["ci_low"] <= PLANTED <= share["ci_high"]
    assert share["ci_high"] - share["ci_low"] < 0.12
    expected = PLANTED * untreated["treated"]["churn_rate"]
    assert ir["ci_low"] <= expected <= ir["ci_high"]
    assert (
        untreated["incremental_retention"]["ci_low"] <= 0.0 <= untreated["incremental_retention"]["ci_high"]
    )


def test_without_a_planted_effect_the_ci_excludes_it(synthetic):
    events, decisions, until = synthetic
    nothing = plant_treatment_effect(events, decisions, won_back=0.0, seed=1)
    pd.testing.assert_frame_equal(nothing, events.sort_values("timestamp", kind="stable", ignore_index=True))
    share = _overall(nothing, decisions, until)["won_back_share"]
    assert share["ci_low"] <= 0.0 <= share["ci_high"]
    assert not share["ci_low"] <= PLANTED <= share["ci_high"]


def test_planting_adds_orders_only_to_treated_acted_on_churners_inside_their_windows(synthetic):
    events, decisions, until = synthetic
    planted = plant_treatment_effect(events, decisions, won_back=1.0, seed=2)
    added = planted.merge(events, how="left", indicator=True).query("_merge == 'left_only'")
    assert (added["event_type"] == "order").all() and (added["quantity"] == 1.0).all()
    before = label_outcomes(decisions, events, until)
    who = before[(before["arm"] == "treated") & (before["action"] != "none") & (before["churned"] == 1)]
    assert set(added["user_id"]) == set(who["user_id"]) and len(added) == len(who)
    window = who.set_index("user_id").loc[added["user_id"]]
    start = pd.to_datetime(window["as_of"]).dt.tz_localize(None).to_numpy()
    assert (added["timestamp"].to_numpy() >= start).all()
    assert (added["timestamp"].to_numpy() < window["window_end"].to_numpy()).all()
    assert added["country"].notna().all() and (added["amount"] > 0).all()
    after = _overall(planted, decisions, until)
    assert after["treated"]["churned"] == 0  # everyone treated who would have churned was won back
    assert after["control"] == _overall(events, decisions, until)["control"]
    with pytest.raises(ValueError, match="won_back"):
        plant_treatment_effect(events, decisions, won_back=1.5, seed=0)


def test_a_window_that_runs_past_its_arms_period_is_left_out_of_uplift_and_live_quality():
    # 7-day periods from the epoch; 2024-01-01 is day 19723 = period 2817's sixth day (it ends on day 19726)
    inside = dict(as_of="2024-01-01", horizon_weeks=0, period=19723 // 7, period_days=7)
    crossing = dict(as_of="2024-01-01", horizon_weeks=1, period=19723 // 7, period_days=7)
    decisions = pd.DataFrame(
        [_decision("t1", **inside), _decision("c1", arm="control", **inside)]
        + [_decision(f"x{i}", arm=("control" if i % 2 else "treated"), **crossing) for i in range(6)]
    )
    labelled = label_outcomes(decisions, _orders(("t1", "2024-01-01 10:00:00")), pd.Timestamp("2024-03-01"))
    assert labelled.set_index("user_id")["within_period"].to_dict() == {
        "t1": True, "c1": True, **{f"x{i}": False for i in range(6)}
    }  # fmt: skip
    report = outcome_report(labelled)
    assert report["counts"]["matured"] == 8 and report["counts"]["crossing_period"] == 6
    assert report["arms"]["treated"]["n"] == 1 and report["arms"]["control"]["n"] == 1
    assert report["live_quality"]["v1"]["n"] == 1
