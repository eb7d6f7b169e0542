"""The one feature path: time rules, awkward customers, fitted preprocessing, invariants."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnguard.events import validate_events
from churnguard.features import (
    EventArrays,
    FeatureConfig,
    FeatureSpec,
    FeatureSpecError,
    build_raw_features,
    fit_feature_spec,
)
from churnguard.tabular import churn_labels, cohort, raw_features_for

CONFIG = FeatureConfig()
AS_OF = "1997-10-01"
ORDER_ONLY = ("order",)
ALL_TYPES = ("order", "view", "cart", "return")


def events(rows, profile=None):
    df = pd.DataFrame(rows, columns=["user_id", "timestamp", "event_type", "amount", "quantity"])
    if profile:
        for k, v in profile.items():
            df[k] = v
    result = validate_events(df)
    assert result.rejected.empty, result.rejected
    return result.events


def raw_for(df, event_types=ORDER_ONLY, user_ids=None, as_of=AS_OF, profile_columns=()):
    ids, raw = raw_features_for(
        df, as_of, event_types=event_types, config=CONFIG, user_ids=user_ids, profile_columns=profile_columns
    )
    return ids, raw


def static(raw, name, row=0):
    return raw.static[row, raw.static_names.index(name)]


def test_week_boundaries_last_week_is_the_seven_days_before_as_of_and_day_one_fits_in_39_weeks():
    df = events(
        [
            ["a", "1997-09-30", "order", 10, 1],
            ["a", "1997-09-24", "order", 5, 2],
            ["a", "1997-09-23", "order", 1, 1],
            ["a", "1997-01-01", "order", 7, 1],
        ]
    )
    _, raw = raw_for(df)
    counts = raw.sequence[0, :, raw.sequence_channels.index("order_count")]
    assert counts[38] == 2  # 09-30 (1 day before) and 09-24 (7 days before)
    assert counts[37] == 1  # 09-23 is 8 days before
    assert counts[0] == 1  # 1997-01-01 is 273 days = 39 weeks before: still inside
    amounts = raw.sequence[0, :, raw.sequence_channels.index("order_amount")]
    assert amounts[38] == 15


def test_events_on_or_after_as_of_are_ignored():
    before = events([["a", "1997-09-01", "order", 10, 1]])
    after = events(
        [
            ["a", "1997-09-01", "order", 10, 1],
            ["a", "1997-10-01", "order", 99, 1],
            ["a", "1998-01-01", "view", 0, 1],
        ]
    )
    _, raw_before = raw_for(before, event_types=ALL_TYPES)
    _, raw_after = raw_for(after, event_types=ALL_TYPES)
    np.testing.assert_array_equal(raw_before.sequence, raw_after.sequence)
    np.testing.assert_array_equal(raw_before.static, raw_after.static)


def test_same_day_orders_are_one_purchase_occasion_but_count_and_spend_fully():
    df = events(
        [
            ["a", "1997-09-01", "order", 10, 1],
            ["a", "1997-09-01", "order", 20, 1],
            ["a", "1997-09-11", "order", 30, 1],
        ]
    )
    _, raw = raw_for(df)
    assert static(raw, "n_orders") == 3
    assert static(raw, "n_order_days") == 2
    assert static(raw, "total_spend") == 60
    assert static(raw, "ipt_mean_days") == 10  # no zero gap from the same-day pair
    assert static(raw, "recency_days") == 20


def test_one_event_customer_has_undefined_gaps_that_the_spec_imputes():
    df = events(
        [
            ["a", "1997-09-01", "order", 10, 1],
            ["b", "1997-05-01", "order", 10, 1],
            ["b", "1997-06-01", "order", 10, 1],
            ["b", "1997-09-15", "order", 10, 1],
        ]
    )
    _, raw = raw_for(df)
    assert np.isnan(static(raw, "ipt_mean_days", 0)) and static(raw, "has_repeat_order", 0) == 0
    spec = fit_feature_spec(raw, event_types=ORDER_ONLY, config=CONFIG)
    _, x_static = spec.transform(raw)
    assert np.isfinite(x_static).all()


def test_customer_with_no_events_gets_empty_activity_and_far_recency():
    df = events([["a", "1997-09-01", "order", 10, 1], ["b", "1997-03-01", "order", 5, 1]])
    _, raw = raw_for(df, user_ids=np.array(["a", "b", "ghost"], dtype=object))
    assert raw.sequence[2].sum() == 0
    assert np.isnan(static(raw, "recency_days", 2))
    spec = fit_feature_spec(raw, event_types=ORDER_ONLY, config=CONFIG)
    _, x = spec.transform(raw)
    recency = list(spec.static_names).index("recency_days")
    assert x[2, recency] == x[:, recency].max()  # imputed as the oldest recency seen in training


def test_event_types_outside_the_model_vocabulary_are_ignored():
    df = events([["a", "1997-09-01", "order", 10, 1], ["a", "1997-09-02", "view", 0, 1]])
    _, with_view = raw_for(df, event_types=ORDER_ONLY)
    _, orders_only = raw_for(df[df.event_type == "order"], event_types=ORDER_ONLY)
    np.testing.assert_array_equal(with_view.static, orders_only.static)


def test_multi_channel_features_count_views_carts_and_returns():
    df = events(
        [
            ["a", "1997-09-01", "order", 10, 1],
            ["a", "1997-09-20", "view", 0, 1],
            ["a", "1997-09-21", "view", 0, 1],
            ["a", "1997-09-22", "return", 10, 1],
        ]
    )
    _, raw = raw_for(df, event_types=ALL_TYPES)
    assert static(raw, "view_count") == 2
    assert static(raw, "view_recency_days") == 10
    assert static(raw, "return_count") == 1
    assert raw.sequence[0, :, raw.sequence_channels.index("any_activity")].sum() == 2  # two distinct weeks


def test_tenure_mask_marks_weeks_since_the_first_event():
    df = events([["a", "1997-09-10", "order", 10, 1]])  # 21 days before as_of -> week_back 2
    _, raw = raw_for(df)
    mask = raw.sequence[0, :, raw.sequence_channels.index("is_customer")]
    assert mask.tolist() == [0.0] * 36 + [1.0] * 3


def test_per_customer_as_of_gives_the_same_features_as_separate_runs():
    df = events(
        [
            ["a", "1997-06-01", "order", 10, 1],
            ["a", "1997-08-01", "order", 10, 1],
            ["b", "1997-07-01", "order", 5, 1],
        ]
    )
    _, raw_a = raw_for(df[df.user_id == "a"], as_of="1997-07-01")
    _, raw_b = raw_for(df[df.user_id == "b"], as_of="1997-10-01")
    arrays = EventArrays(
        user_index=np.array([0, 0, 1]),
        n_users=2,
        timestamp_s=df["timestamp"].to_numpy().astype("datetime64[s]").astype(np.float64),
        event_type=df["event_type"].to_numpy(dtype=object),
        amount=df["amount"].to_numpy(),
        quantity=df["quantity"].to_numpy(),
    )
    as_of = np.array([pd.Timestamp("1997-07-01").value / 1e9, pd.Timestamp("1997-10-01").value / 1e9])
    joint = build_raw_features(arrays, as_of, event_types=ORDER_ONLY, config=CONFIG)
    np.testing.assert_array_equal(joint.static[0], raw_a.static[0])
    np.testing.assert_array_equal(joint.static[1], raw_b.static[0])


def test_labels_are_orders_in_the_horizon_after_as_of():
    df = events(
        [
            ["a", "1997-09-01", "order", 10, 1],
            ["a", "1998-06-29", "order", 10, 1],
            ["b", "1997-09-01", "order", 10, 1],
            ["b", "1998-07-01", "order", 10, 1],
            ["c", "1997-09-01", "order", 10, 1],
            ["c", "1997-12-01", "view", 0, 1],
        ]
    )
    users = cohort(df, AS_OF)
    assert users.tolist() == ["a", "b", "c"]
    # a bought inside the 39-week horizon; b only after it; c only browsed.
    assert churn_labels(df, users, AS_OF, 39).tolist() == [0, 1, 1]


def test_profile_fields_are_one_hot_encoded_with_other_and_missing_buckets():
    rows = [[f"u{i}", "1997-09-01", "order", 10, 1] for i in range(60)]
    df = events(rows, profile={"country": ["US"] * 30 + ["DE"] * 25 + ["FR"] * 5})
    ids, raw = raw_for(df, profile_columns=("country",))
    row = {u: i for i, u in enumerate(ids)}
    spec = fit_feature_spec(raw, event_types=ORDER_ONLY, config=CONFIG, min_category_count=10)
    assert spec.profile_categorical["country"] == ["US", "DE", "__other__", "__missing__"]
    raw.profile["country"][row["u0"]] = None
    _, x = spec.transform(raw)
    names = list(spec.model_static_names)
    assert x[row["u0"], names.index("profile:country=__missing__")] == 1
    assert x[row["u59"], names.index("profile:country=__other__")] == 1  # FR is rarer than min count
    assert x[row["u1"], names.index("profile:country=US")] == 1
    assert x[row["u40"], names.index("profile:country=DE")] == 1


def test_spec_round_trips_through_json_and_transforms_identically():
    df = events(
        [
            ["a", "1997-09-01", "order", 10, 1],
            ["b", "1997-03-01", "order", 5, 3],
            ["b", "1997-04-01", "order", 5, 1],
        ]
    )
    _, raw = raw_for(df)
    spec = fit_feature_spec(raw, event_types=ORDER_ONLY, config=CONFIG)
    again = FeatureSpec.from_json(spec.to_json())
    for a, b in zip(spec.transform(raw), again.transform(raw), strict=True):
        np.testing.assert_array_equal(a, b)


def test_spec_from_another_version_or_with_bad_numbers_is_refused():
    df = events([["a", "1997-09-01", "order", 10, 1], ["b", "1997-03-01", "order", 5, 3]])
    _, raw = raw_for(df)
    data = fit_feature_spec(raw, event_types=ORDER_ONLY, config=CONFIG).to_dict()
    with pytest.raises(FeatureSpecError, match="version"):
        FeatureSpec.from_dict({**data, "version": 99})
    broken = json.loads(json.dumps(data))
    broken["static"]["mean"] = broken["static"]["mean"][:-1]
    with pytest.raises(FeatureSpecError, match="static_mean"):
        FeatureSpec.from_dict(broken)


def test_preprocessing_is_fitted_on_training_customers_only():
    train = events([["a", "1997-09-01", "order", 10, 1], ["b", "1997-03-01", "order", 20, 1]])
    huge = events([["c", "1997-09-01", "order", 1e6, 1]])
    _, raw_train = raw_for(train)
    spec = fit_feature_spec(raw_train, event_types=ORDER_ONLY, config=CONFIG)
    _, raw_huge = raw_for(huge)
    _, x = spec.transform(raw_huge)
    spend = list(spec.static_names).index("total_spend")
    # Clipped to the training range: the outlier cannot blow up the model input.
    assert (
        x[0, spend]
        <= (spec.static_clip_high[spend] - spec.static_mean[spend]) / spec.static_std[spend] + 1e-9
    )


event_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(min_value=0, max_value=400),  # days after 1997-01-01
        st.integers(min_value=0, max_value=86_399),
        st.sampled_from(ALL_TYPES),
        st.floats(min_value=0, max_value=1e4, allow_nan=False),
        st.integers(min_value=0, max_value=20),
    ),
    min_size=1,
    max_size=40,
)


def _frame(rows):
    base = pd.Timestamp("1997-01-01")
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "timestamp": [base + pd.Timedelta(days=r[1], seconds=r[2]) for r in rows],
            "event_type": [r[3] for r in rows],
            "amount": [r[4] for r in rows],
            "quantity": [float(r[5]) for r in rows],
        }
    )


@settings(max_examples=60, deadline=None)
@given(rows=event_rows, seed=st.integers(min_value=0, max_value=2**31 - 1))
def test_property_row_order_does_not_matter_and_inputs_are_finite(rows, seed):
    df = _frame(rows)
    users = np.array(["a", "b", "c", "d"], dtype=object)
    _, raw = raw_for(df, event_types=ALL_TYPES, user_ids=users)
    shuffled = df.sample(frac=1.0, random_state=seed % (2**32 - 1)).reset_index(drop=True)
    _, raw_shuffled = raw_for(shuffled, event_types=ALL_TYPES, user_ids=users)
    np.testing.assert_allclose(raw.sequence, raw_shuffled.sequence, rtol=1e-6)
    np.testing.assert_allclose(raw.static, raw_shuffled.static, rtol=1e-9, equal_nan=True)
    spec = fit_feature_spec(raw, event_types=ALL_TYPES, config=CONFIG)
    x_seq, x_static = spec.transform(raw)
    assert x_seq.shape == (4, CONFIG.weeks, spec.n_channels) and x_seq.dtype == np.float32
    assert x_static.shape == (4, spec.n_static) and x_static.dtype == np.float32
    assert np.isfinite(x_seq).all() and np.isfinite(x_static).all()


def test_numeric_profile_fields_are_imputed_clipped_scaled_with_a_missing_flag():
    rows = [[f"u{i}", "1997-09-01", "order", 10, 1] for i in range(50)]
    ages = [str(20 + i) for i in range(48)] + [None, "n/a"]
    df = events(rows, profile={"age": ages})
    ids, raw = raw_for(df, profile_columns=("age",))
    row = {u: i for i, u in enumerate(ids)}
    spec = fit_feature_spec(raw, event_types=ORDER_ONLY, config=CONFIG)
    assert "age" in spec.profile_numeric and "age" not in spec.profile_categorical
    _, x = spec.transform(raw)
    names = list(spec.model_static_names)
    value, flag = names.index("profile:age"), names.index("profile:age:missing")
    assert x[row["u48"], flag] == 1 and x[row["u49"], flag] == 1 and x[row["u0"], flag] == 0
    stats = spec.profile_numeric["age"]
    assert x[row["u48"], value] == pytest.approx((stats["median"] - stats["mean"]) / stats["std"], abs=1e-6)
    assert x[row["u0"], value] < x[row["u47"], value]
