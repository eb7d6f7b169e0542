"""The local stack's SQS -> Lambda delivery behaves like the event source mapping when a handler raises."""

import time

from infra.local_stack import SqsEventSourceDelivery


class FakeSqs:
    def __init__(self, bodies):
        self.waiting = [
            {"MessageId": str(i), "ReceiptHandle": f"r{i}", "Body": b, "MD5OfBody": ""}
            for i, b in enumerate(bodies)
        ]
        self.deleted = []

    def receive_message(self, **_):
        return {"Messages": [self.waiting.pop(0)]} if self.waiting else {}

    def delete_message(self, QueueUrl, ReceiptHandle):
        self.deleted.append(ReceiptHandle)


class RaisesOnFirstFile:
    def __init__(self):
        self.calls = 0

    def lambda_handler(self, event, context):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the handler")
        return {"batchItemFailures": []}


def test_a_handler_that_raises_leaves_its_message_and_later_drops_still_flow():
    sqs, handler = FakeSqs(["first", "second"]), RaisesOnFirstFile()
    delivery = SqsEventSourceDelivery(sqs, "q", "arn:aws:sqs:eu-west-1:0:q", handler)
    delivery.start()
    deadline = time.time() + 10
    while handler.calls < 2 and time.time() < deadline:
        time.sleep(0.05)
    delivery.stop()
    delivery.join(timeout=5)
    assert handler.calls == 2 and delivery.is_alive() is False
    assert sqs.deleted == ["r1"]  # the failed message stays (visibility timeout -> retry -> DLQ)
