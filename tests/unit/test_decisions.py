"""Control arms and the decision log (issue 10 §1): who is sent, what is logged, and no duplicates."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from churnguard.control import ControlPolicy
from churnguard.decision_store import (
    MAX_BODY_BYTES,
    DecisionMessageError,
    ParquetDecisionLog,
    QueuedDecisionLog,
    pack,
    read_decisions,
    unpack,
)
from churnguard.decisions import (
    DECISION_COLUMNS,
    ControlledPublisher,
    DecisionLogUnavailableError,
    Decisions,
    arm_counts,
    as_of_instant,
    monitoring_sample,
)
from churnguard.ports import SendFailure
from churnguard.promotions import PromotionPolicy, build_messages
from churnguard.scoring import ScoredBatch
from churnguard.settings import ServingSettings, SettingsError
from tests.unit.fakes import MemoryLedger, MemoryObjectStore, MemoryQueue, RecordingPublisher

CONTROL = ControlPolicy(fraction=0.25, salt="test-salt")
AS_OF = "2026-11-02"


class MemoryLog:
    def __init__(self, fail: bool = False) -> None:
        self.rows: list[dict] = []
        self.fail = fail

    def append(self, records):
        if self.fail:
            raise DecisionLogUnavailableError("the decision-log queue did not take 1 messages (Throttling)")
        self.rows += records


def scored(n: int, *, high_from: int = 0) -> ScoredBatch:
    """``n`` customers; those from ``high_from`` on are at high risk and valuable (an offer pays)."""
    prob = np.where(np.arange(n) >= high_from, 0.9, 0.1).astype(np.float32)
    return ScoredBatch(
        user_ids=np.array([f"c{i}" for i in range(n)], dtype=object),
        churn_probability=prob,
        risk_tier=np.where(prob > 0.5, "high", "low").astype(object),
        at_or_above_promotion=prob > 0.5,
        reasons=[[] for _ in range(n)],
        features={
            "total_spend": np.full(n, 900.0),
            "tenure_days": np.full(n, 200.0),
            "recency_days": np.full(n, 90.0),
            "n_orders": np.full(n, 5.0),
        },
        model_version="v-test",
        horizon_weeks=13,
    )


def messages(batch: ScoredBatch) -> list[dict]:
    return build_messages(
        batch,
        PromotionPolicy(),
        source="batch",
        scored_at="2026-11-02T08:00:00+00:00",
        as_of=[AS_OF] * len(batch.user_ids),
    )


def test_control_customers_are_logged_not_sent_and_treated_ones_are_logged_and_sent():
    batch = scored(400)
    sent, log = RecordingPublisher(), MemoryLog()
    result = ControlledPublisher(sent, Decisions(CONTROL, log)).publish(messages(batch))

    expected = {f"c{i}": CONTROL.arm(f"c{i}", as_of_instant(AS_OF)) for i in range(400)}
    assert {r["user_id"]: r["arm"] for r in log.rows} == expected  # every decision, its own arm
    assert {m["user_id"] for m in sent.messages} == {u for u, a in expected.items() if a == "treated"}
    assert {h["user_id"] for h in result.held_out} == {u for u, a in expected.items() if a == "control"}
    assert 60 <= len(result.held_out) <= 140  # 25% of 400 within sampling error
    assert result.sent == len(sent.messages) and not result.failed
    row = next(r for r in log.rows if r["arm"] == "control")
    assert row["action"] != "none" and row["horizon_weeks"] == 13 and row["as_of"] == "2026-11-02T00:00:00Z"
    assert set(row) == {name for name, _ in DECISION_COLUMNS} | {"as_of_date"}


def test_a_log_that_does_not_answer_sends_nothing_and_fails_every_message():
    sent = RecordingPublisher()
    result = ControlledPublisher(sent, Decisions(CONTROL, MemoryLog(fail=True))).publish(messages(scored(20)))
    assert sent.messages == []
    assert len(result.failed) == 20 and {f["code"] for f in result.failed} == {"DecisionLogUnavailable"}


def test_fraction_zero_sends_every_decision_and_still_logs_it():
    sent, log = RecordingPublisher(), MemoryLog()
    off = ControlPolicy(fraction=0.0, salt="x")
    result = ControlledPublisher(sent, Decisions(off, log)).publish(messages(scored(50)))
    assert len(sent.messages) == 50 and result.held_out == [] and arm_counts(log.rows) == {"treated": 50}
    assert (
        monitoring_sample(
            scored(50, high_from=50), off, acted_on=set(), source="api", scored_at="t", as_of=[AS_OF] * 50
        )
        == []
    )


def test_the_monitoring_sample_is_the_control_draw_of_customers_not_acted_on():
    batch = scored(2000, high_from=1000)  # the first 1000 are not acted on
    acted = {m["user_id"] for m in messages(batch)}
    rows = monitoring_sample(
        batch, CONTROL, acted_on=acted, source="batch", scored_at="t", as_of=[AS_OF] * 2000
    )
    users = {r["user_id"] for r in rows}
    assert not users & acted
    assert users == {f"c{i}" for i in range(1000) if CONTROL.arm(f"c{i}", as_of_instant(AS_OF)) == "control"}
    assert all(r["arm"] == "control" and r["action"] == "none" for r in rows)
    assert 200 <= len(rows) <= 300


def test_a_retried_publish_draws_the_same_arms_and_the_parquet_log_keeps_one_copy():
    store, ledger = MemoryObjectStore(), MemoryLedger()
    parquet = ParquetDecisionLog(store, "bucket", ledger=ledger)
    log = MemoryLog()
    publisher = ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log))
    batch = messages(scored(300))
    publisher.publish(batch)
    first = list(log.rows)
    publisher.publish(batch)  # the retry
    assert log.rows[len(first) :] == first  # same rows, same arms
    keys = parquet.append(log.rows)
    assert keys == [f"decisions/as_of_date={AS_OF}/" + keys[0].rsplit("/", 1)[1]]
    assert parquet.append(first) == []  # all logged already: the ledger skips them
    frame = read_decisions(store, "bucket")
    assert len(frame) == 300 and frame["decision_id"].is_unique
    assert frame["horizon_weeks"].dtype == np.int32 and set(frame["arm"]) == {"treated", "control"}


def test_the_same_rows_without_a_ledger_replace_their_object_instead_of_adding_one():
    store = MemoryObjectStore()
    parquet = ParquetDecisionLog(store, "bucket")
    log = MemoryLog()
    ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log)).publish(messages(scored(40)))
    assert parquet.append(log.rows) == parquet.append(list(reversed(log.rows)))
    assert len(store.list_objects("bucket", "decisions/")) == 1


def test_packed_bodies_stay_under_the_limit_and_unpack_to_the_same_rows():
    log = MemoryLog()
    ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log)).publish(messages(scored(500)))
    bodies = pack(log.rows)
    assert len(bodies) > 1 and all(len(b.encode()) <= MAX_BODY_BYTES for b in bodies)
    assert [r for b in bodies for r in unpack(b)] == log.rows


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not json", "not JSON"),
        (json.dumps({"schema": "other", "records": []}), "not churnguard.decision/v1"),
        (
            json.dumps({"schema": "churnguard.decision/v1", "records": [{"user_id": "secret-id"}]}),
            "decision_id is missing",
        ),
    ],
)
def test_a_malformed_message_is_refused_naming_the_problem_not_the_data(body, problem):
    with pytest.raises(DecisionMessageError, match=problem) as caught:
        unpack(body)
    assert "secret-id" not in str(caught.value)


def test_the_queued_log_retries_refused_entries_then_fails():
    log = MemoryLog()
    ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log)).publish(messages(scored(10)))
    queue = MemoryQueue()
    queue.fail = {"c3": SendFailure("", "ServiceUnavailable", "busy", sender_fault=False)}
    QueuedDecisionLog(queue, sleep=lambda s: None).append(log.rows)
    assert [r["user_id"] for m in queue.messages for r in unpack(m.body)] == [r["user_id"] for r in log.rows]

    class Refusing:
        def send_batch(self, batch):
            from churnguard.ports import SendBatchResult

            return SendBatchResult(0, [SendFailure(m.id, "Throttling", "slow down", False) for m in batch])

    with pytest.raises(DecisionLogUnavailableError, match="Throttling"):
        QueuedDecisionLog(Refusing(), sleep=lambda s: None).append(log.rows)


def test_a_day_or_an_instant_as_of_is_read_as_utc():
    assert as_of_instant("2026-11-02") == dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    assert as_of_instant("2026-11-02T10:00:00+02:00") == dt.datetime(2026, 11, 2, 8, tzinfo=dt.UTC)


def test_control_groups_without_a_salt_fail_the_cold_start_naming_the_variable():
    env = {"CHURNGUARD_MODEL_DIR": "/m", "CHURNGUARD_DECISIONS_QUEUE_URL": "https://q"}
    with pytest.raises(SettingsError, match="CHURNGUARD_CONTROL_SALT"):
        ServingSettings.from_env(env)
    assert (
        ServingSettings.from_env({**env, "CHURNGUARD_CONTROL_FRACTION": "0"}).control_policy().fraction == 0
    )
    salted = ServingSettings.from_env({**env, "CHURNGUARD_CONTROL_SALT": "s3cret"}).control_policy()
    assert salted == ControlPolicy(0.10, "s3cret", 546)


def test_an_outbox_message_from_before_control_groups_is_sent_as_decided_and_not_logged():
    legacy = {k: v for k, v in messages(scored(3))[0].items() if k != "horizon_weeks"}
    sent, log = RecordingPublisher(), MemoryLog()
    result = ControlledPublisher(sent, Decisions(CONTROL, log)).publish([legacy])
    assert sent.messages == [legacy] and log.rows == [] and not result.failed and result.held_out == []


def test_the_logged_as_of_is_the_scoring_cutoff_not_the_start_of_its_day():
    batch = scored(40)
    cutoff = "2026-11-02T18:00:00+00:00"
    built = build_messages(
        batch, PromotionPolicy(), source="api", scored_at=cutoff, as_of=[AS_OF] * 40, cutoffs=[cutoff] * 40
    )
    log = MemoryLog()
    ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log)).publish(built)
    assert {r["as_of"] for r in log.rows} == {"2026-11-02T18:00:00Z"}
    assert {r["as_of_date"] for r in log.rows} == {AS_OF}
    assert all(m["idempotency_key"] == r["decision_id"] for m, r in zip(built, log.rows, strict=True))


def test_a_monitoring_row_does_not_hide_a_later_decision_to_act_on_the_same_customer():
    store, ledger = MemoryObjectStore(), MemoryLedger()
    parquet = ParquetDecisionLog(store, "bucket", ledger=ledger)
    morning = scored(200, high_from=200)  # nobody acted on: the control draws are sampled
    parquet.append(
        monitoring_sample(morning, CONTROL, acted_on=set(), source="api", scored_at="t1", as_of=[AS_OF] * 200)
    )
    evening = scored(200)  # the same customers, now acted on
    log = MemoryLog()
    ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log)).publish(messages(evening))
    parquet.append(log.rows)
    frame = read_decisions(store, "bucket")
    acted = frame[frame["action"] != "none"]
    assert len(acted) == 200 and set(acted["arm"]) == {"treated", "control"}
    assert (frame["action"] == "none").sum() == (acted["arm"] == "control").sum()  # the same control draws


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("churn_probability", "0.9 secret", "churn_probability must be a finite number"),
        ("churn_probability", float("nan"), "churn_probability must be a finite number"),
        ("horizon_weeks", 2**40, "horizon_weeks is out of range"),
        ("period", True, "period must be an integer"),
        ("user_id", 42, "user_id must be a string"),
        ("as_of_date", "yesterday", "as_of_date must be a day"),
    ],
)
def test_a_row_of_the_wrong_type_is_refused_by_column_without_its_value(column, value, problem):
    log = MemoryLog()
    ControlledPublisher(RecordingPublisher(), Decisions(CONTROL, log)).publish(messages(scored(2)))
    rows = [dict(log.rows[0]), dict(log.rows[1])]
    rows[1][column] = value
    with pytest.raises(DecisionMessageError, match=rf"records\[1\]: {problem}") as caught:
        unpack(json.dumps({"schema": "churnguard.decision/v1", "records": rows}))
    assert "secret" not in str(caught.value)
