"""The real CDNOW log and the synthetic generator."""

import numpy as np
import pandas as pd

from churnguard.datasets import CDNOW_CUSTOMERS, CDNOW_ROWS, generate_synthetic_events, load_cdnow
from churnguard.events import validate_events
from churnguard.tabular import churn_labels, cohort


def test_cdnow_is_the_documented_file_mapped_to_order_events():
    df = load_cdnow()
    assert len(df) == CDNOW_ROWS == 69_659
    assert df["user_id"].nunique() == CDNOW_CUSTOMERS == 23_570
    assert df["timestamp"].min() == pd.Timestamp("1997-01-01")
    assert df["timestamp"].max() == pd.Timestamp("1998-06-30")
    assert set(df["event_type"]) == {"order"}
    assert validate_events(df).rejected.empty


def test_cdnow_benchmark_protocol_churn_rate_is_0_7006():
    events = validate_events(load_cdnow()).events
    users = cohort(events, "1997-10-01")
    assert len(users) == 23_570  # every CDNOW customer first bought in Q1 1997
    assert round(churn_labels(events, users, "1997-10-01", 39).mean(), 4) == 0.7006


def test_synthetic_generator_is_seeded_and_speaks_the_canonical_schema():
    a = generate_synthetic_events(500, seed=3)
    b = generate_synthetic_events(500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_synthetic_events(500, seed=4))
    result = validate_events(a)
    assert result.rejected.empty
    assert set(result.events["event_type"]) == {"order", "view", "cart", "return"}
    assert result.profile_columns == ("country", "acquisition_channel")
    assert (a.groupby("user_id")["country"].nunique() == 1).all()


def test_synthetic_churn_signal_is_planted_where_documented():
    events = validate_events(generate_synthetic_events(20_000, seed=11, weeks=78)).events
    as_of = pd.Timestamp("2024-01-01") + pd.Timedelta(weeks=39)
    users = cohort(events, as_of)
    labels = churn_labels(events, users, as_of, 39)
    assert 0.2 < labels.mean() < 0.8
    channel = events.groupby("user_id")["acquisition_channel"].first().reindex(users).to_numpy()
    # paid_search customers carry a higher hazard in the generator
    assert labels[channel == "paid_search"].mean() > labels[channel == "organic"].mean() + 0.03
    assert np.isin(users, events["user_id"].unique()).all()
