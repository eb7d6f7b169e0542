"""Real-time benchmark (issue 13 §3): ``POST /v1/events`` latency and throughput, the inactivity sweep.

* ``POST /v1/events``, one event (state read, update, re-score, conditional write), warm, through
  ``functions/score_api/app.py``'s ``lambda_handler`` with an API Gateway event, against moto's
  server over HTTP on 127.0.0.1 with the resources template.yaml declares (the state table with its
  TTL, the promotions queue, the idempotency table). The handler process is pinned to one core; moto
  runs in its own process. botocore event hooks count the AWS round trips per request and the time
  spent in them, so the compute is separated from moto's latency and AWS's is added back from an
  assumption (``AWS_ASSUMPTIONS``, written into the results).
* events/s for requests of 100 events: 100 customers one event each, and 100 events of one customer.
* The sweep (``realtime.rescore_inactive``) over ``--customers`` stored customers (default 1,000,000)
  in memory, in ``--segments`` parallel segments (one process and core each), and over 20,000 through
  the DynamoDB adapter against moto (the per-page cost with the adapter and a real Scan). The
  population: a few thousand distinct synthetic customers (``generate_synthetic_events``, 78 weeks,
  every event with an id, as a retailer sending ids would), applied to states, swept once at t0 (so
  each record carries its last score and warning state, as after a day of operation), then
  replicated under other user ids; the measured sweep is the next day's (t0 + 1 day).

Usage: ``python -m benchmarks.realtime [--customers 1000000] [--segments 2]``
-> benchmarks/results/realtime.{json,md}; the second step of ``make bench-serving`` (~5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import math
import os
import statistics
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, peak_rss_mb, pin_one_core, run_child, write_results

DAY = 86_400.0
HISTORY_WEEKS = 78
DISTINCT_CUSTOMERS = 4_000  # distinct states; the sweep's population replicates them
API_CUSTOMERS = 100  # customers stored before the POST /v1/events measurements
T0 = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)  # the synthetic histories end just before it

# What the projections add for AWS. DynamoDB: "single-digit millisecond performance at any scale"
# (AWS DynamoDB documentation); in-region GetItem / PutItem p50 is commonly measured at ~3-5 ms.
# AWS publishes no p99 or Scan page latency: those two are assumptions, named as such.
AWS_ASSUMPTIONS = {
    "dynamodb_call_p50_ms": 4.0,
    "dynamodb_call_p50_ms_range": [3.0, 5.0],
    "dynamodb_call_p99_ms": 10.0,
    "dynamodb_scan_page_1mb_ms": 40.0,
    "dynamodb_max_page_bytes": 1_048_576,
    "sqs_send_p50_ms": 10.0,
    "source": (
        "AWS DynamoDB docs: 'single-digit millisecond performance at any scale' (p50 3-5 ms per "
        "GetItem/PutItem in-region assumed); p99 per call, the 1 MB Scan page latency and SQS "
        "SendMessage are assumptions, not published figures"
    ),
}


# ---------------------------------------------------------------------------------------------
# the population
# ---------------------------------------------------------------------------------------------


def _histories(customers: int, seed: int = 13) -> Any:
    """``customers`` synthetic histories ending just before T0, with an ``event_id`` per event."""
    from churnguard.datasets import generate_synthetic_events

    start = (T0 - dt.timedelta(weeks=HISTORY_WEEKS)).strftime("%Y-%m-%d")
    events = generate_synthetic_events(customers, start=start, weeks=HISTORY_WEEKS, seed=seed)
    events = events.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    events["event_id"] = events["user_id"] + "-" + events.groupby("user_id").cumcount().astype(str)
    events["ts"] = events["timestamp"].to_numpy().astype("datetime64[ns]").astype("int64") / 1e9
    return events[events["ts"] < T0.timestamp()].reset_index(drop=True)


def _states(events: Any) -> dict[str, Any]:
    """user id -> CustomerState of their whole history."""
    from churnguard.customer_state import StateEvent, apply_events

    states = {}
    for user_id, rows in events.groupby("user_id", sort=False):
        batch = [
            StateEvent(r.ts, r.event_type, r.amount, r.quantity, r.event_id, {"country": r.country})
            for r in rows.itertuples(index=False)
        ]
        states[str(user_id)] = apply_events(None, batch).state
    return states


class _Publisher:
    """Promotions publisher that accepts everything (counts what it was given)."""

    def __init__(self) -> None:
        self.sent = 0

    def publish(self, messages: Any) -> Any:
        from churnguard.promotions import PublishResult

        self.sent += len(messages)
        return PublishResult(sent=len(messages))


class ReplicatedStore:
    """``CustomerStateStore`` in memory for large populations: the keys of one scan segment, sorted
    once (the unit tests' ``MemoryCustomerStateStore`` sorts every key on every page), records shared
    between replicas (they are immutable), conditional writes as DynamoDB's."""

    def __init__(self, records: dict[str, tuple[Any, int]], segment: int = 0, segments: int = 1) -> None:
        self.items = records
        self.keys = sorted(k for k in records if zlib.crc32(k.encode()) % segments == segment)
        self.segment, self.segments = segment, segments
        self.calls: Counter[str] = Counter()

    def get(self, user_id: str) -> tuple[Any, int]:
        self.calls["get"] += 1
        return self.items.get(user_id, (None, 0))

    def put(self, user_id: str, record: Any, expected_version: int) -> int:
        from churnguard.ports import StateConflictError, new_record_version

        self.calls["put"] += 1
        if self.items.get(user_id, (None, 0))[1] != expected_version:
            raise StateConflictError("version changed")
        version = new_record_version()
        self.items[user_id] = (record, version)
        return version

    def delete(self, user_id: str) -> None:
        self.calls["delete"] += 1
        self.items.pop(user_id, None)

    def scan_page(self, cursor: str | None, limit: int, *, segment: int = 0, segments: int = 1) -> Any:
        from churnguard.ports import CustomerPage, StoredCustomer

        assert (segment, segments) == (self.segment, self.segments), "built for another segment"
        self.calls["scan"] += 1
        start = 0 if cursor is None else bisect.bisect_right(self.keys, cursor)
        page = self.keys[start : start + limit]
        customers = [StoredCustomer(k, *self.items[k]) for k in page if k in self.items]
        return CustomerPage(customers, page[-1] if start + limit < len(self.keys) else None)

    def approximate_count(self) -> int:
        return len(self.items)


def _population(model_dir: str) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The distinct customers' records after a sweep at T0 (last score, warning state), and facts."""
    from churnguard.bundle import ModelBundle
    from churnguard.customer_state import CustomerState
    from churnguard.ports import CustomerRecord
    from churnguard.promotions import PromotionPolicy
    from churnguard.realtime import rescore_inactive

    started = time.perf_counter()
    events = _histories(DISTINCT_CUSTOMERS)
    states = _states(events)
    built_s = time.perf_counter() - started
    blobs = {u: s.to_bytes() for u, s in states.items()}
    store = ReplicatedStore({u: (CustomerRecord(blobs[u], states[u].last_event_s), 0) for u in states})
    first = rescore_inactive(
        store, ModelBundle.from_directory(model_dir), policy=PromotionPolicy(), publisher=_Publisher(), now=T0
    )
    sizes = sorted(len(b) for b in blobs.values())
    decode_s = _best_of(3, lambda: [CustomerState.from_bytes(b) for b in blobs.values()])
    facts = {
        "distinct_customers": len(states),
        "events_per_customer": len(events) / len(states),
        "state_bytes_p50": sizes[len(sizes) // 2],
        "state_bytes_p99": sizes[int(len(sizes) * 0.99)],
        "state_bytes_mean": sum(sizes) / len(sizes),
        "build_states_s": built_s,
        "first_sweep_warnings": first.warnings,
        "from_bytes_us": decode_s / len(blobs) * 1e6,
    }
    return sorted(store.items.items()), facts


def _best_of(n: int, fn: Any) -> float:
    """The least CPU time of ``n`` runs (the host is shared: wall time includes others' load)."""
    best = math.inf
    for _ in range(n):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def _replicate(distinct: list[tuple[str, Any]], customers: int) -> dict[str, tuple[Any, int]]:
    """``customers`` records: the distinct ones cycled under new user ids (versions as stored)."""
    return {f"u{i:09d}": distinct[i % len(distinct)][1] for i in range(customers)}


# ---------------------------------------------------------------------------------------------
# AWS call accounting (botocore event hooks)
# ---------------------------------------------------------------------------------------------


class AwsCalls:
    """Counts AWS API calls by ``service.Operation`` and the time spent in them (serialise, HTTP,
    parse), for every client made from boto3's default session after ``install``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds = 0.0
        self._started: dict[int, float] = {}

    def install(self) -> AwsCalls:
        import boto3

        boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        events = boto3.DEFAULT_SESSION.events
        events.register("before-call", self._before)
        events.register("after-call", self._after)
        events.register("after-call-error", self._after)
        return self

    def _before(self, event_name: str, **_: Any) -> None:
        self._started[threading.get_ident()] = time.perf_counter()

    def _after(self, event_name: str, **_: Any) -> None:
        started = self._started.pop(threading.get_ident(), None)
        if started is not None:
            self.seconds += time.perf_counter() - started
        _, service, operation = event_name.split(".", 2)
        self.counts[f"{service}.{operation}"] += 1

    def reset(self) -> tuple[Counter[str], float]:
        counts, seconds = self.counts, self.seconds
        self.counts, self.seconds = Counter(), 0.0
        return counts, seconds


def _local_aws() -> tuple[Any, Any]:
    """moto's server, and the resources of template.yaml created in it (boto3 pointed at it)."""
    import boto3

    from infra.local_aws import MotoServer, aws_environment
    from infra.local_stack.resources import create_resources
    from infra.template import load_template

    server = MotoServer()
    server.start()
    os.environ.update(aws_environment(server.url))
    clients = {name: boto3.client(name) for name in ("s3", "sqs", "ssm", "dynamodb")}
    return server, create_resources(load_template(), clients)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# ---------------------------------------------------------------------------------------------
# children
# ---------------------------------------------------------------------------------------------


def child_events(model_dir: str, requests: int, batches: int) -> dict:
    """POST /v1/events through the handler against moto: one event warm, then requests of 100."""
    server, resources = _local_aws()
    try:
        pin_one_core()  # after moto started: its process keeps every core
        calls = AwsCalls().install()
        os.environ.update(resources.function_env["ScoreApiFunction"])
        os.environ.pop("CHURNGUARD_MODEL_POINTER", None)
        os.environ["CHURNGUARD_MODEL_DIR"] = model_dir
        from infra.lambda_harness import LambdaContext, load_event, load_handler

        handler, context = load_handler("score_api"), LambdaContext()
        template = load_event("score_api/post_events.json")

        def post(events: list[dict]) -> tuple[float, dict]:
            event = {**template, "body": json.dumps({"events": events})}
            started = time.perf_counter()
            response = handler.lambda_handler(event, context)
            elapsed = time.perf_counter() - started
            assert response["statusCode"] == 202, response
            return elapsed, json.loads(response["body"])

        history = _histories(API_CUSTOMERS, seed=29)
        users = sorted(history["user_id"].unique().tolist())
        for _, rows in history.groupby("user_id", sort=True):  # store their histories
            post([_api_event(r) for r in rows.itertuples(index=False)])

        now = time.time()
        sequence = iter(range(10**9))

        def one_event(user_id: str) -> dict:
            k = next(sequence)
            return {
                "user_id": user_id,
                "timestamp": _iso(now - 3_600 + k * 1e-3),  # distinct instants in the last hour
                "event_type": "order",
                "amount": 20.0 + k % 50,
                "quantity": 1.0,
                "event_id": f"bench-{k}",
            }

        for i in range(100):  # warm
            post([one_event(users[i % len(users)])])
        calls.reset()
        latency, aws_s, per_request = [], [], []
        warnings = 0
        for i in range(requests):
            elapsed, body = post([one_event(users[i % len(users)])])
            counts, seconds = calls.reset()
            latency.append(elapsed * 1000)
            aws_s.append(seconds * 1000)
            per_request.append(counts)
            warnings += sum(bool(c.get("warning", {}).get("fired")) for c in body["customers"])
        total = sum(per_request, Counter())
        dynamodb = [sum(v for k, v in c.items() if k.startswith("dynamodb.")) for c in per_request]
        compute = [t - a for t, a in zip(latency, aws_s, strict=True)]
        out: dict[str, Any] = {
            "one_event": {
                "requests": requests,
                "p50_ms": _percentile(latency, 0.5),
                "p99_ms": _percentile(latency, 0.99),
                "in_aws_calls_p50_ms": _percentile(aws_s, 0.5),
                "compute_p50_ms": _percentile(compute, 0.5),
                "compute_p99_ms": _percentile(compute, 0.99),
                "dynamodb_calls_per_request_p50": _percentile([float(d) for d in dynamodb], 0.5),
                "dynamodb_calls_per_request_mean": statistics.fmean(dynamodb),
                "dynamodb_calls_per_request_max": max(dynamodb),
                "aws_calls_by_operation_per_request": {k: v / requests for k, v in sorted(total.items())},
                "warnings_fired": warnings,
            }
        }
        for label, make in (
            ("batch_100_customers", lambda: [one_event(u) for u in users[:100]]),
            ("batch_100_events_one_customer", lambda: [one_event(users[0]) for _ in range(100)]),
        ):
            post(make())  # warm
            calls.reset()
            times, cpu, counts_all = [], [], Counter()
            for _ in range(batches):
                cpu_started = time.process_time()
                elapsed, body = post(make())
                cpu.append(time.process_time() - cpu_started)
                counts, _ = calls.reset()
                times.append(elapsed)
                counts_all += counts
                assert sum(c["events_applied"] for c in body["customers"]) == 100, body
            p50 = _percentile(times, 0.5)
            # The store calls of several customers overlap (realtime.STORE_CALL_THREADS), so the time
            # in calls is not subtracted from the wall time: the compute is the process's CPU time.
            compute_p50 = _percentile(cpu, 0.5)
            out[label] = {
                "requests": batches,
                "p50_ms": p50 * 1000,
                "events_per_s": 100 / p50,
                "compute_p50_ms": compute_p50 * 1000,
                "compute_events_per_s": 100 / compute_p50,
                "aws_calls_by_operation_per_request": {k: v / batches for k, v in sorted(counts_all.items())},
                "dynamodb_calls_per_request": sum(
                    v for k, v in counts_all.items() if k.startswith("dynamodb.")
                )
                / batches,
            }
        out["rss_mb"] = peak_rss_mb()
        return out
    finally:
        server.stop()


def _api_event(row: Any) -> dict:
    return {
        "user_id": row.user_id,
        "timestamp": _iso(row.ts),
        "event_type": row.event_type,
        "amount": float(row.amount),
        "quantity": float(row.quantity),
        "event_id": row.event_id,
        "profile": {"country": row.country, "acquisition_channel": row.acquisition_channel},
    }


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")


def child_sweep_memory(model_dir: str, customers: int, segment: int, segments: int) -> dict:
    """One segment of the sweep over ``customers`` replicated records, in memory, on one core."""
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[segment % len(cores)]})
    from churnguard.bundle import ModelBundle
    from churnguard.promotions import PromotionPolicy
    from churnguard.realtime import rescore_inactive

    distinct, facts = _population(model_dir)
    started = time.perf_counter()
    store = ReplicatedStore(_replicate(distinct, customers), segment, segments)
    replicate_s = time.perf_counter() - started
    bundle = ModelBundle.from_directory(model_dir)
    publisher = _Publisher()
    wall, cpu = time.perf_counter(), time.process_time()
    result = rescore_inactive(
        store,
        bundle,
        policy=PromotionPolicy(),
        publisher=publisher,
        now=T0 + dt.timedelta(days=1),
        segment=segment,
        segments=segments,
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        **facts,
        "segment": segment,
        "segments": segments,
        "population": customers,
        "replicate_s": replicate_s,
        "scanned": result.scanned,
        "scored": result.scored,
        "warnings": result.warnings,
        "failed": result.failed,
        "wall_s": wall,
        "cpu_s": cpu,
        "customers_per_s": result.scanned / wall,
        "customers_per_cpu_s": result.scanned / cpu,
        "store_calls": dict(store.calls),
        "rss_mb": peak_rss_mb(),
    }


class _CapturingDynamoDb:
    """Stands in for the DynamoDB client under ``DynamoDbCustomerStateStore.put``: keeps the item the
    adapter writes (so the table is loaded with exactly the adapter's items, by BatchWriteItem)."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def put_item(self, **request: Any) -> dict:
        self.items.append(request["Item"])
        return {}


def _item_bytes(item: dict) -> int:
    """A DynamoDB item's size as DynamoDB counts it (names + values; a number ~ half its digits)."""
    size = 0
    for name, value in item.items():
        ((kind, v),) = value.items()
        size += len(name.encode())
        if kind in ("B", "S"):
            size += len(v) if isinstance(v, bytes) else len(v.encode())
        elif kind == "N":
            size += len(v.replace("-", "").replace(".", "")) // 2 + 1
        elif kind == "BOOL":
            size += 1
        elif kind == "L":
            size += 3 + sum(len(m["S"].encode()) + 1 for m in v)
    return size


def child_sweep_moto(model_dir: str, customers: int, page_size: int) -> dict:
    """The sweep through the DynamoDB adapter over ``customers`` items in moto (Scan over HTTP)."""
    server, resources = _local_aws()
    try:
        pin_one_core()
        import boto3

        from churnguard.adapters import DynamoDbCustomerStateStore
        from churnguard.bundle import ModelBundle
        from churnguard.promotions import PromotionPolicy
        from churnguard.realtime import rescore_inactive

        table = resources.names["CustomerStateTable"]
        distinct, _ = _population(model_dir)
        capture = _CapturingDynamoDb()
        writer = DynamoDbCustomerStateStore(capture, table)  # type: ignore[arg-type]
        for user_id, (record, _) in _replicate(distinct, customers).items():
            writer.put(user_id, record, 0)
        loading = time.perf_counter()
        setup_client = boto3.client("dynamodb")
        for i in range(0, len(capture.items), 25):
            batch = [{"PutRequest": {"Item": item}} for item in capture.items[i : i + 25]]
            pending: dict = {table: batch}
            while pending:
                pending = setup_client.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
        load_s = time.perf_counter() - loading
        item_bytes = statistics.fmean(_item_bytes(item) for item in capture.items)
        calls = AwsCalls().install()
        store = DynamoDbCustomerStateStore(boto3.client("dynamodb"), table)
        bundle = ModelBundle.from_directory(model_dir)
        wall = time.perf_counter()
        result = rescore_inactive(
            store,
            bundle,
            policy=PromotionPolicy(),
            publisher=_Publisher(),
            now=T0 + dt.timedelta(days=1),
            page_size=page_size,
        )
        wall = time.perf_counter() - wall
        counts, in_aws = calls.reset()
        pages = counts.get("dynamodb.Scan", 0)
        return {
            "population": customers,
            "page_size": page_size,
            "load_s": load_s,
            "item_bytes_approx": item_bytes,
            "scanned": result.scanned,
            "warnings": result.warnings,
            "wall_s": wall,
            "customers_per_s": result.scanned / wall,
            "pages": pages,
            "page_ms": wall / pages * 1000,
            "scan_in_moto_ms_per_page": in_aws / pages * 1000 if pages else 0.0,
            "compute_ms_per_page": (wall - in_aws) / pages * 1000 if pages else 0.0,
            "aws_calls": dict(sorted(counts.items())),
            "warnings_written": counts.get("dynamodb.PutItem", 0),
        }
    finally:
        server.stop()


CHILDREN = {"events": child_events, "sweep_memory": child_sweep_memory, "sweep_moto": child_sweep_moto}


# ---------------------------------------------------------------------------------------------
# projections and the table
# ---------------------------------------------------------------------------------------------


def project(result: dict, segments_aws: int = 16) -> dict:
    """AWS figures from the local ones and ``AWS_ASSUMPTIONS``: compute measured here, AWS latency
    per round trip assumed."""
    from churnguard import realtime

    threads = realtime.STORE_CALL_THREADS
    a = AWS_ASSUMPTIONS
    one = result["events"]["one_event"]
    calls = one["dynamodb_calls_per_request_p50"]
    lo, hi = a["dynamodb_call_p50_ms_range"]
    sweep = result["sweep_memory"]
    rate = sweep["customers_per_s_per_core"]
    item_bytes = result["sweep_moto"]["item_bytes_approx"]
    per_page = max(1, int(a["dynamodb_max_page_bytes"] // item_bytes))
    per_segment = 10_000_000 / segments_aws
    scan_s = per_segment / per_page * a["dynamodb_scan_page_1mb_ms"] / 1000
    writes_s = (
        per_segment * sweep["warnings_per_customer"] * 2 * a["dynamodb_call_p50_ms"] / 1000 / threads
    )  # a warning: its write, then the outbox cleared; a page's writes run ``threads`` at a time
    compute_s = per_segment / rate
    return {
        "events_one_p50_ms": one["compute_p50_ms"] + calls * a["dynamodb_call_p50_ms"],
        "events_one_p50_ms_range": [one["compute_p50_ms"] + calls * lo, one["compute_p50_ms"] + calls * hi],
        "events_one_p99_ms": one["compute_p99_ms"] + calls * a["dynamodb_call_p99_ms"],
        "dynamodb_calls_per_event_request": calls,
        # the calls of a request's customers run STORE_CALL_THREADS at a time: reads, then writes
        "batch_100_customers_events_per_s": 100
        / (
            result["events"]["batch_100_customers"]["compute_p50_ms"] / 1000
            + math.ceil(result["events"]["batch_100_customers"]["dynamodb_calls_per_request"] / threads)
            * a["dynamodb_call_p50_ms"]
            / 1000
        ),
        "sweep_1m_one_core_s": 1_000_000 / rate,
        "sweep_10m_segments": segments_aws,
        "sweep_10m_items_per_page": per_page,
        "sweep_10m_compute_s_per_segment": compute_s,
        "sweep_10m_scan_wait_s_per_segment": scan_s,
        "sweep_10m_warning_writes_s_per_segment": writes_s,
        "sweep_10m_s": compute_s + scan_s + writes_s,
    }


def render(result: dict) -> str:
    e, s, m, p = result["events"], result["sweep_memory"], result["sweep_moto"], result["projection"]
    one, b1, b2 = e["one_event"], e["batch_100_customers"], e["batch_100_events_one_customer"]
    rows = [
        ("POST /v1/events, 1 event, warm p50 via lambda_handler + moto (ms)", one["p50_ms"], ""),
        ("  p99 (ms)", one["p99_ms"], ""),
        ("  of which in moto calls, p50 (ms)", one["in_aws_calls_p50_ms"], ""),
        (
            "  compute without AWS calls, p50 / p99 (ms)",
            f"{one['compute_p50_ms']:.2f} / {one['compute_p99_ms']:.2f}",
            "",
        ),
        (
            "  DynamoDB round trips per request (p50 / max)",
            f"{one['dynamodb_calls_per_request_p50']:.0f} / {one['dynamodb_calls_per_request_max']}",
            "",
        ),
        (
            "  projected in AWS, p50 (ms; 3-5 ms a DynamoDB call)",
            p["events_one_p50_ms"],
            f"{p['events_one_p50_ms_range'][0]:.1f}-{p['events_one_p50_ms_range'][1]:.1f}",
        ),
        ("  projected in AWS, p99 (ms; 10 ms a call, assumed)", p["events_one_p99_ms"], ""),
        (
            "100 events, 100 customers: events/s (moto)",
            b1["events_per_s"],
            f"{b1['dynamodb_calls_per_request']:.0f} DynamoDB calls",
        ),
        (
            "  compute only, CPU (events/s) / projected in AWS (events/s)",
            f"{b1['compute_events_per_s']:,.0f} / {p['batch_100_customers_events_per_s']:,.0f}",
            "calls 10 at a time",
        ),
        (
            "100 events, 1 customer: events/s (moto)",
            b2["events_per_s"],
            f"{b2['dynamodb_calls_per_request']:.0f} DynamoDB calls",
        ),
        ("  compute only (events/s)", b2["compute_events_per_s"], ""),
        (
            f"sweep in memory, {s['population']:,} customers, {s['segments']} segments, 1 core each (s)",
            s["wall_s"],
            "",
        ),
        ("  customers/s per core (CPU time)", s["customers_per_s_per_core"], ""),
        ("  customers/s per segment (wall, shared host)", s["customers_per_wall_s_per_segment"], ""),
        ("  1M customers on one core, CPU (s)", p["sweep_1m_one_core_s"], ""),
        ("  CustomerState.from_bytes per state, CPU (us)", s["from_bytes_us"], ""),
        ("  warnings fired (next-day sweep)", s["warnings"], ""),
        (
            f"sweep via DynamoDB adapter + moto, {m['population']:,} customers (customers/s)",
            m["customers_per_s"],
            "",
        ),
        (
            f"  per Scan page (<= {m['page_size']} items and 1 MB; {m['pages']} pages): "
            "total / in Scan (moto) / compute (ms)",
            f"{m['page_ms']:.0f} / {m['scan_in_moto_ms_per_page']:.0f} / {m['compute_ms_per_page']:.0f}",
            "",
        ),
        (f"projected 10M sweep, {p['sweep_10m_segments']} segments in parallel (s)", p["sweep_10m_s"], ""),
        (
            "  per segment: compute / Scan wait / warning writes (s)",
            " / ".join(
                f"{p[f'sweep_10m_{k}_s_per_segment']:.0f}" for k in ("compute", "scan_wait", "warning_writes")
            ),
            f"{p['sweep_10m_items_per_page']} items per 1 MB page",
        ),
    ]
    lines = [
        "# ChurnGuard real-time benchmark",
        "",
        f"Model {result['model_version']}; handler pinned to one core, moto in its own process; "
        f"{s['distinct_customers']:,} distinct synthetic customers "
        f"({s['events_per_customer']:.0f} events each, "
        f"state {s['state_bytes_p50']} B p50 / {s['state_bytes_p99']} B p99) replicated. "
        f"AWS assumptions: {AWS_ASSUMPTIONS['source']}.",
        "",
        "| measurement | value | note |",
        "|---|---|---|",
    ]
    for label, value, note in rows:
        shown = (
            f"{value:,.3f}"
            if isinstance(value, float)
            else (f"{value:,}" if isinstance(value, int) else value)
        )
        lines.append(f"| {label} | {shown} | {note} |")
    return "\n".join(lines) + "\n"


def run(
    model_dir: str | Path = ROOT / "artifacts" / "model",
    *,
    customers: int = 1_000_000,
    segments: int = 2,
    moto_customers: int = 20_000,
    requests: int = 1_000,
    batches: int = 20,
) -> dict:
    """Every measurement, each in its own child process; the results with the AWS projection."""
    from churnguard.model_metadata import ModelMetadata

    model_dir = str(model_dir)
    env = {"POWERTOOLS_METRICS_NAMESPACE": "ChurnGuardBench"}
    result: dict[str, Any] = {
        "model_version": ModelMetadata.from_directory(model_dir).model_version,
        "aws_assumptions": AWS_ASSUMPTIONS,
    }
    started = time.perf_counter()
    result["events"], _ = run_child(
        "benchmarks.realtime", "events", "--model-dir", model_dir, str(requests), str(batches), env=env
    )
    parts: list[dict] = [{}] * segments
    threads = [
        threading.Thread(
            target=lambda i=i: parts.__setitem__(
                i,
                run_child(
                    "benchmarks.realtime",
                    "sweep_memory",
                    "--model-dir",
                    model_dir,
                    str(customers),
                    str(i),
                    str(segments),
                    env=env,
                )[0],
            )
        )
        for i in range(segments)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(parts), "a sweep segment failed"
    sweep = dict(parts[0])
    sweep.update(
        scanned=sum(p["scanned"] for p in parts),
        scored=sum(p["scored"] for p in parts),
        warnings=sum(p["warnings"] for p in parts),
        failed=sum(p["failed"] for p in parts),
        wall_s=max(p["wall_s"] for p in parts),
        segment_wall_s=[p["wall_s"] for p in parts],
        segment_cpu_s=[p["cpu_s"] for p in parts],
        # per core: customers per CPU second (the host is shared: wall time includes others' load)
        customers_per_s_per_core=statistics.fmean(p["customers_per_cpu_s"] for p in parts),
        customers_per_wall_s_per_segment=statistics.fmean(p["customers_per_s"] for p in parts),
        from_bytes_us=min(p["from_bytes_us"] for p in parts),
    )
    sweep["warnings_per_customer"] = sweep["warnings"] / sweep["scanned"]
    assert sweep["scanned"] == customers, sweep
    result["sweep_memory"] = sweep
    result["sweep_moto"], _ = run_child(
        "benchmarks.realtime", "sweep_moto", "--model-dir", model_dir, str(moto_customers), "1000", env=env
    )
    result["projection"] = project(result)
    result["total_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--model-dir", default=str(ROOT / "artifacts" / "model"))
    parser.add_argument("--customers", type=int, default=1_000_000, help="the in-memory sweep's population")
    parser.add_argument("--segments", type=int, default=2, help="parallel sweep segments (one core each)")
    parser.add_argument("--moto-customers", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=1_000, help="single-event requests measured")
    parser.add_argument("--batches", type=int, default=20, help="requests of 100 events measured, each kind")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("args", nargs="*")
    args = parser.parse_args(argv)
    if args.child:
        extra = [int(a) if a.lstrip("-").isdigit() else a for a in args.args]
        print(json.dumps(CHILDREN[args.child](args.model_dir, *extra)))
        return 0
    result = run(
        args.model_dir,
        customers=args.customers,
        segments=args.segments,
        moto_customers=args.moto_customers,
        requests=args.requests,
        batches=args.batches,
    )
    write_results("realtime", result, render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
