import logging
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


@pytest.fixture(scope="session", autouse=True)
def no_log_record_of_the_suite_carries_planted_data():
    """The logs of every test in the session are scanned for ``PLANTED`` (user ids of bad rows,
    hostile requests): no log line may carry a data value, at any level."""
    from tests.helpers import PLANTED

    leaked: list[str] = []

    class Scan(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                text = f"{record.getMessage()} {record.__dict__}"
            except Exception:  # a record whose message cannot be formatted: scan its parts
                text = repr(record.__dict__)
            if PLANTED in text:
                leaked.append(f"{record.name}:{record.levelname}: {text[:300]}")

    scan = Scan(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(scan)
    yield
    root.removeHandler(scan)
    assert not leaked, f"{len(leaked)} log records carry planted test data: {leaked[:3]}"
