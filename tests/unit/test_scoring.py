"""Scoring and promotions on the committed fixture model (no TensorFlow, no network)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnguard.bundle import ModelBundle
from churnguard.datasets import generate_synthetic_events
from churnguard.events import validate_events
from churnguard.promotions import (
    MESSAGE_SCHEMA,
    Action,
    PromotionPolicy,
    SqsPromotionsPublisher,
    build_messages,
    idempotency_key,
)
from churnguard.scoring import ReasonsFor, score_customers
from churnguard.tabular import customer_events, to_epoch_seconds

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "model"


@pytest.fixture(scope="module")
def bundle():
    return ModelBundle.from_directory(FIXTURE)


@pytest.fixture(scope="module")
def customers():
    events = validate_events(generate_synthetic_events(300, seed=99, weeks=78)).events
    as_of = "2024-09-30"
    data = customer_events(events, profile_columns=("country", "acquisition_channel"))
    return data, to_epoch_seconds(as_of)


def score(bundle, customers, reasons_for):
    data, as_of = customers
    return score_customers(
        bundle, list(data.user_ids), data.arrays, as_of, profile=data.profile, reasons_for=reasons_for
    )


def test_scores_are_identical_whether_reasons_come_from_the_stacked_call_or_not(bundle, customers):
    all_reasons = score(bundle, customers, ReasonsFor.ALL)
    none = score(bundle, customers, ReasonsFor.NONE)
    promoted = score(bundle, customers, ReasonsFor.PROMOTED)
    np.testing.assert_array_equal(all_reasons.churn_probability, none.churn_probability)
    np.testing.assert_array_equal(promoted.churn_probability, none.churn_probability)
    assert np.all((none.churn_probability > 0) & (none.churn_probability < 1))
    assert none.churn_probability.std() > 0.05


def test_reasons_are_given_per_mode_and_point_at_risk_raising_groups(bundle, customers):
    all_reasons = score(bundle, customers, ReasonsFor.ALL)
    promoted = score(bundle, customers, ReasonsFor.PROMOTED)
    none = score(bundle, customers, ReasonsFor.NONE)
    assert not any(none.reasons)
    high = promoted.at_or_above_promotion
    assert high.any() and (~high).any()
    assert all(promoted.reasons[i] == all_reasons.reasons[i] for i in np.flatnonzero(high))
    assert not any(promoted.reasons[i] for i in np.flatnonzero(~high))
    risky = [r for r, h in zip(all_reasons.reasons, high, strict=True) if h]
    assert sum(bool(r) for r in risky) > 0.9 * len(risky)
    for reasons in all_reasons.reasons:
        assert all(r.contribution > 0 for r in reasons)
        assert [r.contribution for r in reasons] == sorted((r.contribution for r in reasons), reverse=True)
        assert all(r.group in bundle.explainer.groups for r in reasons)


def test_risk_tiers_follow_the_model_thresholds(bundle, customers):
    scored = score(bundle, customers, ReasonsFor.NONE)
    t = bundle.thresholds
    p = scored.churn_probability
    expected = np.where(p >= t.high, "high", np.where(p >= t.medium, "medium", "low"))
    assert scored.risk_tier.tolist() == expected.tolist()
    assert scored.model_version == bundle.version


def test_expected_value_policy_picks_the_best_paying_action_or_none():
    policy = PromotionPolicy(actions=(Action("small", cost=1, uplift=0.1), Action("call", 20, 0.5, 500)))
    value = np.array([5.0, 100.0, 1000.0, 1000.0])
    p = np.array([0.9, 0.9, 0.9, 0.01])
    best, ev = policy.best_actions(p, value)
    # 0.9*5*0.1-1 < 0 -> none; 100: only 'small' allowed; 1000: call (0.9*1000*0.5-20) beats small.
    assert best.tolist() == [-1, 0, 1, -1]
    assert ev[2] == pytest.approx(430.0)


def test_customer_value_is_spend_per_tenure_week_over_the_horizon_with_a_floor():
    policy = PromotionPolicy(value_horizon_weeks=39, min_customer_value=10)
    value = policy.customer_value(np.array([70.0, 0.0, np.nan]), np.array([70.0, 14.0, np.nan]))
    assert value.tolist() == [273.0, 10.0, 10.0]  # 70 spent over 10 weeks -> 7/week x 39


def test_messages_only_for_promoted_customers_with_positive_value_and_stable_keys(bundle, customers):
    scored = score(bundle, customers, ReasonsFor.PROMOTED)
    as_of = ["2024-09-30"] * len(scored.user_ids)
    messages = build_messages(
        scored, PromotionPolicy(), source="api", scored_at="2024-09-30T00:00:00Z", as_of=as_of
    )
    assert messages
    by_user = {u: i for i, u in enumerate(scored.user_ids)}
    for m in messages:
        i = by_user[m["user_id"]]
        assert m["schema"] == MESSAGE_SCHEMA
        assert scored.at_or_above_promotion[i] and m["expected_value"] > 0
        assert m["reasons"] and m["model_version"] == bundle.version and m["source"] == "api"
        assert m["idempotency_key"] == idempotency_key("api", m["user_id"], bundle.version, "2024-09-30")
    again = build_messages(scored, PromotionPolicy(), source="api", scored_at="later", as_of=as_of)
    assert [m["idempotency_key"] for m in again] == [m["idempotency_key"] for m in messages]


class FakeSqs:
    """Records SendMessageBatch calls; fails chosen entries on the first attempts."""

    def __init__(self, fail_ids_for_attempts=0, sender_fault_user=None, raise_first=False):
        self.calls = []
        self.fail_attempts = fail_ids_for_attempts
        self.sender_fault_user = sender_fault_user
        self.raise_first = raise_first

    def send_message_batch(self, QueueUrl, Entries):
        self.calls.append(Entries)
        if self.raise_first:
            self.raise_first = False
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="https://sqs.eu-west-1.amazonaws.com")
        failed, ok = [], []
        for e in Entries:
            body = pd.io.json.ujson_loads(e["MessageBody"])
            if body["user_id"] == self.sender_fault_user:
                failed.append(
                    {"Id": e["Id"], "SenderFault": True, "Code": "InvalidMessageContents", "Message": "bad"}
                )
            elif len(self.calls) <= self.fail_attempts and e["Id"] == "0":
                failed.append(
                    {"Id": e["Id"], "SenderFault": False, "Code": "ServiceUnavailable", "Message": "retry"}
                )
            else:
                ok.append({"Id": e["Id"], "MessageId": "m" + e["Id"]})
        return {"Successful": ok, "Failed": failed}


def messages(n):
    return [{"user_id": f"u{i}", "idempotency_key": f"k{i}"} for i in range(n)]


def test_publisher_sends_in_tens_and_retries_transient_failures():
    sqs = FakeSqs(fail_ids_for_attempts=1)
    result = SqsPromotionsPublisher(sqs, "q", sleep=lambda s: None).publish(messages(23))
    assert result.ok and result.sent == 23
    assert [len(c) for c in sqs.calls] == [10, 1, 10, 3]  # first entry of chunk 1 retried once


def test_publisher_reports_what_it_could_not_send_and_does_not_retry_sender_faults():
    sqs = FakeSqs(fail_ids_for_attempts=99, sender_fault_user="u5")
    result = SqsPromotionsPublisher(sqs, "q", max_attempts=3, sleep=lambda s: None).publish(messages(12))
    # Entry "0" of every chunk keeps failing transiently (u0, u10); u5 is a sender fault.
    assert result.sent == 9
    assert sorted(f["user_id"] for f in result.failed) == ["u0", "u10", "u5"]
    assert {f["code"] for f in result.failed} == {"ServiceUnavailable", "InvalidMessageContents"}
    assert sum(1 for c in sqs.calls for e in c if e["Id"] == "5" and len(c) == 10) == 1


def test_publisher_retries_a_chunk_after_a_transport_error():
    sqs = FakeSqs(raise_first=True)
    result = SqsPromotionsPublisher(sqs, "q", sleep=lambda s: None).publish(messages(4))
    assert result.ok and result.sent == 4 and len(sqs.calls) == 2


@pytest.mark.parametrize("error", ["ReadTimeoutError", "ConnectionClosedError"])
def test_publisher_reports_a_queue_that_times_out_or_resets_instead_of_raising(error):
    """These botocore errors carry ``response = None``: reading its error code raised AttributeError,
    which escaped the publisher (the API answered 500 with nothing reported)."""
    import botocore.exceptions

    class DeadSqs:
        calls = 0

        def send_message_batch(self, QueueUrl, Entries):
            self.calls += 1
            raise getattr(botocore.exceptions, error)(endpoint_url="http://127.0.0.1:9", error="injected")

    sqs = DeadSqs()
    result = SqsPromotionsPublisher(sqs, "q", max_attempts=3, sleep=lambda s: None).publish(messages(12))
    assert result.sent == 0 and sqs.calls == 6  # two chunks, three attempts each
    assert len(result.failed) == 12 and {f["code"] for f in result.failed} == {error}


def test_publisher_does_not_swallow_a_bug_as_a_retryable_queue_error():
    class BrokenSqs:
        def send_message_batch(self, QueueUrl, Entries):
            raise TypeError("a bug in our code, not an AWS failure")

    with pytest.raises(TypeError):
        SqsPromotionsPublisher(BrokenSqs(), "q", sleep=lambda s: None).publish(messages(2))


def test_every_function_client_has_timeouts_and_standard_retries_within_its_budget(monkeypatch):
    from churnguard import aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    from infra.template import load_template

    timeouts = {
        k: v["Properties"]["Timeout"]
        for k, v in load_template()["Resources"].items()
        if "Timeout" in v.get("Properties", {})
    }
    for budget, function in (
        (aws.API, "ScoreApiFunction"),
        (aws.BATCH, "BatchScoreFunction"),
        (aws.CONTROL, "RetrainFunction"),
        (aws.CONTROL, "PromoteFunction"),
    ):
        function_timeout_s = timeouts[function]
        config = budget.config()
        # What botocore makes of it: its ``max_attempts`` counts retries only (2 meant three calls).
        made = aws.client("sqs", budget).meta.config
        assert made.retries == {"mode": "standard", "total_max_attempts": budget.max_attempts}
        assert (made.connect_timeout, made.read_timeout) == (config.connect_timeout, config.read_timeout)
        worst_case = budget.max_attempts * (config.connect_timeout + config.read_timeout)
        assert worst_case < function_timeout_s


def test_profile_values_come_only_from_events_before_the_cutoff():
    """A profile value that changes after ``as_of`` (a loyalty tier earned later) is the future: the
    features at the cutoff must see the value the customer had then, or the label leaks in."""
    import pandas as pd

    from churnguard.tabular import customer_events

    events = pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "timestamp": pd.to_datetime(["2024-01-01", "2024-03-01", "2024-01-05"]),
            "event_type": ["order"] * 3,
            "amount": [1.0, 2.0, 3.0],
            "quantity": [1.0, 1.0, 1.0],
            "tier": ["basic", "gold", None],
        }
    )
    at_cutoff = customer_events(events, profile_columns=("tier",), as_of="2024-02-01")
    assert list(at_cutoff.profile["tier"]) == ["basic", None]
    later = customer_events(events, profile_columns=("tier",))
    assert list(later.profile["tier"]) == ["gold", None]
