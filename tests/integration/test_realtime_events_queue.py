"""Real-time events by queue through lambda_handler with the real wiring (settings from the
environment, the state table and the dead-letter queue on moto's server over HTTP): applied
messages are stored, a message that can never be applied is parked at once with its reason, a
transient failure is reported for redelivery, and nothing of a customer reaches the logs."""

from __future__ import annotations

import logging

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from tests.helpers import FIXTURE_MODEL, FakeLambdaContext, load_event, load_handler
from tests.integration.conftest import STATE_TABLE as TABLE


@pytest.fixture
def events_function(aws, state_table, monkeypatch):
    dlq = aws["sqs"].create_queue(QueueName="realtime-events-dlq")["QueueUrl"]
    for name, value in {
        "CHURNGUARD_MODEL_DIR": str(FIXTURE_MODEL),
        "CHURNGUARD_STATE_TABLE": TABLE,
        "CHURNGUARD_EVENTS_DLQ_URL": dlq,
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", raising=False)
    monkeypatch.delenv("CHURNGUARD_IDEMPOTENCY_TABLE", raising=False)
    module = load_handler("realtime_events")
    yield module, dlq
    module.runtime.cache_clear()


def test_a_batch_stores_the_good_messages_parks_the_refused_one_with_its_reason_and_logs_no_customer(
    events_function, aws, capsys, caplog
):
    handler, dlq = events_function
    for name in (
        "churnguard-realtime-events",
        "aws_lambda_powertools",
    ):  # ours and Powertools' (not botocore's)
        caplog.set_level(logging.DEBUG, logger=name)
    event = load_event("realtime_events/sqs_events.json")
    assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
    stored = {i["user_id"]["S"] for i in aws["dynamodb"].scan(TableName=TABLE)["Items"]}
    assert stored == {"c-1001", "c-1002"}
    (parked,) = aws["sqs"].receive_message(QueueUrl=dlq, MessageAttributeNames=["All"])["Messages"]
    refused = event["Records"][2]
    assert parked["Body"] == refused["body"]  # as it came, for a fix and a resend
    attributes = parked["MessageAttributes"]
    assert attributes["original_message_id"]["StringValue"] == refused["messageId"]
    assert "events[0].event_type" in attributes["reason"]["StringValue"]

    again = handler.lambda_handler(event, FakeLambdaContext())  # the whole batch delivered again
    assert again == {"batchItemFailures": []}
    logs = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert "event message refused" in logs
    assert not any(user in logs for user in ("c-1001", "c-1002", "c-1003", "o-9001", "teleport"))


def test_messages_whose_state_store_fails_are_delivered_again_and_a_refused_one_still_parked(
    events_function, aws
):
    handler, _ = events_function
    aws["dynamodb"].delete_table(TableName=TABLE)  # every read fails: nothing can be applied now
    event = load_event("realtime_events/sqs_events.json")
    event["Records"] = event["Records"][:2]
    with pytest.raises(BatchProcessingError):  # every message failed: Lambda redelivers the batch
        handler.lambda_handler(event, FakeLambdaContext())
    event["Records"].append(load_event("realtime_events/sqs_events.json")["Records"][2])  # one parked
    failures = handler.lambda_handler(event, FakeLambdaContext())["batchItemFailures"]
    assert {f["itemIdentifier"] for f in failures} == {r["messageId"] for r in event["Records"][:2]}


def test_a_batch_delivered_with_too_little_time_left_is_left_whole_for_the_next_delivery(
    events_function, aws
):
    handler, _ = events_function
    event = load_event("realtime_events/sqs_events.json")
    with pytest.raises(BatchProcessingError):  # not one message started: the batch comes back
        handler.lambda_handler(event, FakeLambdaContext(timeout_s=15))
    assert aws["dynamodb"].scan(TableName=TABLE)["Items"] == []
