"""Pictures of an outcome report (``churnguard.outcomes.outcome_report``): PNGs and a static page.

* ``uplift.png``: incremental retention (treated − control retention) per action and over all
  actions, with its confidence interval as a bar, the policy's assumed effect as a cross (its
  assumed won-back share x the control arm's churn rate) and zero marked;
* ``live_calibration.png``: per model version, the live calibration curve on the control rows
  (mean predicted vs observed churn rate over equal-mass deciles) against the diagonal, the live
  AUC with its CI in the legend;
* ``outcomes.html``: a small static page showing both and the key figures (every text escaped).

matplotlib is imported inside ``render`` (Agg backend, no display), so importing this module costs
nothing; only a package that renders needs matplotlib.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnguard.outcomes import key_figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UPLIFT_PNG = "uplift.png"
CALIBRATION_PNG = "live_calibration.png"
DRIFT_PNG = "drift.png"
PAGE = "outcomes.html"


def _figure(width: float, height: float) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _uplift_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    uplift = report["uplift"]
    return [("all actions", uplift["overall"]), *sorted(uplift["by_action"].items())]


def _uplift_figure(report: dict[str, Any]) -> Figure:
    rows = _uplift_rows(report)
    fig = _figure(7.0, 1.2 + 0.55 * len(rows))
    ax = fig.add_subplot()
    for y, (name, block) in enumerate(rows):
        ir = block["incremental_retention"]
        label = f"{name} (T {block['treated']['n']} / C {block['control']['n']})"
        ax.text(-0.02, y, label, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=8)
        if ir["value"] is None:
            ax.text(0.0, y, "  n/a: " + str(ir.get("reason", "")), va="center", fontsize=7, color="grey")
            continue
        ax.errorbar(
            ir["value"],
            y,
            xerr=[[ir["value"] - ir["ci_low"]], [ir["ci_high"] - ir["value"]]],
            fmt="o",
            color="tab:blue" if y else "black",
            capsize=4,
        )
        assumed, control_churn = block.get("assumed_won_back_share"), block["control"]["churn_rate"]
        if assumed is not None and control_churn is not None:
            ax.plot(assumed * control_churn, y, "x", color="tab:orange")
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_yticks([])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    confidence = round(100 * float(report["confidence"]))
    ax.plot([], [], "o", color="tab:blue", label=f"measured, {confidence}% CI")
    ax.plot([], [], "x", color="tab:orange", label="policy's assumption")
    fig.legend(loc="upper left", fontsize=7, frameon=False)
    ax.set_xlabel("incremental retention (treated − control retention)")
    ax.set_title("Measured uplift per action")
    fig.subplots_adjust(left=0.38, right=0.97, bottom=0.8 / fig.get_figheight(), top=0.88)
    return fig


def _auc_text(auc: dict[str, Any]) -> str:
    if auc["value"] is None:
        return "AUC n/a"
    return f"AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"


def _calibration_figure(report: dict[str, Any]) -> Figure:
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
    for version, quality in report["live_quality"].items():
        curve = quality["calibration"]
        if not curve:
            continue
        ax.plot(
            [b["mean_predicted"] for b in curve],
            [b["observed_rate"] for b in curve],
            "o-",
            label=f"{version}: {_auc_text(quality['roc_auc'])}, n={quality['n']}",
        )
    if not any(q["calibration"] for q in report["live_quality"].values()):
        ax.text(0.5, 0.5, "no matured control decisions yet", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted churn probability (decile)")
    ax.set_ylabel("observed churn rate")
    ax.set_title("Live calibration on the control arm")
    ax.legend(loc="upper left", fontsize=7)
    return fig


def _drift_figure(drift: dict[str, Any], threshold: float) -> Figure:
    """PSI of the score and of each feature group against the training customers, with the alarm line."""
    names = ["score", *sorted(drift["group_psi"], key=lambda g: -drift["group_psi"][g])]
    values = [drift["score_psi"], *(drift["group_psi"][g] for g in names[1:])]
    fig = _figure(7.5, 0.35 * len(names) + 1.6)
    ax = fig.add_subplot()
    ax.barh(names[::-1], values[::-1], color=["#1f77b4"] * (len(names) - 1) + ["#ff7f0e"])
    ax.axvline(threshold, color="crimson", linestyle="--", label=f"alarm threshold {threshold:g}")
    ax.set_xlabel("population stability index (PSI) against the training customers")
    ax.set_title(f"Drift of the scored batch ({drift['customers']:,} customers)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _page(report: dict[str, Any], with_drift: bool = False) -> str:
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{e(name)}</td><td>{value:.6g}</td></tr>" for name, value in key_figures(report).items()
    )
    counts = report["counts"]
    summary = (
        f"{counts['decisions']} decisions, {counts['matured']} matured, {counts['pending']} pending; "
        f"confidence {report['confidence']}."
    )
    drift_section = (
        f'<h2>Drift of the scored batch</h2><img src="{DRIFT_PNG}" alt="PSI per feature group">\n'
        if with_drift
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ChurnGuard outcomes</title>
<style>body{{font-family:sans-serif;margin:2em}}td{{padding:2px 12px}}img{{max-width:100%}}</style>
</head><body>
<h1>ChurnGuard outcomes</h1>
<p>{e(summary)}</p>
<h2>Measured uplift</h2><img src="{UPLIFT_PNG}" alt="incremental retention per action with CI">
<h2>Live calibration</h2><img src="{CALIBRATION_PNG}" alt="live calibration curve per model version">
{drift_section}<h2>Key figures</h2>
<table><tr><th>figure</th><th>value</th></tr>
{rows}
</table>
</body></html>
"""


def render(
    report: dict[str, Any],
    out_dir: Path | str,
    *,
    drift: dict[str, Any] | None = None,
    drift_threshold: float = 0.2,
) -> list[Path]:
    """Write ``uplift.png``, ``live_calibration.png`` and ``outcomes.html`` into ``out_dir``
    (created if needed), and ``drift.png`` when a batch summary's measured ``drift`` section is
    given; the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in ((UPLIFT_PNG, _uplift_figure), (CALIBRATION_PNG, _calibration_figure)):
        path = out / name
        make(report).savefig(path)
        written.append(path)
    with_drift = drift is not None and drift.get("score_psi") is not None
    if drift is not None and with_drift:
        _drift_figure(drift, drift_threshold).savefig(out / DRIFT_PNG)
        written.append(out / DRIFT_PNG)
    page = out / PAGE
    page.write_text(_page(report, with_drift), encoding="utf-8")
    written.append(page)
    return written
