"""A synthetic warehouse export for the scale benchmark: K customers, ~30 events each, in gzip CSV parts.

``churnguard.datasets.generate_synthetic_events`` builds the whole log as one DataFrame (object
``user_id``s, then a global sort): ~100 B a row before the sort's copies, i.e. ~10 GB for 90M rows,
and it cannot be written out in time order chunk by chunk. This generator draws the same kind of
customers (latent weekly purchase rate, basket value, return propensity, first week, churn week
with a hazard that rises for low-rate, high-return customers; lapsed customers keep a trickle of
views) but produces the log **one week at a time** from a generator seeded by (seed, week): each
week's rows are sorted by time and streamed out, so memory is bounded by one week of events
(~3.5M rows at 3M customers) plus the per-customer traits (~50 B a customer).

It writes what an exporter writes: rows in time order, cut by size into ``part-NNNNN.csv.gz``
(gzip level 6, a header in each part), then ``_SUCCESS``; so almost every customer spans parts. The
canonical schema ``user_id,timestamp,event_type,amount,quantity``; every customer has a first-visit
view (so all K appear); a small share of extra rows with an unknown event type are planted so the
rejected-rows path and ``rows in = used + rejected`` are exercised. Counts come from a first pass
over the same seeded draws (cheap: counts only), so the parts can be cut evenly.
"""

from __future__ import annotations

import gzip
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

WEEKS = 26  # ~30 events per customer (the serving benchmark's 1M-customer file has the same shape)
START = np.datetime64("2024-01-01T00:00:00", "s")
WEEK_S = 7 * 86400
EVENT_TYPES = ("order", "view", "cart", "return", "unknown-type")  # the last is rejected
ORDER, VIEW, CART, RETURN, BOGUS = range(len(EVENT_TYPES))
GZIP_LEVEL = 6  # zlib's default, what exporters write
SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("timestamp", pa.string()),
        ("event_type", pa.string()),
        ("amount", pa.float64()),
        ("quantity", pa.int64()),
    ]
)


@dataclass(frozen=True)
class Traits:
    """Per-customer latent traits (one entry per customer)."""

    rate: np.ndarray  # orders per active week
    basket: np.ndarray  # typical order value
    return_propensity: np.ndarray
    first_week: np.ndarray
    churn_week: np.ndarray


def draw_traits(customers: int, seed: int) -> Traits:
    rng = np.random.default_rng([seed, 1_000_003])
    rate = rng.gamma(shape=1.2, scale=0.25, size=customers)
    basket = rng.lognormal(mean=3.4, sigma=0.5, size=customers)
    returns = rng.beta(1.2, 8.0, size=customers)
    first = rng.integers(0, WEEKS // 3, customers)
    hazard = 0.012 * np.exp(-0.8 * np.log1p(rate * 4) + 2.5 * returns - 0.004 * (basket - 30))
    churn = first + rng.exponential(1.0 / np.clip(hazard, 1e-4, None)).astype(np.int64)
    return Traits(rate, basket, returns, first, churn)


@dataclass(frozen=True)
class WeekCounts:
    """Events per (customer, type) in one week: customer index and count arrays per event type."""

    rng: np.random.Generator  # continues with the events' times and values
    blocks: list[tuple[int, np.ndarray, np.ndarray]]  # (type, customer indexes, counts)
    bogus: int  # extra rows with an unknown event type

    @property
    def rows(self) -> int:
        return int(sum(int(counts.sum()) for _, _, counts in self.blocks)) + self.bogus


def week_counts(traits: Traits, week: int, seed: int, reject_rate: float) -> WeekCounts:
    """The week's event counts; the same (seed, week) always draws the same counts."""
    rng = np.random.default_rng([seed, week])
    t = traits
    active = np.flatnonzero((t.first_week <= week) & (week < t.churn_week))
    rate = t.rate[active]
    orders = rng.poisson(rate)
    lapsed = np.flatnonzero((t.first_week <= week) & (week >= t.churn_week))
    new = np.flatnonzero(t.first_week == week)
    blocks = [
        (ORDER, active, orders),
        (VIEW, active, rng.poisson(rate * 2.5 + 0.1)),
        (CART, active, rng.poisson(rate * 0.8 + 0.02)),
        (RETURN, active, rng.binomial(orders, t.return_propensity[active])),
        (VIEW, lapsed, rng.poisson(0.05, len(lapsed))),
        (VIEW, new, np.ones(len(new), dtype=np.int64)),  # the first visit: every customer appears
    ]
    valid = sum(int(c.sum()) for _, _, c in blocks)
    return WeekCounts(rng, blocks, int(rng.binomial(valid, reject_rate)) if reject_rate > 0 else 0)


def week_table(traits: Traits, week: int, counts: WeekCounts) -> tuple[pa.Table, int]:
    """The week's rows in time order, and the latest valid event (seconds since START)."""
    rng = counts.rng
    customer, seconds, kind, amount, quantity = [], [], [], [], []
    for event_type, who, per in counts.blocks:
        c = np.repeat(who, per)
        customer.append(c)
        seconds.append(week * WEEK_S + rng.integers(0, WEEK_S, len(c)))
        kind.append(np.full(len(c), event_type, dtype=np.int8))
        priced = event_type in (ORDER, RETURN)
        amount.append(
            np.round(traits.basket[c] * rng.lognormal(0.0, 0.35, len(c)), 2) if priced else np.zeros(len(c))
        )
        quantity.append(rng.integers(1, 4, len(c)) if priced else np.ones(len(c), dtype=np.int64))
    columns = [np.concatenate(x) for x in (customer, seconds, kind, amount, quantity)]
    latest = int(columns[1].max()) if len(columns[1]) else -1
    if counts.bogus:  # copies of random rows with an unknown type: rejected, never a new customer
        pick = rng.integers(0, len(columns[0]), counts.bogus)
        columns = [np.concatenate([col, col[pick]]) for col in columns]
        columns[2][-counts.bogus :] = BOGUS
    order = np.argsort(columns[1], kind="stable")
    c, s, k, a, q = (col[order] for col in columns)
    table = pa.table(
        {
            "user_id": pc.binary_join_element_wise("c", pc.cast(pa.array(c + 1), pa.string()), ""),
            "timestamp": pc.strftime(pa.array(START + s.astype("timedelta64[s]")), "%Y-%m-%dT%H:%M:%SZ"),
            "event_type": pc.take(pa.array(EVENT_TYPES), pa.array(k)),
            "amount": pa.array(a),
            "quantity": pa.array(q.astype(np.int64)),
        },
        schema=SCHEMA,
    )
    return table, latest


@dataclass(frozen=True)
class Export:
    customers: int
    rows: int
    rejected_rows: int
    parts: int
    bytes: int
    latest_event: str  # ISO, UTC: the dataset's as-of is the day after
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


class _PartWriter:
    """Rows in order into ``part-NNNNN.csv.gz`` files of ``rows_per_part`` rows each."""

    def __init__(self, folder: Path, rows_per_part: int) -> None:
        self.folder, self.rows_per_part = folder, rows_per_part
        self.index, self.in_part = -1, rows_per_part
        self.gz: gzip.GzipFile | None = None
        self.writer: pacsv.CSVWriter | None = None

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self.in_part >= self.rows_per_part:
                self._next()
            take = min(self.rows_per_part - self.in_part, table.num_rows - offset)
            assert self.writer is not None
            self.writer.write_table(table.slice(offset, take))
            offset += take
            self.in_part += take

    def _next(self) -> None:
        self.close()
        self.index += 1
        path = self.folder / f"part-{self.index:05d}.csv.gz"
        self.gz = gzip.open(path, "wb", compresslevel=GZIP_LEVEL)  # noqa: SIM115 - closed in close()
        self.writer = pacsv.CSVWriter(self.gz, SCHEMA, write_options=pacsv.WriteOptions(quoting_style="none"))
        self.in_part = 0

    def close(self) -> None:
        if self.writer is not None and self.gz is not None:
            self.writer.close()
            self.gz.close()
        self.writer = self.gz = None


def write_export(
    folder: Path, customers: int, parts: int, *, seed: int = 11, reject_rate: float = 1e-4
) -> Export:
    """The export of ``customers`` customers into ``parts`` parts under ``folder``, closed by ``_SUCCESS``."""
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    traits = draw_traits(customers, seed)
    total = rejected = 0
    for week in range(WEEKS):  # counts only; the second pass draws them again, week by week
        counts = week_counts(traits, week, seed, reject_rate)
        total, rejected = total + counts.rows, rejected + counts.bogus
    writer = _PartWriter(folder, math.ceil(total / parts))
    latest = -1
    for week in range(WEEKS):
        table, week_latest = week_table(traits, week, week_counts(traits, week, seed, reject_rate))
        writer.write(table)
        latest = max(latest, week_latest)
    writer.close()
    (folder / "_SUCCESS").write_bytes(b"")
    written = sorted(folder.glob("part-*.csv.gz"))
    return Export(
        customers=customers,
        rows=total,
        rejected_rows=rejected,
        parts=len(written),
        bytes=sum(p.stat().st_size for p in written),
        latest_event=str(START + np.timedelta64(latest, "s")),
        seconds=time.perf_counter() - started,
    )
