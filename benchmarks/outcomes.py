"""Outcome benchmark (issue 10 §2): the outcome report on two data sets whose answer is known.

(a) **CDNOW replay, no treatment.** The served model (``artifacts/model``, trained with as-of
    1997-10-01 and a 39-week horizon) scores the offline TEST customers (the protocol's stratified
    split, reproduced from ``training.data``) at the cutoff through the serving route; the promotion
    policy builds its messages, a ``ControlPolicy`` draws the arms (fraction 0.5 here: a replay sends
    nothing, so a large control arm costs nothing and tightens both intervals), and the monitoring
    sample is added — decision rows exactly as the log holds them. Nothing is done to anyone, so the
    following 39 weeks of real orders are the outcomes: the measured incremental retention must be
    ~0 (its CI covering 0), and the live AUC on the control rows must match the offline test AUC in
    the model's metadata within its CI (the control rows are a random half of those customers).
(b) **Synthetic planted uplift.** The generator's events, scored with the test fixture model (trained
    on that generator) at its cutoff, decisions as above (control fraction 0.2), then
    ``plant_treatment_effect(won_back=0.3)``: the report must recover a won-back share of 0.3 within
    its CI (and an incremental retention whose CI covers 0.3 x the treated arm's churn rate
    without treatment).

Usage: ``python -m benchmarks.outcomes [--out DIR] [--synthetic-customers N]`` ->
``benchmarks/results/outcomes.{json,md}`` and the pictures in ``benchmarks/results/outcomes/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, ROOT, write_results
from churnguard.bundle import ModelBundle
from churnguard.control import ControlPolicy
from churnguard.datasets import generate_synthetic_events, plant_treatment_effect
from churnguard.decision_store import decisions_frame
from churnguard.decisions import as_of_instant, monitoring_sample, record_of
from churnguard.outcome_plots import render
from churnguard.outcomes import delong_auc, label_outcomes, newcombe_difference, outcome_report
from churnguard.promotions import PromotionPolicy, build_messages
from churnguard.scoring import ReasonsFor, ScoredBatch, score_customers
from churnguard.tabular import churn_labels, cohort, customer_events, to_epoch_seconds
from infra.model_fixtures import FIXTURE_MODEL

MODEL_DIR = ROOT / "artifacts" / "model"
# A replay decides at one historic cutoff; a 10-year campaign period holds every outcome window whole
# (the outcome job measures only windows inside their arm's period: churnguard.control).
REPLAY_PERIOD_DAYS = 3650
REPLAY_CONTROL = ControlPolicy(fraction=0.5, salt="outcomes-benchmark", period_days=REPLAY_PERIOD_DAYS)
SYNTHETIC_CONTROL = ControlPolicy(fraction=0.2, salt="outcomes-benchmark", period_days=REPLAY_PERIOD_DAYS)
SYNTHETIC_SEED = 11  # the fixture model was trained on seed 21: other customers
PLANT_SEED = 5
WON_BACK = 0.3
SWEEP_SALTS = 200
log = logging.getLogger("churnguard.bench")


# ---------------------------------------------------------------------------------------------
# Decisions as the log holds them, from a scoring run (shared with tests/unit/test_outcomes.py)
# ---------------------------------------------------------------------------------------------


def score_at(bundle: ModelBundle, events: pd.DataFrame, user_ids: np.ndarray, as_of: str) -> ScoredBatch:
    """Score ``user_ids`` at ``as_of`` through the serving route, on their events before it (and the
    profile columns the model's feature spec encodes)."""
    spec = bundle.spec
    profile_columns = tuple(
        c for c in (*spec.profile_categorical, *spec.profile_numeric) if c in events.columns
    )
    cutoff = pd.Timestamp(as_of).to_datetime64()
    before = events[(events["timestamp"].to_numpy() < cutoff) & events["user_id"].isin(pd.Index(user_ids))]
    customers = customer_events(before, profile_columns=profile_columns, user_ids=user_ids, as_of=as_of)
    return score_customers(
        bundle,
        list(customers.user_ids),
        customers.arrays,
        to_epoch_seconds(as_of),
        profile=customers.profile,
        reasons_for=ReasonsFor.NONE,
    )


def replay_decisions(
    scored: ScoredBatch, as_of: str, control: ControlPolicy, *, policy: PromotionPolicy | None = None
) -> pd.DataFrame:
    """The decision rows a scoring run at ``as_of`` logs: every acted-on customer in its arm, plus
    the monitoring sample (``churnguard.decisions``), as a frame of ``DECISION_COLUMNS``."""
    as_of_list = [as_of] * len(scored.user_ids)
    scored_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    messages = build_messages(
        scored, policy or PromotionPolicy(), source="replay", scored_at=scored_at, as_of=as_of_list
    )
    rows = [record_of(m, control.arm(m["user_id"], as_of_instant(m["as_of"])), control) for m in messages]
    rows += monitoring_sample(
        scored,
        control,
        acted_on={m["user_id"] for m in messages},
        source="replay",
        scored_at=scored_at,
        as_of=as_of_list,
    )
    return decisions_frame(rows)


def _shown(paths: list[Path]) -> list[str]:
    return [str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p) for p in paths]


def window_end(as_of: str, horizon_weeks: int) -> pd.Timestamp:
    return pd.Timestamp(as_of) + pd.Timedelta(weeks=horizon_weeks)


def synthetic_decisions(
    n_customers: int, *, seed: int, control: ControlPolicy, bundle: ModelBundle | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, str, int]:
    """Generator events and the decisions of the fixture model at its own cutoff on them:
    (events, decisions, as_of, horizon_weeks). Customers: everyone who ordered before the cutoff."""
    bundle = bundle or ModelBundle.from_directory(FIXTURE_MODEL)
    as_of, horizon = bundle.metadata.protocol.as_of, bundle.metadata.protocol.horizon_weeks
    events = generate_synthetic_events(n_customers, seed=seed)
    if window_end(as_of, horizon) > events["timestamp"].max() + pd.Timedelta(days=7):
        raise RuntimeError("the generator's data ends before the fixture model's outcome window does")
    scored = score_at(bundle, events, cohort(events, as_of), as_of)
    return events, replay_decisions(scored, as_of, control), as_of, horizon


# ---------------------------------------------------------------------------------------------
# (a) CDNOW replay
# ---------------------------------------------------------------------------------------------


def offline_test_customers(events: pd.DataFrame, bundle: ModelBundle) -> np.ndarray:
    """The offline TEST customers of the model's protocol: ``training.data.prepare``'s split
    (cohort, training labels, stratified split with the protocol's fraction and seed)."""
    from training.data import stratified_split

    protocol = bundle.metadata.protocol
    users = cohort(events, protocol.as_of)
    labels = churn_labels(events, users, protocol.as_of, protocol.horizon_weeks)
    _, test_idx = stratified_split(labels, protocol.test_fraction, protocol.seed)
    test: np.ndarray = users[test_idx]
    return test


def cdnow_replay(model_dir: Path, out: Path) -> dict[str, Any]:
    from training.data import load_cdnow_source

    started = time.perf_counter()
    bundle = ModelBundle.from_directory(model_dir)
    protocol = bundle.metadata.protocol
    events = load_cdnow_source().events
    test_users = offline_test_customers(events, bundle)
    offline = bundle.metadata.metrics["test"]
    expected_test = bundle.metadata.data.customers.test
    scored = score_at(bundle, events, test_users, protocol.as_of)
    decisions = replay_decisions(scored, protocol.as_of, REPLAY_CONTROL)
    labelled = label_outcomes(decisions, events, window_end(protocol.as_of, protocol.horizon_weeks))
    report = outcome_report(labelled)
    live = report["live_quality"][bundle.version]["roc_auc"]
    uplift = report["uplift"]["overall"]["incremental_retention"]
    offline_auc = float(offline["roc_auc"])
    return {
        "model_version": bundle.version,
        "protocol": {"as_of": protocol.as_of, "horizon_weeks": protocol.horizon_weeks},
        "control_fraction": REPLAY_CONTROL.fraction,
        "test_customers": len(test_users),
        "test_customers_in_metadata": expected_test,
        "offline_test_auc": offline_auc,
        "live_auc": live,
        "offline_auc_inside_live_ci": bool(live["ci_low"] <= offline_auc <= live["ci_high"]),
        "incremental_retention": uplift,
        "uplift_ci_covers_zero": bool(uplift["ci_low"] <= 0.0 <= uplift["ci_high"]),
        "arm_sweep": arm_sweep(scored, events, offline_auc, protocol.as_of, protocol.horizon_weeks),
        "pictures": _shown(render(report, out / "cdnow_replay")),
        "seconds": round(time.perf_counter() - started, 1),
        "report": report,
    }


def arm_sweep(
    scored: ScoredBatch, events: pd.DataFrame, offline_auc: float, as_of: str, horizon_weeks: int
) -> dict[str, Any]:
    """How often the intervals cover the truth over ``SWEEP_SALTS`` re-draws of the arms (salts
    ``sweep-0``, ``sweep-1``, ...; same customers, scores and outcomes): the replay's one draw is one
    sample of this. Uplift: the truth is 0 (nothing was sent), nominal coverage 95%. Live AUC: the
    offline test AUC (Keras-evaluated, on all test customers, of which the control rows are a half:
    not an independent truth, so coverage above 95% is expected)."""
    z = NormalDist().inv_cdf(0.975)
    users = np.asarray(scored.user_ids, dtype=object).astype(str)
    labels = churn_labels(events, users, as_of, horizon_weeks)
    probs = scored.churn_probability.astype(np.float64)
    messages = build_messages(
        scored, PromotionPolicy(), source="replay", scored_at="", as_of=[as_of] * len(users)
    )
    acted = pd.Index(users).isin([m["user_id"] for m in messages])
    instant = as_of_instant(as_of)
    uplifts, uplift_covers, aucs, auc_covers = [], 0, [], 0
    for i in range(SWEEP_SALTS):
        policy = ControlPolicy(
            fraction=REPLAY_CONTROL.fraction, salt=f"sweep-{i}", period_days=REPLAY_PERIOD_DAYS
        )
        control = np.array([policy.arm(u, instant) == "control" for u in users])
        t, c = acted & ~control, acted & control
        d, low, high = newcombe_difference(
            int(labels[c].sum()), int(c.sum()), int(labels[t].sum()), int(t.sum()), z
        )
        uplifts.append(d)
        uplift_covers += low <= 0.0 <= high
        auc, variance = delong_auc(labels[control], probs[control])
        aucs.append(auc)
        auc_covers += abs(auc - offline_auc) <= z * math.sqrt(variance)
    return {
        "draws": SWEEP_SALTS,
        "uplift_ci_covers_zero": uplift_covers / SWEEP_SALTS,
        "uplift_mean": float(np.mean(uplifts)),
        "uplift_sd": float(np.std(uplifts, ddof=1)),
        "live_auc_ci_covers_offline": auc_covers / SWEEP_SALTS,
        "live_auc_mean": float(np.mean(aucs)),
        "live_auc_sd": float(np.std(aucs, ddof=1)),
    }


# ---------------------------------------------------------------------------------------------
# (b) Synthetic planted uplift
# ---------------------------------------------------------------------------------------------


def planted(n_customers: int, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    events, decisions, as_of, horizon = synthetic_decisions(
        n_customers, seed=SYNTHETIC_SEED, control=SYNTHETIC_CONTROL
    )
    until = window_end(as_of, horizon)
    before = outcome_report(label_outcomes(decisions, events, until))
    treated_churn_untreated = before["uplift"]["overall"]["treated"]["churn_rate"]
    treated_events = plant_treatment_effect(events, decisions, won_back=WON_BACK, seed=PLANT_SEED)
    report = outcome_report(label_outcomes(decisions, treated_events, until))
    overall = report["uplift"]["overall"]
    share, uplift = overall["won_back_share"], overall["incremental_retention"]
    expected_uplift = WON_BACK * treated_churn_untreated
    return {
        "customers": n_customers,
        "seed": SYNTHETIC_SEED,
        "plant_seed": PLANT_SEED,
        "control_fraction": SYNTHETIC_CONTROL.fraction,
        "as_of": as_of,
        "horizon_weeks": horizon,
        "planted_won_back_share": WON_BACK,
        "won_back_share": share,
        "won_back_inside_ci": bool(share["ci_low"] <= WON_BACK <= share["ci_high"]),
        "treated_churn_rate_without_treatment": treated_churn_untreated,
        "expected_incremental_retention": expected_uplift,
        "incremental_retention": uplift,
        "expected_uplift_inside_ci": bool(uplift["ci_low"] <= expected_uplift <= uplift["ci_high"]),
        "incremental_retention_before_planting": before["uplift"]["overall"]["incremental_retention"],
        "pictures": _shown(render(report, out / "synthetic_planted")),
        "seconds": round(time.perf_counter() - started, 1),
        "report": report,
    }


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------


def _ci(block: dict[str, Any]) -> str:
    if block.get("value") is None:
        return f"n/a ({block.get('reason', '')})"
    return f"{block['value']:.4f} [{block['ci_low']:.4f}, {block['ci_high']:.4f}]"


def _covers(block: dict[str, Any], value: float) -> bool | None:
    if block.get("value") is None:
        return None
    return bool(block["ci_low"] <= value <= block["ci_high"])


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    a, b = result["cdnow_replay"], result["synthetic_planted"]
    counts_a, counts_b = a["report"]["counts"], b["report"]["counts"]
    offline = a["offline_test_auc"]
    sweep = a["arm_sweep"]
    expected = b["expected_incremental_retention"]
    before = b["incremental_retention_before_planting"]
    lines = [
        "# Outcome benchmark (issue 10 §2)",
        "",
        f"`{result['command']}` — {result['seconds']} s. 95% intervals: incremental retention Newcombe "
        "hybrid score; won-back share 1 − Katz log risk ratio; AUC DeLong.",
        "",
        f"## (a) CDNOW replay, no treatment (model `{a['model_version']}`)",
        "",
        f"Offline test customers scored at {a['protocol']['as_of']} ({a['test_customers']}; metadata: "
        f"{a['test_customers_in_metadata']}), control fraction {a['control_fraction']}, outcomes from the "
        f"following {a['protocol']['horizon_weeks']} weeks of real orders. Decisions: "
        f"{counts_a['treated']} treated, {counts_a['control']} acted-on control, "
        f"{counts_a['monitoring_sample']} monitoring sample.",
        "",
        "| figure | measured (95% CI) | expected | inside |",
        "|---|---|---|---|",
        _row("incremental retention", _ci(a["incremental_retention"]), 0, a["uplift_ci_covers_zero"]),
        _row(
            "live ROC-AUC (all control rows)",
            _ci(a["live_auc"]),
            f"offline test {offline:.4f}",
            a["offline_auc_inside_live_ci"],
        ),
        "",
        f"Over {sweep['draws']} re-draws of the arms (other salts; same customers and outcomes): the uplift "
        f"CI covers 0 in {sweep['uplift_ci_covers_zero']:.1%} (mean {sweep['uplift_mean']:+.4f}, sd "
        f"{sweep['uplift_sd']:.4f}); the live-AUC CI covers the offline AUC in "
        f"{sweep['live_auc_ci_covers_offline']:.1%} (mean {sweep['live_auc_mean']:.4f}, "
        f"sd {sweep['live_auc_sd']:.4f}). The table's draw uses the salt fixed before the first run "
        f"(`{REPLAY_CONTROL.salt}`); it is one sample of that distribution.",
        "",
        f"## (b) Synthetic planted uplift ({b['customers']} customers, seed {b['seed']}, fixture model)",
        "",
        f"Decisions: {counts_b['treated']} treated, {counts_b['control']} acted-on control, "
        f"{counts_b['monitoring_sample']} monitoring sample; control fraction {b['control_fraction']}.",
        "",
        "| figure | measured (95% CI) | planted / expected | inside |",
        "|---|---|---|---|",
        _row(
            "won-back share", _ci(b["won_back_share"]), b["planted_won_back_share"], b["won_back_inside_ci"]
        ),
        _row(
            "incremental retention",
            _ci(b["incremental_retention"]),
            f"{expected:.4f} ({WON_BACK} x treated churn {b['treated_churn_rate_without_treatment']:.4f})",
            b["expected_uplift_inside_ci"],
        ),
        _row("incremental retention before planting", _ci(before), 0, _covers(before, 0.0)),
        "",
        "Pictures: " + ", ".join(f"`{p}`" for p in a["pictures"] + b["pictures"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--synthetic-customers", type=int, default=50_000)
    args = parser.parse_args(argv)
    if not (args.model_dir / "metadata.json").exists():
        raise SystemExit(f"no model in {args.model_dir}: run `make train` first")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    pictures = args.out / "outcomes"
    result = {
        "command": "python -m benchmarks.outcomes",
        "cdnow_replay": cdnow_replay(args.model_dir, pictures),
        "synthetic_planted": planted(args.synthetic_customers, pictures),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_results("outcomes", result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
