"""The decision log's two adapters (``churnguard.decisions.DecisionLog``) and its reader.

* ``QueuedDecisionLog``: what the scoring functions use. Rows are packed into SQS messages (JSON,
  ``MAX_BODY_BYTES`` each, ten per ``SendMessageBatch``) for the decision-log writer: the slim
  functions need no Parquet library, and one writer turns many small appends (an API request's few
  rows) into few objects.
* ``ParquetDecisionLog``: the writer's. Rows are written as Parquet under
  ``<prefix>as_of_date=YYYY-MM-DD/<name>.parquet`` (Hive-style partitions, the Glue table's), the name
  made of the rows' ids (``churnguard.decisions.batch_name``): the same rows written again replace
  their object instead of adding one. With a ledger (``decision#<id>`` items in the idempotency
  table), ids already logged are skipped, so a retried request or a re-delivered message that arrives
  in another batch adds nothing either.
* ``read_decisions``: every row under a prefix (optionally from a day on), deduplicated.

pandas and fastparquet are imported only by the writer and the reader (the writer's and the outcome
job's packages carry them; the scoring API's does not).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnguard.aws import aws_errors, error_code
from churnguard.decisions import (
    DECISION_COLUMNS,
    DECISION_SCHEMA,
    PARTITION_COLUMN,
    DecisionLogUnavailableError,
    batch_name,
    dedupe,
)
from churnguard.ports import MessageQueue, ObjectStore, PromotionLedger, QueueMessage

if TYPE_CHECKING:
    import pandas as pd

MAX_BODY_BYTES = 24_000  # ten per SendMessageBatch stay under SQS's 256 KiB per call


class DecisionMessageError(ValueError):
    """A decision-log message that is not ``churnguard.decision/v1`` rows (names the problem only)."""


def pack(records: Sequence[dict[str, Any]], max_body_bytes: int = MAX_BODY_BYTES) -> list[str]:
    """Message bodies holding ``records`` in order, each at most ``max_body_bytes`` (a single row
    larger than that still gets a body of its own: SQS takes up to 256 KiB)."""
    bodies: list[str] = []
    current: list[str] = []
    envelope = len(_body([]))
    size = envelope
    for record in records:
        row = json.dumps(record, separators=(",", ":"))  # ASCII: characters are bytes
        if current and size + len(row) + 1 > max_body_bytes:
            bodies.append(_body(current))
            current, size = [], envelope
        current.append(row)
        size += len(row) + 1
    if current:
        bodies.append(_body(current))
    return bodies


def _body(rows: list[str]) -> str:
    return '{"schema":"' + DECISION_SCHEMA + '","records":[' + ",".join(rows) + "]}"


def unpack(body: str) -> list[dict[str, Any]]:
    """The rows of one message body; ``DecisionMessageError`` names what is wrong with it."""
    try:
        message = json.loads(body)
    except ValueError:
        raise DecisionMessageError("the message body is not JSON") from None
    if not isinstance(message, dict) or message.get("schema") != DECISION_SCHEMA:
        raise DecisionMessageError(f"the message is not {DECISION_SCHEMA}")
    records = message.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DecisionMessageError("records must be a list of decision rows")
    for index, record in enumerate(records):
        problem = _row_problem(record)
        if problem:  # a row the Parquet writer would choke on: the message alone fails, not its batch
            raise DecisionMessageError(f"records[{index}]: {problem}")
    return records


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _row_problem(record: dict[str, Any]) -> str:
    """What is wrong with one row (a column name and the type it needs; never the value), or ""."""
    for name, kind in (*DECISION_COLUMNS, (PARTITION_COLUMN, "day")):
        if name not in record:
            return f"{name} is missing"
        value = record[name]
        if kind in ("string", "day") and not isinstance(value, str):
            return f"{name} must be a string"
        if kind == "day" and not _DAY.match(value):
            return f"{name} must be a day, YYYY-MM-DD"
        if kind in ("int", "bigint") and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{name} must be an integer"
        if kind == "int" and not -(2**31) <= value < 2**31:
            return f"{name} is out of range"
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "double" and not (number and math.isfinite(value)):
            return f"{name} must be a finite number"
    return ""


class QueuedDecisionLog:
    """Rows to the decision-log queue; failed entries are retried, then the append fails."""

    BATCH = 10

    def __init__(
        self,
        queue: MessageQueue,
        *,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._queue, self._max_attempts, self._backoff_s, self._sleep = queue, max_attempts, backoff_s, sleep

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        bodies = pack(records)
        for start in range(0, len(bodies), self.BATCH):
            self._send({str(i): b for i, b in enumerate(bodies[start : start + self.BATCH])})

    def _send(self, pending: dict[str, str]) -> None:
        problem = ""
        for attempt in range(self._max_attempts):
            if attempt:
                self._sleep(self._backoff_s * 2 ** (attempt - 1))
            try:
                answer = self._queue.send_batch([QueueMessage(id=k, body=b) for k, b in pending.items()])
            except aws_errors() as exc:
                problem = error_code(exc) or type(exc).__name__
                continue
            failed = {f.id: f for f in answer.failed}
            pending = {k: pending[k] for k in failed}
            if not pending:
                return
            problem = next(iter(failed.values())).code
            if all(f.sender_fault for f in failed.values()):
                break
        raise DecisionLogUnavailableError(
            f"the decision-log queue did not take {len(pending)} messages ({problem})"
        )


class ParquetDecisionLog:
    """Rows as Parquet objects in S3, one per as-of day and batch of rows (see the module doc)."""

    def __init__(
        self,
        store: ObjectStore,
        bucket: str,
        prefix: str = "decisions/",
        ledger: PromotionLedger | None = None,
    ) -> None:
        self._store, self._bucket, self._prefix, self._ledger = store, bucket, prefix, ledger

    def append(self, records: Sequence[dict[str, Any]]) -> list[str]:
        """Write the rows not logged yet; the keys written."""
        if self._ledger is not None:
            logged = self._ledger.sent([r["decision_id"] for r in records])
            records = [r for r in records if r["decision_id"] not in logged]
        by_day: dict[str, list[dict[str, Any]]] = {}
        for record in dedupe(records):
            by_day.setdefault(record[PARTITION_COLUMN], []).append(record)
        keys = []
        for day, rows in sorted(by_day.items()):
            key = f"{self._prefix}{PARTITION_COLUMN}={day}/{batch_name(rows)}.parquet"
            self._store.put_bytes(self._bucket, key, parquet_bytes(rows))
            if self._ledger is not None:
                self._ledger.mark([r["decision_id"] for r in rows])
            keys.append(key)
        return keys


def decisions_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a frame of ``DECISION_COLUMNS`` with their types (the partition column left out)."""
    import pandas as pd

    dtypes = {"string": object, "int": "int32", "bigint": "int64", "double": "float64"}
    names = [name for name, _ in DECISION_COLUMNS]
    frame = pd.DataFrame([{n: r[n] for n in names} for r in records], columns=names)
    return frame.astype({name: dtypes[kind] for name, kind in DECISION_COLUMNS})


def parquet_bytes(records: Sequence[dict[str, Any]]) -> bytes:
    import fastparquet

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decisions.parquet"
        fastparquet.write(str(path), decisions_frame(records), compression="SNAPPY", stats=False)
        return path.read_bytes()


def read_decisions(
    store: ObjectStore, bucket: str, prefix: str = "decisions/", since: str = ""
) -> pd.DataFrame:
    """Every logged decision under ``prefix`` with ``as_of_date`` >= ``since`` (YYYY-MM-DD; "" = all),
    one row per ``decision_id``, with ``as_of_date``."""
    import fastparquet
    import pandas as pd

    frames = []
    for listed in store.list_objects(bucket, prefix):
        day = listed.key[len(prefix) :].split("/", 1)[0].removeprefix(f"{PARTITION_COLUMN}=")
        if not listed.key.endswith(".parquet") or day < since:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "part.parquet"
            path.write_bytes(store.get_bytes(bucket, listed.key))
            frame = fastparquet.ParquetFile(str(path)).to_pandas()
        frames.append(frame.assign(**{PARTITION_COLUMN: day}))
    if not frames:
        return decisions_frame([]).assign(**{PARTITION_COLUMN: pd.Series(dtype=object)})
    every = pd.concat(frames, ignore_index=True).sort_values(["decided_at", "decision_id"], kind="stable")
    return every.drop_duplicates("decision_id", keep="first").reset_index(drop=True)
