"""The outcome job's reading of the event history and the log (churnguard.outcome_job), in memory."""

from __future__ import annotations

import pandas as pd

from churnguard.decision_store import ParquetDecisionLog
from churnguard.outcome_job import measure, one_per_customer_and_cutoff, read_orders, run
from tests.unit.fakes import MemoryObjectStore
from tests.unit.test_outcomes import _decision


def _history(store: MemoryObjectStore, key: str, rows: list[tuple[str, str, str]]) -> None:
    frame = pd.DataFrame(rows, columns=["user_id", "timestamp", "event_type"]).assign(
        amount=10.0, quantity=1.0
    )
    store.put_bytes("b", key, frame.to_csv(index=False).encode())


def test_the_history_is_observed_to_the_end_of_its_latest_day_and_never_past_now():
    store = MemoryObjectStore()
    _history(
        store,
        "training-events/a.csv",
        [("u1", "2024-03-01 10:00:00", "order"), ("u2", "2024-03-05 09:00:00", "view")],
    )
    history = read_orders(store, "b", "training-events/", {"u1"}, now=pd.Timestamp("2030-01-01"))
    assert history.observed_until == pd.Timestamp("2024-03-06") and list(history.orders["user_id"]) == ["u1"]
    _history(store, "training-events/clock skew.csv", [("u1", "2031-01-01 00:00:00", "view")])
    history = read_orders(store, "b", "training-events/", {"u1"}, now=pd.Timestamp("2024-03-10 12:00:00"))
    assert history.observed_until == pd.Timestamp("2024-03-06")  # the event after now is ignored
    history = read_orders(store, "b", "training-events/", {"u1"}, now=pd.Timestamp("2024-03-05 12:00:00"))
    assert history.observed_until == pd.Timestamp("2024-03-05 12:00:00")  # capped at now


def test_an_unreadable_file_and_bad_rows_are_counted_not_used():
    store = MemoryObjectStore()
    store.put_bytes("b", "training-events/broken.csv.gz", b"not gzip at all")
    _history(store, "training-events/ok.csv", [("u1", "2024-03-01", "order"), ("u1", "not a time", "order")])
    history = read_orders(store, "b", "training-events/", {"u1"}, now=pd.Timestamp("2030-01-01"))
    assert history.files == 2 and history.files_unreadable == ["EventLogError"] and history.rows_rejected == 1
    assert len(history.orders) == 1


def test_one_decision_per_customer_and_cutoff_prefers_the_acted_on_row():
    frame = pd.DataFrame(
        [
            _decision(
                "u1", decision_id="sample:k1", action="none", arm="control", decided_at="2024-01-01T09:00:00Z"
            ),
            _decision("u1", decision_id="k1", arm="control", decided_at="2024-01-01T10:00:00Z"),
            _decision("u2", decision_id="k2", source="api", decided_at="2024-01-01T09:00:00Z"),
            _decision("u2", decision_id="k3", source="batch", decided_at="2024-01-01T11:00:00Z"),
        ]
    )
    kept = one_per_customer_and_cutoff(frame)
    assert list(kept["decision_id"]) == ["k1", "k2"]


def test_a_run_writes_the_report_and_pictures_for_the_day_and_as_latest(tmp_path):
    store = MemoryObjectStore()
    rows = [
        _decision(f"t{i}", decision_id=f"t{i}", as_of="2024-01-01T00:00:00Z", as_of_date="2024-01-01")
        for i in range(4)
    ]
    rows += [
        _decision(
            f"c{i}", decision_id=f"c{i}", arm="control", as_of="2024-01-01T00:00:00Z", as_of_date="2024-01-01"
        )
        for i in range(4)
    ]
    ParquetDecisionLog(store, "b").append(rows)
    _history(
        store,
        "training-events/h.csv",
        [("t0", "2024-01-03", "order"), ("c0", "2024-01-03", "order"), ("x", "2024-02-01", "view")],
    )
    report = measure(store, "b")
    assert report["counts"]["matured"] == 8 and report["run"]["observed_until"] == "2024-02-02T00:00:00Z"
    assert report["arms"]["treated"]["churn_rate"] == 0.75 and report["arms"]["control"]["churn_rate"] == 0.75
    result = run(store, "b", render=False, now=pd.Timestamp("2024-02-03", tz="UTC").to_pydatetime())
    assert sorted(result.keys) == ["outcomes/2024-02-03/report.json", "outcomes/latest/report.json"]
    assert result.figures["Decisions"] == 8


def test_a_measured_drift_section_adds_its_picture_to_the_page(tmp_path):
    from churnguard.outcome_plots import render

    report = measure(MemoryObjectStore(), "b")  # an empty log: a report of zeros still renders
    drift = {
        "status": "ok",
        "customers": 900,
        "score_psi": 0.31,
        "group_psi": {"recency": 0.4, "tenure": 0.02},
    }
    written = {p.name for p in render(report, tmp_path, drift=drift)}
    assert written == {"uplift.png", "live_calibration.png", "drift.png", "outcomes.html"}
    assert 'src="drift.png"' in (tmp_path / "outcomes.html").read_text()
    unmeasured = {"status": "too_few_customers", "score_psi": None, "group_psi": {}}
    assert "drift.png" not in {p.name for p in render(report, tmp_path / "b", drift=unmeasured)}
