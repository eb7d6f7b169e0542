"""The vectorised feature gathering and state decoding (``customer_state.raw_features_from_states``,
``CustomerState.from_bytes``) against the per-state code they replaced, bit for bit.

The previous implementations are frozen here (``previous_*``) as the reference: the property tests in
``test_customer_state`` prove the state features equal ``build_raw_features`` (within 1e-6 where
float sums are added in another order); these prove the faster code changed no bit of what the
previous code returned, on a few hundred generated states (folded past, event ids, empty states,
profile values, several vocabularies and windows), and that an encoding stored before still loads.
"""

from __future__ import annotations

import base64
import itertools
import math

import numpy as np
import pytest

from churnguard.customer_state import (
    STATE_MAGIC,
    AsOfBeforeStateError,
    CustomerState,
    CustomerStateError,
    StateEvent,
    StateFormatError,
    apply_events,
    raw_features_from_states,
)
from churnguard.event_types import EVENT_TYPES, TYPE_CODES
from churnguard.features import (
    EventArrays,
    FeatureAccumulators,
    FeatureConfig,
    RawFeatures,
    accumulate,
    distinct_user_days,
    merge_accumulators,
    observe_events,
    raw_features_from_accumulators,
)

DAY = 86_400.0
BASE = 1_699_920_000.0  # 2023-11-14T00:00:00Z
DEFAULT = FeatureConfig()
SHORT = FeatureConfig(weeks=8, recent_windows=(2, 4), trend_weeks=4, decay_half_lives=(1, 3))
ARRAYS = (
    "window_s",
    "window_type",
    "window_count",
    "window_amount",
    "window_quantity",
    "window_largest",
    "window_ids",
    "window_id_s",
    "folded_count",
    "folded_first_s",
    "folded_last_s",
    "folded_order_days",
    "folded_ids",
)


# ---------------------------------------------------------------------------------------------
# the previous code, frozen (customer_state.py before the vectorisation)
# ---------------------------------------------------------------------------------------------

_N_TYPES = len(EVENT_TYPES)
_TYPE_NAMES = np.asarray(EVENT_TYPES, dtype=object)


def _rows_of(values: list[np.ndarray], dtype: type[np.generic], width: int = 0) -> np.ndarray:
    if values:
        return np.stack(values).astype(dtype) if width else np.concatenate(values).astype(dtype)
    return np.zeros((0, width) if width else 0, dtype=dtype)


def previous_raw_features_from_states(
    states: list[CustomerState],
    as_of_s: np.ndarray | float,
    *,
    event_types: tuple[str, ...],
    config: FeatureConfig,
    profile_columns: tuple[str, ...] | None = None,
) -> RawFeatures:
    n = len(states)
    as_of = np.broadcast_to(np.asarray(as_of_s, dtype=np.float64), (n,))
    for i, state in enumerate(states):
        if not as_of[i] >= state.last_event_s:
            raise AsOfBeforeStateError(f"customer #{i}")
        if config.weeks > state.weeks:
            raise CustomerStateError(f"customer #{i}")
    codes = [TYPE_CODES[t] for t in event_types]
    sizes = [len(s.window_s) for s in states]
    window = EventArrays(
        user_index=np.repeat(np.arange(n, dtype=np.int64), sizes),
        n_users=n,
        timestamp_s=_rows_of([s.window_s for s in states], np.float64),
        event_type=_TYPE_NAMES[_rows_of([s.window_type for s in states], np.int64)],
        amount=_rows_of([s.window_amount for s in states], np.float64),
        quantity=_rows_of([s.window_quantity for s in states], np.float64),
    )
    observed = observe_events(
        window,
        as_of,
        event_types,
        count=_rows_of([s.window_count for s in states], np.float64),
        largest_amount=_rows_of([s.window_largest for s in states], np.float64),
    )
    folded = FeatureAccumulators(
        count=_rows_of([s.folded_count for s in states], np.float64, _N_TYPES)[:, codes],
        first_s=_rows_of([s.folded_first_s for s in states], np.float64, _N_TYPES)[:, codes],
        last_s=_rows_of([s.folded_last_s for s in states], np.float64, _N_TYPES)[:, codes],
        spend=np.asarray([s.folded_spend for s in states], dtype=np.float64).reshape(-1),
        items=np.asarray([s.folded_items for s in states], dtype=np.float64).reshape(-1),
        max_order=np.asarray([s.folded_max_order for s in states], dtype=np.float64).reshape(-1),
        order_day_user=np.repeat(np.arange(n, dtype=np.int64), [len(s.folded_order_days) for s in states]),
        order_day=_rows_of([s.folded_order_days for s in states], np.int64),
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


def previous_arrays(data: bytes) -> dict[str, np.ndarray]:
    """The arrays as the previous decoder read them: one plane transpose per array."""
    import json
    import struct
    import zlib

    payload = zlib.decompress(data[len(STATE_MAGIC) :])
    (header_len,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4 : 4 + header_len])
    offset = 4 + header_len + 4 * 8  # after the scalars
    dtypes = {name: getattr(CustomerState.empty(), name).dtype for name in ARRAYS}
    out = {}
    for name, length in zip(ARRAYS, header["lengths"], strict=True):
        dtype = dtypes[name]
        end = offset + length * dtype.itemsize
        planes = np.frombuffer(payload, dtype=np.uint8, count=end - offset, offset=offset)
        out[name] = planes.reshape(dtype.itemsize, length).T.copy().view(dtype).reshape(-1)
        offset = end
    assert offset == len(payload)
    return out


# ---------------------------------------------------------------------------------------------
# generated states
# ---------------------------------------------------------------------------------------------

PROFILES = ({}, {}, {"country": "US"}, {"country": None}, {"acquisition_channel": "email", "country": "DE"})


def generated_states(count: int, weeks: int, seed: int) -> list[CustomerState]:
    """Random customers: 0-80 events over up to three windows (so many have a folded past), every
    type, cents and large amounts, same-instant events, ids on about half (some repeated), profile
    values; applied in one to three batches."""
    rng = np.random.default_rng(seed)
    states = []
    for c in range(count):
        n = int(rng.integers(0, 80)) if c % 10 else 0
        span = float(rng.choice([0.5, 1.5, 3.0])) * 7 * weeks * DAY
        ts = BASE + np.round(rng.uniform(0.0, span, n), int(rng.integers(0, 3)))
        if n > 4:
            ts[: n // 4] = ts[n // 4 : 2 * (n // 4)]  # events at the same instant
        events = [
            StateEvent(
                float(ts[i]),
                str(rng.choice(EVENT_TYPES)),
                float(rng.choice([0.0, 0.01, 12.49, 19.99, 1234.56])),
                float(rng.choice([0.0, 1.0, 2.0, 0.5])),
                f"c{c}-e{int(rng.integers(0, n))}" if rng.random() < 0.5 else None,
                PROFILES[int(rng.integers(0, len(PROFILES)))],
            )
            for i in range(n)
        ]
        state: CustomerState | None = None
        cuts = sorted({0, n, *rng.integers(0, n + 1, 2).tolist()})
        for a, b in itertools.pairwise(cuts):
            state = apply_events(state, events[a:b], config=FeatureConfig(weeks=weeks)).state
        states.append(state if state is not None else CustomerState.empty(weeks))
    return states


def assert_identical(got: RawFeatures, want: RawFeatures) -> None:
    assert got.static_names == want.static_names and got.sequence_channels == want.sequence_channels
    assert got.static.dtype == want.static.dtype and got.sequence.dtype == want.sequence.dtype
    assert got.static.shape == want.static.shape and got.static.tobytes() == want.static.tobytes()
    assert got.sequence.shape == want.sequence.shape and got.sequence.tobytes() == want.sequence.tobytes()
    assert got.profile.keys() == want.profile.keys()
    for column, values in want.profile.items():
        assert [(type(v), v) for v in got.profile[column]] == [(type(v), v) for v in values], column


@pytest.fixture(scope="module")
def states() -> list[CustomerState]:
    return generated_states(300, DEFAULT.weeks, seed=13)


@pytest.mark.parametrize(
    ("event_types", "config"),
    [
        (tuple(EVENT_TYPES), DEFAULT),
        (("order",), DEFAULT),
        (("order", "view"), SHORT),
    ],
)
def test_vectorised_features_equal_the_previous_per_state_code_bit_for_bit(
    states: list[CustomerState], event_types: tuple[str, ...], config: FeatureConfig
) -> None:
    rng = np.random.default_rng(5)
    last = np.asarray([s.last_event_s if s.events_applied else BASE for s in states])
    per_state = last + rng.choice([0.0, 0.5, DAY, 9 * 7 * DAY, 400 * DAY], len(states))
    per_state = np.where(rng.random(len(states)) < 0.1, np.nextafter(last, math.inf), per_state)
    one = float(last.max()) + 3 * DAY
    for as_of in (per_state, one):
        for columns in (None, ("acquisition_channel", "country", "absent")):
            kwargs = {"event_types": event_types, "config": config, "profile_columns": columns}
            assert_identical(
                raw_features_from_states(states, as_of, **kwargs),
                previous_raw_features_from_states(states, as_of, **kwargs),
            )
    # each state alone equals its row of the batch (no state's rows leak into another's); the
    # decay columns are a matrix product, whose last bits depend on the batch size (BLAS blocking)
    batch = raw_features_from_states(states, per_state, event_types=event_types, config=config)
    decay = [j for j, name in enumerate(batch.static_names) if "_decay_" in name]
    for i in range(0, len(states), 37):
        alone = raw_features_from_states(
            [states[i]], per_state[i : i + 1], event_types=event_types, config=config
        )
        exact = np.delete(np.arange(len(batch.static_names)), decay)
        assert alone.static[:, exact].tobytes() == batch.static[i : i + 1, exact].tobytes()
        np.testing.assert_allclose(alone.static[:, decay], batch.static[i : i + 1, decay], rtol=1e-12)
        assert alone.sequence.tobytes() == batch.sequence[i : i + 1].tobytes()


def test_no_states_give_empty_features_as_before() -> None:
    kwargs = {"event_types": tuple(EVENT_TYPES), "config": DEFAULT}
    assert_identical(
        raw_features_from_states([], 0.0, **kwargs), previous_raw_features_from_states([], 0.0, **kwargs)
    )


def test_the_first_state_in_error_is_named_as_before() -> None:
    short, other = CustomerState.empty(8), generated_states(3, DEFAULT.weeks, seed=2)
    late = apply_events(None, [StateEvent(BASE + 10 * DAY, "order", 5.0)]).state
    kwargs = {"event_types": ("order",), "config": DEFAULT}
    with pytest.raises(AsOfBeforeStateError, match=r"customer #1\b"):
        raw_features_from_states([other[0], late, short], BASE + DAY, **kwargs)
    with pytest.raises(CustomerStateError, match=r"customer #0's state keeps 8"):
        raw_features_from_states([short, late], BASE + DAY, **kwargs)  # #0 first, though #1 is early too
    with pytest.raises(AsOfBeforeStateError, match=r"customer #0\b"):
        raw_features_from_states([late, short], BASE + DAY, **kwargs)


def test_distinct_user_days_equals_numpys_unique() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 50, 5_000):
        user = rng.integers(0, 40, n)
        day = rng.integers(-30_000, 30_000, n)  # days before 1970 too
        key = np.unique(user * (1 << 24) + (day - (day.min() if n else 0)))
        got_user, got_day = distinct_user_days(user, day)
        assert got_user.dtype == got_day.dtype == np.int64
        assert got_user.tolist() == (key >> 24).tolist()
        assert got_day.tolist() == ((key & ((1 << 24) - 1)) + (day.min() if n else 0)).tolist()


def test_decoding_equals_the_previous_decoder_and_round_trips(states: list[CustomerState]) -> None:
    for state in states:
        data = state.to_bytes()
        decoded = CustomerState.from_bytes(data)
        assert decoded == state and decoded.to_bytes() == data
        for name, want in previous_arrays(data).items():
            got = getattr(decoded, name)
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
            assert got.flags.c_contiguous and got.flags.aligned and got.flags.writeable


# Encoded by the code before this change (window, ids, a folded past, profile): must load unchanged.
STORED = (
    "Q0dTAXic28zAwFCtlFqWmldSHJ9YUJCTmZqiZGWuo5SWn5OSmhKfmVIcn1KUX1AAEjbQUcpJzUsvyShWsoo21kGFJmBopGMUq6NU"
    "UJSflpmTqmRVrZSYXFiaWZxZkpmfF5+ckZiXl5oD1GxobmBgbmFuZmCgZ6qjlJqbmJmjBNSXnF+aV1JUCVZgbGIKVARR4BakFFur"
    "o1SempoNtNrYspbBFgi5GLgUrjNcT1nMsNiggKHgZi3D35uWHMaODg4ODGCgoKCwhCWl/Y7BjRs3gcDR0ZGJgZmRiZGBGBDAwBCn"
    "wgAzChl8EPhg72CPRQtYfalhbeKfme5bVwi+4YtbXOb7bfeZNWuLLvHhdBJxzgHqZGBYcoSBYeM6BoaQUAaGmzc/fHB0rK9Hlk8B"
    "yv8FyofD5f//v/3UxwfZHPV2wapGXp8rwYs6nbWCU78AALUXf48="
)


def test_a_state_stored_by_the_previous_code_still_loads() -> None:
    data = base64.b64decode(STORED)
    state = CustomerState.from_bytes(data)
    assert state.to_bytes() == data
    assert state.last_event_s == BASE + 402 * DAY + 3600.5 and state.events_applied == 7
    assert state.window_s.tolist() == [BASE + d * DAY + 3600.5 for d in (400, 401, 402)]
    assert state.window_count.tolist() == [1, 2, 1]  # two orders at one instant
    assert state.folded_spend == pytest.approx(25.49) and state.folded_order_days.tolist() == [19675, 19685]
    assert len(state.window_ids) == 3 and len(state.folded_ids) == 2
    assert state.profile == {"acquisition_channel": (BASE + 10 * DAY + 3600.5, "email"),
                             "country": (BASE + 401 * DAY + 3600.5, "FR")}  # fmt: skip
    for name, want in previous_arrays(data).items():
        assert getattr(state, name).tobytes() == want.tobytes()


def test_tampered_array_lengths_are_refused() -> None:
    import json
    import struct
    import zlib

    data = base64.b64decode(STORED)
    payload = zlib.decompress(data[len(STATE_MAGIC) :])
    (header_len,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4 : 4 + header_len])
    body = payload[4 + header_len :]

    def encode(lengths: list[int], tail: bytes = b"") -> bytes:
        h = json.dumps({**header, "lengths": lengths}).encode()
        return STATE_MAGIC + zlib.compress(struct.pack("<I", len(h)) + h + body + tail)

    lengths = header["lengths"]
    assert CustomerState.from_bytes(encode(lengths)) == CustomerState.from_bytes(data)
    for bad in (
        encode([*lengths[:-1], lengths[-1] + 1]),  # longer than the body
        encode([*lengths[:-1], lengths[-1] - 1]),  # trailing bytes
        encode(lengths, b"\x00" * 8),
        encode([-1, *lengths[1:]]),
        encode(lengths[:-1]),  # an array missing
        encode([*lengths, 0]),  # one too many
        encode([1, *lengths[1:]]),  # window columns of different lengths
    ):
        with pytest.raises(StateFormatError):
            CustomerState.from_bytes(bad)


def test_the_encoding_is_made_once_per_state_and_never_outlives_a_change() -> None:
    from dataclasses import replace

    state = generated_states(12, DEFAULT.weeks, seed=9)[-1]
    first = state.to_bytes()
    assert state.to_bytes() is first and first == state._encode()  # kept, and what encoding gives
    changed = replace(state, events_applied=state.events_applied + 1)
    assert changed.to_bytes() != first and changed.to_bytes() == changed._encode()
    assert CustomerState.from_bytes(first) == state and CustomerState.from_bytes(first).to_bytes() == first
    applied = apply_events(state, [StateEvent(state.last_event_s + DAY, "order", 3.0, 1.0, "new")]).state
    assert applied.to_bytes() == applied._encode() != first
