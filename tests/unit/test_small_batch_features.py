"""The feature path's per-vocabulary / per-config caches (kept for small batches: one API customer paid
for every name list and constant on each call) must not change a result or leak between configs."""

import numpy as np
import pytest

from churnguard import features, scoring
from churnguard.features import EventArrays, FeatureConfig, build_raw_features, fit_feature_spec

DEFAULT = FeatureConfig()
OTHER = FeatureConfig(weeks=60, recent_windows=(2, 8, 30), trend_weeks=10, decay_half_lives=(2, 5, 9))
SHORT = FeatureConfig(weeks=8, recent_windows=(4,), trend_weeks=4, decay_half_lives=(1,))
ORDER_ONLY = ("order",)
ALL_TYPES = ("order", "view", "cart", "return")
CACHES = (
    features._sequence_channel_names,
    features._static_feature_names,
    features._channel_positions,
    features._weeks_back,
    features._decay_weights,
    features._kind_masks,
    scoring._policy_columns,
)
AS_OF = 8.6e8


def _events(n: int, seed: int = 0) -> EventArrays:
    rng = np.random.default_rng(seed)
    k = 25 * n
    timestamps = AS_OF - rng.random(k) * 86_400 * 500 + rng.choice([0.0, 86_400 * 40], size=k)
    timestamps[::5] = timestamps[1::5][: len(timestamps[::5])]  # same instants, same days
    return EventArrays(
        user_index=rng.integers(0, n, size=k).astype(np.int64),
        n_users=n,
        timestamp_s=timestamps,
        event_type=rng.choice([*ALL_TYPES, "unknown"], size=k).astype(object),
        amount=np.round(rng.exponential(30.0, size=k), 2),
        quantity=rng.integers(0, 4, size=k).astype(np.float64),
    )


def _outputs(event_types, config, events, as_of):
    raw = build_raw_features(events, as_of, event_types=event_types, config=config)
    spec = fit_feature_spec(raw, event_types=event_types, config=config)
    sequence, static = spec.transform(raw)
    return [raw.sequence, raw.static, sequence, static], (raw.sequence_channels, raw.static_names)


def _clear_caches() -> None:
    for cache in CACHES:
        cache.cache_clear()


CASES = [(types, config) for types in (ORDER_ONLY, ALL_TYPES) for config in (DEFAULT, OTHER, SHORT)]


def test_results_with_caches_warmed_by_other_configs_equal_fresh_ones_bit_for_bit():
    events = _events(40)
    as_of = AS_OF + np.arange(40) * 3_600.0
    fresh = {}
    for types, config in CASES:
        _clear_caches()
        fresh[types, config] = _outputs(types, config, events, as_of)
    for _ in range(2):  # every case again, each after the others filled the caches
        for types, config in [*CASES, *reversed(CASES)]:
            arrays, names = _outputs(types, config, events, as_of)
            want_arrays, want_names = fresh[types, config]
            assert names == want_names
            for got, want in zip(arrays, want_arrays, strict=True):
                assert got.dtype == want.dtype and got.shape == want.shape
                assert got.tobytes() == want.tobytes()
                assert got.flags.c_contiguous


@pytest.mark.parametrize("n", [1, 12])
def test_one_instant_for_every_user_is_the_same_as_a_per_user_array(n):
    events = _events(n, seed=3)
    for types, config in CASES:
        one = build_raw_features(events, AS_OF, event_types=types, config=config)
        per_user = build_raw_features(events, np.full(n, AS_OF), event_types=types, config=config)
        assert one.sequence.tobytes() == per_user.sequence.tobytes()
        assert one.static.tobytes() == per_user.static.tobytes()


def test_cached_constants_are_read_only_and_names_immutable():
    for constant in (
        features._weeks_back(39),
        features._decay_weights(39, 4),
        *features._kind_masks(("log1p", "identity", "signed_log1p"))[::2],
    ):
        with pytest.raises(ValueError, match="read-only"):
            constant[0] = 0
    with pytest.raises(TypeError):
        features._channel_positions(ORDER_ONLY)["order_count"] = 5  # type: ignore[index]
    assert isinstance(features.static_feature_names(list(ALL_TYPES), OTHER), tuple)


def test_a_config_given_lists_is_the_same_hashable_config():
    listed = FeatureConfig(recent_windows=[4, 13, 26], decay_half_lives=[4, 13])  # type: ignore[arg-type]
    assert listed == DEFAULT and hash(listed) == hash(DEFAULT)
    names = features.static_feature_names
    assert names(ORDER_ONLY, listed) == names(ORDER_ONLY, DEFAULT)
