"""No duplicate promotions: re-delivered S3 events and retried API requests (DynamoDB via moto server)."""

import json

import pytest

from tests.helpers import ROOT, FakeLambdaContext, load_event, load_handler
from tests.integration.test_batch_score import BUCKET, drain, events_file, put

TABLE = "churnguard-idempotency"


@pytest.fixture
def env(aws, monkeypatch):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    queue_url = aws["sqs"].create_queue(QueueName="churnguard-promotions")["QueueUrl"]
    aws["dynamodb"].create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
    )
    aws["dynamodb"].update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
    )
    monkeypatch.setenv("CHURNGUARD_MODEL_DIR", str(ROOT / "tests" / "fixtures" / "model"))
    monkeypatch.setenv("CHURNGUARD_PROMOTIONS_QUEUE_URL", queue_url)
    monkeypatch.setenv("CHURNGUARD_IDEMPOTENCY_TABLE", TABLE)
    return aws, queue_url


def test_a_redelivered_s3_event_sends_no_second_promotion(env):
    aws, queue_url = env
    handler = load_handler("batch_score")
    try:
        put(aws, events_file())
        event = load_event("batch_score/sqs_s3_put.json")
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
        first = drain(aws, queue_url)
        assert first
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
        assert drain(aws, queue_url) == []
        # A new upload of the same key (new eTag) is new data and is scored again.
        event["Records"][0]["body"] = event["Records"][0]["body"].replace(
            "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
        )
        handler.lambda_handler(event, FakeLambdaContext())
        assert len(drain(aws, queue_url)) == len(first)
    finally:
        handler.runtime.cache_clear()


def test_a_retried_api_request_sends_no_second_promotion_and_answers_the_same(env):
    aws, queue_url = env
    api = load_handler("score_api")
    try:
        event = load_event("score_api/post_scores.json")
        body = json.loads(event["body"])
        # a customer who certainly qualifies: long lapsed, high spend
        body["customers"] = [
            {
                "user_id": "vip",
                "as_of": "2024-09-30",
                "events": [
                    {"timestamp": f"2024-0{m}-01", "event_type": "order", "amount": 400, "quantity": 2}
                    for m in (1, 2, 3)
                ],
            }
        ]
        event["body"] = json.dumps(body)
        first = json.loads(api.lambda_handler(event, FakeLambdaContext())["body"])
        assert first["customers"][0]["queued"] is True
        assert len(drain(aws, queue_url)) == 1
        again = json.loads(api.lambda_handler(event, FakeLambdaContext())["body"])
        assert again["customers"] == first["customers"]
        assert drain(aws, queue_url) == []
    finally:
        api.runtime.cache_clear()


def test_what_idempotency_stores_per_file_is_small_whatever_the_summary_holds(env):
    """A 1 MB header line is quoted in the summary's error (in S3, for the owner); the idempotency
    record stored the whole summary and broke DynamoDB's 400 KB item limit after the side effects."""
    aws, _ = env
    handler = load_handler("batch_score")
    try:
        put(aws, None, body=b"x" * 1_000_000 + b"\n1,2,3\n")
        event = load_event("batch_score/sqs_s3_put.json")
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
        summary = aws["s3"].get_object(Bucket=BUCKET, Key="scored/2024/démo events+v1.summary.json")
        assert summary["ContentLength"] > 1_000_000 and b"missing required column" in summary["Body"].read()
        items = aws["dynamodb"].scan(TableName=TABLE)["Items"]
        assert len(items) == 1 and items[0]["status"]["S"] == "COMPLETED"
        assert len(json.dumps(items[0])) < 4_000
        stored = json.loads(items[0]["data"]["S"])
        assert stored["status"] == "failed" and stored["error_type"] == "EventLogError"
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}  # replayed
    finally:
        handler.runtime.cache_clear()
