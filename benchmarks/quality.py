"""Quality benchmark: the exported TFLite model against real baselines, on any event log and protocol.

Data: ``--data cdnow`` (default), ``tafeng``, or a directory of event files in the canonical schema;
several, comma-separated, go into one results file. Protocol: the dataset's default
(``training.data.NAMED_DATASETS``; for a directory the latest cutoff whose 39-week horizon fits in
the data), overridden by ``--as-of``, ``--horizon-weeks`` and ``--weeks`` (one value for every
dataset, or a comma list with one entry per dataset; an empty entry keeps that dataset's default).
Churn = no order in ``[as_of, as_of + horizon)``; stratified 80/20 split by customer, 15% of train as
validation. ``--splits K`` re-draws that split K times (split seeds base, base + 1, ...; the base is
the protocol's seed, 42) and trains one model per draw; K=1 is the protocol's own split.

Every choice (hyperparameters, thresholds, calibration, LightGBM tuning, the logistic C) uses the
validation slice; each test split is scored once, for the table.

Usage: ``python -m benchmarks.quality [--data cdnow,tafeng] [--splits 5]`` (``make bench-quality``)
-> benchmarks/results/quality.{json,md} (``--out DIR`` for a trial run).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, write_results
from churnguard.bundle import ModelBundle
from churnguard.datasets import DatasetError
from churnguard.events import EventLogError
from churnguard.model_metadata import ModelMetadata
from churnguard.scoring import ReasonsFor, score_customers
from churnguard.tabular import customer_events, to_epoch_seconds
from training.baselines import (
    METRICS,
    PairedDraw,
    Scores,
    baseline_scores,
    method_metrics,
    paired_bootstrap_auc_diff,
)
from training.data import (
    DEFAULT_WEEKS,
    NAMED_DATASETS,
    EventSource,
    PreparedData,
    Protocol,
    check_protocol_fits,
    default_as_of,
    default_protocol,
    feature_config_for,
    load_named_source,
    prepare,
)

MODEL_DIR = Path("artifacts/bench-model")
OURS = "churnguard_tflite"
log = logging.getLogger("churnguard.bench")

# ---------------------------------------------------------------------------------------------
# Our model, through the serving route.
# ---------------------------------------------------------------------------------------------


def score_exported(bundle: ModelBundle, events: pd.DataFrame, user_ids: np.ndarray, as_of: str) -> np.ndarray:
    """P(churn) of ``user_ids`` at ``as_of`` as the serving route computes it: the customers' events
    and their profile columns (the ones the model's feature spec encodes) through ``score_customers``."""
    spec = bundle.spec
    profile_columns = tuple(
        c for c in (*spec.profile_categorical, *spec.profile_numeric) if c in events.columns
    )
    customers = customer_events(
        events[events["user_id"].isin(pd.Index(user_ids))],
        profile_columns=profile_columns,
        user_ids=user_ids,
        as_of=as_of,
    )
    scored = score_customers(
        bundle,
        list(customers.user_ids),
        customers.arrays,
        to_epoch_seconds(as_of),
        profile=customers.profile,
        reasons_for=ReasonsFor.NONE,
    )
    return scored.churn_probability  # float32, as served


def churnguard_tflite(data: PreparedData, model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The exported float32 TFLite model (hash-checked bundle), fed raw events as serving is."""
    bundle = ModelBundle.from_directory(model_dir)
    return tuple(  # type: ignore[return-value]
        score_exported(bundle, data.source.events, split.user_ids, data.protocol.as_of)
        for split in (data.validation, data.test)
    )


def score_all(data: PreparedData, model_dir: Path) -> tuple[Scores, dict[str, Any]]:
    """(validation, test) probabilities of our model and every baseline, and LightGBM's chosen params."""
    baselines, lgb_params = baseline_scores(data)
    return {OURS: churnguard_tflite(data, model_dir), **baselines}, lgb_params


# ---------------------------------------------------------------------------------------------
# Datasets and protocols.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRun:
    """One dataset under one protocol: its results key, where train.py finds it, its events."""

    key: str  # "cdnow", "tafeng", or the directory's name
    train_args: tuple[str, ...]  # how training.train loads the same data
    source: EventSource
    protocol: Protocol  # seed = the base split seed
    weeks: int


def _per_dataset(raw: str | None, n: int, flag: str) -> list[str | None]:
    """``--flag a`` for every dataset, or ``--flag a,b`` one per dataset ('' keeps the default)."""
    if raw is None:
        return [None] * n
    values = [v.strip() or None for v in raw.split(",")]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise SystemExit(f"{flag}: {len(values)} values for {n} datasets (give one, or one per dataset)")
    return values


def resolve_dataset(data: str, as_of: str | None, horizon_weeks: str | None, weeks: str | None) -> DatasetRun:
    """Load ``data`` (a name in NAMED_DATASETS or a directory) with its default protocol and weeks,
    then apply the overrides given."""
    source = load_named_source(data)
    if data in NAMED_DATASETS:
        key, train_args = data, ("--dataset", data)
        protocol, default_weeks = default_protocol(data)
        horizon = int(horizon_weeks) if horizon_weeks else protocol.horizon_weeks
        protocol = replace(protocol, as_of=as_of or protocol.as_of, horizon_weeks=horizon)
    else:  # a directory: train.py's defaults for event files
        # "dir:" keeps a folder named like a published dataset from filling that dataset's keys
        key, train_args, default_weeks = f"dir:{Path(data).resolve().name}", ("--train", data), DEFAULT_WEEKS
        horizon = int(horizon_weeks) if horizon_weeks else DEFAULT_WEEKS
        protocol = Protocol(as_of=as_of or default_as_of(source.events, horizon), horizon_weeks=horizon)
    check_protocol_fits(source.events, protocol)
    return DatasetRun(key, train_args, source, protocol, int(weeks) if weeks else default_weeks)


def split_seeds(base: int, k: int) -> list[int]:
    """The K split seeds: the protocol's own seed first, so K=1 is the protocol's split."""
    return [base + i for i in range(k)]


def model_dir_for(base: Path, run: DatasetRun, seed: int, *, single: bool) -> Path:
    """``base`` itself for a single model (one dataset, one split, as before); else one directory per
    dataset and split seed under it."""
    return base if single else base / f"{run.key}-seed{seed}"


def protocol_section(run: DatasetRun, data: PreparedData, seeds: list[int]) -> dict[str, Any]:
    """The protocol block of a dataset: what was asked, the periods it means, the cohort it gives."""
    p = run.protocol
    as_of = pd.Timestamp(p.as_of)
    start = pd.Timestamp(run.source.events["timestamp"].min()).normalize()
    labels = np.concatenate([data.train.labels, data.validation.labels, data.test.labels])
    day = pd.Timedelta(days=1)
    return {
        **p.to_dict(),
        "weeks": run.weeks,
        "split_seeds": seeds,
        "calibration_period": f"{start.date()}..{(as_of - day).date()}",
        "holdout_period": f"{as_of.date()}..{(as_of + pd.Timedelta(weeks=p.horizon_weeks) - day).date()}",
        "churn_definition": "no purchase in the holdout",
        "churn_rate": float(labels.mean()),
        "customers": {
            "train": len(data.train.labels),
            "validation": len(data.validation.labels),
            "test": len(data.test.labels),
        },
        "profile_columns": list(run.source.profile_columns),
        "data_sha256": run.source.data_sha256,
    }


# ---------------------------------------------------------------------------------------------
# One split draw: train (or reuse) the model, score every method on the draw's test split.
# ---------------------------------------------------------------------------------------------


@dataclass
class SplitOutcome:
    """One split draw's results, with the test scores the pooled bootstrap needs."""

    seed: int
    user_ids: np.ndarray  # test customers
    labels: np.ndarray  # test labels
    test_scores: dict[str, np.ndarray]
    methods: dict[str, dict[str, Any]]
    best_baseline: str
    auc_diff: dict[str, Any]
    model: dict[str, Any]
    lightgbm_params: dict[str, Any]

    def draw(self, theirs: str) -> PairedDraw:
        return PairedDraw(self.user_ids, self.labels, self.test_scores[OURS], self.test_scores[theirs])

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "methods": self.methods,
            "best_baseline": self.best_baseline,
            "auc_diff_vs_best_baseline": self.auc_diff,
            "model": self.model,
            "lightgbm_params": self.lightgbm_params,
        }


def train_args_for(run: DatasetRun, protocol: Protocol, model_dir: Path, extra: str) -> list[str]:
    """training.train's arguments for one split draw; ``--seed`` sets the split (and the network's
    initialisation). ``extra`` (``--train-args``) comes last, so it can change hyperparameters.
    ``--no-baselines``: the benchmark scores the baselines itself (the same code, training.baselines)."""
    p = protocol
    return [
        *run.train_args,
        *("--model-dir", str(model_dir), "--verbose", "0"),
        *("--as-of", p.as_of, "--horizon-weeks", str(p.horizon_weeks), "--weeks", str(run.weeks)),
        *("--test-fraction", str(p.test_fraction), "--validation-fraction", str(p.validation_fraction)),
        *("--seed", str(p.seed)),
        "--no-baselines",
        *shlex.split(extra),
    ]


def checked_metadata(model_dir: Path, run: DatasetRun, protocol: Protocol) -> ModelMetadata:
    """The model's metadata, refusing a model trained on other data or under another protocol."""
    metadata = ModelMetadata.from_directory(model_dir)
    if metadata.protocol.model_dump() != protocol.to_dict() or metadata.data.sha256 != run.source.data_sha256:
        raise SystemExit(
            f"{model_dir} was trained on {metadata.data.source} under {metadata.protocol.model_dump()}, "
            f"not on {run.key} under {protocol.to_dict()}"
        )
    if metadata.inputs.sequence[1] != run.weeks:  # e.g. --weeks inside --train-args
        raise SystemExit(
            f"{model_dir} reads a {metadata.inputs.sequence[1]}-week sequence; this run builds {run.weeks} "
            "weeks (give --weeks to the benchmark, not in --train-args)"
        )
    return metadata


def score_split(data: PreparedData, model_dir: Path, metadata: ModelMetadata) -> SplitOutcome:
    """Every method on the draw's test split, and our model against the split's best baseline
    (best by test AUC: the strictest comparison for us)."""
    y_val, y_test = data.validation.labels, data.test.labels
    scores, lgb_params = score_all(data, model_dir)
    methods = method_metrics(scores, y_val, y_test)
    best = max((n for n in methods if n != OURS), key=lambda n: methods[n]["roc_auc"])
    outcome = SplitOutcome(
        seed=data.protocol.seed,
        user_ids=data.test.user_ids,
        labels=y_test,
        test_scores={name: test for name, (_, test) in scores.items()},
        methods=methods,
        best_baseline=best,
        auc_diff={},
        model={
            "dir": str(model_dir),
            "model_version": metadata.model_version,
            "hyperparameters": metadata.hyperparameters,
            "code_version": metadata.code_version,
            "augmentation_rows": metadata.data.augmentation_rows,
            "epochs_trained": metadata.epochs_trained,
        },
        lightgbm_params=lgb_params,
    )
    diff = paired_bootstrap_auc_diff([outcome.draw(best)])
    outcome.auc_diff = {"baseline": best, **diff, "significantly_worse": diff["ci95"][1] < 0}
    return outcome


# ---------------------------------------------------------------------------------------------
# Aggregation over split draws, and the results file.
# ---------------------------------------------------------------------------------------------


def _sd(values: list[float]) -> float | None:
    """Sample standard deviation over the draws; undefined (None) for one draw."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize_methods(splits: Sequence[SplitOutcome]) -> dict[str, dict[str, Any]]:
    """Per method: each metric's mean and sd over the draws, the worst draw of AUC, log-loss and
    ECE, and the per-draw values (in split-seed order)."""
    summary: dict[str, dict[str, Any]] = {}
    for name in splits[0].methods:
        per_split = {m: [float(s.methods[name][m]) for s in splits] for m in METRICS}
        entry: dict[str, Any] = {}
        for metric, values in per_split.items():
            entry[f"{metric}_mean"] = float(np.mean(values))
            entry[f"{metric}_sd"] = _sd(values)
        entry["roc_auc_min"] = min(per_split["roc_auc"])
        entry["log_loss_max"] = max(per_split["log_loss"])
        entry["ece_max"] = max(per_split["ece"])
        entry["per_split"] = per_split
        summary[name] = entry
    return summary


def pooled_comparison(splits: Sequence[SplitOutcome], summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each method against the best baseline by mean AUC, pooled over the draws (written into
    ``summary``); returns our model's comparison with the per-draw ones beside it."""
    best = max((n for n in summary if n != OURS), key=lambda n: summary[n]["roc_auc_mean"])
    ours: dict[str, Any] = {}
    for name in (n for n in summary if n != best):
        draws = [PairedDraw(s.user_ids, s.labels, s.test_scores[name], s.test_scores[best]) for s in splits]
        diff = paired_bootstrap_auc_diff(draws)
        summary[name]["auc_diff_vs_best_baseline_pooled"] = {
            k: diff[k] for k in ("estimate", "mean", "ci95", "p_ours_not_better")
        }
        ours = diff if name == OURS else ours
    return {
        "baseline": best,
        "pooled": {**ours, "significantly_worse": ours["ci95"][1] < 0},
        "per_split": [{"seed": s.seed, **s.auc_diff} for s in splits],
    }


def dataset_result(
    protocol: dict[str, Any], splits: Sequence[SplitOutcome], seconds: float
) -> dict[str, Any]:
    """``datasets.<name>`` of the results file."""
    summary = summarize_methods(splits)
    comparison = pooled_comparison(splits, summary)
    return {
        "protocol": protocol,
        "methods": summary,
        "best_baseline": comparison["baseline"],
        "auc_diff_vs_best_baseline": comparison,
        "splits": [s.to_dict() for s in splits],
        "seconds": round(seconds, 1),
    }


LEGACY_DATASET = "cdnow"


def build_result(datasets: dict[str, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The results file: ``datasets.<name>`` for every dataset run and, when CDNOW is one of them,
    the keys of the single-split benchmark (``protocol``, ``methods``, ``best_baseline``,
    ``auc_diff_vs_best_baseline``, ``model``, ``lightgbm_params``) from CDNOW's first draw, the
    protocol's own split (seed 42 by default)."""
    result: dict[str, Any] = {}
    legacy = datasets.get(LEGACY_DATASET)
    if legacy is not None:
        first = legacy["splits"][0]
        result = {
            "protocol": legacy["protocol"],
            "methods": first["methods"],
            "best_baseline": first["best_baseline"],
            "auc_diff_vs_best_baseline": first["auc_diff_vs_best_baseline"],
            "model": first["model"],
            "lightgbm_params": first["lightgbm_params"],
            "top_level_from": {"dataset": LEGACY_DATASET, "split_seed": first["seed"]},
        }
    result["datasets"] = datasets
    result["seconds"] = round(seconds, 1)
    return result


# ---------------------------------------------------------------------------------------------
# The markdown table.
# ---------------------------------------------------------------------------------------------


def _mean_sd(entry: dict[str, Any], metric: str) -> str:
    sd = entry[f"{metric}_sd"]
    return f"{entry[f'{metric}_mean']:.4f}" + ("" if sd is None else f" ± {sd:.4f}")


def _ci(diff: dict[str, Any]) -> str:
    low, high = diff["ci95"]
    return f"{diff['estimate']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _method_row(name: str, entry: dict[str, Any], best: str, several: bool) -> str:
    ece = _mean_sd(entry, "ece") + (f" (max {entry['ece_max']:.4f})" if several else "")
    diff = "best baseline" if name == best else _ci(entry["auc_diff_vs_best_baseline_pooled"])
    cells = [_mean_sd(entry, m) for m in ("roc_auc", "log_loss", "pr_auc_churn", "pr_auc_active", "f1")]
    return f"| {name} | {' | '.join(cells)} | {ece} | {_mean_sd(entry, 'brier')} | {diff} |"


def _render_dataset(name: str, d: dict[str, Any]) -> list[str]:
    p, splits = d["protocol"], d["splits"]
    several = len(splits) > 1
    counts = "/".join(str(v) for v in p["customers"].values())
    seeds = ", ".join(str(s) for s in p["split_seeds"])
    lines = [
        f"## {name}",
        "",
        f"Cutoff {p['as_of']}, holdout {p['holdout_period']} ({p['horizon_weeks']} weeks), weekly sequence "
        f"{p['weeks']} weeks, churn rate {p['churn_rate']:.4f}; customers train/validation/test {counts}; "
        f"profile columns: {', '.join(p['profile_columns']) or 'none'}. "
        f"{len(splits)} stratified split draw{'s' if several else ''} (seed {seeds}), one model each; "
        f"each test split scored once; thresholds chosen on validation (max F1)"
        + ("; cells are mean ± sd over the draws." if several else "."),
        "",
        "| method | ROC-AUC | log-loss | PR-AUC churn | PR-AUC active | F1 | ECE | Brier "
        f"| ΔAUC vs {d['best_baseline']} (95% CI{', pooled' if several else ''}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ranked = sorted(d["methods"].items(), key=lambda kv: -kv[1]["roc_auc_mean"])
    lines += [_method_row(n, e, d["best_baseline"], several) for n, e in ranked]
    comparison = d["auc_diff_vs_best_baseline"]
    pooled = comparison["pooled"]
    lines += ["", f"{OURS} − the split's best baseline (paired bootstrap, {pooled['resamples']} resamples):"]
    lines += [
        f"- seed {s['seed']}: vs {s['baseline']} {_ci(s)}"
        + (" **significantly worse**" if s["significantly_worse"] else "")
        for s in comparison["per_split"]
    ]
    if several:
        lines.append(
            f"- pooled over {len(splits)} draws, vs {comparison['baseline']} (best mean AUC): {_ci(pooled)}, "
            f"P(not better) {pooled['p_ours_not_better']:.3f}"
        )
    lines += [
        "",
        "Models: "
        + "; ".join(
            f"seed {s['seed']} {s['model']['model_version']} "
            f"({s['model']['epochs_trained']} epochs), LightGBM {s['lightgbm_params']}"
            for s in splits
        )
        + ".",
        "",
    ]
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    names = list(result["datasets"])
    lines = [f"# ChurnGuard quality benchmark ({', '.join(names)})", ""]
    for name in names:
        lines += _render_dataset(name, result["datasets"][name])
    lines += [
        "ΔAUC: estimate on the full test split(s) [bootstrap 95% CI]; pooled draws resample customers "
        "jointly across the overlapping test splits.",
        "",
        f"Run time {result['seconds']} s.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--data",
        default="cdnow",
        help="cdnow | tafeng | a directory of event files; comma-separated for several",
    )
    parser.add_argument(
        "--as-of", default=None, help="cutoff YYYY-MM-DD (default: the dataset's); a,b per dataset"
    )
    parser.add_argument(
        "--horizon-weeks", default=None, help="label horizon in weeks (default: the dataset's)"
    )
    parser.add_argument("--weeks", default=None, help="weekly sequence length (default: the dataset's)")
    parser.add_argument("--splits", type=int, default=1, help="customer split draws K (one model each)")
    parser.add_argument(
        "--model-dir",
        default=str(MODEL_DIR),
        help="the model (one dataset, one split), else the parent of one per draw",
    )
    parser.add_argument("--reuse-model", action="store_true", help="score existing model dirs, don't train")
    parser.add_argument(
        "--train-args", default="", help="extra arguments for training.train, e.g. '--epochs 5'"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="directory for quality.{json,md}; default: benchmarks/results for named datasets, "
        "artifacts/quality for an event-log directory (so your own data never replaces the published table)",
    )
    args = parser.parse_args(argv)
    if args.splits < 1:
        parser.error("--splits must be at least 1")
    return args


Trainer = Callable[[list[str]], int]


def _train(argv: list[str]) -> int:
    from training import train

    return train.main(argv)


def run_dataset(
    run: DatasetRun, args: argparse.Namespace, *, single: bool, trainer: Trainer = _train
) -> dict[str, Any]:
    """Train (unless ``--reuse-model``) and score one model per split draw; ``datasets.<key>``."""
    started = time.time()
    seeds = split_seeds(run.protocol.seed, args.splits)
    splits, protocol_block = [], None
    for i, seed in enumerate(seeds, 1):
        protocol = replace(run.protocol, seed=seed)
        model_dir = model_dir_for(Path(args.model_dir), run, seed, single=single)
        log.info("%s: split %d of %d (seed %d), model %s", run.key, i, len(seeds), seed, model_dir)
        if not args.reuse_model:
            code = trainer(train_args_for(run, protocol, model_dir, args.train_args))
            if code:
                raise SystemExit(code)
        metadata = checked_metadata(model_dir, run, protocol)
        data = prepare(run.source, protocol, config=feature_config_for(run.weeks))
        protocol_block = protocol_block or protocol_section(run, data, seeds)
        splits.append(score_split(data, model_dir, metadata))
    assert protocol_block is not None
    return dataset_result(protocol_block, splits, time.time() - started)


def default_out(runs: list[DatasetRun]) -> Path:
    """The published results only hold the named datasets: a run that includes a directory of
    the user's own events goes to artifacts/quality."""
    return RESULTS if all(r.key in NAMED_DATASETS for r in runs) else Path("artifacts/quality")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    started = time.time()
    names = [n.strip() for n in args.data.split(",") if n.strip()]
    overrides = zip(
        _per_dataset(args.as_of, len(names), "--as-of"),
        _per_dataset(args.horizon_weeks, len(names), "--horizon-weeks"),
        _per_dataset(args.weeks, len(names), "--weeks"),
        strict=True,
    )
    try:
        runs = [resolve_dataset(name, *o) for name, o in zip(names, overrides, strict=True)]
    except (EventLogError, DatasetError) as exc:
        raise SystemExit(f"quality benchmark: {exc}") from exc
    if len({r.key for r in runs}) != len(runs):
        raise SystemExit(f"--data {args.data}: two datasets would share a results key")
    single = len(runs) == 1 and args.splits == 1
    datasets = {run.key: run_dataset(run, args, single=single) for run in runs}
    result = build_result(datasets, time.time() - started)
    out = Path(args.out) if args.out else default_out(runs)
    write_results("quality", result, render_markdown(result), directory=out)
    log.info("results in %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
