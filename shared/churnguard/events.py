"""The canonical event log and its validation.

ChurnGuard reads one schema everywhere — training files, batch drops in S3, the HTTP API:

    user_id, timestamp, event_type, amount, quantity [, event_id] [, profile columns...]

Rules for awkward rows (each has a unit test):

* ``user_id`` missing/blank or longer than ``MAX_USER_ID_LENGTH`` (256) -> row rejected.
* ``timestamp``: ISO-8601 text (date only, naive or with an offset / ``Z``) or a datetime column.
  Offsets are converted to UTC; naive values are taken as UTC. Unparseable -> row rejected.
* ``event_type``: case and surrounding blanks are ignored; anything outside ``EVENT_TYPES`` -> row
  rejected (a typo must not silently become "no activity").
* ``amount``: missing -> 0.0 (the event still counts); not a number, infinite, negative or above
  ``MAX_AMOUNT`` (1e9) -> row rejected (refunds are ``return`` events with a positive amount). Zero is
  a valid free order.
* ``quantity``: missing -> 1; not a number, infinite, negative or above ``MAX_QUANTITY`` (1e6) -> row
  rejected.
* Duplicates: with an ``event_id`` column, repeated ids are one event (first row kept, the rest
  rejected as duplicates). Without it identical rows are separate events: logs at day resolution
  (CDNOW has 255 such rows) really do contain two equal orders on one day.
* Any other column is a profile column (per customer); the last non-null value per customer wins.

pandas is imported here, not in the numpy-only feature path, so the API Lambda can skip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnguard.features import (
    EVENT_TYPES,
    ID_BLANKS,
    MAX_AMOUNT,
    MAX_QUANTITY,
    MAX_USER_ID_LENGTH,
)  # beside the numpy-only feature path

REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "timestamp", "event_type")
OPTIONAL_COLUMNS: tuple[str, ...] = ("amount", "quantity", "event_id")
CANONICAL_COLUMNS: tuple[str, ...] = ("user_id", "timestamp", "event_type", "amount", "quantity")


class EventLogError(ValueError):
    """The event log as a whole is unusable (missing columns, no valid rows, unreadable file)."""


@dataclass(frozen=True)
class ValidatedEvents:
    """Valid rows in canonical types, and every rejected row with its reason.

    ``events`` columns: user_id (str), timestamp (datetime64[ns], UTC, naive), event_type (str),
    amount (float64), quantity (float64), source_row (int64), then profile columns.
    ``rejected`` columns: source_row, reason. ``len(events) + len(rejected)`` equals the input rows.
    """

    events: pd.DataFrame
    rejected: pd.DataFrame
    profile_columns: tuple[str, ...]

    @property
    def rows_in(self) -> int:
        return len(self.events) + len(self.rejected)


def _to_utc_naive(values: pd.Series) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[ns]")
    text = values.astype("string").str.strip()
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
    return parsed.dt.tz_localize(None).astype("datetime64[ns]")


def _numeric(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("float64")
    text = values.astype("string").str.strip().replace("", pd.NA)
    return pd.to_numeric(text, errors="coerce").astype("float64")


class _RejectReasons:
    """Every problem found in each row, joined with "; " in the order the checks run."""

    def __init__(self, n: int) -> None:
        self.text = np.full(n, "", dtype=object)

    def flag(self, mask: pd.Series | np.ndarray, reason: str | np.ndarray) -> None:
        """Add ``reason`` (one text, or one per flagged row) to the rows where ``mask`` holds."""
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            current = self.text[mask]
            self.text[mask] = np.where(current == "", reason, current + "; " + reason)

    @property
    def valid(self) -> np.ndarray:
        return np.asarray(self.text == "", dtype=bool)


def _require_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise EventLogError(
            f"missing required column(s) {missing}; the event log needs {list(REQUIRED_COLUMNS)} "
            f"and may have {list(OPTIONAL_COLUMNS)} plus profile columns (got {list(frame.columns)})"
        )


def _source_rows(n: int, first_row_number: int, row_numbers: np.ndarray | None) -> np.ndarray:
    if row_numbers is not None:
        return np.asarray(row_numbers, dtype=np.int64)
    return np.arange(first_row_number, first_row_number + n, dtype=np.int64)


def _check_user_id(raw: pd.Series, reasons: _RejectReasons) -> pd.Series:
    user_id = raw.astype("string").str.strip(ID_BLANKS)
    reasons.flag(user_id.isna() | (user_id == ""), "user_id is missing")
    too_long = (user_id.str.len() > MAX_USER_ID_LENGTH).fillna(False)
    reasons.flag(too_long, f"user_id is longer than {MAX_USER_ID_LENGTH} characters")
    return user_id


def _check_timestamp(raw: pd.Series, reasons: _RejectReasons) -> pd.Series:
    timestamp = _to_utc_naive(raw)
    raw_missing = raw.isna().to_numpy()
    reasons.flag(raw_missing, "timestamp is missing")
    reasons.flag(timestamp.isna().to_numpy() & ~raw_missing, "timestamp is not ISO-8601")
    return timestamp


def _check_event_type(raw: pd.Series, reasons: _RejectReasons) -> pd.Series:
    event_type = raw.astype("string").str.strip().str.lower()
    bad_type = ~event_type.isin(EVENT_TYPES).fillna(False).to_numpy(dtype=bool)
    if bad_type.any():
        shown = event_type.fillna("<missing>").to_numpy(dtype=object)
        expected = ", ".join(EVENT_TYPES)
        bad_reason = np.array(
            [f"unknown event_type '{v}' (expected one of {expected})" for v in shown[bad_type]],
            dtype=object,
        )
        reasons.flag(bad_type, bad_reason)
    return event_type


def _check_number(
    frame: pd.DataFrame, name: str, default: float, maximum: float, reasons: _RejectReasons
) -> np.ndarray:
    """An optional non-negative number column as float64: missing -> ``default``; the column
    absent -> ``default`` everywhere."""
    if name not in frame.columns:
        return np.full(len(frame), default)
    raw = frame[name]
    value = _numeric(raw)
    raw_missing = raw.isna().to_numpy() | (raw.astype("string").str.strip() == "").fillna(True).to_numpy()
    reasons.flag(value.isna().to_numpy() & ~raw_missing, f"{name} is not a number")
    finite = np.isfinite(value.to_numpy(dtype="float64", na_value=0.0))
    reasons.flag(~finite, f"{name} is not finite")
    reasons.flag((value < 0).fillna(False).to_numpy(dtype=bool), f"{name} is negative")
    above = (value > maximum).fillna(False).to_numpy(dtype=bool)
    reasons.flag(finite & above, f"{name} is above {maximum:g}")
    return np.asarray(value.fillna(default).to_numpy(dtype="float64", na_value=default))


def _check_event_id(frame: pd.DataFrame, reasons: _RejectReasons) -> None:
    """With an ``event_id`` column a repeated id is one event: later rows are duplicates."""
    if "event_id" not in frame.columns:
        return
    event_id = frame["event_id"].astype("string").str.strip()
    has_id = event_id.notna() & (event_id != "")
    reasons.flag((event_id.duplicated(keep="first") & has_id).to_numpy(dtype=bool), "duplicate event_id")


def validate_events(
    frame: pd.DataFrame, *, first_row_number: int = 1, row_numbers: np.ndarray | None = None
) -> ValidatedEvents:
    """Split a raw event frame into canonical valid rows and rejected rows with reasons.

    ``first_row_number`` is the source row number of ``frame``'s first row (for chunked files: the
    data row number in the file, 1-based, header excluded), so rejects point at the real line.
    ``row_numbers`` gives every row's number explicitly instead (parts of a split file keep the
    original file's row numbers).
    """
    _require_columns(frame)
    source_row = _source_rows(len(frame), first_row_number, row_numbers)
    reasons = _RejectReasons(len(frame))
    user_id = _check_user_id(frame["user_id"], reasons)
    timestamp = _check_timestamp(frame["timestamp"], reasons)
    event_type = _check_event_type(frame["event_type"], reasons)
    amount = _check_number(frame, "amount", 0.0, MAX_AMOUNT, reasons)
    quantity = _check_number(frame, "quantity", 1.0, MAX_QUANTITY, reasons)
    _check_event_id(frame, reasons)

    valid = reasons.valid
    profile_columns = tuple(
        c for c in frame.columns if c not in (*CANONICAL_COLUMNS, "event_id", "source_row")
    )
    events = pd.DataFrame(
        {
            "user_id": user_id.to_numpy(dtype=object)[valid],
            "timestamp": timestamp.to_numpy()[valid],
            "event_type": event_type.to_numpy(dtype=object)[valid],
            "amount": amount[valid],
            "quantity": quantity[valid],
            "source_row": source_row[valid],
        }
    )
    for column in profile_columns:
        events[column] = frame[column].to_numpy()[valid]
    rejected = pd.DataFrame({"source_row": source_row[~valid], "reason": reasons.text[~valid]})
    return ValidatedEvents(
        events=events.reset_index(drop=True), rejected=rejected, profile_columns=profile_columns
    )


def read_event_file(path: str, *, columns: list[str] | None = None) -> pd.DataFrame:
    """Read one CSV / CSV.gz / Parquet event file as raw strings (validation does the typing)."""
    lower = str(path).lower()
    try:
        if lower.endswith(".parquet"):
            return pd.read_parquet(path, columns=columns)
        if lower.endswith((".csv", ".csv.gz", ".txt", ".gz")):
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], usecols=columns)
    except (ValueError, OSError, pd.errors.ParserError) as exc:  # pyarrow raises ArrowInvalid(ValueError)
        raise EventLogError(f"cannot read {path}: {exc}") from exc
    raise EventLogError(f"unsupported file type for {path}: expected .csv, .csv.gz or .parquet")
