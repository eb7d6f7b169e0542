"""Batch scoring of one events file: chunked read -> validate -> group by customer -> score -> outputs.

Invariants (tested): rows in = rows used + rows rejected; every customer with a valid row appears
in the scored output exactly once; a corrupt or empty file yields a summary with the error instead of
an exception (so the queue does not retry it forever); a file that would not fit in the function's
memory stops with ``FileTooLargeError`` before anything is scored or sent (``churnguard.admission``),
and ``process_s3_object`` splits it by customer or, for a part of a split file, writes a summary.

Memory: the file is read in chunks of ``chunk_rows``; only the compact event columns are kept
(about 30 bytes per valid event), and scoring runs over customer chunks of ``score_chunk_customers``.

``as_of`` per file: the ``as-of`` object metadata if present, else the UTC day after the latest event
in the file (a file is a snapshot export up to its last event).

Objects are read and written through the ``ObjectStore`` port (``churnguard.ports``; S3 in the
function). Its adapters pass botocore's errors through unchanged, which ``FILE_ERRORS`` and
``_reraise_transient`` rely on: a bad file ends in a summary, a transient AWS error propagates.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import gzip
import io
import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
from botocore.exceptions import BotoCoreError

from churnguard.admission import (
    HEAD_SAMPLE_BYTES,
    MemoryModel,
    RowEstimate,
    TooLargeToSplitError,
    check_split,
    estimate_csv_rows,
)
from churnguard.bundle import ModelBundle
from churnguard.decisions import Decisions
from churnguard.drift import drift_summary
from churnguard.event_types import EVENT_TYPES, TYPE_CODES
from churnguard.events import (
    CANONICAL_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    EventLogError,
    validate_events,
)
from churnguard.features import ID_BLANKS, EventArrays, build_raw_features
from churnguard.ports import ObjectStore, ReadableStream
from churnguard.promotions import PromotionPolicy, PromotionsPublisher, build_messages
from churnguard.scoring import ReasonsFor, ScoredBatch, score_raw_features
from churnguard.tabular import to_epoch_seconds

SUPPORTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")
# What reading a bad file raises: it ends in a failed summary (retrying cannot fix the file). Some
# botocore errors are OSErrors too (a read timeout mid-stream): those are transient and propagate,
# so the queue retries the file (see _reraise_transient).
FILE_ERRORS = (
    EventLogError,
    ValueError,
    OSError,
    pd.errors.ParserError,
    UnicodeDecodeError,
    EOFError,
    zlib.error,
)


def _reraise_transient(exc: BaseException) -> None:
    if isinstance(exc, BotoCoreError):
        raise exc


SOURCE_ROW = "_source_row"  # carried by the parts of a split file
PARTS_PREFIX = "incoming/_parts/"
MAX_SPLIT_LEVEL = 2  # a file may be split, and each of its parts split once more; deeper parts fail


def split_level(key: str) -> int:
    """0 for a dropped file, 1 for a part of it (``incoming/_parts/<name>/part-N.csv.gz``), 2 for a
    part of a part (``incoming/_parts2/<name>/part-N/part-M.csv.gz``). The level is in the reserved
    prefix, never read from the user's part of the key (which may hold anything)."""
    if key.startswith(PARTS_PREFIX):
        return 1
    deeper = PARTS_PREFIX.rstrip("/")
    for level in range(2, MAX_SPLIT_LEVEL + 1):
        if key.startswith(f"{deeper}{level}/"):
            return level
    return 0


# Customers scored per model call: reasons for all of them stack (groups + 1) copies of their
# inputs (~25 KB per customer measured), so the chunk bounds that part of the peak (~250 MB).
SCORE_CHUNK_CUSTOMERS = 10_000
DEFAULT_MEMORY = MemoryModel(budget_mb=3008)  # the template's MemorySize of the batch function


class EmptyFileError(EventLogError):
    """The file holds nothing at all (not even a header), e.g. a compressed file of no bytes."""


class FileTooLargeError(EventLogError):
    """The file would not fit in this invocation's memory; raised before anything was scored or sent.

    ``rows_read`` rows had been read when it was raised, holding ``events`` valid events of
    ``customers`` customers and ``rejected`` rejected rows; ``declared_rows`` is the file's row
    count when its format declares it (Parquet), so the caller can size a split."""

    def __init__(
        self,
        message: str,
        *,
        rows_read: int = 0,
        events: int = 0,
        customers: int = 0,
        rejected: int = 0,
        declared_rows: int | None = None,
    ) -> None:
        super().__init__(message)
        self.rows_read, self.events, self.customers, self.rejected = rows_read, events, customers, rejected
        self.declared_rows = declared_rows


@dataclass
class BatchSummary:
    source: str
    status: str = "ok"  # ok | failed
    error: str | None = None  # for the data owner: may quote the file (column names, values)
    error_type: str | None = None  # a fixed category, safe to log
    rows_in: int = 0
    rows_used: int = 0
    rows_rejected: int = 0
    customers_scored: int = 0
    customers_at_or_above_promotion: int = 0
    customers_queued: int = 0
    customers_held_out: int = 0  # decided, in the control arm: logged, not sent (churnguard.decisions)
    monitoring_sample: int = 0  # customers not acted on logged as control (live model quality)
    promotion_failures: list[dict[str, Any]] = field(default_factory=list)
    model_version: str | None = None
    as_of: str | None = None
    duration_s: float = 0.0
    parts: list[str] = field(default_factory=list)  # status "split": the part objects written
    # PSI of the scored customers against the model's training distributions (churnguard.drift);
    # None: nothing was scored
    drift: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class BatchResult:
    summary: BatchSummary
    scored: pd.DataFrame | None  # user_id, churn_probability, risk_tier, reasons (JSON), model_version


def file_stem(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    for suffix in (".csv.gz", ".parquet", ".csv"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def iter_chunks(
    source: bytes | ReadableStream,
    key: str,
    chunk_rows: int,
    *,
    memory: MemoryModel | None = None,
    columns: Collection[str] | None = None,
) -> Iterator[pd.DataFrame]:
    """Raw string chunks of a CSV / CSV.gz / Parquet file, streamed (validation does the typing).

    CSV and CSV.gz are read straight from the stream; Parquet needs random access, so a
    non-seekable stream is spooled to a temporary file (Lambda: /tmp, sized by EphemeralStorage).
    With ``memory``, a Parquet file whose footer declares more rows than could fit raises
    ``FileTooLargeError`` before its data is decoded. With ``columns``, only those are kept (others
    are tokenised but never held: a file with thousands of extra columns costs no memory for them).
    """
    usecols = None if columns is None else _ColumnFilter(frozenset(columns))
    stream: ReadableStream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    lower = key.lower()
    if lower.endswith(".parquet"):
        yield from _parquet_chunks(stream, chunk_rows, memory, usecols)
        return
    if lower.endswith(".csv.gz"):
        stream = gzip.GzipFile(fileobj=stream)  # type: ignore[call-overload]  # read only: never seeks
    elif not lower.endswith(".csv"):
        raise EventLogError(f"unsupported file type {key!r}: expected {', '.join(SUPPORTED_SUFFIXES)}")
    stream = io.BufferedReader(_LineLengthLimit(stream, MAX_LINE_BYTES), buffer_size=1024**2)
    try:
        reader = pd.read_csv(
            stream, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows, usecols=usecols
        )
        yield from _with_header_check(reader, usecols)
    except pd.errors.EmptyDataError as exc:
        raise EmptyFileError("the file is empty") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise EventLogError(f"not a valid gzip file: {exc}") from exc


MAX_LINE_BYTES = 64 * 1024**2


class _LineLengthLimit(io.RawIOBase):
    """A read-through stream that fails at the first physical line longer than ``limit`` bytes.

    pandas holds a whole field in memory while parsing it (a 917 KB ``.csv.gz`` holding one 900 MB
    field peaked at 3.7 GB), so without this such a file is OOM-killed before any summary is written.
    Lines of a few MB (long ids, wide profiles) still pass and get row-level reasons.
    """

    def __init__(self, inner: ReadableStream, limit: int) -> None:
        self.inner, self.limit, self.run = inner, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(min(len(buffer), self.limit))
        size = len(data)
        buffer[:size] = data
        # A line inside one read is shorter than the read (at most the buffer, far below the limit):
        # only the line running across reads can be too long, so two searches check everything.
        first = data.find(b"\n")
        if first < 0:
            self.run += size
        else:
            if self.run + first > self.limit:
                self._fail()
            self.run = size - data.rfind(b"\n") - 1
        if self.run > self.limit:
            self._fail()
        return size

    def _fail(self) -> None:
        raise EventLogError(
            f"a line is longer than {self.limit // 1024**2} MiB: not an event log a row of which can be read"
        )


class _ColumnFilter:
    """``usecols`` for pandas that also remembers the file's own header, for the error message."""

    def __init__(self, wanted: frozenset[str]) -> None:
        self.wanted: frozenset[str] = wanted
        self.header: list[str] = []

    def __call__(self, name: str) -> bool:
        self.header.append(name)
        return name in self.wanted


def _with_header_check(
    chunks: Iterable[pd.DataFrame], usecols: _ColumnFilter | None
) -> Iterator[pd.DataFrame]:
    """Chunks as read; a file without the required columns is reported with its own header (what the
    data owner needs to see; this goes to the summary, never to a log line)."""
    for chunk in chunks:
        missing = [c for c in REQUIRED_COLUMNS if c not in chunk.columns]
        if missing and usecols is not None:
            raise EventLogError(
                f"missing required column(s) {missing}; the event log needs {list(REQUIRED_COLUMNS)} "
                f"and may have {list(OPTIONAL_COLUMNS)} plus profile columns (got {usecols.header})"
            )
        yield chunk


def _parquet_chunks(
    stream: ReadableStream, chunk_rows: int, memory: MemoryModel | None, usecols: _ColumnFilter | None = None
) -> Iterator[pd.DataFrame]:
    """Parquet needs random access and an untrusted decoder: the object is spooled to a file
    (Lambda: /tmp, sized by EphemeralStorage) and converted to CSV by a limited child process
    (``churnguard.parquet_reader``: fastparquet, not pyarrow, for the 250 MB package limit)."""
    from churnguard.parquet_reader import ParquetReadError, ParquetTooManyRowsError, convert

    limits = {"memory_mb": memory.child_memory_mb(), "max_rows": memory.max_rows()} if memory else {}

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.parquet", Path(tmp) / "rows.csv"
        with source.open("wb") as spool:
            shutil.copyfileobj(stream, spool, length=8 * 1024**2)
        try:
            convert(source, target, **limits)
        except ParquetTooManyRowsError as exc:
            raise FileTooLargeError(
                f"the Parquet file declares {exc.rows:,} rows, more than this invocation's memory can hold",
                declared_rows=exc.rows,
            ) from exc
        except ParquetReadError as exc:
            raise EventLogError(f"not a readable Parquet file: {exc}") from exc
        source.unlink()
        with target.open("rb") as rows:
            reader = pd.read_csv(
                rows, dtype=str, keep_default_na=False, na_values=[""], chunksize=chunk_rows, usecols=usecols
            )
            yield from _with_header_check(reader, usecols)


@dataclass
class _Accumulator:
    user_codes: list[np.ndarray] = field(default_factory=list)
    timestamps: list[np.ndarray] = field(default_factory=list)
    types: list[np.ndarray] = field(default_factory=list)
    amounts: list[np.ndarray] = field(default_factory=list)
    quantities: list[np.ndarray] = field(default_factory=list)
    user_ids: dict[str, int] = field(default_factory=dict)
    # per profile column: one row per customer (user_id, timestamp, value) of its latest non-null value
    profile_latest: dict[str, pd.DataFrame] = field(default_factory=dict)
    events: int = 0


# Event types travel as int8 codes between reading and scoring (codes are 0..n-1 in table order).
TYPE_NAMES = np.array(EVENT_TYPES, dtype=object)


def score_file(
    body: bytes | ReadableStream,
    key: str,
    bundle: ModelBundle,
    *,
    as_of: str | None = None,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher | None,
    decisions: Decisions | None = None,
    source: str,
    reasons_for: ReasonsFor = ReasonsFor.PROMOTED,
    rejects: TextIO | None = None,
    chunk_rows: int = 500_000,
    memory: MemoryModel = DEFAULT_MEMORY,
    score_chunk_customers: int = SCORE_CHUNK_CUSTOMERS,
    now: dt.datetime | None = None,
) -> BatchResult:
    """Score one events file. Problems with the file end in a failed summary; a file that would not
    fit in ``memory`` raises ``FileTooLargeError`` while reading, before anything is scored or sent.

    Rejected rows (source_row, reason) are written to ``rejects`` as CSV as they are found, so a file
    of bad rows costs no memory; without ``rejects`` they are only counted.
    """
    return score_sources(
        [EventSource(key, lambda: body)],
        bundle,
        as_of=as_of,
        policy=policy,
        publisher=publisher,
        decisions=decisions,
        source=source,
        reasons_for=reasons_for,
        rejects=rejects,
        chunk_rows=chunk_rows,
        memory=memory,
        score_chunk_customers=score_chunk_customers,
        now=now,
    )


@dataclass(frozen=True)
class EventSource:
    """One events file to read: its key (the format comes from its suffix) and how to open it, called
    only when it is its turn (a shard of a dataset has one piece per part: never all open at once)."""

    key: str
    open: Callable[[], bytes | ReadableStream]


# Called once every source is read, before anything is scored or sent, with the counts and the
# customers read; raising an ``EventLogError`` ends the run in a failed summary.
BeforeScoring = Callable[[BatchSummary, Sequence[str]], None]


def score_sources(
    sources: Iterable[EventSource],
    bundle: ModelBundle,
    *,
    as_of: str | None = None,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher | None,
    decisions: Decisions | None = None,
    source: str,
    reasons_for: ReasonsFor = ReasonsFor.PROMOTED,
    rejects: TextIO | None = None,
    chunk_rows: int = 500_000,
    memory: MemoryModel = DEFAULT_MEMORY,
    score_chunk_customers: int = SCORE_CHUNK_CUSTOMERS,
    now: dt.datetime | None = None,
    columns: Collection[str] | None = None,
    before_scoring: BeforeScoring | None = None,
) -> BatchResult:
    """``score_file`` over several files read as one: every customer is scored once on their events
    from all of them. ``columns`` overrides what is read of each (default: ``read_columns``)."""
    started = time.perf_counter()
    summary = BatchSummary(source=source, model_version=bundle.version)
    if rejects is not None:
        rejects.write("source_row,reason\n")
    acc = _Accumulator()
    try:
        for item in sources:
            read = _Reading(rejects=rejects, chunk_rows=chunk_rows, memory=memory, columns=columns)
            _read_events(acc, summary, item.open(), item.key, bundle, read)
        if before_scoring is not None:
            before_scoring(summary, list(acc.user_ids))
    except FileTooLargeError:
        raise
    except FILE_ERRORS as exc:
        _reraise_transient(exc)
        summary.rows_used = acc.events  # rows read before the failure: in = used + rejected still holds
        summary.status, summary.error = "failed", f"{type(exc).__name__}: {exc}"
        summary.error_type = type(exc).__name__
        summary.duration_s = round(time.perf_counter() - started, 3)
        return BatchResult(summary, None)
    summary.rows_used = acc.events

    if acc.events == 0:
        summary.status = "failed" if summary.rows_in == 0 else "ok"
        summary.error = "the file has no rows" if summary.rows_in == 0 else "no valid rows"
        summary.error_type = "EmptyFile" if summary.rows_in == 0 else "NoValidRows"
        summary.duration_s = round(time.perf_counter() - started, 3)
        return BatchResult(summary, _empty_scored())

    scored = _score_accumulated(
        acc,
        summary,
        bundle,
        as_of=as_of,
        policy=policy,
        publisher=publisher,
        decisions=decisions,
        reasons_for=reasons_for,
        chunk_customers=score_chunk_customers,
        now=now,
    )
    summary.duration_s = round(time.perf_counter() - started, 3)
    return BatchResult(summary, scored)


def _score_accumulated(
    acc: _Accumulator,
    summary: BatchSummary,
    bundle: ModelBundle,
    *,
    as_of: str | None,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher | None,
    decisions: Decisions | None = None,
    reasons_for: ReasonsFor,
    chunk_customers: int,
    now: dt.datetime | None,
) -> pd.DataFrame:
    """Score every customer read (as of the given day, else the day after the latest event) and
    publish their promotions; ``summary`` gets the as-of and the counts."""
    customers = _CustomerEvents.take(acc)
    as_of_ts = _resolve_as_of(as_of, customers.timestamps)
    summary.as_of = as_of_ts.isoformat()
    profile = _profile_values(acc.profile_latest, customers.user_ids)
    customers.sort_by_customer()
    publishing = _Publishing(
        policy=policy,
        publisher=publisher,
        decisions=decisions,
        source=summary.source,
        scored_at=(now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds"),
        as_of_day=as_of_ts.date().isoformat(),
        cutoff=as_of_ts.isoformat(),
    )
    return _score_in_chunks(
        customers,
        profile,
        bundle,
        to_epoch_seconds(as_of_ts),
        summary,
        publishing,
        reasons_for=reasons_for,
        chunk_customers=chunk_customers,
    )


@dataclass(frozen=True)
class _Reading:
    """How a file is read: where its rejected rows go, chunk size, memory budget, columns kept."""

    rejects: TextIO | None
    chunk_rows: int
    memory: MemoryModel
    columns: Collection[str] | None = None  # None: read_columns(bundle, key)


def _read_events(
    acc: _Accumulator,
    summary: BatchSummary,
    body: bytes | ReadableStream,
    key: str,
    bundle: ModelBundle,
    read: _Reading,
) -> None:
    """Read, validate and accumulate the file chunk by chunk, counting rows in ``summary`` and
    writing rejected rows to ``read.rejects``; ``FileTooLargeError`` at the first chunk that would
    not fit."""
    profile_columns = [*bundle.spec.profile_categorical, *bundle.spec.profile_numeric]
    rejects, memory = read.rejects, read.memory
    columns = read_columns(bundle, key) if read.columns is None else read.columns
    row = 1
    for chunk in iter_chunks(body, key, read.chunk_rows, memory=memory, columns=columns):
        if SOURCE_ROW in chunk.columns:  # a part of a split file: keep the original row numbers
            numbers = pd.to_numeric(chunk[SOURCE_ROW], errors="raise").to_numpy(dtype=np.int64)
            validated = validate_events(chunk.drop(columns=SOURCE_ROW), row_numbers=numbers)
        else:
            validated = validate_events(chunk, first_row_number=row)
        row += len(chunk)
        summary.rows_in += validated.rows_in
        summary.rows_rejected += len(validated.rejected)
        if len(validated.rejected) and rejects is not None:
            validated.rejected.to_csv(rejects, header=False, index=False)
        _accumulate(acc, validated.events, profile_columns, summary, memory)


def _accumulate(
    acc: _Accumulator,
    events: pd.DataFrame,
    profile_columns: list[str],
    summary: BatchSummary,
    memory: MemoryModel,
) -> None:
    """Add a chunk's valid events to ``acc`` as compact arrays, once the counts so far still fit."""
    acc.events += len(events)
    local_codes, uniques = pd.factorize(events["user_id"])
    # Only this chunk's distinct customers go through the dict; rows map vectorised.
    to_global = np.array([acc.user_ids.setdefault(u, len(acc.user_ids)) for u in uniques], np.int64)
    if not memory.fits(acc.events, len(acc.user_ids), summary.rows_rejected):
        predicted = memory.predicted_peak_mb(acc.events, len(acc.user_ids), summary.rows_rejected)
        raise FileTooLargeError(
            f"after {summary.rows_in:,} rows the file needs ~{predicted:,.0f} MB, more than the "
            f"{memory.usable_mb:,.0f} MB this invocation may use",
            rows_read=summary.rows_in,
            events=acc.events,
            customers=len(acc.user_ids),
            rejected=summary.rows_rejected,
        )
    acc.user_codes.append(to_global[local_codes])
    acc.timestamps.append(np.asarray(to_epoch_seconds(events["timestamp"].to_numpy())))
    acc.types.append(events["event_type"].map(TYPE_CODES).to_numpy(dtype=np.int8))
    acc.amounts.append(events["amount"].to_numpy(dtype=np.float32))
    acc.quantities.append(events["quantity"].to_numpy(dtype=np.float32))
    for column in (c for c in profile_columns if c in events.columns):
        _merge_latest(acc.profile_latest, column, events[["user_id", "timestamp", column]])


@dataclass
class _CustomerEvents:
    """Every valid event of the file as one set of arrays; customer ``c`` is ``user_ids[c]``."""

    user_ids: np.ndarray
    user_codes: np.ndarray
    timestamps: np.ndarray
    types: np.ndarray
    amounts: np.ndarray
    quantities: np.ndarray

    @classmethod
    def take(cls, acc: _Accumulator) -> _CustomerEvents:
        """The accumulated chunks joined; ``acc`` lets go of its per-chunk arrays."""
        user_ids = np.empty(len(acc.user_ids), dtype=object)
        user_ids[list(acc.user_ids.values())] = list(acc.user_ids.keys())
        joined = cls(
            user_ids=user_ids,
            user_codes=np.concatenate(acc.user_codes),
            timestamps=np.concatenate(acc.timestamps),
            types=np.concatenate(acc.types),
            amounts=np.concatenate(acc.amounts).astype(np.float64),
            quantities=np.concatenate(acc.quantities).astype(np.float64),
        )
        del acc.user_codes, acc.timestamps, acc.types, acc.amounts, acc.quantities
        return joined

    def sort_by_customer(self) -> None:
        """Group events by customer once (stable: file order within a customer)."""
        order = np.argsort(self.user_codes, kind="stable")
        self.user_codes, self.timestamps, self.types = (
            self.user_codes[order],
            self.timestamps[order],
            self.types[order],
        )
        self.amounts, self.quantities = self.amounts[order], self.quantities[order]

    def chunk_bounds(self, chunk_customers: int) -> np.ndarray:
        """Event offsets where customers 0, chunk, 2 x chunk, ... begin (sorted events)."""
        starts = np.arange(0, len(self.user_ids) + chunk_customers, chunk_customers)
        return np.searchsorted(self.user_codes, starts)

    def arrays(self, start: int, stop: int, lo: int, hi: int) -> EventArrays:
        """Customers ``start:stop``, whose events are ``lo:hi``, indexed from 0."""
        return EventArrays(
            user_index=self.user_codes[lo:hi] - start,
            n_users=stop - start,
            timestamp_s=self.timestamps[lo:hi],
            event_type=TYPE_NAMES[self.types[lo:hi]],
            amount=self.amounts[lo:hi],
            quantity=self.quantities[lo:hi],
        )


def as_of_after(latest: np.datetime64 | pd.Timestamp) -> str:
    """The as-of of an export whose latest valid event is ``latest`` (UTC, naive): the next UTC day
    (an export is a snapshot up to its last event). The rule for a file, a split and a dataset."""
    return str((pd.Timestamp(latest).normalize() + pd.Timedelta(days=1)).date().isoformat())


def _resolve_as_of(as_of: str | None, timestamps: np.ndarray) -> pd.Timestamp:
    """The given as-of (UTC, naive), else the UTC day after the file's latest event."""
    if as_of is None:
        return pd.Timestamp(dt.datetime.fromtimestamp(timestamps.max(), dt.UTC).date()) + pd.Timedelta(days=1)
    as_of_ts = pd.Timestamp(as_of)
    if as_of_ts.tzinfo is not None:
        as_of_ts = as_of_ts.tz_convert("UTC").tz_localize(None)
    return as_of_ts


def _profile_values(latest: dict[str, pd.DataFrame], user_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per profile column, each customer's latest non-null value (None without one); empties ``latest``."""
    profile: dict[str, np.ndarray] = {}
    for column, rows in latest.items():
        values = rows.set_index("user_id")[column].reindex(user_ids).to_numpy(dtype=object)
        missing: np.ndarray = pd.isna(values)
        profile[column] = np.asarray(np.where(missing, None, values), dtype=object)
    latest.clear()
    return profile


@dataclass(frozen=True)
class _Publishing:
    """What promotions of this file are sent with (``publisher`` None: none are sent)."""

    policy: PromotionPolicy
    publisher: PromotionsPublisher | None
    source: str
    scored_at: str
    as_of_day: str
    cutoff: str  # the as-of instant (ISO): what the features describe, where outcomes start
    decisions: Decisions | None = None  # the control arm's monitoring sample goes to its log


def _score_in_chunks(
    customers: _CustomerEvents,
    profile: dict[str, np.ndarray],
    bundle: ModelBundle,
    as_of_s: np.ndarray | float,
    summary: BatchSummary,
    publishing: _Publishing,
    *,
    reasons_for: ReasonsFor,
    chunk_customers: int,
) -> pd.DataFrame:
    """Score customer chunks (bounded memory per chunk), publish each chunk's promotions, count them
    in ``summary``; the scored rows of every customer, in customer order. Each chunk's drift bin
    counts are added up and ``summary.drift`` gets the PSI of them all (``churnguard.drift``)."""
    n = len(customers.user_ids)
    bounds = customers.chunk_bounds(chunk_customers)
    scored_parts = []
    reference = bundle.drift_reference
    drift = reference.counts() if reference is not None else None
    for c, start in enumerate(range(0, n, chunk_customers)):
        stop = min(start + chunk_customers, n)
        lo, hi = bounds[c], bounds[c + 1] if c + 1 < len(bounds) else len(customers.user_codes)
        chunk_ids = customers.user_ids[start:stop]
        raw = build_raw_features(  # what score_customers does, keeping the features for the drift
            customers.arrays(start, stop, lo, hi),
            as_of_s,
            event_types=bundle.spec.event_types,
            config=bundle.spec.config,
            profile={k: v[start:stop] for k, v in profile.items()},
        )
        scored = score_raw_features(bundle, chunk_ids, raw, reasons_for=reasons_for)
        if reference is not None and drift is not None:
            drift.add_scored(reference, bundle.spec, raw, scored.churn_probability)
        summary.customers_scored += len(chunk_ids)
        summary.customers_at_or_above_promotion += int(scored.at_or_above_promotion.sum())
        _publish(scored, publishing, summary)
        scored_parts.append(_scored_frame(chunk_ids, scored, bundle.version))
    summary.drift = drift_summary(reference, drift)
    return pd.concat(scored_parts, ignore_index=True)


def _publish(scored: ScoredBatch, publishing: _Publishing, summary: BatchSummary) -> None:
    as_of = [publishing.as_of_day] * len(scored.user_ids)
    cutoffs = [publishing.cutoff] * len(scored.user_ids)
    acted_on: set[str] = set()
    if publishing.publisher is not None:
        messages = build_messages(
            scored,
            publishing.policy,
            source=publishing.source,
            scored_at=publishing.scored_at,
            as_of=as_of,
            cutoffs=cutoffs,
        )
        if messages:
            result = publishing.publisher.publish(messages)
            summary.customers_queued += result.sent
            summary.customers_held_out += len(result.held_out)
            summary.promotion_failures += result.failed
            acted_on = {m["user_id"] for m in messages}
    if publishing.decisions is not None:
        # A log that does not answer fails the file (it is retried): the sample is never lost silently.
        summary.monitoring_sample += publishing.decisions.sample(
            scored,
            acted_on=acted_on,
            source=publishing.source,
            scored_at=publishing.scored_at,
            as_of=as_of,
            cutoffs=cutoffs,
        )


def _scored_frame(user_ids: np.ndarray, scored: ScoredBatch, model_version: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": user_ids.astype(str),
            "churn_probability": scored.churn_probability,
            "risk_tier": scored.risk_tier.astype(str),
            "reasons": [json.dumps([r.to_dict() for r in rs]) for rs in scored.reasons],
            "model_version": model_version,
        }
    )


def read_columns(bundle: ModelBundle, key: str) -> tuple[str, ...]:
    """What batch scoring reads of a file: the canonical columns, ``event_id``, the profile columns
    the model uses, and a part's original row numbers. Anything else is never held in memory."""
    profile = (*bundle.spec.profile_categorical, *bundle.spec.profile_numeric)
    part = (SOURCE_ROW,) if split_level(key) >= 1 else ()  # a dropped file's own _source_row is ignored
    return (*CANONICAL_COLUMNS, "event_id", *profile, *part)


def _merge_latest(latest: dict[str, pd.DataFrame], column: str, rows: pd.DataFrame) -> None:
    """Fold a chunk into ``latest[column]``: per customer, the value of the latest row (by
    timestamp, ties by file order) where ``column`` is not null — the same answer as over the whole
    file at once, kept at one row per customer whatever the number of chunks."""
    rows = rows[rows[column].notna()]
    if column in latest:
        rows = pd.concat([latest[column], rows], ignore_index=True)
    rows = rows.sort_values("timestamp", kind="stable")
    latest[column] = rows.drop_duplicates("user_id", keep="last")


def _empty_scored() -> pd.DataFrame:
    return pd.DataFrame(columns=["user_id", "churn_probability", "risk_tier", "reasons", "model_version"])


def split_object(
    store: ObjectStore,
    bucket: str,
    key: str,
    parts: int,
    *,
    as_of: str | None = None,
    columns: Collection[str] | None = None,
    chunk_rows: int = 500_000,
    tmp_dir: str | None = None,
) -> list[str]:
    """Split one large events object into ``parts`` gzip CSV objects by a hash of ``user_id``.

    Every customer's rows land in the same part (ids hashed as validation strips them), so each part
    scores independently and the union of the parts' outputs is the file's output. Rows keep their
    original number in ``_source_row``; only ``columns`` are kept (all when None). Every part
    carries the file's ``as-of`` (given, else the day after its latest valid event), so each part is
    scored as of the same day as the whole file would have been. Parts go to
    ``incoming/_parts/<name>/part-NNNNN.csv.gz`` (a part split again: ``incoming/_parts2/...``)
    and are scored as ordinary drops. Each level hashes with its own key, so a part's customers
    spread over its own parts. File problems raise ``EventLogError`` (or a pandas / codec error)
    before any part is uploaded.
    """
    level = split_level(key)
    prefix = _parts_prefix(key, level)
    body = store.open(bucket, key)
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        paths = [f"{tmp}/part-{i:05d}.csv.gz" for i in range(parts)]
        written, latest = _write_parts(
            body, key, paths, level=level, columns=columns, chunk_rows=chunk_rows, find_latest=as_of is None
        )
        if as_of is None and latest is not None:
            as_of = as_of_after(latest)
        keys = []
        for i, path in enumerate(paths):
            if written[i]:
                part_key = f"{prefix}part-{i:05d}.csv.gz"
                store.upload_file(path, bucket, part_key, metadata={"as-of": as_of} if as_of else None)
                keys.append(part_key)
    return keys


def customer_hash(user_ids: np.ndarray, hash_key: str) -> np.ndarray:
    """A stable 64-bit hash per (stripped) user id, keyed by ``hash_key`` (16 characters): the same
    id always lands in the same part (``hash % parts``) in every process and on every run."""
    return np.asarray(pd.util.hash_array(user_ids, hash_key=hash_key, categorize=True), dtype=np.uint64)


def _parts_prefix(key: str, level: int) -> str:
    """Where the parts of ``key`` (a file at split ``level``) go."""
    stem = OutputKeys.for_input(key).scored[len("scored/") : -len(".parquet")]
    if level == 0:
        return f"{PARTS_PREFIX}{stem}/"
    # incoming/_parts/<name>/part-00003.csv.gz -> incoming/_parts2/<name>/part-00003/
    return f"{PARTS_PREFIX.rstrip('/')}{level + 1}/{stem[len('_parts/') :]}/"


def _write_parts(
    body: ReadableStream,
    key: str,
    paths: list[str],
    *,
    level: int,
    columns: Collection[str] | None,
    chunk_rows: int,
    find_latest: bool,
) -> tuple[np.ndarray, np.datetime64 | None]:
    """Stream the file into one gzip CSV per path by customer hash: which paths got rows, and (with
    ``find_latest``) the latest valid event's timestamp."""
    hash_key = f"churnguard-lvl{level:02d}"  # 16 characters, as pandas requires
    latest: np.datetime64 | None = None
    with contextlib.ExitStack() as stack:
        # level 1: parts are read once, soon; speed matters more than size
        writers = [stack.enter_context(gzip.open(path, "wt", compresslevel=1, newline="")) for path in paths]
        written = np.zeros(len(paths), dtype=bool)
        row = 1
        for chunk in iter_chunks(body, key, chunk_rows, columns=columns):
            if "user_id" not in chunk.columns:
                raise EventLogError(f"missing required column(s) ['user_id'] (got {list(chunk.columns)})")
            if level == 0:  # the original row numbers; a part keeps the ones it carries
                chunk = chunk.drop(columns=SOURCE_ROW, errors="ignore")
                chunk = chunk.assign(**{SOURCE_ROW: np.arange(row, row + len(chunk))})
            row += len(chunk)
            if find_latest:
                valid = validate_events(chunk.drop(columns=SOURCE_ROW)).events["timestamp"]
                if len(valid):
                    latest = valid.max() if latest is None else max(latest, valid.max())
            ids = chunk["user_id"].astype("string").str.strip(ID_BLANKS).fillna("").to_numpy(dtype=object)
            part_of = customer_hash(ids, hash_key) % np.uint64(len(paths))
            for i, writer in enumerate(writers):
                rows = chunk[part_of == i]
                if len(rows):
                    # QUOTE_ALL: a value with a bare '\r' must read back as one field.
                    rows.to_csv(writer, header=not written[i], index=False, quoting=csv.QUOTE_ALL)
                    written[i] = True
        for writer in writers:
            writer.close()
    return written, latest


@dataclass(frozen=True)
class OutputKeys:
    scored: str
    rejected: str
    summary: str

    @classmethod
    def for_input(cls, key: str, incoming_prefix: str = "incoming/") -> OutputKeys:
        relative = key[len(incoming_prefix) :] if key.startswith(incoming_prefix) else key
        folder, _, name = relative.rpartition("/")
        stem = (folder + "/" if folder else "") + file_stem(name)
        return cls(f"scored/{stem}.parquet", f"rejected/{stem}.csv", f"scored/{stem}.summary.json")


@dataclass(frozen=True)
class _Drop:
    """One object being processed: where it is, where its outputs go, when its processing began."""

    store: ObjectStore
    bucket: str
    key: str
    outputs: OutputKeys
    started: float

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def elapsed_s(self) -> float:
        return round(time.perf_counter() - self.started, 3)


@dataclass(frozen=True)
class _TooLarge:
    """Why a file does not fit one invocation, and the parts to split it into (-1: too large to split)."""

    reason: str
    parts: int


def process_s3_object(
    store: ObjectStore,
    bucket: str,
    key: str,
    bundle: ModelBundle,
    *,
    policy: PromotionPolicy,
    publisher: PromotionsPublisher | None,
    decisions: Decisions | None = None,
    reasons_for: ReasonsFor = ReasonsFor.PROMOTED,
    memory: MemoryModel = DEFAULT_MEMORY,
    max_object_bytes: int = 2 * 1024**3,
    incoming_prefix: str = "incoming/",
) -> BatchSummary:
    """Score ``s3://bucket/key`` and write the scored / rejected / summary objects beside it.

    Admission (``churnguard.admission``): an object over ``max_object_bytes``, or whose estimated
    rows cannot fit in ``memory``, is split by customer before reading; one that turns out too large
    while being read (before anything is scored or sent) is split then. A part of a split file that
    does not fit ends in a failed summary. Transient AWS errors propagate (the caller's queue
    retries); problems with the file itself end in a summary with ``status: failed``.
    """
    drop = _Drop(store, bucket, key, OutputKeys.for_input(key, incoming_prefix), time.perf_counter())
    head = store.head(bucket, key)
    as_of = head.metadata.get("as-of")
    estimate = estimate_rows(store, bucket, key, head.size)
    with tempfile.TemporaryDirectory() as tmp:
        rejects_path = Path(tmp) / "rejected.csv"
        too_large = _too_large_to_read(head.size, estimate, memory, max_object_bytes)
        if too_large is None:
            body = store.open(bucket, key)  # streamed, never read whole
            try:
                with rejects_path.open("w", newline="") as rejects:
                    result = score_file(
                        body,
                        key,
                        bundle,
                        as_of=as_of,
                        policy=policy,
                        publisher=publisher,
                        decisions=decisions,
                        source=drop.source,
                        reasons_for=reasons_for,
                        rejects=rejects,
                        memory=memory,
                    )
            except FileTooLargeError as exc:
                too_large = _too_large_after_reading(exc, estimate, memory)
        if too_large is not None:
            if too_large.parts > 0 and split_level(key) < MAX_SPLIT_LEVEL:
                # Beyond one invocation: split by customer; each part arrives as its own drop (same
                # queue, same function) and is scored in parallel.
                summary = _split(drop, bundle, too_large.parts, as_of, tmp)
                _put_summary(drop, summary)
                return summary
            result = _refused(drop, bundle, too_large)
            rejects_path.write_text("source_row,reason\n")  # nothing was kept of a partial read
        _write_outputs(drop, result, rejects_path, tmp)
    _put_summary(drop, result.summary)
    return result.summary


def _too_large_to_read(
    size: int, estimate: RowEstimate | None, memory: MemoryModel, max_object_bytes: int
) -> _TooLarge | None:
    """Admission before reading: too many bytes, or more estimated rows than could fit."""
    if not (size > max_object_bytes or (estimate is not None and memory.cannot_fit(estimate.rows))):
        return None
    rows = estimate.rows if estimate is not None else 0
    reason = f"it is {size:,} bytes (~{rows:,} rows), more than one invocation holds"
    try:
        parts = max(-(-size // max(max_object_bytes // 2, 1)), memory.parts_for_rows(rows), 2)
        check_split(parts, rows)
    except TooLargeToSplitError as exc:
        return _TooLarge(f"{reason}; {exc}", -1)
    return _TooLarge(reason, parts)


def _too_large_after_reading(
    exc: FileTooLargeError, estimate: RowEstimate | None, memory: MemoryModel
) -> _TooLarge:
    """A file that stopped being read: the parts its counts so far call for."""
    reason = str(exc)
    try:
        parts = _parts_after(exc, estimate, memory)
        check_split(parts, exc.declared_rows or (estimate.rows if estimate else None))
    except TooLargeToSplitError as split_exc:
        return _TooLarge(f"{reason or 'it is too large'}; {split_exc}", -1)
    return _TooLarge(reason, parts)


def _split(drop: _Drop, bundle: ModelBundle, parts: int, as_of: str | None, tmp: str) -> BatchSummary:
    """Split the object into ``parts`` (a ``split`` summary), or the failed summary of a bad file."""
    try:
        part_keys = split_object(
            drop.store,
            drop.bucket,
            drop.key,
            parts,
            as_of=as_of,
            columns=read_columns(bundle, drop.key),
            tmp_dir=tmp,
        )
    except FILE_ERRORS as exc:  # the file itself is bad: retrying cannot fix it
        _reraise_transient(exc)
        return BatchSummary(
            source=drop.source,
            status="failed",
            model_version=bundle.version,
            error=f"{type(exc).__name__}: {exc}",
            error_type=type(exc).__name__,
            duration_s=drop.elapsed_s(),
        )
    return BatchSummary(
        source=drop.source,
        status="split",
        model_version=bundle.version,
        parts=part_keys,
        duration_s=drop.elapsed_s(),
    )


def _refused(drop: _Drop, bundle: ModelBundle, too_large: _TooLarge) -> BatchResult:
    """The failed summary of a file that does not fit and is not split (again)."""
    splittable = too_large.parts > 0
    advice = (
        "raise the batch function's MemorySize, or upload the dataset in smaller files"
        if splittable
        else "upload it as smaller files"
    )
    what = "this part of a split file" if drop.key.startswith(PARTS_PREFIX) else "the file"
    summary = BatchSummary(
        source=drop.source,
        status="failed",
        model_version=bundle.version,
        error=f"{what} does not fit: {too_large.reason}; {advice}",
        error_type="PartTooLarge" if splittable else "TooLargeToSplit",
        duration_s=drop.elapsed_s(),
    )
    return BatchResult(summary, None)


def _write_outputs(drop: _Drop, result: BatchResult, rejects_path: Path, tmp: str) -> None:
    """The scored Parquet (when there is one), then the rejected rows."""
    if result.scored is not None:
        write_scored(drop.store, drop.bucket, drop.outputs.scored, result.scored, tmp)
    drop.store.upload_file(rejects_path, drop.bucket, drop.outputs.rejected, content_type="text/csv")


def write_scored(store: ObjectStore, bucket: str, key: str, scored: pd.DataFrame, tmp: str) -> None:
    """A scored frame as a Parquet object (written to ``tmp`` first: multipart for large outputs)."""
    import fastparquet

    scored_path = f"{tmp}/scored.parquet"
    fastparquet.write(scored_path, scored, compression="SNAPPY", stats=False)
    store.upload_file(scored_path, bucket, key)


def _put_summary(drop: _Drop, summary: BatchSummary) -> None:
    body = summary.to_json().encode()
    drop.store.put_bytes(drop.bucket, drop.outputs.summary, body, content_type="application/json")


def estimate_rows(store: ObjectStore, bucket: str, key: str, size: int) -> RowEstimate | None:
    """Rows of a CSV / CSV.gz object from its first bytes (a ranged GET); None for Parquet, whose
    footer gives the exact count when it is read."""
    lower = key.lower()
    if lower.endswith(".parquet") or not lower.endswith((".csv", ".csv.gz")) or size == 0:
        return None
    sample = store.get_range(bucket, key, 0, HEAD_SAMPLE_BYTES)
    return estimate_csv_rows(sample, size, gzipped=lower.endswith(".gz"))


def _parts_after(exc: FileTooLargeError, estimate: RowEstimate | None, memory: MemoryModel) -> int:
    """Parts for a file that stopped being read: extrapolate what was read to the whole file."""
    if exc.declared_rows is not None:
        return memory.parts_for_rows(exc.declared_rows)
    total_rows = estimate.rows if estimate is not None else 0
    if estimate is not None and estimate.exact:
        scale = max(1.0, total_rows / max(exc.rows_read, 1))
    else:  # the estimate was low, by how much is unknown: at least double what was read
        scale = max(2.0, total_rows / max(exc.rows_read, 1))
    return memory.parts_for(exc.events, exc.customers, exc.rejected, scale=scale)
