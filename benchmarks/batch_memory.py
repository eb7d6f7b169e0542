"""Batch memory model: peak RSS of one batch invocation as a function of what the file holds.

Batch admission (``churnguard.admission``) predicts an invocation's peak memory as

    peak = base + per_event * valid events + per_customer * customers + per_rejected * rejected rows

and this benchmark measures those coefficients. ``base`` covers the runtime, the model and one
scoring chunk of customers with reasons for all (the occlusion stack: the worst case); the fit has
a separate term for chunks that are not full, so small files do not bias the per-item costs.

Each run scores one CSV with ``churnguard.batch.score_file`` in its own child process (one core)
and reads the child's peak RSS (VmHWM); files come in three shapes that separate the coefficients:
typical multi-event customers (synthetic generator, ~30 events each), one event per customer, and
rows that are all rejected.
A least-squares fit over the runs gives the coefficients and the worst relative error of the fit.

Usage: ``python -m benchmarks.batch_memory [--scale 1.0]`` (``make bench-batch-memory``)
-> benchmarks/results/batch_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import peak_rss_mb, pin_one_core, run_child, write_results
from churnguard.model_metadata import ModelMetadata
from infra.model_fixtures import FIXTURE_MODEL

# (shape, customers at scale 1.0): sizes chosen so the largest run stays well under a 2-core CI box's memory
RUNS = (
    ("typical", 25_000),
    ("typical", 50_000),
    ("typical", 100_000),
    ("one_event_each", 300_000),
    ("one_event_each", 600_000),
    ("one_event_each", 1_200_000),
    ("all_rejected", 25_000),
    ("all_rejected", 50_000),
)


def write_file(path: Path, shape: str, customers: int) -> None:
    from churnguard.datasets import generate_synthetic_events

    if shape == "one_event_each":
        events = generate_synthetic_events(customers, seed=11, weeks=3, with_profile=False)
        events = events.drop_duplicates("user_id", ignore_index=True)
    else:
        events = generate_synthetic_events(customers, seed=11, weeks=26, with_profile=False)
    if shape == "all_rejected":
        events["event_type"] = "unknown-type"
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    events.to_csv(path, index=False)


def child(model_dir: str, path: str) -> dict:
    pin_one_core()
    from churnguard.admission import MemoryModel
    from churnguard.batch import score_file
    from churnguard.bundle import ModelBundle
    from churnguard.promotions import PromotionPolicy
    from churnguard.scoring import ReasonsFor

    bundle = ModelBundle.from_directory(model_dir)
    base = peak_rss_mb()
    started = time.perf_counter()
    unlimited = MemoryModel(budget_mb=10**9)
    with open(path, "rb") as stream, tempfile.TemporaryFile("w+") as rejects:
        result = score_file(
            stream,
            path,
            bundle,
            policy=PromotionPolicy(),
            publisher=None,
            source="bench",
            reasons_for=ReasonsFor.ALL,
            rejects=rejects,
            memory=unlimited,
        )
    summary = result.summary
    return {
        "rss_after_imports_mb": base,
        "peak_rss_mb": peak_rss_mb(),
        "seconds": time.perf_counter() - started,
        "events": summary.rows_used,
        "customers": summary.customers_scored,
        "rejected": summary.rows_rejected,
        "status": summary.status,
    }


def fit(runs: list[dict]) -> dict:
    """Least squares for peak = runtime + chunk * filled + a*events + b*customers + c*rejected, where
    ``filled`` is how full the largest scoring chunk is (MB, bytes per item)."""
    from churnguard.batch import SCORE_CHUNK_CUSTOMERS

    x = np.array(
        [
            [
                1.0,
                min(r["customers"], SCORE_CHUNK_CUSTOMERS) / SCORE_CHUNK_CUSTOMERS,
                r["events"],
                r["customers"],
                r["rejected"],
            ]
            for r in runs
        ]
    )
    y = np.array([r["peak_rss_mb"] for r in runs])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    predicted = x @ coef
    return {
        "runtime_mb": float(coef[0]),
        "full_chunk_mb": float(coef[1]),
        "base_mb": float(coef[0] + coef[1]),
        "bytes_per_event": float(coef[2] * 1024**2),
        "bytes_per_customer": float(coef[3] * 1024**2),
        "bytes_per_rejected_row": float(coef[4] * 1024**2),
        "max_relative_error": float(np.max(np.abs(predicted - y) / y)),
        "predicted_mb": [float(p) for p in predicted],
    }


def check_model(runs: list[dict]) -> dict:
    """How the shipped MemoryModel's prediction compares with each measured peak (must be >=)."""
    from churnguard.admission import MemoryModel

    model = MemoryModel(budget_mb=10**9)
    ratios = [
        model.predicted_peak_mb(r["events"], r["customers"], r["rejected"]) / r["peak_rss_mb"] for r in runs
    ]
    return {"min_predicted_over_measured": min(ratios), "max_predicted_over_measured": max(ratios)}


def render(result: dict) -> str:
    lines = [
        "# Batch memory model",
        "",
        f"Model {result['model_version']}; one core per run; peak RSS = VmHWM of the scoring child process",
        "",
        "| shape | rows | valid events | customers | rejected | peak RSS (MB) | fit (MB) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, predicted in zip(result["runs"], result["fit"]["predicted_mb"], strict=True):
        lines.append(
            f"| {run['shape']} | {run['events'] + run['rejected']:,} | {run['events']:,} "
            f"| {run['customers']:,} | {run['rejected']:,} | {run['peak_rss_mb']:,.0f} "
            f"| {predicted:,.0f} | {run['seconds']:.1f} |"
        )
    f = result["fit"]
    m = result["shipped_model"]
    lines += [
        "",
        f"Fit: base {f['base_mb']:.0f} MB (runtime {f['runtime_mb']:.0f} + one full scoring chunk "
        f"{f['full_chunk_mb']:.0f}) + {f['bytes_per_event']:.0f} B/event + "
        f"{f['bytes_per_customer']:.0f} B/customer + {f['bytes_per_rejected_row']:.0f} B/rejected row "
        f"(worst relative error {f['max_relative_error']:.1%}).",
        f"Shipped `MemoryModel` predicts {m['min_predicted_over_measured']:.2f}x to "
        f"{m['max_predicted_over_measured']:.2f}x the measured peaks (must stay >= 1).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(FIXTURE_MODEL))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every run's customers")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "CSV"))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, customers in RUNS:
            path = Path(tmp) / f"{shape}-{customers}.csv"
            write_file(path, shape, max(1, int(customers * args.scale)))
            measured, _ = run_child("benchmarks.batch_memory", args.model_dir, str(path))
            run = {"shape": shape, "file_mb": path.stat().st_size / 1024**2, **measured}
            print(json.dumps(run))
            runs.append(run)
            path.unlink()
    metadata = ModelMetadata.from_directory(args.model_dir)
    result = {
        "model_version": metadata.model_version,
        "runs": runs,
        "fit": fit(runs),
        "shipped_model": check_model(runs),
    }
    write_results("batch_memory", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
