"""Outcomes of promotion decisions (issue 10 §2): what customers did afterwards, measured uplift and
the model's live quality. The pure core of the outcome job (pandas + numpy; no I/O, no AWS).

**Label** (``label_outcomes``): the training label, per decision. A decision's outcome window is
``[as_of, as_of + horizon_weeks)`` (``horizon_weeks`` x 7 days, the decision's own row values);
``churned`` = 1 when the customer placed no ``order`` in it, 0 when they did — exactly
``churnguard.tabular.churn_labels``, vectorised with a per-row as-of. An order at ``as_of`` itself
counts (retained); one at ``as_of + horizon`` does not. A decision is **matured** once its whole
window is observed (``as_of + horizon <= observed_until``); only matured decisions get a label
(``churned`` is <NA> while pending: an early order would be known, an absence not yet, so counting
pending rows would bias retention upwards).

**Uplift** (``outcome_report``), on acted-on decisions (``action`` != ``none``) only, treated vs
control (randomised by ``ControlPolicy``, so the arms differ only by chance and the action):

* incremental retention = retention(treated) − retention(control) = churn(control) − churn(treated),
  with **Newcombe's hybrid score interval** (method 10 of Newcombe 1998: Wilson score intervals of
  each proportion, combined by the square-and-add rule). Chosen over Wald because it keeps its
  coverage for small arms and rates near 0 or 1 (a 10% control arm of a few hundred high-risk
  customers with an 80% churn rate is the normal case here), never leaves [-1, 1], needs no
  resampling (deterministic, cheap), and needs only the normal quantile (no scipy);
* won-back share = incremental retention / churn(control) = 1 − churn(treated) / churn(control):
  the share of would-be churners the action kept (what ``Action.uplift`` assumes; the assumed value
  is reported next to it). CI: 1 − the **Katz log interval** of the risk ratio churn(T)/churn(C)
  (delta method on log RR, se² = 1/x_T − 1/n_T + 1/x_C − 1/n_C, x = churners). Undefined (None,
  with the reason) when either arm has no churner;
* cost = sum of ``action_cost`` over treated matured decisions (what was spent on them);
  incremental retained customers = incremental retention × treated matured decisions;
  **net value** = incremental retention × sum of ``customer_value`` over treated matured decisions
  − cost: the value at stake of the customers the actions kept (each treated customer's
  ``customer_value`` weighted by the average won-back probability), minus what the actions cost.
  Its CI is the incremental retention's mapped through that (linear) formula; the costs and values
  are taken as known. Control decisions cost nothing (nothing was sent).

Pooling caveat: rows of every period are pooled. When the control fraction changed between periods
whose churn rates differ, the pooled difference can mix them (Simpson); the per-period
``control_fraction`` is in the log for a stratified analysis if that ever matters.

**Live quality** (per ``model_version``), on *every* matured control decision — the monitoring sample
(``action`` = ``none``) and the acted-on control rows: untreated, and together a uniform random sample
of the scored customers, so an unbiased check of the model on today's customers:

* ROC-AUC (churned = positive class, as in training) with a **DeLong** CI (fast midrank algorithm,
  Sun & Xu 2014; normal interval on the AUC scale clipped to [0, 1], as pROC does) — needs at least
  two customers of each class, else None with the reason;
* log-loss (probabilities clipped to [1e-15, 1 − 1e-15]), Brier score, base churn rate;
* ECE and the calibration curve over 10 equal-mass bins (deciles of the predicted probability),
  the definition of ``training.evaluate.expected_calibration_error`` (``expected_calibration_error``
  here is the same function, for the Lambda side, which cannot import ``training``).

**Which decisions count**: matured ones whose window ends inside the campaign period their arm was
drawn for (``within_period``). A window that runs into the next period may have seen the customer
re-drawn into the other arm (a control customer sent an offer); whether a window crosses depends only
on its dates, never on the outcome, so leaving those out biases nothing (``counts.crossing_period``).
Treated means assigned (intention to treat): a promotion the queue refused still counts as treated.

Everything ``outcome_report`` returns is JSON-ready: Python floats and ints, and None (never NaN)
where a figure is undefined, with a ``reason`` next to it.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from churnguard.decisions import NO_ACTION
from churnguard.event_types import EVENT_TYPE_ORDER

REPORT_SCHEMA = "churnguard.outcomes/v1"
CALIBRATION_BINS = 10
_LOG_LOSS_EPS = 1e-15


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def _utc_naive(values: pd.Series) -> pd.Series:
    """Instants (ISO-8601 strings, or datetimes: tz-aware, or naive = UTC) as naive UTC ``datetime64[ns]``."""
    series = pd.Series(values).reset_index(drop=True)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(series.dtype):
        series = pd.to_datetime(series, utc=True, format="ISO8601").dt.tz_localize(None)
    return series.astype("datetime64[ns]")


def _utc_naive_scalar(value: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _keys(user_ids: pd.Series) -> pd.Series:
    """Customer ids as text of one dtype on both sides of a join (pandas infers ``str`` for text
    but ``object`` for an empty column, and merge_asof refuses to join the two)."""
    return pd.Series(user_ids.astype(str).to_numpy(dtype=object), dtype=object)


def _first_order_from(users: pd.Series, starts: pd.Series, orders: pd.DataFrame) -> np.ndarray:
    """Per (user, start): the first order of that user at or after ``start`` (NaT if none)."""
    left = pd.DataFrame({"user_id": _keys(users), "t": starts.to_numpy(), "_row": np.arange(len(users))})
    right = pd.DataFrame(
        {"user_id": _keys(orders["user_id"]), "t": _utc_naive(orders["timestamp"]).to_numpy()}
    ).dropna(subset=["t"])
    right["first_order_at"] = right["t"]
    merged = pd.merge_asof(
        left.sort_values("t", kind="stable"),
        right.sort_values("t", kind="stable"),
        on="t",
        by="user_id",
        direction="forward",
        allow_exact_matches=True,  # an order exactly at as_of is inside the window
    )
    first: np.ndarray = merged.sort_values("_row")["first_order_at"].to_numpy(dtype="datetime64[ns]")
    return first


def label_outcomes(
    decisions: pd.DataFrame, orders: pd.DataFrame, observed_until: pd.Timestamp
) -> pd.DataFrame:
    """The decisions with their outcomes (see the module doc for the definitions).

    ``decisions``: rows of the decision log (at least ``user_id``, ``as_of``, ``horizon_weeks``; the
    report uses the other columns). ``orders``: ``user_id`` and ``timestamp`` (UTC; naive = UTC); an
    ``event_type`` column, when present, is filtered to ``order`` here, so a whole canonical event
    frame may be passed. ``observed_until``: the instant up to which events are known (exclusive).

    Adds ``window_end`` (as_of + horizon, naive UTC), ``matured`` (bool), ``first_order_at`` (the
    first order in ``[as_of, observed_until)`` seen from as_of, NaT if none; naive UTC) and
    ``churned`` (nullable Int8: 1 churned, 0 retained, <NA> pending). One ``merge_asof`` over all
    rows: 100k decisions against millions of orders in about a second.
    """
    if "event_type" in orders.columns:
        orders = orders.loc[orders["event_type"].to_numpy() == EVENT_TYPE_ORDER, ["user_id", "timestamp"]]
    frame = decisions.reset_index(drop=True).copy()
    as_of = _utc_naive(frame["as_of"])
    window_end = as_of + pd.to_timedelta(frame["horizon_weeks"].astype("int64") * 7, unit="D")
    until = _utc_naive_scalar(observed_until)
    matured = (window_end <= until).to_numpy()
    first = _first_order_from(frame["user_id"], as_of, orders)
    first = np.where(first < np.datetime64(until, "ns"), first, np.datetime64("NaT", "ns"))
    retained = ~np.isnat(first) & (first < window_end.to_numpy())
    churned = pd.array(np.where(retained, 0, 1), dtype="Int8")
    churned[~matured] = pd.NA
    frame["window_end"] = window_end.to_numpy()
    frame["within_period"] = _within_period(frame, window_end)
    frame["matured"] = matured
    frame["first_order_at"] = first
    frame["churned"] = churned
    return frame


def _within_period(frame: pd.DataFrame, window_end: pd.Series) -> np.ndarray:
    """Whether each decision's outcome window ends inside the campaign period its arm was drawn for:
    only then can no re-draw have treated a control customer (or held out a treated one) inside it."""
    if "period_days" not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    days = (frame["period"].astype("int64") + 1) * frame["period_days"].astype("int64")
    period_end = pd.Timestamp(0) + pd.to_timedelta(days, unit="D")
    return np.asarray((window_end <= period_end).to_numpy(), dtype=bool)


# ---------------------------------------------------------------------------------------------
# Statistics (pure numpy; the normal quantile from the standard library)
# ---------------------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``successes / n`` (n > 0)."""
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, z: float) -> tuple[float, float, float]:
    """p1 − p2 and Newcombe's hybrid score interval (method 10) for it (n1, n2 > 0)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def delong_auc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """ROC-AUC (label 1 = positive) and DeLong's variance of it; needs two of each class."""
    positives, negatives = probs[labels == 1], probs[labels == 0]
    m, n = len(positives), len(negatives)
    if m < 2 or n < 2:
        raise ValueError("DeLong's variance needs at least two customers of each class")
    combined = midranks(np.concatenate([positives, negatives]))
    auc = (combined[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    v10 = (combined[:m] - midranks(positives)) / n  # per positive: share of negatives ranked below
    v01 = 1.0 - (combined[m:] - midranks(negatives)) / m  # per negative: share of positives above
    variance = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    return float(auc), variance


def _decile_chunks(probs: np.ndarray, bins: int) -> list[np.ndarray]:
    order = np.argsort(probs, kind="stable")
    return [chunk for chunk in np.array_split(order, bins) if len(chunk)]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Equal-mass ECE: weighted |mean(p) - mean(y)| over probability deciles (as in training)."""
    total = 0.0
    for chunk in _decile_chunks(probs, bins):
        total += len(chunk) * abs(float(np.mean(probs[chunk])) - float(np.mean(labels[chunk])))
    return total / max(len(probs), 1)


def calibration_curve(
    labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, Any]]:
    """The ECE's bins: mean predicted probability, observed churn rate and size of each."""
    return [
        {
            "mean_predicted": float(np.mean(probs[chunk])),
            "observed_rate": float(np.mean(labels[chunk])),
            "n": len(chunk),
        }
        for chunk in _decile_chunks(probs, bins)
    ]


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs.astype(np.float64), _LOG_LOSS_EPS, 1.0 - _LOG_LOSS_EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _undefined(reason: str) -> dict[str, Any]:
    return {"value": None, "ci_low": None, "ci_high": None, "reason": reason}


def _arm_stats(rows: pd.DataFrame) -> dict[str, Any]:
    n = len(rows)
    churned = int(rows["churned"].astype("int64").sum()) if n else 0
    return {
        "n": n,
        "churned": churned,
        "churn_rate": churned / n if n else None,
        "retention": 1.0 - churned / n if n else None,
    }


def _won_back_share(t: dict[str, Any], c: dict[str, Any], z: float) -> dict[str, Any]:
    """1 − churn(T)/churn(C), with 1 − the Katz log interval of the risk ratio."""
    if not t["n"] or not c["n"]:
        return _undefined("an arm has no matured decision")
    if not c["churned"]:
        return _undefined("no churner in the control arm: nothing to win back")
    if not t["churned"]:
        return _undefined("no churner in the treated arm: the log risk-ratio interval is undefined")
    ratio = t["churn_rate"] / c["churn_rate"]
    se = math.sqrt(1 / t["churned"] - 1 / t["n"] + 1 / c["churned"] - 1 / c["n"])
    return {
        "value": 1.0 - ratio,
        "ci_low": 1.0 - ratio * math.exp(z * se),
        "ci_high": 1.0 - ratio * math.exp(-z * se),
        "method": "katz_log_risk_ratio",
    }


def _uplift_block(rows: pd.DataFrame, z: float) -> dict[str, Any]:
    """Treated vs control among matured acted-on ``rows`` (one action, or all of them)."""
    treated, control = rows[rows["arm"] == "treated"], rows[rows["arm"] == "control"]
    t, c = _arm_stats(treated), _arm_stats(control)
    cost = float(treated["action_cost"].sum())
    value_at_stake = float(treated["customer_value"].sum())
    block: dict[str, Any] = {
        "treated": t,
        "control": c,
        "assumed_won_back_share": float(treated["action_uplift"].mean()) if t["n"] else None,
        "cost": cost,
        "treated_customer_value": value_at_stake,
    }
    if not t["n"] or not c["n"]:
        reason = "an arm has no matured decision"
        block["incremental_retention"] = _undefined(reason)
        block["incremental_retained_customers"] = _undefined(reason)
        block["net_value"] = _undefined(reason)
        block["won_back_share"] = _undefined(reason)
        return block
    # retention difference = churn(control) − churn(treated)
    d, low, high = newcombe_difference(c["churned"], c["n"], t["churned"], t["n"], z)
    block["incremental_retention"] = {
        "value": d,
        "ci_low": low,
        "ci_high": high,
        "method": "newcombe_hybrid_score",
    }
    block["incremental_retained_customers"] = {
        "value": d * t["n"],
        "ci_low": low * t["n"],
        "ci_high": high * t["n"],
    }
    block["net_value"] = {
        "value": d * value_at_stake - cost,
        "ci_low": low * value_at_stake - cost,
        "ci_high": high * value_at_stake - cost,
    }
    block["won_back_share"] = _won_back_share(t, c, z)
    return block


def _auc_block(labels: np.ndarray, probs: np.ndarray, z: float) -> dict[str, Any]:
    positives = int(labels.sum())
    if positives < 2 or len(labels) - positives < 2:
        retained = len(labels) - positives
        return _undefined(
            f"needs at least 2 churned and 2 retained customers (has {positives} and {retained})"
        )
    auc, variance = delong_auc(labels, probs)
    se = math.sqrt(max(variance, 0.0))
    return {
        "value": auc,
        "ci_low": max(0.0, auc - z * se),
        "ci_high": min(1.0, auc + z * se),
        "se": se,
        "method": "delong",
    }


def _quality_block(rows: pd.DataFrame, z: float) -> dict[str, Any]:
    """Live quality of one model version on its matured control rows."""
    labels = rows["churned"].astype("int64").to_numpy()
    probs = rows["churn_probability"].to_numpy(dtype=np.float64)
    n = len(labels)
    block: dict[str, Any] = {
        "n": n,
        "monitoring_sample": int((rows["action"] == NO_ACTION).sum()),
        "acted_on_control": int((rows["action"] != NO_ACTION).sum()),
        "churned": int(labels.sum()),
        "base_churn_rate": float(labels.mean()) if n else None,
        "mean_predicted": float(probs.mean()) if n else None,
        "roc_auc": _auc_block(labels, probs, z),
    }
    if not n:
        reason = "no matured control decision"
        return {**block, "log_loss": None, "brier": None, "ece": None, "calibration": [], "reason": reason}
    return {
        **block,
        "log_loss": log_loss(labels, probs),
        "brier": float(np.mean((probs - labels) ** 2)),
        "ece": expected_calibration_error(labels, probs),
        "calibration": calibration_curve(labels, probs),
    }


def _within(labelled: pd.DataFrame) -> pd.Series:
    """``within_period`` (``label_outcomes``); every row when the frame has no such column."""
    if "within_period" not in labelled.columns:
        return pd.Series(True, index=labelled.index)
    return labelled["within_period"].astype(bool)


def _counts(labelled: pd.DataFrame) -> dict[str, int]:
    acted = labelled["action"] != NO_ACTION
    matured = labelled["matured"].astype(bool)
    crossing = ~_within(labelled)
    return {
        "decisions": len(labelled),
        "matured": int(matured.sum()),
        "pending": int((~matured).sum()),
        # matured, but the window runs past the arm's period (a re-draw may have crossed it over):
        # left out of the uplift and the live quality
        "crossing_period": int((matured & crossing).sum()),
        "treated": int((acted & (labelled["arm"] == "treated")).sum()),
        "control": int((acted & (labelled["arm"] == "control")).sum()),
        "monitoring_sample": int((~acted).sum()),
        "matured_treated": int((matured & acted & (labelled["arm"] == "treated")).sum()),
        "matured_control": int((matured & acted & (labelled["arm"] == "control")).sum()),
        "matured_monitoring_sample": int((matured & ~acted).sum()),
    }


def outcome_report(labelled: pd.DataFrame, *, confidence: float = 0.95) -> dict[str, Any]:
    """The outcome report of ``label_outcomes``' frame (definitions in the module doc).

    ``counts`` (decisions, matured, pending, per arm); ``arms`` (matured acted-on rows per arm: n,
    churned, churn rate, retention); ``uplift`` (``overall`` and ``by_action``: both arms, incremental
    retention with its CI, won-back share with its CI, cost, incremental retained customers, net
    value with its CI, the policy's assumed won-back share); ``live_quality`` per model version.
    Figures that cannot be computed are None with a ``reason``; the result is JSON-ready (no NaN).
    """
    z = _z(confidence)
    matured = labelled[labelled["matured"].astype(bool) & _within(labelled)]
    acted = matured[matured["action"] != NO_ACTION]
    control = matured[matured["arm"] == "control"]
    report = {
        "schema": REPORT_SCHEMA,
        "confidence": confidence,
        "counts": _counts(labelled),
        "arms": {arm: _arm_stats(acted[acted["arm"] == arm]) for arm in ("treated", "control")},
        "uplift": {
            "overall": _uplift_block(acted, z),
            "by_action": {str(a): _uplift_block(rows, z) for a, rows in acted.groupby("action", sort=True)},
        },
        "live_quality": {
            str(version): _quality_block(control[control["model_version"] == version], z)
            for version in sorted(matured["model_version"].astype(str).unique())
        },
    }
    ready: dict[str, Any] = json_ready(report)
    return ready


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and every NaN or infinity as None."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# Key figures for CloudWatch
# ---------------------------------------------------------------------------------------------


def _put(figures: dict[str, float], name: str, value: Any) -> None:
    if isinstance(value, int | float) and math.isfinite(value):
        figures[name] = float(value)


def key_figures(report: dict[str, Any]) -> dict[str, float]:
    """The report's headline numbers as metric name -> value; undefined figures are left out.

    Counts: ``Decisions``, ``MaturedDecisions``, ``PendingDecisions``, ``TreatedDecisions`` and
    ``ControlDecisions`` (acted-on rows per arm, matured or not), ``MonitoringDecisions``. Uplift
    (all actions): ``IncrementalRetention`` (+ ``CILow``/``CIHigh``), ``WonBackShare`` (+ CI),
    ``NetValue``, ``ActionCost``. Per model version ``<Name>:<model_version>`` — the part after the
    colon is the model-version dimension: ``LiveAUC`` (+ ``CILow``/``CIHigh``), ``LiveLogLoss``,
    ``LiveECE``, ``LiveControlDecisions``, ``LiveBaseChurnRate``.
    """
    figures: dict[str, float] = {}
    counts = report["counts"]
    for name, key in (
        ("Decisions", "decisions"),
        ("MaturedDecisions", "matured"),
        ("PendingDecisions", "pending"),
        ("TreatedDecisions", "treated"),
        ("ControlDecisions", "control"),
        ("MonitoringDecisions", "monitoring_sample"),
    ):
        _put(figures, name, counts[key])
    overall = report["uplift"]["overall"]
    for name, key in (("IncrementalRetention", "incremental_retention"), ("WonBackShare", "won_back_share")):
        _put(figures, name, overall[key]["value"])
        _put(figures, f"{name}CILow", overall[key]["ci_low"])
        _put(figures, f"{name}CIHigh", overall[key]["ci_high"])
    _put(figures, "NetValue", overall["net_value"]["value"])
    _put(figures, "ActionCost", overall["cost"])
    for version, quality in report["live_quality"].items():
        _put(figures, f"LiveAUC:{version}", quality["roc_auc"]["value"])
        _put(figures, f"LiveAUCCILow:{version}", quality["roc_auc"]["ci_low"])
        _put(figures, f"LiveAUCCIHigh:{version}", quality["roc_auc"]["ci_high"])
        _put(figures, f"LiveLogLoss:{version}", quality["log_loss"])
        _put(figures, f"LiveECE:{version}", quality["ece"])
        _put(figures, f"LiveControlDecisions:{version}", quality["n"])
        _put(figures, f"LiveBaseChurnRate:{version}", quality["base_churn_rate"])
    return figures
