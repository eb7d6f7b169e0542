import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def cdnow_subset() -> pd.DataFrame:
    """A seeded sample of 3,000 real CDNOW customers in the canonical schema (fast to train on)."""
    from churnguard.datasets import load_cdnow

    events = load_cdnow()
    rng = np.random.default_rng(5)
    users = rng.choice(events["user_id"].unique(), size=3000, replace=False)
    return events[events["user_id"].isin(users)].reset_index(drop=True)
