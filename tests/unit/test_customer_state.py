"""The per-customer state (``churnguard.customer_state``) against the one feature path.

The property tests generate event streams for a few customers (timestamps over more than the
sequence window, on week and day boundaries of the as-of instants, several orders on one day, every
event type, repeated event ids, profile fields), shuffle them, split them into batches and apply them
batch by batch. After every batch, for several ``as_of`` (at the last applied event, just after it, a
week-aligned anchor, exactly at the window's edge, far later), the features from the states must equal
``build_raw_features`` on the deduplicated history:

* bit for bit: every count, flag, timestamp-derived value (recency, tenure, ages, inter-purchase
  times, decay), the largest order, every count channel of the weekly tensor, and the profile;
* within 1e-6 relative: the float *sums* of amounts and quantities (``total_spend``,
  ``avg_order_value``, ``avg_items_per_order``, ``spend_{k}w``, the amount / quantity channels), which
  the state adds in another order than the history's row order (a row order the batch path itself
  depends on); ``spend_trend`` is a difference of two such sums, so its tolerance is relative to the
  customer's total spend.

The fixture model scores both within 1e-6.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnguard.bundle import ModelBundle
from churnguard.customer_state import (
    MAX_STATE_BYTES,
    STATE_MAGIC,
    AsOfBeforeStateError,
    CustomerState,
    CustomerStateError,
    StateEvent,
    StateFormatError,
    StateTooLargeError,
    apply_events,
    fingerprint,
    raw_features_from_states,
)
from churnguard.event_types import EVENT_TYPES
from churnguard.features import EventArrays, FeatureConfig, RawFeatures, build_raw_features

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "model"
DAY = 86_400.0
WEEK = 7 * DAY
BASE = 1_699_920_000.0  # 2023-11-14T00:00:00Z, a UTC midnight
PROFILE_COLUMNS = ("acquisition_channel", "country")
DEFAULT = FeatureConfig()
SHORT = FeatureConfig(weeks=8, recent_windows=(2, 4), trend_weeks=4, decay_half_lives=(1, 3))
NARROW = FeatureConfig(weeks=26, recent_windows=(4, 13), trend_weeks=13, decay_half_lives=(4,))


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.from_directory(FIXTURE)


# ---------------------------------------------------------------------------------------------
# generated streams
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    customers: int
    anchor: float  # every event is at or before it; boundary events sit whole weeks before it
    events: list[tuple[int, StateEvent]]  # (customer, event) in arrival order
    batches: list[slice]


AMOUNTS = (0.0, 0.01, 3.3, 12.49, 19.99, 100.0, 1234.56, 1e6)
QUANTITIES = (0.0, 1.0, 1.0, 2.0, 3.0, 0.5)
TYPES = ("order", "order", "order", "view", "cart", "return")
PROFILES = (
    {},
    {},
    {"country": "US"},
    {"country": "GB"},
    {"country": None},
    {"country": ""},
    {"acquisition_channel": "email", "country": "DE"},
    {"acquisition_channel": "organic"},
)


KINDS = ("any", "any", "midnight", "same_day", "boundary", "dup", "no_id")
# One event's raw draws (built once: strategies made inside the loop cost more than the test).
EVENT_DRAWS = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 2**31),  # customer / instant / earlier event, reduced modulo what is valid
    st.sampled_from((0.0, 0.0, 0.25, 0.999, 1.0, -1.0, -0.001, 0.001)),  # a second's fraction, or a hair
    st.sampled_from((0.0, 1.0, 3_600.0, 43_200.5, DAY - 1.0)),  # time into an earlier event's day
    st.sampled_from((WEEK, WEEK, DAY)),  # the boundary unit before the anchor
    st.sampled_from(TYPES),
    st.sampled_from(AMOUNTS),
    st.sampled_from(QUANTITIES),
    st.sampled_from(PROFILES),
    st.booleans(),  # a duplicate: a retry (same content) or the same id with other content
)


@st.composite
def streams(draw: st.DrawFn, window_weeks: int) -> Stream:
    customers = draw(st.integers(1, 3))
    span = (
        draw(st.sampled_from([0.3, 1.2, 2.5, 2.5])) * window_weeks * WEEK
    )  # inside, around, far past the window
    anchor = BASE + span
    events: list[tuple[int, StateEvent]] = []
    for i, (kind, pick, fraction, into_day, unit, type_, amount, quantity, profile, retry) in enumerate(
        draw(st.lists(EVENT_DRAWS, min_size=1, max_size=40))
    ):
        if kind == "dup" and events:
            customer, original = events[pick % len(events)]
            if original.event_id is not None:
                if not retry:
                    ts = min(original.timestamp_s + (into_day if fraction >= 0 else -unit), anchor)
                    original = StateEvent(ts, type_, amount, quantity, f" {original.event_id} ", profile)
                events.append((customer, original))
                continue
        customer = pick % customers
        if kind == "midnight":
            ts = BASE + (pick // 3) % int(span // DAY + 1) * DAY
        elif kind == "same_day" and events:  # another event on an earlier event's UTC day
            day = math.floor(events[pick % len(events)][1].timestamp_s / DAY) * DAY
            ts = min(day + into_day, anchor)
        elif kind == "boundary":  # whole weeks (or days) before the anchor, or a hair either side
            ts = anchor - (pick // 3) % int((window_weeks + 2) * WEEK / unit + 1) * unit
            ts = min(ts + fraction, anchor)
        else:
            ts = BASE + (pick // 3) % int(span + 1) + abs(fraction)
        event_id = None if kind == "no_id" else f"c{customer}-e{i}"
        events.append((customer, StateEvent(ts, type_, amount, quantity, event_id, profile)))
    order = draw(st.permutations(range(len(events))))
    events = [events[k] for k in order]
    splits = (
        st.sets(st.integers(1, len(events) - 1), min_size=1, max_size=5)
        if len(events) > 1
        else st.just(set())
    )
    cuts = sorted(draw(splits) | {0, len(events)})
    return Stream(customers, anchor, events, [slice(a, b) for a, b in itertools.pairwise(cuts)])


# ---------------------------------------------------------------------------------------------
# the reference: build_raw_features on the deduplicated history
# ---------------------------------------------------------------------------------------------


class History:
    """What each customer's state should hold: their distinct events in arrival order."""

    def __init__(self, customers: int) -> None:
        self.events: list[list[StateEvent]] = [[] for _ in range(customers)]
        self.ids: list[set[int]] = [set() for _ in range(customers)]

    def add(self, customer: int, events: list[StateEvent]) -> tuple[int, int]:
        applied = duplicates = 0
        for event in events:
            fp = fingerprint(event.event_id)
            if fp is not None and fp in self.ids[customer]:
                duplicates += 1
                continue
            if fp is not None:
                self.ids[customer].add(fp)
            self.events[customer].append(event)
            applied += 1
        return applied, duplicates

    def arrays(self, repeat: int = 1) -> EventArrays:
        rows = [
            (r * len(self.events) + c, e)
            for r in range(repeat)
            for c, es in enumerate(self.events)
            for e in es
        ]
        return EventArrays(
            user_index=np.asarray([u for u, _ in rows], dtype=np.int64),
            n_users=repeat * len(self.events),
            timestamp_s=np.asarray([e.timestamp_s for _, e in rows], dtype=np.float64),
            event_type=np.asarray([e.event_type for _, e in rows], dtype=object),
            amount=np.asarray([e.amount for _, e in rows], dtype=np.float64),
            quantity=np.asarray([e.quantity for _, e in rows], dtype=np.float64),
        )

    def profile(self, repeat: int = 1) -> dict[str, np.ndarray]:
        """The batch rule (``batch._merge_latest``): latest non-null value by timestamp, ties by row order."""
        out = {}
        for column in PROFILE_COLUMNS:
            values = []
            for events in self.events:
                rows = sorted(
                    (e for e in events if e.profile.get(column) is not None), key=lambda e: e.timestamp_s
                )
                values.append(rows[-1].profile[column] if rows else None)
            out[column] = np.asarray(values * repeat, dtype=object)
        return out


def inexact_static(config: FeatureConfig) -> set[str]:
    sums = {"total_spend", "avg_order_value", "avg_items_per_order", "spend_trend"}
    return sums | {f"spend_{k}w" for k in config.recent_windows}


def assert_same_features(state: RawFeatures, ref: RawFeatures, config: FeatureConfig) -> None:
    assert state.static_names == ref.static_names and state.sequence_channels == ref.sequence_channels
    assert state.static.shape == ref.static.shape and state.sequence.shape == ref.sequence.shape
    inexact = inexact_static(config)
    for j, name in enumerate(ref.static_names):
        got, want = state.static[:, j], ref.static[:, j]
        if name == "spend_trend":
            scale = np.nan_to_num(ref.static[:, ref.static_names.index("total_spend")])
            np.testing.assert_array_less(np.abs(got - want), 1e-6 * scale + 1e-300, err_msg=name)
        elif name in inexact:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, equal_nan=True, err_msg=name)
        else:
            assert got.tobytes() == want.tobytes(), (name, got, want)
    for c, channel in enumerate(ref.sequence_channels):
        got, want = state.sequence[:, :, c], ref.sequence[:, :, c]
        if channel.endswith(("_amount", "_quantity")):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=channel)
        else:
            assert got.tobytes() == want.tobytes(), channel
    assert state.profile.keys() == ref.profile.keys()
    for column, values in ref.profile.items():
        assert [(type(v), v) for v in state.profile[column]] == [(type(v), v) for v in values], column


def as_of_rules(anchor: float, model: FeatureConfig, state: FeatureConfig) -> list:
    """Instants at or after a state's last event ``t`` (BASE for a customer without events)."""
    return [
        lambda t: t,  # events at as_of are not observed
        lambda t: np.nextafter(t, math.inf),  # the next instant: they are
        lambda t: t + 0.5,
        lambda t: t + DAY,
        lambda t: max(t, anchor),  # boundary events sit whole weeks / days before it
        lambda t: max(t, anchor + model.weeks * WEEK),  # ...and here the latest of them on the window's edge
        lambda t: max(t, anchor + 3 * WEEK),
        lambda t: t + (7 * state.weeks + 1) * DAY,  # the state's fold horizon
        lambda t: t + 3_650 * DAY,  # everything out of the window
    ]


def scores(bundle: ModelBundle, raw: RawFeatures) -> np.ndarray:
    sequence, static = bundle.spec.transform(raw)
    pad = -len(sequence) % 64  # one batch size for the interpreter
    sequence = np.concatenate([sequence, np.zeros((pad, *sequence.shape[1:]), np.float32)])
    static = np.concatenate([static, np.zeros((pad, static.shape[1]), np.float32)])
    return bundle.scorer.predict(sequence, static)[: len(raw.static)]


def check_stream(
    stream: Stream,
    *,
    event_types: tuple[str, ...],
    model: FeatureConfig,
    state_config: FeatureConfig,
    bundle: ModelBundle | None = None,
) -> None:
    """Apply the stream batch by batch; after each, compare both paths at every as_of rule."""
    states: list[CustomerState | None] = [None] * stream.customers
    history = History(stream.customers)
    rules = as_of_rules(stream.anchor, model, state_config)
    for batch in stream.batches:
        per_customer: dict[int, list[StateEvent]] = defaultdict(list)
        for customer, event in stream.events[batch]:
            per_customer[customer].append(event)
        for customer, events in per_customer.items():
            result = apply_events(states[customer], events, config=state_config)
            assert (result.applied, result.duplicates) == history.add(customer, events)
            states[customer] = result.state
            assert result.state.last_event_s == max(e.timestamp_s for e in history.events[customer])
            encoded = result.state.to_bytes()
            assert len(encoded) <= MAX_STATE_BYTES and CustomerState.from_bytes(encoded) == result.state

        current = [s if s is not None else CustomerState.empty(state_config.weeks) for s in states]
        last = np.asarray([s.last_event_s if s.events_applied else BASE for s in current])
        as_of = np.concatenate([np.asarray([rule(t) for t in last], dtype=np.float64) for rule in rules])
        repeat = len(rules)
        kwargs = {"event_types": event_types, "config": model}
        from_states = raw_features_from_states(
            current * repeat, as_of, **kwargs, profile_columns=PROFILE_COLUMNS
        )
        reference = build_raw_features(
            history.arrays(repeat), as_of, **kwargs, profile=history.profile(repeat)
        )
        assert_same_features(from_states, reference, model)

        one_as_of = float(last.max()) + 2 * DAY  # one as_of for every state (broadcast)
        broadcast = raw_features_from_states(current, one_as_of, **kwargs, profile_columns=PROFILE_COLUMNS)
        assert_same_features(
            broadcast,
            build_raw_features(history.arrays(), one_as_of, **kwargs, profile=history.profile()),
            model,
        )

        if bundle is not None:
            np.testing.assert_allclose(
                scores(bundle, from_states), scores(bundle, reference), rtol=0, atol=1e-6
            )


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(stream=streams(DEFAULT.weeks))
def test_property_state_features_and_fixture_model_scores_equal_the_full_history_after_every_batch(
    bundle: ModelBundle, stream: Stream
) -> None:
    spec = bundle.spec
    assert spec.config == DEFAULT and spec.event_types == EVENT_TYPES  # the fixture model's = the default
    check_stream(
        stream, event_types=spec.event_types, model=spec.config, state_config=spec.config, bundle=bundle
    )


@settings(max_examples=1000, deadline=None)
@given(
    stream=streams(SHORT.weeks), types=st.sampled_from([("order",), ("order", "view", "return"), EVENT_TYPES])
)
def test_property_state_features_equal_the_full_history_for_a_short_window_and_other_vocabularies(
    stream: Stream, types: tuple[str, ...]
) -> None:
    check_stream(stream, event_types=types, model=SHORT, state_config=SHORT)


@settings(max_examples=500, deadline=None)
@given(stream=streams(DEFAULT.weeks))
def test_property_a_state_scores_models_with_a_shorter_window_and_an_orders_only_vocabulary(
    stream: Stream,
) -> None:
    check_stream(stream, event_types=("order",), model=NARROW, state_config=DEFAULT)


# ---------------------------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------------------------


def order(day: float, amount: float = 10.0, event_id: str | None = None, **profile: object) -> StateEvent:
    return StateEvent(BASE + day * DAY, "order", amount, 1.0, event_id, profile)  # type: ignore[arg-type]


def features(state: CustomerState, as_of: float, config: FeatureConfig = DEFAULT) -> dict[str, float]:
    raw = raw_features_from_states([state], as_of, event_types=EVENT_TYPES, config=config)
    return dict(zip(raw.static_names, raw.static[0].tolist(), strict=True))


def test_a_repeated_event_id_counts_once_in_a_batch_across_batches_and_with_blanks_around_it() -> None:
    first = apply_events(None, [order(1, event_id="a"), order(1, event_id="a")])
    assert (first.applied, first.duplicates) == (1, 1)
    again = apply_events(first.state, [order(1, event_id=" a "), order(2, event_id="b")])
    assert (again.applied, again.duplicates) == (1, 1)
    assert again.state.events_applied == 2 and features(again.state, BASE + 3 * DAY)["n_orders"] == 2.0
    no_ids = apply_events(again.state, [order(2), order(2)])  # without an id, equal rows are two events
    assert (no_ids.applied, no_ids.duplicates) == (2, 0)
    assert features(no_ids.state, BASE + 3 * DAY)["n_orders"] == 4.0


def test_a_repeated_event_id_with_other_content_keeps_the_first_applied() -> None:
    state = apply_events(None, [order(1, amount=10.0, event_id="a")]).state
    state = apply_events(state, [order(2, amount=99.0, event_id="a")]).state
    assert features(state, BASE + 3 * DAY)["total_spend"] == 10.0 and state.last_event_s == BASE + DAY


def test_a_duplicate_of_an_event_older_than_the_window_is_caught_while_its_fingerprint_is_kept() -> None:
    state = apply_events(None, [order(400, event_id="new")]).state
    old = [order(day, event_id=f"old{day}") for day in range(5)]  # all older than the window: folded
    state = apply_events(state, old, max_folded_ids=3).state
    assert len(state.window_s) == 1 and state.folded_count[0] == 5
    assert state.folded_ids_dropped == 2 and not state.dedup_complete  # old0, old1's fingerprints dropped
    replay = apply_events(state, [order(4, event_id="old4"), order(0, event_id="old0")], max_folded_ids=3)
    assert (replay.applied, replay.duplicates) == (1, 1)  # the documented limit: old0 counts again
    assert features(replay.state, BASE + 401 * DAY)["n_orders"] == 7.0


def test_as_of_before_the_last_applied_event_raises_a_clear_error() -> None:
    state = apply_events(None, [order(10), order(20)]).state
    with pytest.raises(AsOfBeforeStateError, match="before the last event the state has applied"):
        raw_features_from_states([state], BASE + 15 * DAY, event_types=EVENT_TYPES, config=DEFAULT)
    with pytest.raises(AsOfBeforeStateError):
        raw_features_from_states([state], math.nan, event_types=EVENT_TYPES, config=DEFAULT)
    at_last = features(state, BASE + 20 * DAY)  # valid; the event at as_of is not observed
    assert at_last["n_orders"] == 1.0 and at_last["recency_days"] == 10.0


def test_a_model_needing_more_weeks_than_the_state_keeps_or_another_window_is_refused() -> None:
    state = apply_events(None, [order(1)], config=SHORT).state
    with pytest.raises(CustomerStateError, match="looks back 39 weeks"):
        features(state, BASE + 2 * DAY)
    with pytest.raises(CustomerStateError, match="keeps 8 weeks"):
        apply_events(state, [order(2)], config=DEFAULT)


def test_a_late_order_day_between_two_others_splits_their_gap_exactly() -> None:
    state = apply_events(None, [order(0), order(10), order(500)]).state
    assert features(state, BASE + 501 * DAY)["ipt_std_days"] == 240.0  # gaps 10, 490
    assert len(state.window_s) == 1 and state.folded_order_days.tolist() == [19675, 19685]
    late = apply_events(state, [order(5)]).state  # folded on arrival: only the accumulators change
    assert late.window_s.tolist() == state.window_s.tolist()
    history = EventArrays(
        np.zeros(4, np.int64),
        1,
        BASE + DAY * np.array([0.0, 10, 500, 5]),
        np.array(["order"] * 4, dtype=object),
        np.full(4, 10.0),
        np.ones(4),
    )
    ref = build_raw_features(history, BASE + 501 * DAY, event_types=EVENT_TYPES, config=DEFAULT)
    got = raw_features_from_states([late], BASE + 501 * DAY, event_types=EVENT_TYPES, config=DEFAULT)
    assert got.static.tobytes() == ref.static.tobytes()
    assert features(late, BASE + 501 * DAY)["ipt_std_days"] == pytest.approx(
        math.sqrt((25 + 25 + 490**2) / 3 - (500 / 3) ** 2)
    )


def test_profile_takes_the_latest_value_by_timestamp_ties_to_the_later_applied_and_skips_nulls() -> None:
    state = apply_events(None, [order(5, country="GB"), order(1, country="US"), order(6, country=None)]).state
    assert state.profile["country"] == (BASE + 5 * DAY, "GB")
    state = apply_events(state, [order(5, country="DE")]).state  # same timestamp: the later applied wins
    raw = raw_features_from_states([state], BASE + 7 * DAY, event_types=EVENT_TYPES, config=DEFAULT)
    assert raw.profile["country"].tolist() == ["DE"]


def test_serialisation_round_trip_is_exact_field_by_field_and_within_the_size_bound() -> None:
    events = [
        order(d / 3, amount=d * 0.1, event_id=f"e{d}", country=["US", 1, 1.0, True][d % 4])
        for d in range(900)
    ]
    events += [StateEvent(BASE + d * 3_600.25, "view", 0.0, 1.0, f"v{d}") for d in range(50)]
    state = apply_events(None, events).state
    assert len(state.window_s) and len(state.folded_order_days) and len(state.folded_ids)
    data = state.to_bytes()
    decoded = CustomerState.from_bytes(data)
    assert decoded == state and decoded.to_bytes() == data and len(data) <= MAX_STATE_BYTES
    for name in CustomerState.__dataclass_fields__:
        got, want = getattr(decoded, name), getattr(state, name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
        else:
            assert type(got) is type(want) and got == want, name
    assert type(decoded.profile["country"][1]) is type(state.profile["country"][1])
    assert state != replace(state, folded_spend=state.folded_spend + 1e-9)
    assert state != replace(state, profile={"country": (state.profile["country"][0], "1")})


def test_bytes_that_are_not_a_state_are_refused() -> None:
    good = apply_events(None, [order(1)]).state.to_bytes()
    for bad in (
        b"",
        b"nonsense",
        STATE_MAGIC + b"\x00\x01",
        good[:-3],
        STATE_MAGIC + zlib.compress(b"\xff" * 40),
    ):
        with pytest.raises(StateFormatError):
            CustomerState.from_bytes(bad)


def test_invalid_events_are_refused() -> None:
    for kwargs in (
        {"timestamp_s": math.nan},
        {"event_type": "refund"},
        {"amount": -1.0},
        {"quantity": math.inf},
    ):
        with pytest.raises(ValueError, match=r"must be|unknown event_type"):
            StateEvent(**{"timestamp_s": BASE, "event_type": "order", **kwargs})  # type: ignore[arg-type]


def test_a_heavy_cdnow_customer_state_is_small_and_its_size_is_reported(record_property) -> None:
    from churnguard.datasets import load_cdnow
    from churnguard.tabular import to_epoch_seconds

    cdnow = load_cdnow()
    sizes = {}
    for label, user_id in (
        ("heavy", cdnow["user_id"].value_counts().index[0]),
        ("typical", cdnow["user_id"].iloc[0]),
    ):
        rows = cdnow[cdnow["user_id"] == user_id]
        seconds = to_epoch_seconds(rows["timestamp"].to_numpy())
        events = [
            StateEvent(float(t), "order", float(a), float(q), f"{user_id}-{k}")
            for k, (t, a, q) in enumerate(zip(seconds, rows["amount"], rows["quantity"], strict=True))
        ]
        state = apply_events(None, events).state
        sizes[label] = (len(events), len(state.to_bytes()))
        record_property(f"cdnow_{label}_state_bytes", sizes[label][1])
        print(f"CDNOW {label} customer: {len(events)} orders -> state of {sizes[label][1]:,} bytes")
    assert sizes["heavy"][0] > 200 and sizes["heavy"][1] < 8_000 and sizes["typical"][1] < 1_000


def test_a_heavy_browser_is_reported_then_refused_rather_than_exceeding_the_item_limit(
    record_property,
) -> None:
    rng = np.random.default_rng(7)
    seconds = np.sort(BASE + rng.integers(0, DEFAULT.weeks * 7 * int(DAY), 40_000)).astype(float)
    views = [StateEvent(float(t), "view", 0.0, 1.0, f"v{k}") for k, t in enumerate(seconds)]  # all windowed
    state = apply_events(None, views[::5]).state
    size = len(state.to_bytes())
    record_property("browser_8000_views_state_bytes", size)
    print(f"8,000 windowed views with ids -> a state of {size:,} bytes")
    assert 8 * 8_000 < size <= MAX_STATE_BYTES  # the fingerprints alone take 8 bytes each
    with pytest.raises(StateTooLargeError, match="over the 350,000 limit") as refused:
        apply_events(state, views)  # 40,000 windowed views: refused, not silently over 400 KB
    assert refused.value.size_bytes > MAX_STATE_BYTES
    # folded fingerprints are dropped first (and reported); the state then fits the limit
    old = [StateEvent(BASE - 400 * DAY + k, "order", 1.0, 1.0, f"o{k}") for k in range(3_000)]
    result = apply_events(state, old, max_bytes=size + 8_000)
    assert len(result.state.to_bytes()) <= size + 8_000 and result.state.folded_ids_dropped > 1_000
    assert result.applied == 3_000 and result.state.folded_count[0] == 3_000
