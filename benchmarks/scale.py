"""Scale benchmark (issue 12 §3): multi-part dataset drops through the shuffle, measured, then projected.

For each size K (default 1M and 3M customers, ~30 events each): a synthetic warehouse export in
``--parts`` gzip CSV parts, rows in time order cut by size so customers span parts
(``benchmarks.scale_export``), is scored by ``churnguard.dataset_drops`` step by step, as the state
machine runs it: ``plan_dataset`` -> ``partition_part`` for every part (phase 1) -> ``plan_shards`` ->
``score_shard`` for every shard (phase 2) -> ``finish_dataset``. Every step runs in its own child
process pinned to one core (one Lambda invocation each: imports, model load, the call), ``--workers``
at a time; each reports its call time, peak RSS (VmHWM) and bytes/requests against the store. The
store is a local directory behind the ``ObjectStore`` port (``benchmarks.local_store``: compute, not
an emulator's HTTP, is measured; S3's latency and prices are added in the projection). Promotions go
to a publisher that counts them (no SQS); reasons as in production (``CHURNGUARD_BATCH_REASONS``
defaults to ``promoted``). The dataset-level invariants are checked on every run.

From the largest run: projected wall time and cost for 10M and 100M customers at concurrency 100 and
1,000, parts and shards scaled with customers at the measured per-part / per-shard sizes:

    wall = plan + ceil(P / c) * max part + plan_shards + ceil(N / c) * max shard + finish + orchestration

where a part's / shard's time is its child's process time (a cold start: imports + model + call)
plus its S3 time at the projected piece count (requests x latency + bytes / throughput).
Cost = Lambda GB-s at 3,008 MB + Lambda requests + Step Functions transitions + S3 requests.

Usage: ``python -m benchmarks.scale [--customers 1000000,3000000] [--parts 8] [--workers 1]``
(``make bench-scale``) -> benchmarks/results/scale.{json,md}; ``--out DIR`` writes them elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, peak_rss_mb, run_child, write_results
from benchmarks.scale_export import Export, write_export
from infra.model_fixtures import FIXTURE_MODEL

MODULE = "benchmarks.scale"
BUCKET = "churnguard-bench"
DEFAULT_SIZES = (1_000_000, 3_000_000)
TRAINED_MODEL = ROOT / "artifacts" / "model"

# --- prices and assumptions of the projection (eu-west-1, x86; checked when this file was written) ----
LAMBDA_MEMORY_MB = 3008  # the template's MemorySize of the batch function (churnguard.batch.DEFAULT_MEMORY)
LAMBDA_VCPU = LAMBDA_MEMORY_MB / 1769  # 1,769 MB = one vCPU (Lambda developer guide, "Configure memory")
PRICES: dict[str, dict[str, Any]] = {
    "lambda_gb_s": {
        "usd": 0.0000166667,
        "source": "https://aws.amazon.com/lambda/pricing/ (x86, first tier)",
    },
    "lambda_request": {"usd": 0.20 / 1e6, "source": "https://aws.amazon.com/lambda/pricing/ ($0.20 per 1M)"},
    "sfn_transition": {
        "usd": 0.025 / 1000,
        "source": "https://aws.amazon.com/step-functions/pricing/ "
        "(Standard, Europe (Ireland) $0.0250 per 1,000)",
    },
    "s3_put": {
        "usd": 0.005 / 1000,
        "source": "S3 Standard PUT/COPY/POST/LIST $0.005 per 1,000 (https://aws.amazon.com/s3/pricing/, "
        "as summarised at https://c3x.dev/blog/s3-request-fees-explained)",
    },
    "s3_get": {"usd": 0.0004 / 1000, "source": "S3 Standard GET/HEAD $0.0004 per 1,000 (same sources)"},
}
ASSUMPTIONS: dict[str, dict[str, Any]] = {
    "map_run_overhead_s": {
        "value": 7.0,
        "source": "a Distributed Map run of 100 no-op items took 7+ s from MapRunStarted to MapRunSucceeded "
        "(https://repost.aws/questions/QUn5oKgcnjRTemt39V9hdtyw); charged once per map (2 maps)",
    },
    "child_start_s": {
        "value": 0.25,
        "source": "assumed: Step Functions starting a child execution and invoking Lambda, per wave",
    },
    "s3_request_s": {
        "value": 0.03,
        "source": "small S3 requests: median latency 'in the tens of milliseconds' (AWS whitepaper 'Best "
        "Practices Design Patterns: Optimizing Amazon S3 Performance'); the code issues them one at a time",
    },
    "s3_mb_per_s": {
        "value": 90.0,
        "source": "assumed single-stream GET/PUT throughput from Lambda (~100 MB/s ideal, e.g. "
        "https://bryson3gps.wordpress.com/tag/lambda/)",
    },
    "transitions_per_item": {
        "value": 2,
        "source": "assumed: a Standard child execution with one Task state (its start + the task), "
        "plus 10 for the parent's states",
    },
}
TARGETS = {"10M": 10_000_000, "100M": 100_000_000}
CONCURRENCY = (100, 1000)
HEADLINE_CONCURRENCY = 100  # the top-level figures: what a default account (1,000 in all) spares


# --- the children: one step each, one core each --------------------------------------------------------


class CountingPublisher:
    """Promotions counted, not sent (no SQS in a benchmark); distinct customers kept to prove once each."""

    def __init__(self) -> None:
        self.sent = 0
        self.customers: set[str] = set()

    def publish(self, messages: Sequence[dict[str, Any]]) -> Any:
        from churnguard.promotions import PublishResult

        self.sent += len(messages)
        self.customers.update(str(m["user_id"]) for m in messages)
        return PublishResult(sent=len(messages))


def _sizes(store: Any, keys: Sequence[str]) -> int:
    return sum(store.path(BUCKET, k).stat().st_size for k in keys)


def _step_plan(store: Any, dataset: str, shards: str) -> dict[str, Any]:
    from churnguard.dataset_drops import plan_dataset

    plan = plan_dataset(store, BUCKET, dataset, shards=int(shards) or None)
    return {"result": plan.model_dump(mode="json")}


def _step_partition(store: Any, plan_path: str, part: str, model_dir: str) -> dict[str, Any]:
    from churnguard.batch import read_columns
    from churnguard.bundle import ModelBundle
    from churnguard.dataset_drops import DatasetPlan, partition_part

    plan = DatasetPlan.model_validate_json(Path(plan_path).read_text())
    planned = plan.parts[int(part)]
    columns = read_columns(ModelBundle.from_directory(model_dir), planned.key)  # as the handler will
    started = time.perf_counter()
    result = partition_part(store, plan, planned.index, columns=columns)
    return {
        "seconds": time.perf_counter() - started,
        "result": result.model_dump(mode="json"),
        "bytes_in": planned.size,
        "bytes_out": _sizes(store, result.keys_written),
    }


def _step_shards(plan_path: str, parts_path: str) -> dict[str, Any]:
    from churnguard.dataset_drops import DatasetPlan, PartResult, plan_shards

    plan = DatasetPlan.model_validate_json(Path(plan_path).read_text())
    parts = [PartResult.model_validate(p) for p in json.loads(Path(parts_path).read_text())]
    return {"result": plan_shards(plan, parts).model_dump(mode="json")}


def _step_shuffle_at(parts: str, shards: str) -> dict[str, Any]:
    """``plan_shards`` on P part results of N shards each (synthetic counts), from their JSON: how
    the step between the phases grows with P*N, measured at a projected size instead of guessed."""
    from churnguard.dataset_drops import DatasetPlan, PartResult, PlannedPart, plan_shards

    n_parts, n_shards = int(parts), int(shards)
    names = [f"part-{i:05d}.csv.gz" for i in range(n_parts)]
    planned = [PlannedPart(index=i, relative=r, key=f"incoming/d/{r}", size=1) for i, r in enumerate(names)]
    plan = DatasetPlan(
        bucket=BUCKET, dataset="d", run_id="0" * 12, marker="_SUCCESS", parts=planned, shards=n_shards
    )
    body = json.dumps(
        [
            PartResult(
                part=i,
                relative=r,
                rows_in=30 * n_shards,
                rows_per_shard=dict.fromkeys(range(n_shards), 30),
                customers_per_shard=dict.fromkeys(range(n_shards), 1),
                latest_event=dt.datetime(2024, 6, 30),
                keys_written=[plan.piece_key(s, i) for s in range(n_shards)],
            ).model_dump(mode="json")
            for i, r in enumerate(names)
        ]
    )
    started = time.perf_counter()
    shuffle = plan_shards(plan, [PartResult.model_validate(p) for p in json.loads(body)])
    return {
        "seconds": time.perf_counter() - started,
        "result": {"tasks": len(shuffle.tasks), "input_mb": len(body) / 1e6},
    }


def _step_score(store: Any, plan_path: str, shuffle_path: str, task: str, model_dir: str) -> dict[str, Any]:
    from churnguard.bundle import ModelBundle
    from churnguard.dataset_drops import DatasetPlan, Shuffle, score_shard
    from churnguard.promotions import PromotionPolicy
    from churnguard.scoring import ReasonsFor
    from churnguard.settings import ServingSettings

    plan = DatasetPlan.model_validate_json(Path(plan_path).read_text())
    shard_task = Shuffle.model_validate_json(Path(shuffle_path).read_text()).tasks[int(task)]
    bundle = ModelBundle.from_directory(model_dir)
    reasons = ReasonsFor(ServingSettings.model_fields["batch_reasons"].default)  # production's default
    publisher = CountingPublisher()
    started = time.perf_counter()
    result = score_shard(
        store, plan, shard_task, bundle, policy=PromotionPolicy(), publisher=publisher, reasons_for=reasons
    )
    return {
        "seconds": time.perf_counter() - started,
        "result": result.model_dump(mode="json"),
        "promotions_sent": publisher.sent,
        "promoted_customers": len(publisher.customers),
        "bytes_in": _sizes(store, shard_task.pieces),
        "bytes_out": _sizes(store, [result.scored_key] if result.scored_key else []),
    }


def _step_finish(store: Any, plan_path: str, parts_path: str, shards_path: str) -> dict[str, Any]:
    from churnguard.dataset_drops import DatasetPlan, PartResult, ShardResult, finish_dataset

    plan = DatasetPlan.model_validate_json(Path(plan_path).read_text())
    parts = [PartResult.model_validate(p) for p in json.loads(Path(parts_path).read_text())]
    shards = [ShardResult.model_validate(s) for s in json.loads(Path(shards_path).read_text())]
    return {"result": finish_dataset(store, plan, parts, shards).model_dump(mode="json")}


def child(step: str, core: str, store_root: str, *args: str) -> dict[str, Any]:
    """One step in this process, on core ``core``: its result, call time and peak RSS."""
    os.sched_setaffinity(0, {int(core)})
    import churnguard.dataset_drops  # noqa: F401 - imported before the clock: a step's seconds are its call
    from benchmarks.local_store import LocalObjectStore

    store = LocalObjectStore(store_root)
    steps = {"plan": _step_plan, "partition": _step_partition, "score": _step_score, "finish": _step_finish}
    started = time.perf_counter()
    no_store = {"shards": _step_shards, "shuffle_at": _step_shuffle_at}
    measured = no_store[step](*args) if step in no_store else steps[step](store, *args)
    measured.setdefault("seconds", time.perf_counter() - started)
    return {**measured, "peak_rss_mb": peak_rss_mb(), "requests": dict(store.requests)}


# --- the pipeline, as the state machine runs it ---------------------------------------------------------


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _run_step(step: str, core: int, *args: str) -> dict[str, Any]:
    measured, wall = run_child(MODULE, step, str(core), *args)
    return {**measured, "process_s": wall}


def _run_map(step: str, items: Sequence[Sequence[str]], workers: int) -> list[dict[str, Any]]:
    """One child per item, ``workers`` at a time, each on a core of its own; results in item order."""
    free: queue.Queue[int] = queue.Queue()
    cores = _cores()
    for i in range(workers):
        free.put(cores[i % len(cores)])

    def one(args: Sequence[str]) -> dict[str, Any]:
        core = free.get()
        try:
            return _run_step(step, core, *args)
        finally:
            free.put(core)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


@dataclass
class Pipeline:
    plan: dict[str, Any]
    phase1: list[dict[str, Any]]
    plan_shards: dict[str, Any]
    phase2: list[dict[str, Any]]
    finish: dict[str, Any]
    end_to_end_s: float
    steps_dir: Path = field(repr=False)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.finish["result"])


def _dump(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def run_pipeline(
    store_root: Path, dataset: str, model_dir: str, *, workers: int = 1, shards: int | None = None
) -> Pipeline:
    """plan -> every part -> plan shards -> every shard -> finish, each step a child process."""
    steps = store_root.parent / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    root, core = str(store_root), _cores()[0]
    started = time.perf_counter()
    plan = _run_step("plan", core, root, dataset, str(shards or 0))
    plan_path = _dump(steps / "plan.json", plan["result"])
    parts = [(root, plan_path, str(p["index"]), model_dir) for p in plan["result"]["parts"]]
    phase1 = _run_map("partition", parts, workers)
    parts_path = _dump(steps / "parts.json", [p["result"] for p in phase1])
    shuffle = _run_step("shards", core, root, plan_path, parts_path)
    shuffle_path = _dump(steps / "shuffle.json", shuffle["result"])
    tasks = [
        (root, plan_path, shuffle_path, str(i), model_dir) for i in range(len(shuffle["result"]["tasks"]))
    ]
    phase2 = _run_map("score", tasks, workers)
    shards_path = _dump(steps / "shards.json", [s["result"] for s in phase2])
    finish = _run_step("finish", core, root, plan_path, parts_path, shards_path)
    return Pipeline(plan, phase1, shuffle, phase2, finish, time.perf_counter() - started, steps)


# --- the dataset-level invariants ------------------------------------------------------------------------


def check_invariants(store_root: Path, export: Export, pipeline: Pipeline) -> dict[str, Any]:
    """What the summary promises, checked against the export and the published output itself."""
    import pyarrow.parquet as pq

    from churnguard.batch import as_of_after

    s = pipeline.summary
    ids = [pq.read_table(store_root / BUCKET / key, columns=["user_id"]).column(0) for key in s["outputs"]]
    scored = sum(len(c) for c in ids)
    distinct = len({u for c in ids for u in c.to_pylist()})
    as_of = as_of_after(export.latest_event)
    shard_as_of = {str(r["result"]["as_of"])[:10] for r in pipeline.phase2}
    sent = sum(r["promotions_sent"] for r in pipeline.phase2)
    promoted = sum(r["promoted_customers"] for r in pipeline.phase2)
    checks = {
        "status ok": s["status"] == "ok",
        "rows in = rows exported": s["rows_in"] == export.rows,
        "rows in = used + rejected": s["rows_in"] == s["rows_used"] + s["rows_rejected"],
        "rejected = planted bad rows": s["rows_rejected"] == export.rejected_rows,
        "every customer exactly once": scored == distinct == s["customers_scored"] == export.customers,
        "one as-of": s["as_of"] == as_of and shard_as_of == {as_of},
        "promotions <= customers": sent == s["customers_queued"] == promoted
        and s["customers_queued"] <= s["customers_at_or_above_promotion"] <= s["customers_scored"],
    }
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "as_of": s["as_of"],
        "customers_in_output": scored,
        "promotions_sent": sent,
    }


# --- one size: export, pipeline, invariants, figures ----------------------------------------------------


def _dist(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "mean": round(statistics.fmean(values), 3),
        "max": round(max(values), 3),
    }


def _phase(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A phase's distributions over its items, and the items themselves (without their domain results)."""
    rows = [
        {
            "item": i,
            "seconds": round(m["seconds"], 3),
            "process_s": round(m["process_s"], 3),
            "peak_rss_mb": round(m["peak_rss_mb"], 1),
            "rows_in": m["result"]["rows_in"],
            "bytes_in": m["bytes_in"],
            "bytes_out": m["bytes_out"],
            "requests": m["requests"],
        }
        for i, m in enumerate(items)
    ]
    return {
        "count": len(rows),
        **{
            k: _dist([r[k] for r in rows])
            for k in ("seconds", "process_s", "peak_rss_mb", "rows_in", "bytes_in")
        },
        "items": rows,
    }


def _single(step: dict[str, Any]) -> dict[str, Any]:
    return {
        "seconds": round(step["seconds"], 3),
        "process_s": round(step["process_s"], 3),
        "peak_rss_mb": round(step["peak_rss_mb"], 1),
        "requests": step["requests"],
    }


def figures(export: Export, pipeline: Pipeline, invariants: dict[str, Any], workers: int) -> dict[str, Any]:
    """One run's result: the issue's keys first, then the distributions behind them."""
    s, p1, p2 = pipeline.summary, _phase(pipeline.phase1), _phase(pipeline.phase2)
    singles = [pipeline.plan, pipeline.plan_shards, pipeline.finish]
    requests: Counter[str] = Counter()
    for step in [*singles, *pipeline.phase1, *pipeline.phase2]:
        requests.update(step["requests"])
    return {
        "customers": s["customers_scored"],
        "events": s["rows_used"],
        "parts": s["parts"],
        "shards": p2["count"],
        "phase1_part_s_max": p1["seconds"]["max"],
        "phase2_shard_s_max": p2["seconds"]["max"],
        "peak_rss_mb_max": max(m["peak_rss_mb"] for m in [*singles, *pipeline.phase1, *pipeline.phase2]),
        "end_to_end_s": round(pipeline.end_to_end_s, 2),
        "workers": workers,
        "rows_in": s["rows_in"],
        "rows_rejected": s["rows_rejected"],
        "planned_shards": s["shards"],
        "pieces": sum(len(r["result"]["rows_per_shard"]) for r in pipeline.phase1),
        # a customer in k parts counts k times: > 1 means customers span parts
        "parts_per_customer": round(
            sum(sum(r["result"]["customers_per_shard"].values()) for r in pipeline.phase1)
            / max(1, s["customers_scored"]),
            2,
        ),
        "customers_queued": s["customers_queued"],
        "export": {
            "rows": export.rows,
            "gzip_bytes": export.bytes,
            "seconds": round(export.seconds, 1),
            "rows_per_s": round(export.rows_per_second),
        },
        "plan": _single(pipeline.plan),
        "phase1": p1,
        "plan_shards": _single(pipeline.plan_shards),
        "phase2": p2,
        "finish": _single(pipeline.finish),
        "store_requests": dict(requests),
        "invariants": invariants,
    }


def measure_size(
    work: Path,
    customers: int,
    parts: int,
    model_dir: str,
    *,
    workers: int = 1,
    shards: int | None = None,
    seed: int = 11,
) -> dict[str, Any]:
    """Export ``customers`` customers in ``parts`` parts under ``work``, score them through the
    pipeline, check the invariants; the run's figures. What the benchmark and its test both run."""
    dataset = f"export-{customers}"
    store_root = work / "store"
    export = write_export(store_root / BUCKET / "incoming" / dataset, customers, parts, seed=seed)
    print(
        f"{customers:,} customers: exported {export.rows:,} rows in {export.parts} parts "
        f"({export.bytes / 1e6:,.0f} MB gzip) in {export.seconds:.0f} s",
        flush=True,
    )
    pipeline = run_pipeline(store_root, dataset, model_dir, workers=workers, shards=shards)
    return figures(export, pipeline, check_invariants(store_root, export, pipeline), workers)


# --- projection ---------------------------------------------------------------------------------------

MODEL = (
    "wall = plan + ceil(P/c)*max_part + plan_shards + ceil(N/c)*max_shard + finish + 2*map_run_overhead "
    "+ (ceil(P/c)+ceil(N/c))*child_start; a part/shard = its measured child process time (cold start "
    "included) + S3 time (requests*s3_request_s + bytes/s3_mb_per_s) at the projected P, N. "
    "cost = GB-s(3,008 MB = 2.9375 GB; every step's billed time, means for parts/shards) * price + "
    "Lambda requests + Step Functions transitions (10 + 2*(P+N)) + S3 PUT (P*(N+1) pieces+rejects, "
    "2N parquet+copy) and GET (P*N pieces, 2P parts+rejects)"
)


def _io_s(requests: float, nbytes: float) -> float:
    a = {k: v["value"] for k, v in ASSUMPTIONS.items()}
    return requests * a["s3_request_s"] + nbytes / (a["s3_mb_per_s"] * 1e6)


@dataclass(frozen=True)
class _Scaled:
    parts: int
    shards: int
    part_s: tuple[float, float]  # (max, mean) per part, S3 included
    shard_s: tuple[float, float]
    plan_s: float
    plan_shards_s: float
    finish_s: float


def _scaled(run: dict[str, Any], target: int, shuffle_s: float) -> _Scaled:
    """Parts and shards at their measured sizes for ``target`` customers, and their projected times
    (``shuffle_s``: plan_shards' call at that size)."""
    parts, shards = scaled_counts(run, target)
    p1, p2 = run["phase1"], run["phase2"]
    part_bytes = [i["bytes_in"] + i["bytes_out"] for i in p1["items"]]
    shard_bytes = [i["bytes_in"] + i["bytes_out"] for i in p2["items"]]
    part_io = (_io_s(shards + 2, max(part_bytes)), _io_s(shards + 2, statistics.fmean(part_bytes)))
    shard_io = (_io_s(parts + 1, max(shard_bytes)), _io_s(parts + 1, statistics.fmean(shard_bytes)))
    parquet = statistics.fmean(i["bytes_out"] for i in p2["items"])
    return _Scaled(
        parts=parts,
        shards=shards,
        part_s=(p1["process_s"]["max"] + part_io[0], p1["process_s"]["mean"] + part_io[1]),
        shard_s=(p2["process_s"]["max"] + shard_io[0], p2["process_s"]["mean"] + shard_io[1]),
        plan_s=run["plan"]["process_s"] + _io_s(10, 0),
        plan_shards_s=run["plan_shards"]["process_s"] + shuffle_s,
        # finish checks the shuffle again (summarize_dataset), then copies N objects and joins P rejects
        finish_s=run["finish"]["process_s"] + shuffle_s + _io_s(shards + parts + 2, shards * parquet),
    )


def scaled_counts(run: dict[str, Any], target: int) -> tuple[int, int]:
    """P and N for ``target`` customers at the run's customers per part and per shard."""
    scale = target / run["customers"]
    return math.ceil(run["parts"] * scale), math.ceil(run["shards"] * scale)


MAX_SYNTHETIC_PIECES = 1_000_000  # beyond this the shuffle step is measured smaller and scaled (P*N)


def measure_shuffle_at(parts: int, shards: int) -> dict[str, Any]:
    """plan_shards' call time and peak RSS for P parts x N shards, in a child on one core; above
    MAX_SYNTHETIC_PIECES measured at a proportionally smaller P and N and scaled linearly."""
    shrink = math.sqrt(min(1.0, MAX_SYNTHETIC_PIECES / (parts * shards)))
    p, n = max(1, int(parts * shrink)), max(1, int(shards * shrink))
    measured = _run_step("shuffle_at", _cores()[0], "-", str(p), str(n))
    factor = parts * shards / (p * n)
    return {
        "parts": parts,
        "shards": shards,
        "measured_at": [p, n],
        "seconds": round(measured["seconds"] * factor, 2),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "results_json_mb": round(measured["result"]["input_mb"] * factor, 1),
    }


def _costs(s: _Scaled) -> dict[str, float]:
    billed = s.plan_s + s.plan_shards_s + s.finish_s + s.parts * s.part_s[1] + s.shards * s.shard_s[1]
    price = {k: v["usd"] for k, v in PRICES.items()}
    puts = s.parts * (s.shards + 1) + 2 * s.shards + 2
    gets = s.parts * s.shards + 2 * s.parts + 10
    return {
        "lambda_compute": billed * LAMBDA_MEMORY_MB / 1024 * price["lambda_gb_s"],
        "lambda_requests": (s.parts + s.shards + 3) * price["lambda_request"],
        "step_functions": (10 + 2 * (s.parts + s.shards)) * price["sfn_transition"],
        "s3_requests": puts * price["s3_put"] + gets * price["s3_get"],
    }


def project(run: dict[str, Any], target: int, concurrency: int, shuffle_s: float) -> dict[str, Any]:
    """Wall time and cost of ``target`` customers at ``concurrency`` from a measured run."""
    s = _scaled(run, target, shuffle_s)
    a = {k: v["value"] for k, v in ASSUMPTIONS.items()}
    waves = (math.ceil(s.parts / concurrency), math.ceil(s.shards / concurrency))
    orchestration = 2 * a["map_run_overhead_s"] + sum(waves) * a["child_start_s"]
    terms = {
        "plan_s": s.plan_s,
        "phase1_s": waves[0] * s.part_s[0],
        "plan_shards_s": s.plan_shards_s,
        "phase2_s": waves[1] * s.shard_s[0],
        "finish_s": s.finish_s,
        "orchestration_s": orchestration,
    }
    costs = _costs(s)
    return {
        "wall_s": round(sum(terms.values()), 1),
        "cost_usd": round(sum(costs.values()), 4),
        "concurrency": concurrency,
        "model": MODEL,
        "parts": s.parts,
        "shards": s.shards,
        "pieces": s.parts * s.shards,
        "waves": {"phase1": waves[0], "phase2": waves[1]},
        "part_s_max": round(s.part_s[0], 2),
        "shard_s_max": round(s.shard_s[0], 2),
        "wall_terms_s": {k: round(v, 1) for k, v in terms.items()},
        "cost_terms_usd": {k: round(v, 4) for k, v in costs.items()},
        "wall_dominated_by": max(terms, key=lambda k: terms[k]),
        "cost_dominated_by": max(costs, key=lambda k: costs[k]),
    }


def projection(run: dict[str, Any]) -> dict[str, Any]:
    """Per target: the headline concurrency's figures at top level, every concurrency below."""
    out: dict[str, Any] = {
        "based_on_customers": run["customers"],
        "lambda": {
            "memory_mb": LAMBDA_MEMORY_MB,
            "gb": LAMBDA_MEMORY_MB / 1024,
            "vcpu": round(LAMBDA_VCPU, 2),
            "note": "times are measured per core on this machine; at 3,008 MB Lambda gives ~1.7 vCPU of "
            "credit but every phase is single-threaded, so one core's speed is what counts (Lambda's "
            "x86 core is assumed as fast as this machine's)",
        },
        "prices": PRICES,
        "assumptions": ASSUMPTIONS,
    }
    for name, target in TARGETS.items():
        shuffle = measure_shuffle_at(*scaled_counts(run, target))
        by = {str(c): project(run, target, c, shuffle["seconds"]) for c in CONCURRENCY}
        out[name] = {**by[str(HEADLINE_CONCURRENCY)], "plan_shards_at_size": shuffle, "at_concurrency": by}
    return out


# --- report ---------------------------------------------------------------------------------------------


def _run_rows(runs: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| customers | events | parts | shards | phase 1 s/part (median / max) "
        "| phase 2 s/shard (median / max) | process s max (1 / 2) | peak RSS MB max | end-to-end s "
        "| invariants |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        p1, p2 = r["phase1"], r["phase2"]
        lines.append(
            f"| {r['customers']:,} | {r['events']:,} | {r['parts']} | {r['shards']} "
            f"| {p1['seconds']['median']:.1f} / {p1['seconds']['max']:.1f} "
            f"| {p2['seconds']['median']:.1f} / {p2['seconds']['max']:.1f} "
            f"| {p1['process_s']['max']:.1f} / {p2['process_s']['max']:.1f} | {r['peak_rss_mb_max']:,.0f} "
            f"| {r['end_to_end_s']:.1f} | {'ok' if r['invariants']['ok'] else 'FAILED'} |"
        )
    return lines


def _projection_rows(proj: dict[str, Any]) -> list[str]:
    lines = [
        "| customers | concurrency | parts | shards | pieces | wall s | cost $ | wall dominated by "
        "| cost dominated by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in TARGETS:
        for c, p in proj[name]["at_concurrency"].items():
            lines.append(
                f"| {name} | {int(c):,} | {p['parts']:,} | {p['shards']:,} | {p['pieces']:,} "
                f"| {p['wall_s']:,.0f} | {p['cost_usd']:.2f} | {p['wall_dominated_by']} "
                f"| {p['cost_dominated_by']} |"
            )
    return lines


def render(result: dict[str, Any]) -> str:
    proj = result["projection"]
    lines = [
        "# Scale: multi-part dataset drops through the shuffle",
        "",
        f"Model {result['model_version']}; {result['machine']['cpu']} ({result['machine']['cores']} cores), "
        f"{result['workers']} child(ren) at a time, each pinned to one core; store: local directory "
        "(compute measured, S3 latency and prices projected); promotions counted, reasons for promoted.",
        "Phase times are the domain call; process s adds the child's start-up (imports + model: a cold "
        "start).",
        "",
        *_run_rows(result["runs"]),
        "",
        f"Projection from the {proj['based_on_customers']:,}-customer run (parts and shards at its sizes):",
        "",
        *_projection_rows(proj),
        "",
        f"Model: {MODEL}.",
        "Assumptions: "
        + "; ".join(f"{k} = {v['value']} ({v['source']})" for k, v in proj["assumptions"].items())
        + ".",
        "",
    ]
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": len(_cores())}


def _default_model() -> Path:
    return TRAINED_MODEL if (TRAINED_MODEL / "metadata.json").exists() else FIXTURE_MODEL


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Multi-part dataset drops scored through the two-phase shuffle (plan, partition every "
        "part, plan shards, score every shard, finish), each step a child process on one core; measured "
        "per size, then projected to 10M and 100M customers.",
    )
    parser.add_argument(
        "--customers", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated sizes"
    )
    parser.add_argument("--parts", type=int, default=8, help="part files per export (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="children run at a time (default 1)")
    parser.add_argument("--shards", type=int, default=None, help="force N shards (default: plan_dataset's)")
    parser.add_argument(
        "--model-dir", default=str(_default_model()), help="artifacts/model, else the fixture"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where scale.{json,md} go")
    parser.add_argument("--work", type=Path, default=None, help="where the datasets go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the datasets and step files")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    from churnguard.model_metadata import ModelMetadata

    work = args.work or Path(tempfile.mkdtemp(prefix="churnguard-scale-"))
    started, runs = time.perf_counter(), []
    try:
        for customers in sorted(int(c) for c in args.customers.split(",")):
            folder = work / str(customers)
            shutil.rmtree(folder, ignore_errors=True)
            run = measure_size(
                folder, customers, args.parts, args.model_dir, workers=args.workers, shards=args.shards
            )
            print("\n".join(_run_rows([run])[2:]), flush=True)
            runs.append(run)
            if not args.keep:
                shutil.rmtree(folder)
    finally:  # a failed step leaves no dataset behind (unless kept or placed with --work)
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    largest = runs[-1]
    result = {
        **{k: largest[k] for k in ("customers", "events", "parts", "shards")},
        **{
            k: largest[k]
            for k in ("phase1_part_s_max", "phase2_shard_s_max", "peak_rss_mb_max", "end_to_end_s")
        },
        "model_version": ModelMetadata.from_directory(args.model_dir).model_version,
        "machine": _machine(),
        "workers": args.workers,
        "generator": "benchmarks.scale_export (week by week, vectorised; 26 weeks, ~31 events/customer)",
        "store": "benchmarks.local_store.LocalObjectStore (local directory behind the ObjectStore port)",
        "runs": runs,
        "projection": projection(largest),
        "benchmark_s": round(time.perf_counter() - started, 1),
    }
    write_results("scale", result, render(result), directory=args.out)
    return 0 if all(r["invariants"]["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
