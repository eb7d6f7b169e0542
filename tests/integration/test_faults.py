"""The promotions fault matrix: exactly once, or visibly parked — with counts.

Faults are injected at the HTTP level (``tests.faults.FaultProxy`` between the functions and the moto
server): the SQS promotions queue throttled, timing out, resetting connections or losing an answer;
DynamoDB (idempotency records, sent ledger) failing before and after the sends; S3 failing while the
outputs are written; the batch function killed mid-batch (a child process, SIGKILL); the same S3
event delivered twice at once. After the faults and the redeliveries they cause, every test counts:
promotions on the queue per eligible customer, rows in = rows used + rows rejected, complete outputs.

The eligible customers are computed without AWS (the domain code with a recording publisher), and a
fault-free run checks that the function sends exactly those. Already covered in test_idempotency.py
(not repeated): queue deleted then restored (API and batch), one SQS entry failing once.

Where a duplicate cannot be avoided with an SQS standard queue and a separate ledger (the answer of an
accepted SendMessageBatch is lost; the process dies or the ledger fails between SQS accepting a chunk
and the ledger write), the tests pin the bound: that one chunk of ten, nothing else.
"""

from __future__ import annotations

import inspect
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest

from churnguard import aws as aws_clients
from churnguard.promotions import PromotionPolicy, SqsPromotionsPublisher
from tests.faults import (
    DROP,
    ERROR,
    HOLD,
    LOSE_ANSWER,
    UNPROCESSED,
    FaultProxy,
    dynamodb,
    operation,
    result_of,
    s3_put,
    start_batch_handler,
)
from tests.helpers import PLANTED, ROOT, FakeLambdaContext, load_event, load_handler
from tests.integration.test_batch_score import BUCKET, KEY, drain, events_file, put, read
from tests.integration.test_idempotency import TABLE, _vip_request, env  # noqa: F401 (env: fixture)

SCORED = "scored/démo events+v1.parquet"
REJECTED = "rejected/démo events+v1.csv"
SUMMARY = "scored/démo events+v1.summary.json"
EVENT = load_event("batch_score/sqs_s3_put.json")
MESSAGE_ID = EVENT["Records"][0]["messageId"]
FAILED = [MESSAGE_ID]  # the record reported as a batch item failure: SQS redelivers it, then the DLQ
CHUNK = SqsPromotionsPublisher.BATCH  # promotions per SendMessageBatch
PUBLISH_ATTEMPTS = inspect.signature(SqsPromotionsPublisher).parameters["max_attempts"].default
VIPS = {"vip-0", "vip-1", "vip-2"}  # the API request's customers: all eligible
CHILD_DEADLINE_S = 2.0  # the killed instance's Lambda context: its invocation ends this long after it began


@dataclass
class Stack:
    aws: dict[str, Any]  # clients straight to moto (the test's view; never faulted)
    queue_url: str
    proxy: FaultProxy  # what the functions talk to


@pytest.fixture
def stack(env, moto_server, monkeypatch):  # noqa: F811 (the imported fixture)
    aws, queue_url = env  # bucket, promotions queue, idempotency table and settings, as without faults
    # botocore backs off 1 s x 2^n (jittered) after a throttling answer; scaled down 50x so a queue
    # throttled past every retry fails within seconds. Retry counts and logic are unchanged.
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.02)
    with FaultProxy(moto_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield Stack(aws, queue_url, proxy)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return events_file()  # 400 synthetic customers (397 valid), 3 bad rows (data rows 11-13)


@pytest.fixture(scope="module")
def eligible(frame) -> set[str]:
    """The customers the policy promotes in this file, computed without AWS."""
    from churnguard.batch import score_file
    from churnguard.bundle import ModelBundle
    from tests.unit.fakes import RecordingPublisher

    recorder = RecordingPublisher()
    score_file(
        frame.to_csv(index=False).encode(),
        KEY,
        ModelBundle.from_directory(ROOT / "tests" / "fixtures" / "model"),
        as_of="2024-09-30",
        policy=PromotionPolicy(),
        publisher=recorder,
        source=f"s3://{BUCKET}/{KEY}",
    )
    users = {m["user_id"] for m in recorder.messages}
    assert len(users) == len(recorder.messages) > 5 * CHUNK  # several SendMessageBatch calls
    return users


@pytest.fixture
def batch(stack, frame):
    put(stack.aws, frame)
    handler = load_handler("batch_score")
    yield handler
    handler.runtime.cache_clear()


@pytest.fixture
def api(stack):
    handler = load_handler("score_api")
    yield handler
    handler.runtime.cache_clear()


@pytest.fixture
def short_sqs_timeouts(monkeypatch):
    """SQS clients that time out after 1 s and do not retry themselves (the publisher's own attempts
    remain): a timed-out chunk fails in ~3 s instead of 5 x 60 s. Other clients keep their budget."""
    real = aws_clients.client
    budget = aws_clients.ClientBudget(connect_timeout_s=1.0, read_timeout_s=1.0, max_attempts=1)
    monkeypatch.setattr(
        aws_clients, "client", lambda service, b: real(service, budget if service == "sqs" else b)
    )


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def deliver(handler, context=None) -> list[str]:
    """One SQS delivery of the S3 event: the message ids reported as batch item failures."""
    response = handler.lambda_handler(
        load_event("batch_score/sqs_s3_put.json"), context or FakeLambdaContext()
    )
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def promoted(stack: Stack) -> list[str]:
    """User ids of the promotions on the queue since the last call (drained)."""
    return [m["user_id"] for m in drain(stack.aws, stack.queue_url)]


def assert_each_once(sent: list[str], eligible: set[str]) -> None:
    counts = Counter(sent)
    assert set(counts) == eligible, (
        f"missing {sorted(eligible - set(counts))[:5]}, unexpected {sorted(set(counts) - eligible)[:5]}"
    )
    assert {u: n for u, n in counts.items() if n != 1} == {}, "duplicates"
    assert len(sent) == len(eligible)


def outputs(stack: Stack) -> set[str]:
    listed = stack.aws["s3"].list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"] for o in listed if not o["Key"].startswith("incoming/")}


def assert_outputs_complete(stack: Stack, frame: pd.DataFrame, eligible: set[str]) -> None:
    """Every row accounted for, every valid customer scored once, every promotion counted as sent."""
    summary = json.loads(read(stack.aws, SUMMARY))
    assert summary["status"] == "ok" and summary["promotion_failures"] == []
    assert summary["rows_in"] == len(frame) == summary["rows_used"] + summary["rows_rejected"]
    rejected = pd.read_csv(io.BytesIO(read(stack.aws, REJECTED)))
    assert rejected["source_row"].tolist() == [11, 12, 13] and summary["rows_rejected"] == 3
    scored = pd.read_parquet(io.BytesIO(read(stack.aws, SCORED)))
    valid = set(frame["user_id"]) - {f"{PLANTED}-bad-{n}" for n in (1, 2, 3)}
    assert scored["user_id"].is_unique and set(scored["user_id"]) == valid
    assert summary["customers_scored"] == len(valid) == 397
    assert summary["customers_queued"] == len(eligible)


def idempotency_records(stack: Stack) -> list[dict[str, Any]]:
    items = stack.aws["dynamodb"].scan(TableName=TABLE)["Items"]
    return [i for i in items if not i["id"]["S"].startswith("promotion#")]


def ledger_size(stack: Stack) -> int:
    items = stack.aws["dynamodb"].scan(TableName=TABLE)["Items"]
    return sum(i["id"]["S"].startswith("promotion#") for i in items)


def end_in_progress(stack: Stack) -> int:
    """The interrupted invocation's deadline passes: its IN_PROGRESS record's expiry (its Lambda
    context's deadline) is moved to the past, as the clock would; returns how many were moved."""
    moved = 0
    for item in idempotency_records(stack):
        if item["status"]["S"] == "INPROGRESS":
            stack.aws["dynamodb"].update_item(
                TableName=TABLE,
                Key={"id": item["id"]},
                UpdateExpression="SET in_progress_expiration = :past",
                ExpressionAttributeValues={":past": {"N": str(int(time.time() * 1000) - 1)}},
            )
            moved += 1
    return moved


def wait_past_in_progress_expiry(stack: Stack, within_s: float) -> None:
    """The killed invocation's record is IN_PROGRESS until its deadline (no later than ``within_s``
    from now), not forever: sleep until then."""
    (record,) = idempotency_records(stack)
    assert record["status"]["S"] == "INPROGRESS"
    expires_s = int(record["in_progress_expiration"]["N"]) / 1000
    assert expires_s - time.time() <= within_s
    time.sleep(max(0.0, expires_s - time.time()) + 0.05)


def api_call(api, customers: int = 3) -> tuple[int, dict[str, Any]]:
    response = api.lambda_handler(_vip_request(customers), FakeLambdaContext())
    return response["statusCode"], json.loads(response["body"])


# ---------------------------------------------------------------------------------------------
# baseline and transient faults the clients absorb
# ---------------------------------------------------------------------------------------------


def test_batch_without_faults_sends_each_eligible_customer_one_promotion(stack, batch, frame, eligible):
    assert deliver(batch) == []
    assert_each_once(promoted(stack), eligible)
    assert_outputs_complete(stack, frame, eligible)
    assert ledger_size(stack) == len(eligible)
    assert stack.proxy.count("SendMessageBatch") == -(-len(eligible) // CHUNK)


@pytest.mark.parametrize(
    ("match", "status", "code"),
    [
        (operation("SendMessageBatch"), 400, "RequestThrottled"),
        (dynamodb(), 400, "ProvisionedThroughputExceededException"),
        (s3_put(""), 503, "SlowDown"),
    ],
    ids=["sqs-throttled", "dynamodb-throttled", "s3-slowdown"],
)
def test_batch_throttling_within_the_client_retries_is_absorbed_in_one_delivery(
    stack, batch, frame, eligible, match, status, code
):
    fault = stack.proxy.inject(match, ERROR, status=status, code=code, times=3)
    assert deliver(batch) == []
    assert fault.hits == 3
    assert_each_once(promoted(stack), eligible)
    assert_outputs_complete(stack, frame, eligible)


def test_batch_ledger_answered_unprocessed_for_a_moment_is_retried_with_backoff(
    stack, batch, frame, eligible
):
    """DynamoDB throttles a batch call by handing items back as unprocessed; retried at once, five
    times in a few milliseconds, the ledger write gave up after the promotions were sent, and the
    redelivery sent them again."""
    write = stack.proxy.inject(operation("BatchWriteItem"), UNPROCESSED, for_s=0.25)
    read_ = stack.proxy.inject(operation("BatchGetItem"), UNPROCESSED, for_s=0.25)
    assert deliver(batch) == []
    assert write.hits >= 2 and read_.hits >= 2
    assert_each_once(promoted(stack), eligible)
    assert ledger_size(stack) == len(eligible)
    assert_outputs_complete(stack, frame, eligible)


# ---------------------------------------------------------------------------------------------
# the promotions queue failing past every retry: the record fails, the redelivery sends the rest
# ---------------------------------------------------------------------------------------------

SQS_FAULTS = [
    pytest.param(
        {"action": ERROR, "status": 400, "code": "RequestThrottled"}, "RequestThrottled", id="throttled"
    ),
    pytest.param({"action": DROP, "wait_s": 3.0}, "ReadTimeoutError", id="timing-out"),
    pytest.param({"action": DROP, "wait_s": 0.0}, "ConnectionClosedError", id="connection-reset"),
]


@pytest.mark.usefixtures("short_sqs_timeouts")
@pytest.mark.parametrize(("fault", "code"), SQS_FAULTS)
def test_batch_queue_failing_past_every_retry_fails_the_record_and_the_redelivery_sends_each_once(
    stack, batch, frame, eligible, fault, code
):
    """The second SendMessageBatch chunk fails every attempt; the other chunks go out."""
    stack.proxy.inject(operation("SendMessageBatch"), skip=1, times=PUBLISH_ATTEMPTS, **fault)
    assert deliver(batch) == FAILED
    first = promoted(stack)
    assert len(first) == len(set(first)) == len(eligible) - CHUNK
    summary = json.loads(read(stack.aws, SUMMARY))  # visible: the failures are in the summary
    assert summary["customers_queued"] == len(first)
    assert {f["code"] for f in summary["promotion_failures"]} == {code}
    assert {f["user_id"] for f in summary["promotion_failures"]} == eligible - set(first)

    assert deliver(batch) == []  # SQS redelivery
    again = promoted(stack)
    assert len(again) == CHUNK
    assert_each_once(first + again, eligible)
    assert_outputs_complete(stack, frame, eligible)
    assert deliver(batch) == [] and promoted(stack) == []  # done: a further delivery sends nothing


@pytest.mark.usefixtures("short_sqs_timeouts")
@pytest.mark.parametrize(("fault", "code"), SQS_FAULTS)
def test_api_queue_failing_past_every_retry_reports_failures_and_the_retry_sends_each_once(
    stack, api, fault, code
):
    stack.proxy.inject(operation("SendMessageBatch"), **fault)
    status, first = api_call(api)
    assert status == 200 and first["promotion_failures"] == 3
    assert not any(c["queued"] for c in first["customers"])
    assert promoted(stack) == []
    assert stack.proxy.count("SendMessageBatch") == PUBLISH_ATTEMPTS
    stack.proxy.heal()

    status, retried = api_call(api)  # the client's retry of the same request
    assert status == 200 and retried["promotion_failures"] == 0
    assert all(c["queued"] for c in retried["customers"])
    assert_each_once(promoted(stack), VIPS)
    assert api_call(api)[0] == 200 and promoted(stack) == []


@pytest.mark.usefixtures("short_sqs_timeouts")
def test_batch_queue_answer_lost_after_it_accepted_repeats_only_that_chunk(stack, batch, frame, eligible):
    """At least once, within a bound: SQS accepted the first chunk but its answer never arrived, so
    the client timed out and the publisher sent the chunk again. A standard queue cannot tell (a FIFO
    queue's MessageDeduplicationId or the consumer deduplicating on idempotency_key could)."""
    stack.proxy.inject(operation("SendMessageBatch"), LOSE_ANSWER, times=1, wait_s=3.0)
    assert deliver(batch) == []
    counts = Counter(promoted(stack))
    assert set(counts) == eligible
    assert sorted(Counter(counts.values()).items()) == [(1, len(eligible) - CHUNK), (2, CHUNK)]
    assert_outputs_complete(stack, frame, eligible)


# ---------------------------------------------------------------------------------------------
# DynamoDB failing
# ---------------------------------------------------------------------------------------------

DYNAMODB_DOWN = [
    pytest.param(dynamodb(), 500, "InternalServerError", id="all-calls-500"),
    pytest.param(dynamodb(), 400, "ProvisionedThroughputExceededException", id="all-calls-throttled"),
    pytest.param(operation("BatchGetItem"), 500, "InternalServerError", id="ledger-read-500"),
]


@pytest.mark.parametrize(("match", "status", "code"), DYNAMODB_DOWN)
def test_batch_dynamodb_failing_before_the_sends_sends_nothing_and_the_redelivery_sends_each_once(
    stack, batch, frame, eligible, match, status, code
):
    stack.proxy.inject(match, ERROR, status=status, code=code)
    assert deliver(batch) == FAILED
    assert promoted(stack) == []  # nothing goes out that could not be recorded
    assert outputs(stack) == set()
    assert idempotency_records(stack) == []  # nothing remembered as done (or in progress)
    stack.proxy.heal()

    assert deliver(batch) == []
    assert_each_once(promoted(stack), eligible)
    assert_outputs_complete(stack, frame, eligible)


@pytest.mark.parametrize(("match", "status", "code"), DYNAMODB_DOWN)
def test_api_dynamodb_failing_before_the_sends_answers_500_and_the_retry_sends_each_once(
    stack, api, match, status, code
):
    stack.proxy.inject(match, ERROR, status=status, code=code)
    status_code, body = api_call(api)
    assert status_code == 500 and body["message"] == "internal error"
    assert promoted(stack) == []
    stack.proxy.heal()
    status_code, body = api_call(api)
    assert status_code == 200 and all(c["queued"] for c in body["customers"])
    assert_each_once(promoted(stack), VIPS)


@pytest.mark.parametrize(
    "everything_after",
    [False, True],
    ids=["ledger-write-500", "all-dynamodb-500-from-the-ledger-write-on"],
)
def test_batch_ledger_write_failing_after_a_send_repeats_only_that_chunk(
    stack, batch, frame, eligible, everything_after
):
    """The sends stop at the first chunk the ledger could not record; the redelivery repeats that
    chunk (SQS took it; nothing says so) and sends every other promotion once. The ledger used to be
    written after all of a file's sends, so the redelivery repeated every promotion."""
    if everything_after:  # DynamoDB goes down once the sends began: the record cannot even be deleted
        calls_before = 2  # PutItem (IN_PROGRESS), BatchGetItem (ledger read)
        stack.proxy.inject(dynamodb(), ERROR, status=500, code="InternalServerError", skip=calls_before)
    else:
        stack.proxy.inject(operation("BatchWriteItem"), ERROR, status=500, code="InternalServerError")
    assert deliver(batch) == FAILED
    first = promoted(stack)
    assert len(first) == len(set(first)) == CHUNK
    assert outputs(stack) == set()
    stack.proxy.heal()
    assert end_in_progress(stack) == (1 if everything_after else 0)

    assert deliver(batch) == []
    again = promoted(stack)
    assert_each_once(again, eligible)
    assert sorted(Counter(Counter(first + again).values()).items()) == [
        (1, len(eligible) - CHUNK),
        (2, CHUNK),
    ]
    assert_outputs_complete(stack, frame, eligible)


def test_batch_idempotency_save_failing_after_the_sends_never_resends(stack, batch, frame, eligible):
    """Everything was sent and recorded in the ledger, but the record could not be marked done: it
    stays IN_PROGRESS until the invocation's deadline (a redelivery before it is refused), and the
    redelivery after it resends nothing."""
    stack.proxy.inject(operation("UpdateItem"), ERROR, status=500, code="InternalServerError")
    assert deliver(batch) == FAILED
    first = promoted(stack)
    assert_each_once(first, eligible)
    assert_outputs_complete(stack, frame, eligible)
    (record,) = idempotency_records(stack)
    assert record["status"]["S"] == "INPROGRESS"
    stack.proxy.heal()

    assert deliver(batch) == FAILED  # still within the first invocation's deadline: in progress
    assert promoted(stack) == []
    assert end_in_progress(stack) == 1
    assert deliver(batch) == []
    assert promoted(stack) == []
    assert_outputs_complete(stack, frame, eligible)
    assert [r["status"]["S"] for r in idempotency_records(stack)] == ["COMPLETED"]


def test_api_ledger_write_failing_after_the_send_answers_500_and_the_retry_repeats_only_that_chunk(
    stack, api
):
    stack.proxy.inject(operation("BatchWriteItem"), ERROR, status=500, code="InternalServerError")
    assert api_call(api)[0] == 500
    first = promoted(stack)
    assert sorted(first) == sorted(VIPS)  # one chunk: SQS took it, the ledger does not know
    stack.proxy.heal()
    status, body = api_call(api)
    assert status == 200 and all(c["queued"] for c in body["customers"])
    again = promoted(stack)
    assert_each_once(again, VIPS)  # that chunk again, once
    assert Counter(first + again) == dict.fromkeys(VIPS, 2)
    assert api_call(api)[0] == 200 and promoted(stack) == []


def test_api_idempotency_save_failing_after_the_send_never_resends(stack, api):
    stack.proxy.inject(operation("UpdateItem"), ERROR, status=500, code="InternalServerError")
    assert api_call(api)[0] == 500
    assert_each_once(promoted(stack), VIPS)
    stack.proxy.heal()
    assert api_call(api)[0] == 500  # in progress until the first invocation's deadline
    assert end_in_progress(stack) == 1
    status, body = api_call(api)
    assert status == 200 and all(c["queued"] for c in body["customers"])
    assert promoted(stack) == []


# ---------------------------------------------------------------------------------------------
# S3 failing while the outputs are written
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "fault", "written"),
    [
        (SUMMARY, {"action": ERROR, "status": 500, "code": "InternalError"}, {SCORED, REJECTED}),
        (REJECTED, {"action": DROP, "wait_s": 0.0}, {SCORED}),
        (SCORED, {"action": ERROR, "status": 503, "code": "SlowDown"}, set()),
    ],
    ids=["summary-put-500", "rejects-put-connection-reset", "scored-put-slowdown"],
)
def test_batch_s3_failing_mid_write_fails_the_record_and_the_redelivery_completes_the_outputs(
    stack, batch, frame, eligible, suffix, fault, written
):
    stack.proxy.inject(s3_put(suffix), **fault)
    assert deliver(batch) == FAILED
    assert outputs(stack) == written
    first = promoted(stack)
    assert_each_once(first, eligible)  # sent and recorded before the outputs
    stack.proxy.heal()

    assert deliver(batch) == []
    assert promoted(stack) == []  # the ledger knows them all
    assert outputs(stack) == {SCORED, REJECTED, SUMMARY}
    assert_outputs_complete(stack, frame, eligible)


# ---------------------------------------------------------------------------------------------
# the function killed mid-batch; the same event delivered twice at once
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("match", "skip", "repeated"),
    [(operation("SendMessageBatch"), 1, 0), (operation("BatchWriteItem"), 0, CHUNK)],
    ids=["killed-while-sending-the-second-chunk", "killed-between-a-send-and-its-ledger-write"],
)
def test_batch_process_killed_mid_batch_the_redelivery_sends_only_what_did_not_go_out(
    stack, batch, frame, eligible, match, skip, repeated
):
    """A Lambda instance dies (SIGKILL) with a call in flight; its record stays IN_PROGRESS until its
    deadline, after which SQS redelivers. Killed while sending the second chunk: every customer gets
    exactly one promotion. Killed after SQS took the first chunk but before the ledger recorded it:
    that chunk is repeated (the documented at-least-once window) and nothing else."""
    hold = stack.proxy.inject(match, HOLD, skip=skip, times=1)
    child = start_batch_handler(load_event("batch_score/sqs_s3_put.json"), deadline_s=CHILD_DEADLINE_S)
    try:
        stack.proxy.wait_for(hold.reached.is_set, timeout_s=60, what="the held call")
        first = promoted(stack)
        assert len(first) == len(set(first)) == CHUNK  # some promotions were sent: now kill it
        child.kill()
        child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=30)
    stack.proxy.heal()  # the held call is dropped: it never reached AWS
    assert outputs(stack) == set()

    wait_past_in_progress_expiry(stack, within_s=CHILD_DEADLINE_S)
    assert deliver(batch) == []
    again = promoted(stack)
    assert len(again) == len(eligible) - CHUNK + repeated
    counts = Counter(first + again)
    assert set(counts) == eligible
    assert sum(n - 1 for n in counts.values()) == repeated
    assert_outputs_complete(stack, frame, eligible)


def test_batch_the_same_event_delivered_twice_at_once_sends_each_promotion_once(
    stack, batch, frame, eligible
):
    """Two instances get the same S3 event together. The first send of whichever took the object is
    held until the other has tried to take it too: that one is refused (IN_PROGRESS) and reports its
    record as a batch item failure; its redelivery finds the object done."""
    hold = stack.proxy.inject(operation("SendMessageBatch"), HOLD, times=1, then_forward=True)
    event = load_event("batch_score/sqs_s3_put.json")
    children = [start_batch_handler(event, deadline_s=60.0) for _ in range(2)]
    try:
        stack.proxy.wait_for(
            lambda: hold.reached.is_set() and stack.proxy.count("PutItem", "forwarded") >= 2,
            timeout_s=60,
            what="both instances to try to take the object",
        )
        hold.release.set()
        results = [result_of(child) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.communicate(timeout=30)
    outcomes = sorted((r["batchItemFailures"], r["errors"]) for r in results)
    assert outcomes == [
        ([], []),
        ([{"itemIdentifier": MESSAGE_ID}], ["IdempotencyAlreadyInProgressError"]),
    ]
    assert_each_once(promoted(stack), eligible)
    assert_outputs_complete(stack, frame, eligible)

    assert deliver(batch) == []  # the refused one's redelivery: done already
    assert promoted(stack) == []
