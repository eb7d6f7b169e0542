"""Admission of a batch file to one invocation, by memory: measured, compression-aware.

One invocation holds every valid event of its file in compact arrays, one entry per customer and
every rejected row until the outputs are written, so its peak memory grows with what the file
*holds*, not with its size in bytes (a 200 MB ``.csv.gz`` can hold more rows than a 1 GB CSV). The
peak is modelled as

    peak = base + per_event * valid events + per_customer * customers + per_rejected * rejected rows

with coefficients measured by ``benchmarks/batch_memory.py`` (results in
``benchmarks/results/batch_memory.md``; the shipped values are the fit rounded up, and a test checks
they stay above what is measured). Admission then works in two steps:

1. **Before reading** — ``estimate_csv_rows`` estimates the rows from a sample of the object's head
   (for gzip, rows per *compressed* byte) and Parquet's footer gives its row count exactly. A file
   whose rows alone cannot fit (``MemoryModel.cannot_fit``) is split or refused without reading it.
2. **While reading** — ``MemoryModel.fits`` is checked after every chunk with the exact counts so
   far (they only grow); the first chunk that would push the predicted peak over the budget stops
   the read with ``FileTooLargeError`` before anything was scored or sent, and the caller splits the
   file (or, for a part of a split file, writes a summary saying so).

Nothing in here talks to AWS.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

# Measured by benchmarks/batch_memory.py (benchmarks/results/batch_memory.md): the fit was 502 MB +
# 63 B/event + 397 B/customer + 72 B/rejected row, worst error 5.3%; shipped ~10% above it and above
# every measured peak (a test checks both the committed runs and a live one).
BASE_MB = 560.0
BYTES_PER_EVENT = 80.0
BYTES_PER_CUSTOMER = 450.0
BYTES_PER_REJECTED_ROW = 100.0

HEAD_SAMPLE_BYTES = 1024**2
MAX_SAMPLE_OUTPUT_BYTES = 64 * 1024**2  # a gzip sample expanding beyond this is treated as a bomb
MAX_PARTS = 64  # more parts than this in one split pass: refuse and ask for a pre-split dataset


# One split pass streams the whole file (read, validate for its as-of, hash, gzip) within Lambda's
# 15 minutes: measured 135k rows/s on one core (2M synthetic rows, as-of computed; 201k with the
# as-of given), so 60M rows take ~7.5 min and leave the rest for S3 transfer.
MAX_SPLIT_ROWS = 60_000_000


class TooLargeToSplitError(ValueError):
    """The file would need more parts, or more rows, than one split pass handles."""


def check_split(parts: int, rows: int | None) -> None:
    """Refuse a split one pass cannot do: more than ``MAX_PARTS`` parts, or ``MAX_SPLIT_ROWS`` rows."""
    if parts > MAX_PARTS:
        raise TooLargeToSplitError(
            f"it would need {parts} parts, more than the {MAX_PARTS} one split pass writes: "
            f"upload it as a dataset of smaller files"
        )
    if rows is not None and rows > MAX_SPLIT_ROWS:
        raise TooLargeToSplitError(
            f"~{rows:,} rows are more than one split pass reads within a function's 15 minutes "
            f"({MAX_SPLIT_ROWS:,}): upload it as a dataset of smaller files"
        )


@dataclass(frozen=True)
class MemoryModel:
    """Predicted peak memory of scoring a file, against the function's memory budget."""

    budget_mb: float
    headroom: float = 0.85  # of the budget; the rest absorbs allocator slack and the runtime
    base_mb: float = BASE_MB
    bytes_per_event: float = BYTES_PER_EVENT
    bytes_per_customer: float = BYTES_PER_CUSTOMER
    bytes_per_rejected_row: float = BYTES_PER_REJECTED_ROW

    @property
    def usable_mb(self) -> float:
        return self.budget_mb * self.headroom

    def predicted_peak_mb(self, events: int, customers: int, rejected: int) -> float:
        return self.base_mb + self._variable_mb(events, customers, rejected)

    def fits(self, events: int, customers: int, rejected: int) -> bool:
        return self.predicted_peak_mb(events, customers, rejected) <= self.usable_mb

    def max_rows(self) -> int:
        """The most rows that could fit whatever they turn out to be (each row costs at least the
        cheaper of a valid event and a rejected row): more than this certainly cannot fit."""
        cheapest = min(self.bytes_per_event, self.bytes_per_rejected_row)
        return max(0, int((self.usable_mb - self.base_mb) * 1024**2 / cheapest))

    def cannot_fit(self, rows: int) -> bool:
        return rows > self.max_rows()

    def child_memory_mb(self) -> int:
        """Address-space limit for a decoder child run while this process holds only its base."""
        return max(512, int(self.usable_mb - self.base_mb))  # the decoder needs ~384 MB to start

    def parts_for(self, events: int, customers: int, rejected: int, *, scale: float = 1.0) -> int:
        """Parts to split into so that each part is predicted to use at most half of what a part
        may use: ``scale`` extrapolates counts seen so far to the whole file (1.0 = the counts are
        the whole file). Raises ``TooLargeToSplitError`` beyond ``MAX_PARTS``."""
        per_part = self._per_part_mb()
        needed = self._variable_mb(events, customers, rejected) * max(scale, 1.0) / per_part
        parts = max(2, math.ceil(needed))
        if parts > MAX_PARTS:
            raise TooLargeToSplitError(
                f"it would need {parts} parts of at most {per_part:.0f} MB of data each, more than the "
                f"{MAX_PARTS} one split pass writes: upload it as a dataset of smaller files"
            )
        return parts

    def shards_for(self, events: int, customers: int) -> int:
        """Shards of a multi-part dataset so that each is predicted to use at most half of what one
        invocation may (the same headroom as a split). At least 1 and not capped: each shard is its
        own invocation, read from pieces the parts wrote, not one pass over one file."""
        return max(1, math.ceil(self._variable_mb(events, customers, 0) / self._per_part_mb()))

    def _per_part_mb(self) -> float:
        per_part = (self.usable_mb - self.base_mb) / 2
        if per_part <= 0:
            raise TooLargeToSplitError(
                f"the function's memory ({self.budget_mb:.0f} MB) leaves nothing for data after the "
                f"runtime's {self.base_mb:.0f} MB: raise the function's MemorySize"
            )
        return per_part

    def parts_for_rows(self, rows: int) -> int:
        """Parts for a file known only by its row count, sized on its events: customers are not
        known before reading, and assuming one per row would cut a typical file into ~10x the parts
        it needs. A part that holds more customers than that allows trips ``fits`` while it is read
        and is split once more, sized from its exact counts."""
        return self.parts_for(rows, 0, 0)

    def _variable_mb(self, events: int, customers: int, rejected: int) -> float:
        return (
            events * self.bytes_per_event
            + customers * self.bytes_per_customer
            + rejected * self.bytes_per_rejected_row
        ) / 1024**2


@dataclass(frozen=True)
class RowEstimate:
    rows: int
    exact: bool  # the sample was the whole object


def estimate_csv_rows(sample: bytes, object_size: int, *, gzipped: bool) -> RowEstimate:
    """Rows of a CSV object (header excluded) from the first bytes of it.

    For gzip the sample is decompressed (at most ``MAX_SAMPLE_OUTPUT_BYTES``) and rows are counted
    per *compressed* byte consumed, so the estimate follows the compression ratio of this file. An
    undecodable sample estimates 0 rows: reading the file will report what is wrong with it.
    """
    if object_size <= 0 or not sample:
        return RowEstimate(0, exact=True)
    consumed, text = len(sample), sample
    whole = len(sample) >= object_size
    if gzipped:
        consumed, text, complete = _gunzip_prefix(sample)
        whole = whole and complete
        if not text:
            return RowEstimate(0, exact=False)
    newlines = text.count(b"\n")
    if whole:
        rows = newlines - 1 + (1 if text and not text.endswith(b"\n") else 0)
        return RowEstimate(max(rows, 0), exact=True)
    header_end = text.find(b"\n")
    if header_end < 0 or newlines < 2:  # not even one full row in the sample: a row per sample
        return RowEstimate(max(1, math.ceil(object_size / max(consumed, 1))), exact=False)
    # rows after the header, per input byte after the header's share of the input
    header_share = consumed * (header_end + 1) / len(text)
    per_byte = (newlines - 1) / max(consumed - header_share, 1.0)
    return RowEstimate(math.ceil((object_size - header_share) * per_byte), exact=False)


def _gunzip_prefix(sample: bytes) -> tuple[int, bytes, bool]:
    """(compressed bytes consumed, their output, reached the end of the last member)."""
    out: list[bytes] = []
    produced = consumed = 0
    data = sample
    complete = False
    try:
        while data and produced < MAX_SAMPLE_OUTPUT_BYTES:
            inflater = zlib.decompressobj(wbits=31)  # one gzip member at a time (concatenated .gz)
            chunk = inflater.decompress(data, MAX_SAMPLE_OUTPUT_BYTES - produced)
            out.append(chunk)
            produced += len(chunk)
            used = len(data) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
            consumed += used
            complete = inflater.eof
            if not inflater.eof:
                break
            data = inflater.unused_data
    except zlib.error:  # garbage after a good prefix, or not gzip at all: estimate from what decoded
        complete = False
    return consumed, b"".join(out), complete
