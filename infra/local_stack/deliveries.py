"""How events reach the in-process functions, the way Lambda's own pollers deliver them in the cloud:
the scoring-jobs queue -> ``batch_score`` (SQS event source mapping), an EventBridge rule's queue ->
``promote`` (asynchronous invocation with the event itself)."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from infra.lambda_harness import LambdaContext
from infra.local_aws import REGION

BATCH_TIMEOUT_S = 900  # BatchScoreFunction's Timeout in template.yaml
EVENT_RULE_TIMEOUT_S = 300  # PromoteFunction's Timeout in template.yaml


class QueuePoller(threading.Thread):
    """A daemon thread that long-polls one queue until stopped and hands each batch to ``deliver``."""

    def __init__(
        self, sqs: Any, queue_url: str, name: str, max_messages: int = 1, **receive_args: Any
    ) -> None:
        super().__init__(daemon=True, name=name)
        self._sqs, self._queue_url, self._receive_args = sqs, queue_url, receive_args
        self._max_messages = max_messages
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                got = self._sqs.receive_message(
                    QueueUrl=self._queue_url,
                    MaxNumberOfMessages=self._max_messages,
                    WaitTimeSeconds=1,
                    **self._receive_args,
                )
            except Exception:  # the server is going away
                if self._stopping.is_set():
                    return
                raise
            messages = got.get("Messages", [])
            if messages:
                self.deliver(messages)

    def deliver(self, messages: list[dict[str, Any]]) -> None:
        # each poller (scoring jobs, event rules) says what a delivery is; the base only polls
        raise NotImplementedError

    def delete(self, message: dict[str, Any]) -> None:
        self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])

    def stop(self) -> None:
        self._stopping.set()


class SqsEventSourceDelivery(QueuePoller):
    """Lambda's SQS event source mapping: poll, invoke with an SQS event, delete what succeeded.
    By default the scoring-jobs queue -> ``BatchScoreFunction`` (one message per invocation)."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        handler_module: Any,
        *,
        function: str = "BatchScoreFunction",
        timeout_s: float = BATCH_TIMEOUT_S,
        batch_size: int = 1,
    ) -> None:
        super().__init__(sqs, queue_url, f"sqs-{function}", max_messages=batch_size, AttributeNames=["All"])
        self._queue_arn = queue_arn
        self._handler = handler_module
        self._function, self._timeout_s = function, timeout_s
        self.invocations = 0

    def deliver(self, messages: list[dict[str, Any]]) -> None:
        self.invocations += 1
        try:
            result = self._handler.lambda_handler(
                self.sqs_event(messages), LambdaContext(self._function, timeout_s=self._timeout_s)
            )
        except Exception as exc:  # like Lambda: a failed invocation leaves the whole batch on the queue
            print(f"{self._function} invocation failed: {type(exc).__name__}", file=sys.stderr, flush=True)
            return
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        for m in messages:
            if m["MessageId"] not in failed:
                self.delete(m)

    def sqs_event(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The event Lambda's SQS poller invokes the function with."""
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m.get("Attributes", {}),
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self._queue_arn,
                    "awsRegion": REGION,
                }
                for m in messages
            ]
        }


class EventRuleDelivery(QueuePoller):
    """EventBridge rule -> Lambda (async): each matched event is one invocation with the event itself."""

    def __init__(self, sqs: Any, queue_url: str, handler_module: Any, function_name: str) -> None:
        super().__init__(sqs, queue_url, f"events-{function_name}")
        self._handler, self._name = handler_module, function_name
        self.results: list[dict[str, Any]] = []

    def deliver(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            event = json.loads(message["Body"])
            try:
                self.results.append(
                    self._handler.lambda_handler(
                        event, LambdaContext(self._name, timeout_s=EVENT_RULE_TIMEOUT_S)
                    )
                )
            except Exception as exc:  # async invocation: logged, not retried locally
                print(
                    f"{self._name} failed on {event.get('detail-type')}: {exc!r}", file=sys.stderr, flush=True
                )
            self.delete(message)
