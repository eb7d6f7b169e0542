"""The outcome job (issue 10 §2): the decision log + what customers did afterwards -> the outcome report.

Run daily by the template's schedule (``functions/outcomes``) and from the command line:

    python -m churnguard.outcome_job --bucket BUCKET [--events-prefix training-events/] [--out DIR]

(``AWS_ENDPOINT_URL`` is honoured, so the same command runs against the local stack's moto server.)

What it reads: every decision under ``decisions/`` (``churnguard.decision_store.read_decisions``,
deduplicated) and the ``order`` events of the decided customers from the event history under
``events_prefix`` (default ``training-events/``: the history retraining learns from, which the
retailer keeps current; ``incoming/`` drops expire after 30 days, shorter than most horizons). Files
are read and validated by batch scoring's own reader (``iter_chunks`` + ``validate_events``); invalid
rows are counted, never used. Events are known up to the end of the day of the latest event seen
(``observed_until``, exclusive, unless given: the history is taken to hold whole days): a decision
whose window ends later is **pending**, not a churner.

What it writes under ``reports_prefix`` (default ``outcomes/``): ``<run day>/report.json`` (the
``churnguard.outcomes`` report plus the run's inputs) and, with ``render``, ``uplift.png``,
``live_calibration.png`` and ``outcomes.html`` beside it; the same objects under ``latest/``.
Only counts and model versions are ever logged by the callers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from churnguard.batch import SUPPORTED_SUFFIXES, iter_chunks
from churnguard.decision_store import read_decisions
from churnguard.decisions import NO_ACTION
from churnguard.events import CANONICAL_COLUMNS, EventLogError, validate_events
from churnguard.outcomes import key_figures, label_outcomes, outcome_report
from churnguard.ports import ObjectStore

DEFAULT_EVENTS_PREFIX = "training-events/"
DEFAULT_REPORTS_PREFIX = "outcomes/"
CHUNK_ROWS = 500_000


@dataclass
class OrderHistory:
    """The decided customers' orders from an event history, and what reading it found."""

    orders: pd.DataFrame  # user_id, timestamp (naive UTC)
    observed_until: pd.Timestamp | None = None  # the end of the latest valid event's day
    files: int = 0
    rows_rejected: int = 0
    files_unreadable: list[str] = field(default_factory=list)  # their error types (never the contents)


def read_orders(
    store: ObjectStore, bucket: str, prefix: str, users: set[str], now: pd.Timestamp | None = None
) -> OrderHistory:
    """The ``order`` events of ``users`` in every event file under ``prefix`` (CSV, CSV.gz, Parquet);
    events after ``now`` (naive UTC; default: the clock) are impossible and ignored."""
    now = now if now is not None else pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None)
    parts: list[pd.DataFrame] = []
    history = OrderHistory(pd.DataFrame({"user_id": [], "timestamp": pd.Series([], dtype="datetime64[ns]")}))
    latest = None
    for listed in store.list_objects(bucket, prefix):
        if not listed.key.lower().endswith(SUPPORTED_SUFFIXES):
            continue
        history.files += 1
        try:
            for chunk in iter_chunks(
                store.open(bucket, listed.key), listed.key, CHUNK_ROWS, columns=CANONICAL_COLUMNS
            ):
                validated = validate_events(chunk)
                history.rows_rejected += len(validated.rejected)
                events = validated.events
                events = events[events["timestamp"].to_numpy() <= now.to_datetime64()]
                if events.empty:
                    continue
                newest = events["timestamp"].max()
                latest = newest if latest is None else max(latest, newest)
                keep = (events["event_type"].to_numpy() == "order") & events["user_id"].isin(users).to_numpy()
                parts.append(events.loc[keep, ["user_id", "timestamp"]])
        except (EventLogError, ValueError) as exc:
            history.files_unreadable.append(type(exc).__name__)
    if parts:
        history.orders = pd.concat(parts, ignore_index=True)
    if latest is not None:  # event files hold whole days: the latest event's day is observed to its end
        history.observed_until = min(pd.Timestamp(latest).normalize() + pd.Timedelta(days=1), now)
    return history


@dataclass(frozen=True)
class OutcomeRun:
    report: dict[str, Any]
    figures: dict[str, float]  # churnguard.outcomes.key_figures: the CloudWatch metrics
    keys: list[str]  # objects written


def measure(
    store: ObjectStore,
    bucket: str,
    *,
    decisions_prefix: str = "decisions/",
    events_prefix: str = DEFAULT_EVENTS_PREFIX,
    observed_until: dt.datetime | None = None,
) -> dict[str, Any]:
    """The outcome report of every logged decision, with a ``run`` section saying what was read."""
    decisions = one_per_customer_and_cutoff(read_decisions(store, bucket, decisions_prefix))
    now = pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None)
    history = read_orders(store, bucket, events_prefix, set(decisions["user_id"].astype(str)), now)
    until = pd.Timestamp(observed_until) if observed_until is not None else history.observed_until
    if until is None:  # no events at all: nothing has matured
        until = pd.Timestamp(0, tz="UTC")
    report = outcome_report(label_outcomes(decisions, history.orders, until))
    report["run"] = {
        "decisions_prefix": decisions_prefix,
        "events_prefix": events_prefix,
        "observed_until": _iso(until),
        "event_files": history.files,
        "event_rows_rejected": history.rows_rejected,
        "event_files_unreadable": history.files_unreadable,
        "orders_of_decided_customers": len(history.orders),
    }
    return report


def one_per_customer_and_cutoff(decisions: pd.DataFrame) -> pd.DataFrame:
    """One row per customer, model version and cutoff: the same customer decided by two paths at the
    same instant by the same model (an API call and a batch file) is one decision, same score and arm.
    An acted-on row wins over a monitoring-sample row, then the first decided."""
    order = decisions.assign(_sample=decisions["action"] == NO_ACTION).sort_values(
        ["_sample", "decided_at", "decision_id"], kind="stable"
    )
    kept = order.drop_duplicates(["user_id", "model_version", "as_of"], keep="first")
    return kept.drop(columns="_sample").sort_index().reset_index(drop=True)


def _iso(instant: pd.Timestamp) -> str:
    utc = instant.tz_localize("UTC") if instant.tzinfo is None else instant.tz_convert("UTC")
    return str(utc.strftime("%Y-%m-%dT%H:%M:%SZ"))


def run(
    store: ObjectStore,
    bucket: str,
    *,
    decisions_prefix: str = "decisions/",
    events_prefix: str = DEFAULT_EVENTS_PREFIX,
    reports_prefix: str = DEFAULT_REPORTS_PREFIX,
    observed_until: dt.datetime | None = None,
    now: dt.datetime | None = None,
    render: bool = True,
    out_dir: Path | None = None,
    drift: dict[str, Any] | None = None,
) -> OutcomeRun:
    """``measure``, then the report (and its pictures) under ``reports_prefix``<day>/ and latest/,
    and in ``out_dir`` when given; ``drift`` (a batch summary's section) adds its picture."""
    report = measure(
        store,
        bucket,
        decisions_prefix=decisions_prefix,
        events_prefix=events_prefix,
        observed_until=observed_until,
    )
    day = (now or dt.datetime.now(dt.UTC)).date().isoformat()
    with tempfile.TemporaryDirectory() as tmp:
        folder = out_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
        files = [folder / "report.json"]
        if render:
            from churnguard.outcome_plots import render as render_pictures

            files += render_pictures(report, folder, drift=drift)
        keys = []
        for path in files:
            for where in (day, "latest"):
                key = f"{reports_prefix}{where}/{path.name}"
                store.put_bytes(bucket, key, path.read_bytes(), content_type=_content_type(path.name))
                keys.append(key)
    return OutcomeRun(report, key_figures(report), keys)


def _content_type(name: str) -> str:
    return {".json": "application/json", ".png": "image/png", ".html": "text/html; charset=utf-8"}[
        Path(name).suffix
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m churnguard.outcome_job", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--bucket", required=True, help="the data bucket (decisions/, the event history)")
    parser.add_argument("--events-prefix", default=DEFAULT_EVENTS_PREFIX)
    parser.add_argument("--decisions-prefix", default="decisions/")
    parser.add_argument("--reports-prefix", default=DEFAULT_REPORTS_PREFIX)
    parser.add_argument(
        "--observed-until", help="ISO instant events are known up to (default: the latest event)"
    )
    parser.add_argument("--out", type=Path, help="also write the report and pictures into this folder")
    args = parser.parse_args(argv)
    import boto3

    from churnguard.adapters import S3ObjectStore

    until = dt.datetime.fromisoformat(args.observed_until) if args.observed_until else None
    result = run(
        S3ObjectStore(boto3.client("s3")),
        args.bucket,
        decisions_prefix=args.decisions_prefix,
        events_prefix=args.events_prefix,
        reports_prefix=args.reports_prefix,
        observed_until=until,
        out_dir=args.out,
    )
    print(json.dumps(result.figures, indent=2))
    print("\n".join(f"s3://{args.bucket}/{key}" for key in result.keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
