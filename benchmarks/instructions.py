"""Instructions per warm API request, and per part of it, counted by valgrind (not timed).

A shared machine's neighbours move the warm p50 by 50% from one hour to the next; instruction counts
do not move. Each part runs N times in a process that has loaded the handler and answered 20 warm
requests; the same process with N = 0 is subtracted. Two processes' start-ups still differ by tens of
millions of instructions (and a full gen-2 collection lands in some windows and not others), so a
part's figure carries about +-5% (measured: the feature path 1.20-1.30 M over four runs): compare
changes that move a part by more than that.

Needs valgrind (Debian: ``apt-get install valgrind``) and a model (``make train``); about 1.5 minutes
per part on one core, run two at a time: ~7 minutes on 2 cores.

Usage: ``python -m benchmarks.instructions [--model-dir artifacts/model] [--requests 300] [PART ...]``
-> benchmarks/results/instructions.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import ROOT, write_results

PARTS = (
    "handler",
    "features",
    "transform",
    "explain",
    "score_request",
    "validate",
    "metrics",
)
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _parts(model_dir: str, event_path: str) -> dict[str, Callable[[], object]]:
    """What each part runs once; built after the handler's cold start and 20 warm requests."""
    os.environ["CHURNGUARD_MODEL_DIR"] = model_dir
    from aws_lambda_powertools.metrics import MetricUnit

    from churnguard.api import ScoreRequest, request_arrays, score_request
    from churnguard.features import build_raw_features
    from infra.lambda_harness import LambdaContext, load_handler

    with open(event_path) as fh:
        event = json.load(fh)
    handler, context = load_handler("score_api"), LambdaContext()
    for _ in range(20):
        assert handler.lambda_handler(event, context)["statusCode"] == 200
    runtime = handler.runtime()
    bundle = runtime.models.current()
    spec = bundle.spec
    request = ScoreRequest.model_validate_json(event["body"])
    now = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    arrays, as_of, profile, _ = request_arrays(request.customers, now, [])

    def features() -> object:
        return build_raw_features(
            arrays, as_of, event_types=spec.event_types, config=spec.config, profile=profile
        )

    sequence, static = spec.transform(features())
    raw = features()

    def metrics() -> None:  # what post_scores emits without a decision log, then log_metrics' flush
        for name in ("CustomersScored", "HighRiskCustomers", "PromotionsQueued"):
            handler.metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
        handler.metrics.add_metric(name="ScoringLatency", unit=MetricUnit.Milliseconds, value=0.5)
        for key in ("model_version", "function_request_id", "correlation_id"):
            handler.metrics.add_metadata(key=key, value=bundle.version)
        handler.metrics.flush_metrics()

    return {
        "none": lambda: None,
        "handler": lambda: handler.lambda_handler(event, context),
        "features": features,
        "transform": lambda: spec.transform(raw),
        "explain": lambda: bundle.explainer.explain(sequence, static),
        "score_request": lambda: score_request(
            request, bundle, now=now, policy=runtime.policy, publisher=runtime.publisher, top_k=3
        ),
        "validate": lambda: ScoreRequest.model_validate_json(event["body"]),
        "metrics": metrics,
    }


def child(model_dir: str, event_path: str, part: str, n: int) -> None:
    run = _parts(model_dir, event_path)[part]
    for _ in range(n):
        run()


def _instructions(model_dir: str, event_path: str, part: str, n: int) -> int:
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.instructions", "--model-dir", model_dir,
        "--child", event_path, part, str(n),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0", "POWERTOOLS_METRICS_NAMESPACE": "ChurnGuardBench"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    match = _REFS.search(done.stderr)
    if done.returncode != 0 or match is None:
        detail = done.stderr[-2000:]
        raise RuntimeError(f"{part} x {n}: no instruction count (exit {done.returncode}):\n{detail}")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(ROOT / "artifacts" / "model"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--child", nargs=3, metavar=("EVENT", "PART", "N"))
    parser.add_argument("parts", nargs="*", default=list(PARTS))
    args = parser.parse_args(argv)
    if args.requests < 1 or not set(args.parts) <= set(PARTS):
        parser.error(f"--requests must be >= 1 and the parts some of {', '.join(PARTS)}")
    if args.child:
        event_path, part, n = args.child
        child(args.model_dir, event_path, part, int(n))
        return 0
    from benchmarks.serving import _api_event, _cdnow_customer_request

    with tempfile.TemporaryDirectory() as tmp:
        event_path = str(Path(tmp) / "event.json")
        Path(event_path).write_text(json.dumps(_api_event(_cdnow_customer_request())))
        jobs = [("none", 0), *((part, args.requests) for part in args.parts)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counts = list(pool.map(lambda job: _instructions(args.model_dir, event_path, *job), jobs))
    base = counts[0]
    per_call = {
        part: (count - base) / args.requests for (part, _), count in zip(jobs[1:], counts[1:], strict=True)
    }
    result = {"requests": args.requests, "instructions_per_call": per_call}
    lines = [
        "# Instructions per warm API request and its parts (valgrind cachegrind)",
        "",
        f"{args.requests} calls of each part minus 0, after a cold start and 20 warm requests.",
        "",
        "| part | instructions per call | share of a request |",
        "|---|---|---|",
    ]
    request = per_call.get("handler")
    for part, value in per_call.items():
        share = f"{100 * value / request:.0f}%" if request else ""
        lines.append(f"| {part} | {value / 1e6:.2f} M | {share} |")
    write_results("instructions", result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
