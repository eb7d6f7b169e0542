"""Serving benchmark: warm/cold HTTP scoring, batch throughput, a 700k-customer file, Keras peer, sizes.

Each measurement runs in its own child process (pinned to one core where the target says "one
core") so imports, caches and peak RSS of one do not leak into another.

Usage: ``python -m benchmarks.serving [--model-dir artifacts/model] [--customers-1m 1000000]``
(``make bench-serving``) -> benchmarks/results/serving.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, peak_rss_mb, pin_one_core, run_child, write_results
from infra.cdnow_requests import cdnow_scoring_request, first_with_six_orders


def _cdnow_customer_request() -> dict:
    """A real CDNOW customer with several orders, as an API request."""
    return cdnow_scoring_request(first_with_six_orders)


def _api_event(body: dict) -> dict:
    from infra.lambda_harness import load_event

    event = load_event("score_api/post_scores.json")
    event["body"] = json.dumps(body)
    return event


# ---------------------------------------------------------------------------------------------
# children
# ---------------------------------------------------------------------------------------------


def child_warm(model_dir: str, event_path: str, n: int) -> dict:
    """Warm requests in a process that, like the deployed function, has imported only the handler.

    The event is built by the parent: building it here loaded CDNOW through pandas and lifetimes,
    whose scipy and OpenBLAS thread pools then shared the pinned core with the handler."""
    pin_one_core()
    os.environ["CHURNGUARD_MODEL_DIR"] = model_dir
    from infra.lambda_harness import LambdaContext, load_handler

    with open(event_path) as fh:
        event = json.load(fh)
    handler = load_handler("score_api")
    ctx = LambdaContext()
    for _ in range(100):
        assert handler.lambda_handler(event, ctx)["statusCode"] == 200
    times = []
    for _ in range(n):
        start = time.perf_counter()
        handler.lambda_handler(event, ctx)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "warm_p50_ms": times[len(times) // 2],
        "warm_p99_ms": times[int(len(times) * 0.99)],
        "requests": n,
    }


def child_cold(model_dir: str, event_path: str) -> dict:
    """What a Lambda cold start does: import the handler, load the model, answer one request."""
    started = time.perf_counter()
    os.environ["CHURNGUARD_MODEL_DIR"] = model_dir
    from infra.lambda_harness import LambdaContext, load_handler

    with open(event_path) as fh:
        event = json.load(fh)
    handler = load_handler("score_api")
    response = handler.lambda_handler(event, LambdaContext())
    assert response["statusCode"] == 200, response
    return {"cold_in_process_s": time.perf_counter() - started, "cold_rss_mb": peak_rss_mb()}


def child_batch_cdnow(model_dir: str) -> dict:
    pin_one_core()
    import fastparquet

    from churnguard.batch import score_file
    from churnguard.bundle import ModelBundle
    from churnguard.datasets import load_cdnow
    from churnguard.promotions import PromotionPolicy
    from churnguard.scoring import ReasonsFor

    body = load_cdnow().to_csv(index=False).encode()
    bundle = ModelBundle.from_directory(model_dir)
    out = {}
    for label, reasons in (
        ("batch_customers_per_s", ReasonsFor.NONE),
        ("batch_with_reasons_customers_per_s", ReasonsFor.ALL),
    ):
        best = None
        for _ in range(3):
            start = time.perf_counter()
            result = score_file(
                body,
                "cdnow.csv",
                bundle,
                as_of="1997-10-01",
                policy=PromotionPolicy(),
                publisher=None,
                source="bench",
                reasons_for=reasons,
            )
            with tempfile.TemporaryDirectory() as tmp:
                fastparquet.write(f"{tmp}/scored.parquet", result.scored, compression="SNAPPY", stats=False)
            elapsed = time.perf_counter() - start
            best = elapsed if best is None else min(best, elapsed)
        out[label] = result.summary.customers_scored / best
        out[label.replace("customers_per_s", "seconds")] = best
    out["batch_customers"] = result.summary.customers_scored
    out["batch_rows"] = result.summary.rows_in
    return out


def child_batch_file(model_dir: str, path: str) -> dict:
    pin_one_core()
    from churnguard.batch import score_file
    from churnguard.bundle import ModelBundle
    from churnguard.promotions import PromotionPolicy
    from churnguard.scoring import ReasonsFor

    bundle = ModelBundle.from_directory(model_dir)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    with open(path, "rb") as stream:  # streamed like an S3 body
        result = score_file(
            stream,
            path,
            bundle,
            as_of=None,
            policy=PromotionPolicy(),
            publisher=None,
            source="bench",
            reasons_for=ReasonsFor.PROMOTED,
        )
    elapsed = time.perf_counter() - start
    assert result.summary.status == "ok", result.summary.error
    return {
        "batch_1m_seconds": elapsed,
        "batch_1m_peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_before,
        "batch_1m_customers": result.summary.customers_scored,
        "batch_1m_rows": result.summary.rows_in,
    }


def child_keras(model_dir: str) -> dict:
    pin_one_core()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from churnguard.bundle import ModelBundle
    from training.data import CDNOW_PROTOCOL, load_cdnow_source, prepare

    model = keras.saving.load_model(Path(model_dir) / "model.keras")
    bundle = ModelBundle.from_directory(model_dir)
    data = prepare(load_cdnow_source(), CDNOW_PROTOCOL)
    seq, static = bundle.spec.transform(data.test.raw)
    one = [seq[:1], static[:1]]
    for _ in range(5):
        model(one)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        np.asarray(model(one))
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    start = time.perf_counter()
    model.predict([seq, static], batch_size=256, verbose=0)
    predict_s = time.perf_counter() - start
    tflite_start = time.perf_counter()
    bundle.scorer.predict(seq, static)
    tflite_s = time.perf_counter() - tflite_start
    return {
        "keras_call_p50_ms": times[len(times) // 2],
        "keras_predict_customers_per_s": len(seq) / predict_s,
        "tflite_predict_customers_per_s": len(seq) / tflite_s,
    }


CHILDREN = {
    "warm": child_warm,
    "cold": child_cold,
    "batch_cdnow": child_batch_cdnow,
    "batch_file": child_batch_file,
    "keras": child_keras,
}


# ---------------------------------------------------------------------------------------------
# package sizes
# ---------------------------------------------------------------------------------------------


def package_sizes() -> dict:
    """Unzipped function + layer sizes, built by the same Makefiles `sam build` runs (BuildMethod: makefile
    for the layer and the batch function; the API function has no dependencies of its own)."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        layer = Path(tmp) / "layer"
        _make(ROOT / "shared", "build-ChurnGuardLayer", layer)
        batch = Path(tmp) / "batch_score"
        _make(ROOT / "functions" / "batch_score", "build-BatchScoreFunction", batch)
        score = Path(tmp) / "score_api"
        score.mkdir()
        shutil.copy(ROOT / "functions" / "score_api" / "app.py", score / "app.py")
        out["layer"] = round(_dir_mb(layer), 1)
        out["score_api"] = round(_dir_mb(layer) + _dir_mb(score), 1)
        out["batch_score"] = round(_dir_mb(layer) + _dir_mb(batch), 1)
    return out


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024**2


def _make(directory: Path, target: str, artifacts: Path) -> None:
    artifacts.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(directory),
            target,
            f"ARTIFACTS_DIR={artifacts}",
            f"PYTHON={sys.executable}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )


# ---------------------------------------------------------------------------------------------


def write_synthetic(path: Path, customers: int) -> dict:
    from churnguard.datasets import generate_synthetic_events

    started = time.perf_counter()
    events = generate_synthetic_events(customers, seed=13, weeks=26)
    generated = time.perf_counter() - started
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    events.to_csv(path, index=False)
    return {
        "rows": len(events),
        "customers": int(events["user_id"].nunique()),
        "generate_s": generated,
        "file_mb": path.stat().st_size / 1024**2,
        "total_s": time.perf_counter() - started,
    }


WARM_PROCESSES = 5  # a shared VM's p50 moves by 0.1-0.5 ms from one process to the next


def _warm(model_dir: Path, event_path: str, env: dict[str, str]) -> dict:
    """The warm figures as the median over ``WARM_PROCESSES`` fresh processes, with the range."""
    runs = [
        run_child("benchmarks.serving", "warm", "--model-dir", str(model_dir), event_path, "2000", env=env)[0]
        for _ in range(WARM_PROCESSES)
    ]
    p50s = sorted(r["warm_p50_ms"] for r in runs)
    return {
        "warm_p50_ms": statistics.median(p50s),
        "warm_p50_runs_ms": p50s,
        "warm_p99_ms": statistics.median(r["warm_p99_ms"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
    }


def render(result: dict) -> str:
    t = result["targets"]
    rows = [
        (
            f"warm p50, 1 customer via lambda_handler (ms), median of {len(result['warm_p50_runs_ms'])} "
            f"processes (range {min(result['warm_p50_runs_ms']):.3f}-{max(result['warm_p50_runs_ms']):.3f})",
            result["warm_p50_ms"],
            "<= 1.0",
        ),
        ("warm p99 (ms), median of the processes", result["warm_p99_ms"], ""),
        ("cold start: new process -> first answer (s)", result["cold_start_s"], "<= 0.8"),
        ("cold start peak RSS (MB)", result["cold_rss_mb"], "<= 150"),
        ("batch CDNOW, no reasons (customers/s, 1 core)", result["batch_customers_per_s"], ">= 12000"),
        (
            "batch CDNOW, reasons for all (customers/s)",
            result["batch_with_reasons_customers_per_s"],
            ">= 5000",
        ),
        (
            f"batch {result['batch_1m_customers']:,} customers, {result['batch_1m_rows']:,} rows (s)",
            result["batch_1m_seconds"],
            "",
        ),
        ("  peak RSS (MB)", result["batch_1m_peak_rss_mb"], "<= 3072"),
        ("Keras model(x), 1 customer p50 (ms)", result["keras_call_p50_ms"], "(peer)"),
        ("Keras predict (customers/s)", result["keras_predict_customers_per_s"], "(peer)"),
        ("TFLite predict, same inputs (customers/s)", result["tflite_predict_customers_per_s"], "(peer)"),
        ("score_api + layer, unzipped (MB)", result["package_mb"]["score_api"], "<= 150"),
        ("batch_score + layer, unzipped (MB)", result["package_mb"]["batch_score"], "<= 230"),
    ]
    lines = [
        "# ChurnGuard serving benchmark",
        "",
        f"Model {result['model_version']}; {t}",
        "",
        "| measurement | value | target |",
        "|---|---|---|",
    ]
    for label, value, target in rows:
        lines.append(
            f"| {label} | {value:,.3f} | {target} |"
            if isinstance(value, float)
            else f"| {label} | {value} | {target} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(ROOT / "artifacts" / "model"))
    # The largest single file one batch invocation (3008 MB) scores without splitting: since the
    # admission model was re-fitted (issue 12) a 1M-customer file (~29M rows, measured 2.84 GB peak)
    # is predicted above the 85% headroom and split in production, so the in-memory step uses 700k.
    parser.add_argument("--customers-1m", type=int, default=700_000)
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    if args.child:
        fn = CHILDREN[args.child]
        extra = [int(a) if a.isdigit() else a for a in args.args]
        print(json.dumps(fn(args.model_dir, *extra)))
        return 0

    model_dir = Path(args.model_dir)
    if not (model_dir / "metadata.json").exists() or not (model_dir / "model.keras").exists():
        from training import train

        if train.main(["--model-dir", str(model_dir), "--verbose", "0"]):
            return 1
    # imported here, not at the top: the cold-start child imports this module before its clock starts
    from churnguard.model_metadata import ModelMetadata

    metadata = ModelMetadata.from_directory(model_dir)
    result: dict = {"model_version": metadata.model_version, "targets": "one core for warm and batch"}
    env = {"POWERTOOLS_METRICS_NAMESPACE": "ChurnGuardBench"}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(
            _api_event(_cdnow_customer_request()), fh
        )  # built here: the children import only the handler
    result.update(_warm(model_dir, fh.name, env))
    cold, cold_wall = run_child("benchmarks.serving", "cold", "--model-dir", str(model_dir), fh.name, env=env)
    os.unlink(fh.name)
    result.update(cold)
    result["cold_start_s"] = cold_wall  # interpreter start + imports + model load + first answer
    batch, _ = run_child("benchmarks.serving", "batch_cdnow", "--model-dir", str(model_dir))
    result.update(batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic_1m.csv"
        result["synthetic_file"] = write_synthetic(path, args.customers_1m)
        big, _ = run_child("benchmarks.serving", "batch_file", "--model-dir", str(model_dir), str(path))
        result.update(big)
    keras_result, _ = run_child("benchmarks.serving", "keras", "--model-dir", str(model_dir))
    result.update(keras_result)
    result["package_mb"] = package_sizes()
    write_results("serving", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
