"""A multi-part dataset drop on the local stack, as an exporter writes it: parts, then ``_SUCCESS``,
scored once as one dataset by the dataset state machine (run in the stack by its execution poller)."""

from __future__ import annotations

import gzip
import io
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest

from tests.e2e.test_local_stack import clients, start_stack_process

DATASET = "export-test"
PREFIX = f"incoming/{DATASET}/"
SINGLE_KEY = f"incoming/{DATASET}-single.csv"
CUTOFF = "1997-10-01"
BAD_USER = "bad-row-customer"
RUN_FAILED_LINES = ("state machine execution failed", "step functions runner failed")


class Stack:
    """The stack subprocess's ready line, and its output read continuously (a full pipe would block
    the stack) so a test can look for what the stack reported."""

    def __init__(self) -> None:
        self.process, self.ready = start_stack_process()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True, name="stack-output")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.ready["aws_endpoint"],
            region_name=self.ready["region"],
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    running = Stack()
    yield running
    running.process.send_signal(signal.SIGINT)
    assert running.process.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def events(cdnow_subset: pd.DataFrame) -> pd.DataFrame:
    """~450 real CDNOW customers, their orders before the cutoff, sorted by time (as an export is)."""
    before = cdnow_subset[cdnow_subset["timestamp"] < CUTOFF]
    users = np.random.default_rng(12).choice(before["user_id"].unique(), size=450, replace=False)
    chosen = before[before["user_id"].isin(users)]
    return chosen.sort_values("timestamp", kind="stable").reset_index(drop=True)


def _get(s3: Any, bucket: str, key: str) -> bytes:
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _wait_for(s3: Any, bucket: str, key: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.time() + timeout_s
    while True:
        try:
            summary: dict[str, Any] = json.loads(_get(s3, bucket, key))
            return summary
        except s3.exceptions.NoSuchKey:
            assert time.time() < deadline, f"{key} did not appear within {timeout_s} s"
            time.sleep(0.5)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _drain(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message waiting (each received once: hidden longer than this takes)."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 2:
        got = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300, WaitTimeSeconds=1
        ).get("Messages", [])
        empty = 0 if got else empty + 1
        messages.extend(json.loads(m["Body"]) for m in got)
    return messages


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def test_a_three_part_dataset_is_scored_once_as_one_dataset(stack: Stack, events: pd.DataFrame) -> None:
    s3, sqs = clients(stack.ready)
    bucket = stack.ready["bucket"]
    cuts = np.array_split(np.arange(len(events)), 3)  # by rows, not customers: customers span parts
    parts = [events.iloc[rows].reset_index(drop=True) for rows in cuts]
    spanning = set.intersection(*(set(p["user_id"]) for p in parts[:2])) | set.intersection(
        *(set(p["user_id"]) for p in parts[1:])
    )
    assert len(spanning) > 20, "the test needs customers present in more than one part"
    assert parts[0]["timestamp"].max() < parts[2]["timestamp"].max()  # per-part as_of would differ

    # One row no customer could have: rejected with its part and row, counted in rows_in.
    bad = parts[0].head(1).astype({"timestamp": str}).assign(user_id=BAD_USER, timestamp="not-a-date")
    first = pd.concat([parts[0].astype({"timestamp": str}), bad], ignore_index=True)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}part-0000.csv", Body=_csv(first))
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}part-0001.csv.gz", Body=gzip.compress(_csv(parts[1])))
    parquet = io.BytesIO()
    parts[2].to_parquet(parquet, index=False)
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}part-0002.parquet", Body=parquet.getvalue())
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}_SUCCESS", Body=b"")

    started = time.time()
    summary = _wait_for(s3, bucket, f"scored/{DATASET}/_summary.json")
    elapsed = time.time() - started
    assert summary["status"] == "ok", summary["errors"]
    assert summary["parts"] == 3
    latest = events["timestamp"].max()  # over all parts, not per part
    assert summary["as_of"] == (latest + pd.Timedelta(days=1)).date().isoformat()
    assert summary["rows_in"] == len(events) + 1 == summary["rows_used"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 1
    assert summary["rejects"] == f"scored/{DATASET}/{summary['run_id']}/_rejects.csv"
    rejects = pd.read_csv(io.BytesIO(_get(s3, bucket, summary["rejects"])), dtype=str)
    assert len(rejects) == 1 and "part-0000.csv" in rejects["part"].iloc[0]

    outputs = sorted(
        k for k in _keys(s3, bucket, f"scored/{DATASET}/") if k.rsplit("/", 1)[1].startswith("part-")
    )
    assert outputs and all(k.endswith(".parquet") for k in outputs)
    assert sorted(summary["outputs"]) == outputs
    scored = pd.concat([pd.read_parquet(io.BytesIO(_get(s3, bucket, k))) for k in outputs], ignore_index=True)
    assert scored["user_id"].is_unique  # every customer exactly once over all output parts
    assert set(scored["user_id"]) == set(events["user_id"])
    assert len(scored) == summary["customers_scored"]

    # At most one promotion per customer for the dataset; every queued customer arrived.
    promotions = [
        m for m in _drain(sqs, stack.ready["promotions_queue"]) if m["source"].endswith(f"/{PREFIX}")
    ]
    per_customer = Counter(m["user_id"] for m in promotions)
    assert per_customer and max(per_customer.values()) == 1
    assert len(promotions) == summary["customers_queued"]
    assert {m["as_of"] for m in promotions} == {summary["as_of"]}

    # The marker is never data: no summary of its own.
    assert not [k for k in _keys(s3, bucket, "scored/") if "_SUCCESS" in k]

    # The local execution ended, and the stack reported no failed run.
    sfn = stack.client("stepfunctions")
    (machine,) = [
        m for m in sfn.list_state_machines()["stateMachines"] if m["name"].endswith("DatasetStateMachine")
    ]
    runs = sfn.list_executions(stateMachineArn=machine["stateMachineArn"])["executions"]
    assert len(runs) == 1 and runs[0]["name"].startswith(DATASET)
    deadline = time.time() + 10  # the summary is written by the last step; the run ends just after
    while sfn.describe_execution(executionArn=runs[0]["executionArn"])["status"] == "RUNNING":
        assert time.time() < deadline, "the execution did not end"
        time.sleep(0.2)
    assert not [line for line in stack.lines if line.startswith(RUN_FAILED_LINES)]

    # The same rows as one file: each customer scored with the same probability.
    whole = pd.concat([first, *(p.astype({"timestamp": str}) for p in parts[1:])], ignore_index=True)
    s3.put_object(Bucket=bucket, Key=SINGLE_KEY, Body=_csv(whole))
    single_summary = _wait_for(s3, bucket, f"scored/{DATASET}-single.summary.json")
    # (a single file's summary writes its as_of as a timestamp, a dataset's as a date)
    assert single_summary["status"] == "ok" and single_summary["as_of"][:10] == summary["as_of"]
    single = pd.read_parquet(io.BytesIO(_get(s3, bucket, f"scored/{DATASET}-single.parquet")))
    joined = scored.merge(single, on="user_id", suffixes=("_dataset", "_single"), validate="one_to_one")
    assert len(joined) == len(scored) == len(single)
    difference = (joined["churn_probability_dataset"] - joined["churn_probability_single"]).abs()
    assert difference.max() <= 1e-6
    assert joined["user_id"].isin(spanning).sum() == len(spanning)
    print(f"dataset scored in {elapsed:.1f} s")


def test_a_part_without_its_marker_is_not_scored(stack: Stack, events: pd.DataFrame) -> None:
    s3, _ = clients(stack.ready)
    bucket = stack.ready["bucket"]
    s3.put_object(Bucket=bucket, Key="incoming/waiting-export/part-0000.csv", Body=_csv(events.head(50)))
    time.sleep(5)  # the scoring-jobs queue is polled continuously: a drop is normally picked up in < 1 s
    assert _keys(s3, bucket, "scored/waiting-export") == []
