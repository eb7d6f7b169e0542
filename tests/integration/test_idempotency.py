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


def _vip_request(customers: int = 3):
    """Customers who certainly qualify for a promotion: long lapsed, high spend."""
    event = load_event("score_api/post_scores.json")
    body = json.loads(event["body"])
    body["customers"] = [
        {
            "user_id": f"vip-{i}",
            "as_of": "2024-09-30",
            "events": [
                {"timestamp": f"2024-0{m}-01", "event_type": "order", "amount": 400 + i, "quantity": 2}
                for m in (1, 2, 3)
            ],
        }
        for i in range(customers)
    ]
    event["body"] = json.dumps(body)
    return event


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
        # A new upload of the same key (new eTag) is scored again; the same customers assessed for the
        # same as-of day by the same model are the same promotions (their idempotency keys), so the
        # ledger sends none of them twice.
        event["Records"][0]["body"] = event["Records"][0]["body"].replace(
            "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
        )
        aws["s3"].delete_object(Bucket=BUCKET, Key="scored/démo events+v1.summary.json")
        handler.lambda_handler(event, FakeLambdaContext())
        rescored = json.loads(
            aws["s3"].get_object(Bucket=BUCKET, Key="scored/démo events+v1.summary.json")["Body"].read()
        )
        assert rescored["customers_queued"] == len(first) and drain(aws, queue_url) == []
        # The next assessment (a later as-of) is new: its promotions go out.
        put(aws, events_file(), as_of="2024-10-07")
        event["Records"][0]["body"] = event["Records"][0]["body"].replace(
            "fedcba9876543210fedcba9876543210", "00000000000000000000000000000001"
        )
        handler.lambda_handler(event, FakeLambdaContext())
        later = drain(aws, queue_url)
        assert later and {m["as_of"] for m in later} == {"2024-10-07"}
    finally:
        handler.runtime.cache_clear()


def test_a_retried_api_request_sends_no_second_promotion_and_answers_the_same(env):
    aws, queue_url = env
    api = load_handler("score_api")
    try:
        event = _vip_request(1)
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
        summary = aws["s3"].get_object(Bucket=BUCKET, Key="scored/démo events+v1.summary.json")
        assert summary["ContentLength"] > 1_000_000 and b"missing required column" in summary["Body"].read()
        items = aws["dynamodb"].scan(TableName=TABLE)["Items"]
        assert len(items) == 1 and items[0]["status"]["S"] == "COMPLETED"
        assert len(json.dumps(items[0])) < 4_000
        stored = json.loads(items[0]["data"]["S"])
        assert stored["status"] == "failed" and stored["error_type"] == "EventLogError"
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}  # replayed
    finally:
        handler.runtime.cache_clear()


def test_api_promotions_that_failed_are_sent_by_the_retry_exactly_once(env):
    """The queue is gone: the answer reports the failures and the failed publish is not remembered
    as done (it was cached for 7 days, so the retry sent nothing); once the queue is back the retry
    sends every promotion once, and a further retry sends none."""
    aws, queue_url = env
    aws["sqs"].delete_queue(QueueUrl=queue_url)
    api = load_handler("score_api")
    try:
        first = json.loads(api.lambda_handler(_vip_request(), FakeLambdaContext())["body"])
        assert first["promotion_failures"] == 3 and not any(c["queued"] for c in first["customers"])
        assert aws["sqs"].create_queue(QueueName="churnguard-promotions")["QueueUrl"] == queue_url
        retried = json.loads(api.lambda_handler(_vip_request(), FakeLambdaContext())["body"])
        assert retried["promotion_failures"] == 0 and all(c["queued"] for c in retried["customers"])
        assert sorted(m["user_id"] for m in drain(aws, queue_url)) == ["vip-0", "vip-1", "vip-2"]
        api.lambda_handler(_vip_request(), FakeLambdaContext())
        assert drain(aws, queue_url) == []
    finally:
        api.runtime.cache_clear()


def test_api_a_partial_failure_resends_only_what_did_not_go_out(env):
    aws, queue_url = env
    api = load_handler("score_api")
    try:
        inner = api.SqsPromotionsPublisher  # the real publisher class over moto, one entry failing once
        original = inner.publish

        def fail_vip_1_once(self, messages):
            result = original(self, [m for m in messages if m["user_id"] != "vip-1"])
            if any(m["user_id"] == "vip-1" for m in messages):
                message = next(m for m in messages if m["user_id"] == "vip-1")
                result.failed.append(
                    {
                        "user_id": "vip-1",
                        "idempotency_key": message["idempotency_key"],
                        "code": "Throttled",
                        "message": "injected",
                    }
                )
            return result

        inner.publish = fail_vip_1_once
        try:
            first = json.loads(api.lambda_handler(_vip_request(), FakeLambdaContext())["body"])
        finally:
            inner.publish = original
        assert first["promotion_failures"] == 1
        assert sorted(m["user_id"] for m in drain(aws, queue_url)) == ["vip-0", "vip-2"]
        retried = json.loads(api.lambda_handler(_vip_request(), FakeLambdaContext())["body"])
        assert retried["promotion_failures"] == 0
        assert [m["user_id"] for m in drain(aws, queue_url)] == ["vip-1"]  # only the missing one
    finally:
        api.runtime.cache_clear()


def test_batch_promotions_that_failed_fail_the_record_and_the_redelivery_sends_them_once(env):
    aws, queue_url = env
    handler = load_handler("batch_score")
    try:
        put(aws, events_file())
        event = load_event("batch_score/sqs_s3_put.json")
        aws["sqs"].delete_queue(QueueUrl=queue_url)
        response = handler.lambda_handler(event, FakeLambdaContext())
        assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
        summary = json.loads(
            aws["s3"].get_object(Bucket=BUCKET, Key="scored/démo events+v1.summary.json")["Body"].read()
        )
        assert summary["customers_queued"] == 0 and len(summary["promotion_failures"]) > 0
        aws["sqs"].create_queue(QueueName="churnguard-promotions")
        assert handler.lambda_handler(event, FakeLambdaContext()) == {
            "batchItemFailures": []
        }  # SQS redelivery
        sent = drain(aws, queue_url)
        assert len(sent) == len(summary["promotion_failures"])
        assert len({m["user_id"] for m in sent}) == len(sent)
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
        assert drain(aws, queue_url) == []
    finally:
        handler.runtime.cache_clear()
