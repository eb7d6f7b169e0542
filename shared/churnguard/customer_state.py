"""Per-customer behaviour state for real-time scoring: events in (incrementally, idempotently, in any
order), the model's raw features out at any later ``as_of`` — equal to ``build_raw_features`` on the
customer's full history, without keeping that history.

**One feature path.** ``features.build_raw_features`` is (events -> ``observe_events`` ->
``accumulate``: per-user accumulators) -> ``raw_features_from_accumulators`` (weekly tensor and every
static formula). A state keeps the accumulators of its old events ("folded") and, compactly, its
recent events (the "window"); ``raw_features_from_states`` observes the window at ``as_of``,
accumulates it with the same ``accumulate``, merges the folded part (``merge_accumulators``) and calls
the same ``raw_features_from_accumulators``. No formula is written twice. This was chosen over
converting a state back into an ``EventArrays`` because the accumulators make exactness provable piece
by piece: counts are integer sums, first / last timestamps and the largest order are min / max, the
order days are a set — all merge exactly — and an age is always ``(as_of - timestamp) / 86400`` of
the same timestamp (``features._age_days``, monotone, so the age of the latest timestamp is the
smallest age bit for bit). Only float sums (amounts, quantities) can differ, in the last bits, because
they are added in another order (the batch path itself depends on row order there).

**The state** (``CustomerState``), per customer, every canonical event type (any model vocabulary is a
subset; a state survives a model change that keeps ``weeks``):

* ``last_event_s``: the state's clock T, the latest timestamp applied (any type); ``events_applied``.
* the window: every event with timestamp >= T - (7 * weeks + 1) days, one row per (exact timestamp,
  type) with its event count, summed amount and quantity and largest amount. The day of margin keeps
  rounding off the window edge; exact timestamps keep week membership, recency and order days exact
  for *any* later ``as_of`` (not only whole seconds or days).
* folded accumulators of the older events: per type count, first and last timestamp; order spend,
  items and largest amount; the set of distinct UTC order days (small ints). The day set is what makes
  the inter-purchase features exact: an order day arriving late between two others splits a gap, which
  a running sum of squares cannot undo. It costs 8 bytes per order day before compression.
* event-id fingerprints (64-bit BLAKE2b of the stripped id): all of the window's events, and those of
  folded events up to ``max_folded_ids`` (oldest folded dropped first, counted in
  ``folded_ids_dropped``).
* profile: per column the latest non-null value by timestamp, ties to the later-applied event — the
  batch rule (``batch._merge_latest``: latest timestamp, ties by file order) when events are applied in
  file order. A value at ``as_of`` itself is used too, as batch scoring does.

**Rules.**

* Idempotent: an event whose ``event_id`` (stripped, non-blank) was applied before, or appears twice in
  a batch, is one event (the first applied wins); ``apply_events`` reports it as a duplicate. Events
  without an id are always new (identical rows are separate events, as in ``events.py``). Ids are
  per customer: the same id in two customers' states is two events.
* Order-independent: window and folded part are functions of the set of events (T is its latest
  timestamp), so any order and any batch split give the same features — float sums aside, and two
  things that are order-dependent by definition: which of two contents of one ``event_id`` is kept,
  and which of two profile values at the same timestamp wins. The property test proves it.
* An event older than the window (timestamp < T - horizon, late or replayed) goes straight into the
  folded accumulators: counts, first / last, spend, items, largest order, its order day, the profile
  rule. It never touches the window (no ``as_of`` >= T can see it in the weekly tensor).
* Duplicates of folded events are caught while their fingerprint is kept. Past ``max_folded_ids``
  (4,096 by default, 32 KB) the oldest folded fingerprints are dropped and a replay of *those* events
  counts again: ``dedup_complete`` turns False. The DynamoDB adapter can close that gap with
  conditional per-event-id writes with a TTL.
* ``as_of`` must be >= ``last_event_s``: a state cannot un-apply the future, so an earlier ``as_of``
  raises ``AsOfBeforeStateError``. ``as_of`` == T is valid; events at T are then not observed (only
  events strictly before ``as_of`` count, as in ``build_raw_features``). The model's ``weeks`` must be
  <= the state's.
* Size: ``to_bytes`` / ``from_bytes`` is a columnar binary encoding (byte-shuffled arrays, zlib),
  exact. ``apply_events`` never returns a state over ``max_bytes`` (default 350,000 bytes, leaving room
  for the key and the caller's attributes in a 400 KB DynamoDB item): it first drops folded
  fingerprints (as above), then refuses with ``StateTooLargeError`` (the caller keeps the previous
  state). Measured: a windowed event with an id costs ~12 bytes encoded (8 are its incompressible
  fingerprint; ~22 for orders with varied amounts, ~2-3 without ids), so ~28,000 windowed views or
  ~15,000 windowed orders with ids fit. Real CDNOW customers (23,570, each at its last event): median
  167 bytes, 99th percentile ~520 bytes, the heaviest (217 orders) 3.8 KB.

numpy only (it runs in the API Lambda); no I/O, no environment.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from churnguard.event_types import EVENT_TYPE_ORDER, EVENT_TYPES, TYPE_CODES
from churnguard.features import (
    MAX_AMOUNT,
    MAX_QUANTITY,
    SECONDS_PER_DAY,
    EventArrays,
    FeatureAccumulators,
    FeatureConfig,
    FeatureSpecError,
    RawFeatures,
    accumulate,
    merge_accumulators,
    observe_events,
    raw_features_from_accumulators,
    utc_day,
)

ProfileValue = str | float | int | bool | None  # as ``api.ProfileValue`` (api needs pydantic)

STATE_MAGIC = b"CGS\x01"  # "ChurnGuard state", encoding version 1
MAX_STATE_BYTES = 350_000
MAX_FOLDED_IDS = 4_096
WINDOW_MARGIN_DAYS = 1
_MAX_DECODED_BYTES = 64 * 1024 * 1024
_N_TYPES = len(EVENT_TYPES)
_ORDER = TYPE_CODES[EVENT_TYPE_ORDER]
_TYPE_NAMES = np.asarray(EVENT_TYPES, dtype=object)
_DEFAULT_CONFIG = FeatureConfig()


class CustomerStateError(ValueError):
    """A customer state cannot do what was asked (see the subclasses)."""


class AsOfBeforeStateError(CustomerStateError):
    """``as_of`` is before an event the state has applied: a state cannot un-apply the future."""


class StateTooLargeError(CustomerStateError):
    """Applying the events would take the encoded state over its size limit."""

    def __init__(self, size_bytes: int, limit_bytes: int, window_rows: int) -> None:
        super().__init__(
            f"the customer state would take {size_bytes:,} bytes, over the {limit_bytes:,} limit "
            f"({window_rows:,} window rows; folded event ids already dropped); the events were not applied"
        )
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class StateFormatError(CustomerStateError):
    """Bytes that are not an encoded customer state."""


@dataclass(frozen=True)
class StateEvent:
    """One event in the canonical schema (``events.py``), for one customer; ``timestamp_s`` is
    seconds since the Unix epoch, UTC (as ``EventArrays.timestamp_s``)."""

    timestamp_s: float
    event_type: str
    amount: float = 0.0
    quantity: float = 1.0
    event_id: str | None = None
    profile: Mapping[str, ProfileValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.timestamp_s):
            raise ValueError(f"timestamp_s must be finite, got {self.timestamp_s!r}")
        if self.event_type not in TYPE_CODES:
            raise ValueError(
                f"unknown event_type {self.event_type!r} (expected one of {', '.join(EVENT_TYPES)})"
            )
        for name, value, maximum in (
            ("amount", self.amount, MAX_AMOUNT),
            ("quantity", self.quantity, MAX_QUANTITY),
        ):
            if not (math.isfinite(value) and 0.0 <= value <= maximum):
                raise ValueError(f"{name} must be a number from 0 to {maximum:g}, got {value!r}")


def fingerprint(event_id: str | None) -> int | None:
    """The 64-bit fingerprint an event id is kept as (None: no id, blank included)."""
    if event_id is None or not event_id.strip():
        return None
    return int.from_bytes(hashlib.blake2b(event_id.strip().encode(), digest_size=8).digest(), "little")


def _f64(values: Any = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _i64(values: Any = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _u64(values: Any = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64).reshape(-1)


# Array fields and their dtypes, in encoding order.
_ARRAYS: dict[str, np.dtype[Any]] = {
    "window_s": np.dtype("<f8"),
    "window_type": np.dtype("i1"),
    "window_count": np.dtype("<i8"),
    "window_amount": np.dtype("<f8"),
    "window_quantity": np.dtype("<f8"),
    "window_largest": np.dtype("<f8"),
    "window_ids": np.dtype("<u8"),
    "window_id_s": np.dtype("<f8"),
    "folded_count": np.dtype("<i8"),
    "folded_first_s": np.dtype("<f8"),
    "folded_last_s": np.dtype("<f8"),
    "folded_order_days": np.dtype("<i8"),
    "folded_ids": np.dtype("<u8"),
}
_WINDOW_ROWS = (
    "window_s",
    "window_type",
    "window_count",
    "window_amount",
    "window_quantity",
    "window_largest",
)


@dataclass(frozen=True, eq=False)
class CustomerState:
    """One customer's behaviour, compactly (see the module docstring). Immutable: ``apply_events``
    returns a new state. Type codes are ``churnguard.event_types.TYPE_CODES``."""

    weeks: int  # the window kept, in weeks (>= the ``weeks`` of any model scoring the state)
    last_event_s: float  # T, the latest timestamp applied (-inf: none)
    events_applied: int
    # the window: one row per (timestamp, type), sorted by timestamp then type
    window_s: np.ndarray  # float64
    window_type: np.ndarray  # int8
    window_count: np.ndarray  # int64 events in the row
    window_amount: np.ndarray  # float64 summed
    window_quantity: np.ndarray  # float64 summed
    window_largest: np.ndarray  # float64 largest single amount
    window_ids: np.ndarray  # uint64 fingerprints of the window's events with an id, sorted by (time, id)
    window_id_s: np.ndarray  # float64 their timestamps (to fold them with their events)
    # the folded past: events before the window
    folded_count: np.ndarray  # int64 [types]
    folded_first_s: np.ndarray  # float64 [types] (+inf: none)
    folded_last_s: np.ndarray  # float64 [types] (-inf: none)
    folded_spend: float
    folded_items: float
    folded_max_order: float  # -inf: none
    folded_order_days: np.ndarray  # int64 sorted distinct UTC day numbers of folded orders
    folded_ids: np.ndarray  # uint64 fingerprints of folded events, oldest folded first
    folded_ids_dropped: int  # fingerprints dropped by the bound (0: every applied id is known)
    profile: Mapping[str, tuple[float, ProfileValue]]  # column -> (timestamp, latest non-null value)

    def __post_init__(self) -> None:
        for name, dtype in _ARRAYS.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1:
                raise StateFormatError(f"CustomerState.{name} must be a 1-d {dtype} array")
        if self.weeks < 1:
            raise StateFormatError(f"weeks must be positive, got {self.weeks}")
        if len({len(getattr(self, n)) for n in _WINDOW_ROWS}) != 1:
            raise StateFormatError("the window's columns differ in length")
        if len(self.window_ids) != len(self.window_id_s):
            raise StateFormatError("window_ids and window_id_s differ in length")
        for name in ("folded_count", "folded_first_s", "folded_last_s"):
            if len(getattr(self, name)) != _N_TYPES:
                raise StateFormatError(f"{name} must hold one value per event type ({_N_TYPES})")

    @classmethod
    def empty(cls, weeks: int = _DEFAULT_CONFIG.weeks) -> CustomerState:
        return cls(
            weeks=weeks,
            last_event_s=-math.inf,
            events_applied=0,
            window_s=_f64(),
            window_type=np.zeros(0, dtype=np.int8),
            window_count=_i64(),
            window_amount=_f64(),
            window_quantity=_f64(),
            window_largest=_f64(),
            window_ids=_u64(),
            window_id_s=_f64(),
            folded_count=np.zeros(_N_TYPES, dtype=np.int64),
            folded_first_s=np.full(_N_TYPES, math.inf),
            folded_last_s=np.full(_N_TYPES, -math.inf),
            folded_spend=0.0,
            folded_items=0.0,
            folded_max_order=-math.inf,
            folded_order_days=_i64(),
            folded_ids=_u64(),
            folded_ids_dropped=0,
            profile={},
        )

    # ---- what later code reads ----
    @property
    def horizon_s(self) -> float:
        """How far before T the window reaches, in seconds."""
        return (7 * self.weeks + WINDOW_MARGIN_DAYS) * SECONDS_PER_DAY

    @property
    def first_event_s(self) -> float:
        """The earliest timestamp applied (+inf: none)."""
        window_first = float(self.window_s[0]) if len(self.window_s) else math.inf
        return min(float(self.folded_first_s.min()), window_first)

    @property
    def last_order_s(self) -> float:
        """The latest order timestamp applied (-inf: none)."""
        orders = self.window_s[self.window_type == _ORDER]
        return float(orders[-1]) if len(orders) else float(self.folded_last_s[_ORDER])

    @property
    def dedup_complete(self) -> bool:
        """Every applied event id is still known (no fingerprint dropped by the bound)."""
        return self.folded_ids_dropped == 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerState):
            return NotImplemented
        if any(getattr(self, n).tobytes() != getattr(other, n).tobytes() for n in _ARRAYS):
            return False
        scalars = (
            *("weeks", "last_event_s", "events_applied", "folded_spend", "folded_items"),
            *("folded_max_order", "folded_ids_dropped"),
        )
        same_profile = json.dumps(_profile_json(self.profile)) == json.dumps(_profile_json(other.profile))
        return same_profile and all(getattr(self, n) == getattr(other, n) for n in scalars)

    __hash__ = None  # type: ignore[assignment]

    # ---- encoding ----
    def to_bytes(self) -> bytes:
        """The exact, compact encoding (deterministic: equal states encode equally). Kept once made
        (a state is immutable): ``apply_events`` encodes to check the size bound, and the caller
        then stores the same bytes; compressing twice was a third of an event's CPU."""
        encoded: bytes | None = self.__dict__.get("_encoded")
        if encoded is None:
            encoded = self._encode()
            object.__setattr__(self, "_encoded", encoded)  # not a field: eq, replace ignore it
        return encoded

    def _encode(self) -> bytes:
        scalars = np.asarray(
            [self.last_event_s, self.folded_spend, self.folded_items, self.folded_max_order], dtype="<f8"
        )
        arrays = {
            name: np.ascontiguousarray(getattr(self, name), dtype=dtype) for name, dtype in _ARRAYS.items()
        }
        header = json.dumps(
            {
                "weeks": self.weeks,
                "events_applied": self.events_applied,
                "folded_ids_dropped": self.folded_ids_dropped,
                "profile": _profile_json(self.profile),
                "lengths": [len(a) for a in arrays.values()],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        body = b"".join(_shuffle(a) for a in (scalars, *arrays.values()))
        return STATE_MAGIC + zlib.compress(struct.pack("<I", len(header)) + header + body, 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        if not data.startswith(STATE_MAGIC):
            raise StateFormatError("not a ChurnGuard customer state (or another encoding version)")
        try:
            inflater = zlib.decompressobj()
            payload = inflater.decompress(data[len(STATE_MAGIC) :], _MAX_DECODED_BYTES)
            if inflater.unconsumed_tail or not inflater.eof:
                raise StateFormatError("customer state is truncated or too large")
            (header_len,) = struct.unpack_from("<I", payload)
            header = json.loads(payload[4 : 4 + header_len])
            scalars, *values = _unshuffle_all(payload, 4 + header_len, header["lengths"])
            arrays = dict(zip(_ARRAYS, values, strict=True))
            profile = {str(k): (float(v[0]), v[1]) for k, v in header["profile"].items()}
            return cls(
                weeks=int(header["weeks"]),
                last_event_s=float(scalars[0]),
                events_applied=int(header["events_applied"]),
                folded_spend=float(scalars[1]),
                folded_items=float(scalars[2]),
                folded_max_order=float(scalars[3]),
                folded_ids_dropped=int(header["folded_ids_dropped"]),
                profile=profile,
                **arrays,
            )
        except StateFormatError:
            raise
        except (zlib.error, struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
            raise StateFormatError(f"malformed customer state: {exc!r}") from exc


def _profile_json(profile: Mapping[str, tuple[float, ProfileValue]]) -> dict[str, list[Any]]:
    return {column: [ts, value] for column, (ts, value) in sorted(profile.items())}


def _shuffle(values: np.ndarray) -> bytes:
    """The array's bytes, byte-plane by byte-plane (all first bytes, then all second...): sorted
    timestamps and small counts then compress far better, losslessly."""
    size = values.dtype.itemsize
    return values.view(np.uint8).reshape(-1, size).T.tobytes() if size > 1 else values.tobytes()


# The encoded arrays: the four scalars, then ``_ARRAYS``.
_ENCODED: tuple[np.dtype[Any], ...] = (np.dtype("<f8"), *_ARRAYS.values())
_ITEM_SIZES = tuple(d.itemsize for d in _ENCODED)
_BYTE = np.dtype(np.uint8)


def _unshuffle_all(payload: bytes, offset: int, array_lengths: Sequence[Any]) -> list[np.ndarray]:
    """The scalars and every ``_ARRAYS`` column of an encoded state, from ``offset`` to the end of
    ``payload`` (``_shuffle``'s inverse). Each array is read through a strided view of the payload
    (element e, byte b at ``b * length + e``) and copied once: decoding is most of the sweep's cost
    per customer, and that cost is numpy calls: 4 an array here, 6 before (~25% less time)."""
    lengths = [4, *map(int, array_lengths)]
    if len(lengths) != len(_ENCODED):
        raise StateFormatError("customer state has the wrong number of arrays")
    if min(lengths) < 0:
        raise StateFormatError("customer state is truncated")
    end = offset + sum(map(operator.mul, lengths, _ITEM_SIZES))
    if end > len(payload):
        raise StateFormatError("customer state is truncated")
    if end != len(payload):
        raise StateFormatError("customer state has trailing bytes")
    out: list[np.ndarray] = []
    for dtype, size, n in zip(_ENCODED, _ITEM_SIZES, lengths, strict=True):
        if n == 0:
            out.append(np.empty(0, dtype=dtype))
        elif size == 1:
            out.append(np.frombuffer(payload, dtype, n, offset).copy())
        else:
            planes = np.ndarray((n, size), _BYTE, payload, offset, (1, n))  # positional: ~1 us less
            out.append(planes.copy().view(dtype).reshape(n))
        offset += n * size
    return out


# ---------------------------------------------------------------------------------------------
# applying events
# ---------------------------------------------------------------------------------------------


class Applied(NamedTuple):
    """``apply_events``'s answer: the new state, events applied, duplicates ignored."""

    state: CustomerState
    applied: int
    duplicates: int


@dataclass(frozen=True)
class _Rows:
    """Events or window rows as columns (one row: count events of one type at one instant)."""

    s: np.ndarray
    type: np.ndarray
    count: np.ndarray
    amount: np.ndarray
    quantity: np.ndarray
    largest: np.ndarray

    def __getitem__(self, keep: np.ndarray) -> _Rows:
        return _Rows(
            *(getattr(self, f)[keep] for f in ("s", "type", "count", "amount", "quantity", "largest"))
        )

    @staticmethod
    def concat(a: _Rows, b: _Rows) -> _Rows:
        return _Rows(
            *(
                np.concatenate([getattr(a, f), getattr(b, f)])
                for f in ("s", "type", "count", "amount", "quantity", "largest")
            )
        )


def _window_rows(state: CustomerState) -> _Rows:
    return _Rows(
        state.window_s,
        state.window_type,
        state.window_count,
        state.window_amount,
        state.window_quantity,
        state.window_largest,
    )


def _event_rows(events: Sequence[StateEvent]) -> _Rows:
    amount = _f64([e.amount for e in events])
    return _Rows(
        _f64([e.timestamp_s for e in events]),
        np.asarray([TYPE_CODES[e.event_type] for e in events], dtype=np.int8),
        np.ones(len(events), dtype=np.int64),
        amount,
        _f64([e.quantity for e in events]),
        amount.copy(),
    )


def _grouped(rows: _Rows) -> _Rows:
    """One row per (timestamp, type), sorted; earlier rows are added first."""
    order = np.lexsort((rows.type, rows.s))  # stable: ties keep their order
    rows = rows[order]
    if not len(rows.s):
        return rows
    starts = np.flatnonzero(np.r_[True, (rows.s[1:] != rows.s[:-1]) | (rows.type[1:] != rows.type[:-1])])
    return _Rows(
        rows.s[starts],
        rows.type[starts],
        np.add.reduceat(rows.count, starts),
        np.add.reduceat(rows.amount, starts),
        np.add.reduceat(rows.quantity, starts),
        np.maximum.reduceat(rows.largest, starts),
    )


def _fold(state: CustomerState, rows: _Rows) -> dict[str, Any]:
    """The folded accumulators with ``rows`` added."""
    count = state.folded_count.copy()
    first, last = state.folded_first_s.copy(), state.folded_last_s.copy()
    type_code = rows.type.astype(np.int64)
    np.add.at(count, type_code, rows.count)
    np.minimum.at(first, type_code, rows.s)
    np.maximum.at(last, type_code, rows.s)
    orders = rows[rows.type == _ORDER]
    return {
        "folded_count": count,
        "folded_first_s": first,
        "folded_last_s": last,
        "folded_spend": state.folded_spend + float(orders.amount.sum()),
        "folded_items": state.folded_items + float(orders.quantity.sum()),
        "folded_max_order": max(state.folded_max_order, float(orders.largest.max(initial=-math.inf))),
        "folded_order_days": np.union1d(state.folded_order_days, utc_day(orders.s)).astype(np.int64),
    }


def _updated_profile(
    profile: Mapping[str, tuple[float, ProfileValue]], events: Sequence[StateEvent]
) -> dict[str, tuple[float, ProfileValue]]:
    """Per column the latest non-null value by timestamp; on a tie the later-applied event wins."""
    out = dict(profile)
    for event in events:
        for column, value in event.profile.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            current = out.get(column)
            if current is None or event.timestamp_s >= current[0]:
                out[column] = (event.timestamp_s, value)
    return out


def _new_events(
    state: CustomerState, events: Iterable[StateEvent]
) -> tuple[list[StateEvent], list[int | None], int]:
    """The events not applied before (first of a repeated id wins), their fingerprints, duplicates."""
    known = set(state.window_ids.tolist()) | set(state.folded_ids.tolist())
    new: list[StateEvent] = []
    fingerprints: list[int | None] = []
    duplicates = 0
    for event in events:
        fp = fingerprint(event.event_id)
        if fp is not None:
            if fp in known:
                duplicates += 1
                continue
            known.add(fp)
        new.append(event)
        fingerprints.append(fp)
    return new, fingerprints, duplicates


def apply_events(
    state: CustomerState | None,
    events: Iterable[StateEvent],
    *,
    config: FeatureConfig = _DEFAULT_CONFIG,
    max_bytes: int = MAX_STATE_BYTES,
    max_folded_ids: int = MAX_FOLDED_IDS,
) -> Applied:
    """Apply one customer's events to their state (None: a new customer with ``config.weeks``).

    Idempotent and order-independent (see the module docstring); never returns a state whose
    ``to_bytes()`` exceeds ``max_bytes`` (``StateTooLargeError`` instead, nothing applied)."""
    state = CustomerState.empty(config.weeks) if state is None else state
    if state.weeks != config.weeks:
        raise CustomerStateError(f"the state keeps {state.weeks} weeks, the config has {config.weeks}")
    new, fingerprints, duplicates = _new_events(state, events)
    if not new:
        return Applied(state, 0, duplicates)
    rows = _event_rows(new)
    clock = max(state.last_event_s, float(rows.s.max()))
    cutoff = clock - state.horizon_s
    old = _window_rows(state)
    old_out, new_out = old.s < cutoff, rows.s < cutoff
    folded = _fold(state, _Rows.concat(old[old_out], rows[new_out]))
    window = _grouped(_Rows.concat(old[~old_out], rows[~new_out]))

    has_id = np.asarray([fp is not None for fp in fingerprints], dtype=bool)
    new_ids = _u64([fp for fp in fingerprints if fp is not None])
    new_id_s = rows.s[has_id]
    ids_out, new_ids_out = state.window_id_s < cutoff, new_id_s < cutoff
    window_ids = np.concatenate([state.window_ids[~ids_out], new_ids[~new_ids_out]])
    window_id_s = np.concatenate([state.window_id_s[~ids_out], new_id_s[~new_ids_out]])
    id_order = np.lexsort((window_ids, window_id_s))
    folded_ids = np.concatenate([state.folded_ids, state.window_ids[ids_out], new_ids[new_ids_out]])
    dropped = max(0, len(folded_ids) - max_folded_ids)

    result = replace(
        state,
        last_event_s=clock,
        events_applied=state.events_applied + len(new),
        window_s=window.s,
        window_type=window.type,
        window_count=window.count,
        window_amount=window.amount,
        window_quantity=window.quantity,
        window_largest=window.largest,
        window_ids=window_ids[id_order],
        window_id_s=window_id_s[id_order],
        folded_ids=folded_ids[dropped:],
        folded_ids_dropped=state.folded_ids_dropped + dropped,
        profile=_updated_profile(state.profile, new),
        **folded,
    )
    return Applied(_within_size(result, max_bytes), len(new), duplicates)


def _within_size(state: CustomerState, max_bytes: int) -> CustomerState:
    """The state if it encodes within ``max_bytes``; else with its oldest folded fingerprints
    dropped until it does; else ``StateTooLargeError``."""
    size = len(state.to_bytes())
    while size > max_bytes and len(state.folded_ids):
        drop = min(len(state.folded_ids), (size - max_bytes) // 8 + 64)  # fingerprints do not compress
        state = replace(
            state, folded_ids=state.folded_ids[drop:], folded_ids_dropped=state.folded_ids_dropped + drop
        )
        size = len(state.to_bytes())
    if size > max_bytes:
        raise StateTooLargeError(size, max_bytes, len(state.window_s))
    return state


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------


def _concat(values: list[np.ndarray], dtype: type[np.generic]) -> np.ndarray:
    """The arrays end to end, as ``dtype`` (no copy beyond the concatenation)."""
    return np.concatenate(values).astype(dtype, copy=False) if values else np.zeros(0, dtype=dtype)


def raw_features_from_states(
    states: Sequence[CustomerState],
    as_of_s: np.ndarray | float,
    *,
    event_types: Sequence[str],
    config: FeatureConfig,
    profile_columns: Sequence[str] | None = None,
) -> RawFeatures:
    """The raw features of each state at its ``as_of`` (one per state, or one for all): what
    ``build_raw_features`` returns for those customers' full histories (float sums aside, see the
    module docstring). ``profile_columns``: the columns of ``RawFeatures.profile`` (default: every
    column any state has)."""
    event_types = tuple(event_types)
    unknown = [t for t in event_types if t not in TYPE_CODES]
    if unknown:
        raise FeatureSpecError(f"event types {unknown} are not in churnguard.event_types")
    n = len(states)
    as_of = np.broadcast_to(np.asarray(as_of_s, dtype=np.float64), (n,))
    # Vectorised over the states: one pass per field to gather their arrays, then whole-batch numpy
    # (the sweep scores ~1,000 states a page; a loop per state was most of its feature cost).
    last = np.fromiter((s.last_event_s for s in states), dtype=np.float64, count=n)
    kept_weeks = np.fromiter((s.weeks for s in states), dtype=np.int64, count=n)
    bad = np.flatnonzero(~(as_of >= last) | (kept_weeks < config.weeks))
    if len(bad):
        i = int(bad[0])  # the first customer in error, as-of error first (as a loop would)
        if not as_of[i] >= last[i]:
            raise AsOfBeforeStateError(
                f"as_of {as_of[i]!r} (customer #{i}) is before the last event the state has applied "
                f"({states[i].last_event_s!r}): score at or after it"
            )
        raise CustomerStateError(
            f"the model looks back {config.weeks} weeks, customer #{i}'s state keeps {states[i].weeks}"
        )
    codes = [TYPE_CODES[t] for t in event_types]
    users = np.arange(n, dtype=np.int64)
    window_rows = np.fromiter((len(s.window_s) for s in states), dtype=np.int64, count=n)
    window = EventArrays(
        user_index=np.repeat(users, window_rows),
        n_users=n,
        timestamp_s=_concat([s.window_s for s in states], np.float64),
        event_type=_TYPE_NAMES[_concat([s.window_type for s in states], np.int64)],
        amount=_concat([s.window_amount for s in states], np.float64),
        quantity=_concat([s.window_quantity for s in states], np.float64),
    )
    observed = observe_events(
        window,
        as_of,
        event_types,
        count=_concat([s.window_count for s in states], np.float64),
        largest_amount=_concat([s.window_largest for s in states], np.float64),
    )

    def per_type(name: str) -> np.ndarray:
        return _concat([getattr(s, name) for s in states], np.float64).reshape(n, _N_TYPES)[:, codes]

    order_days = np.fromiter((len(s.folded_order_days) for s in states), dtype=np.int64, count=n)
    folded = FeatureAccumulators(
        count=per_type("folded_count"),
        first_s=per_type("folded_first_s"),
        last_s=per_type("folded_last_s"),
        spend=np.fromiter((s.folded_spend for s in states), dtype=np.float64, count=n),
        items=np.fromiter((s.folded_items for s in states), dtype=np.float64, count=n),
        max_order=np.fromiter((s.folded_max_order for s in states), dtype=np.float64, count=n),
        order_day_user=np.repeat(users, order_days),
        order_day=_concat([s.folded_order_days for s in states], np.int64),
    )
    accumulators = merge_accumulators(folded, accumulate(observed, n, event_types))
    columns = sorted({c for s in states for c in s.profile}) if profile_columns is None else profile_columns
    profile = {
        column: np.asarray(
            [s.profile[column][1] if column in s.profile else None for s in states], dtype=object
        )
        for column in columns
    }
    return raw_features_from_accumulators(
        observed, accumulators, as_of, event_types=event_types, config=config, profile=profile
    )
