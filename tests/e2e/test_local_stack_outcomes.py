"""The closed loop on the local stack, as a user runs it (a subprocess, boto3 against its endpoint):
a batch drop is scored -> its decisions (treated, control, monitoring sample) reach the decision log
through the decision-log queue and its writer -> later events arrive in the event history -> the
outcome job measures the planted uplift and the live AUC, and writes the report's pictures."""

import json
import time

import numpy as np
import pandas as pd

from churnguard.adapters import S3ObjectStore
from churnguard.datasets import generate_synthetic_events, plant_treatment_effect
from churnguard.decision_store import read_decisions
from churnguard.outcome_job import run
from infra.template import load_template
from tests.e2e import test_local_stack_realtime as realtime_e2e

stack = realtime_e2e.stack  # the same module-scoped fixture: one local stack process for this module
_client = realtime_e2e._client

AS_OF = "2024-09-30"  # the fixture model's protocol: as-of 2024-09-30, 39-week horizon
WON_BACK = 0.5


def _wait_for(read, done, timeout_s=120):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = read()
        if done(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"not done within {timeout_s} s: {value!r}")


def _summary(s3, bucket, name):
    def read():
        try:
            return json.loads(s3.get_object(Bucket=bucket, Key=f"scored/{name}.summary.json")["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    return _wait_for(read, lambda summary: summary is not None)


def _promoted_users(sqs, queue_url):
    users = set()
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60)
        if not got.get("Messages"):
            return users
        users |= {json.loads(m["Body"])["user_id"] for m in got["Messages"]}


def test_scores_decisions_later_events_and_the_outcome_report_recover_the_planted_uplift(stack):
    s3, sqs = _client(stack, "s3"), _client(stack, "sqs")
    bucket = stack["bucket"]
    events = generate_synthetic_events(4000, seed=23, with_profile=True)
    before = events[events["timestamp"] < pd.Timestamp(AS_OF)]
    s3.put_object(
        Bucket=bucket,
        Key="incoming/loop.csv",
        Body=before.to_csv(index=False).encode(),
        Metadata={"as-of": AS_OF},
    )
    summary = json.loads(
        _wait_for(
            lambda: next(
                (
                    s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                    for o in s3.list_objects_v2(Bucket=bucket, Prefix="scored/loop.summary").get(
                        "Contents", []
                    )
                ),
                None,
            ),
            lambda body: body is not None,
        )
    )
    assert summary["status"] == "ok", summary
    assert (
        summary["customers_queued"] > 0
        and summary["customers_held_out"] > 0
        and summary["monitoring_sample"] > 0
    )
    logged = summary["customers_queued"] + summary["customers_held_out"] + summary["monitoring_sample"]

    store = S3ObjectStore(s3)
    decisions = _wait_for(lambda: read_decisions(store, bucket), lambda d: len(d) >= logged)
    assert len(decisions) == logged and decisions["decision_id"].is_unique
    acted = decisions[decisions["action"] != "none"]
    treated = set(acted.loc[acted["arm"] == "treated", "user_id"])
    held_out = set(acted.loc[acted["arm"] == "control", "user_id"])
    assert (len(treated), len(held_out)) == (summary["customers_queued"], summary["customers_held_out"])
    assert _promoted_users(sqs, stack["promotions_queue"]) == treated  # control customers were never sent

    later = plant_treatment_effect(events, decisions, won_back=WON_BACK, seed=5)
    s3.put_object(Bucket=bucket, Key="training-events/history.csv", Body=later.to_csv(index=False).encode())
    result = run(store, bucket)

    assert result.report["counts"]["matured"] == logged and result.report["counts"]["pending"] == 0
    won_back = result.report["uplift"]["overall"]["won_back_share"]
    assert won_back["ci_low"] <= WON_BACK <= won_back["ci_high"], won_back
    assert won_back["ci_low"] > 0.2  # the effect is detected, not merely "not excluded"
    (quality,) = result.report["live_quality"].values()
    assert quality["n"] == len(decisions[decisions["arm"] == "control"])
    assert 0.5 < quality["roc_auc"]["value"] <= 1.0
    assert result.figures["IncrementalRetention"] > 0
    for name in ("report.json", "uplift.png", "live_calibration.png", "outcomes.html"):
        body = s3.get_object(Bucket=bucket, Key=f"outcomes/latest/{name}")["Body"].read()
        assert body.startswith(b"\x89PNG") if name.endswith(".png") else len(body) > 100


def test_a_drifted_batch_raises_the_psi_past_the_alarms_threshold_and_a_normal_one_does_not(stack):
    s3, bucket = _client(stack, "s3"), stack["bucket"]
    threshold = float(load_template()["Parameters"]["DriftPsiThreshold"]["Default"])
    events = generate_synthetic_events(3000, seed=31)
    before = events[events["timestamp"] < pd.Timestamp(AS_OF)]
    quieter = before[np.random.default_rng(31).random(len(before)) < 0.35]  # a third of the activity
    for name, frame in (("usual", before), ("quieter", quieter)):
        s3.put_object(
            Bucket=bucket,
            Key=f"incoming/{name}.csv",
            Body=frame.to_csv(index=False).encode(),
            Metadata={"as-of": AS_OF},
        )
    usual, drifted = _summary(s3, bucket, "usual")["drift"], _summary(s3, bucket, "quieter")["drift"]
    assert usual["status"] == "ok" and usual["score_psi"] < 0.05, usual
    assert drifted["status"] == "ok" and drifted["score_psi"] > threshold, (
        drifted
    )  # ScoreDriftAlarm's condition
    assert max(drifted["group_psi"].values()) > max(usual["group_psi"].values())
