"""boto3 adapters of the ports in ``churnguard.ports``: translations of calls and answers, no logic.

Clients are typed with the ``mypy_boto3_*`` stubs, imported for type checking only: the Lambda
packages have no stubs, so nothing here imports them at run time (a unit test checks it). botocore's
exceptions pass through unchanged (see ``churnguard.ports``). The DynamoDB ledger of sent promotions
(``churnguard.idempotency.SentLedger``) is the adapter of ``PromotionLedger``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnguard.ports import (
    CustomerPage,
    CustomerRecord,
    ListedObject,
    ObjectInfo,
    ParameterVersion,
    QueueMessage,
    ReadableStream,
    RunningExecution,
    SendBatchResult,
    SendFailure,
    StateConflictError,
    StoredCustomer,
    new_record_version,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, ScanInputTypeDef
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_stepfunctions import SFNClient


DELETE_BATCH = 1_000
SECONDS_PER_DAY = 86_400


class S3ObjectStore:
    """``ObjectStore`` on S3."""

    def __init__(self, client: S3Client) -> None:
        self._client = client

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def get_range(self, bucket: str, key: str, start: int, stop: int) -> bytes:
        answer = self._client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{stop - 1}")
        return answer["Body"].read()

    def open(self, bucket: str, key: str) -> ReadableStream:
        return self._client.get_object(Bucket=bucket, Key=key)["Body"]

    def head(self, bucket: str, key: str) -> ObjectInfo:
        answer = self._client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(size=answer["ContentLength"], metadata=dict(answer.get("Metadata", {})))

    def list_objects(self, bucket: str, prefix: str) -> list[ListedObject]:
        listed: list[ListedObject] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            listed += [
                ListedObject(o["Key"], o["Size"], o["LastModified"], o.get("ETag", "").strip('"'))
                for o in page.get("Contents", [])
            ]
        return listed

    def copy(self, bucket: str, source_key: str, key: str) -> None:
        self._client.copy({"Bucket": bucket, "Key": source_key}, bucket, key)

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        from botocore.exceptions import ClientError

        for start in range(0, len(keys), DELETE_BATCH):  # DeleteObjects takes at most 1,000 keys
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            answer = self._client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):  # per-key refusals come in a 200 answer: raise them as AWS errors
                first = answer["Errors"][0]
                error = {"Code": first.get("Code", "DeleteFailed"), "Message": first.get("Message", "")}
                raise ClientError({"Error": error}, "DeleteObjects")  # type: ignore[typeddict-item]

    def put_bytes(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None:
        if content_type is None:
            self._client.put_object(Bucket=bucket, Key=key, Body=body)
        else:
            self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    def upload_file(
        self,
        path: str | Path,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        extra: dict[str, Any] = {}
        if content_type is not None:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        self._client.upload_file(str(path), bucket, key, ExtraArgs=extra or None)


class SsmParameterStore:
    """``ParameterStore`` on SSM Parameter Store (String parameters)."""

    def __init__(self, client: SSMClient) -> None:
        self._client = client

    def get(self, name: str) -> str:
        return self._client.get_parameter(Name=name)["Parameter"]["Value"]

    def put(self, name: str, value: str) -> None:
        self._client.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)

    def history(self, name: str) -> list[ParameterVersion]:
        versions: list[ParameterVersion] = []
        for page in self._client.get_paginator("get_parameter_history").paginate(Name=name):
            versions += [ParameterVersion(p["Version"], p["Value"]) for p in page["Parameters"]]
        return versions


class SqsMessageQueue:
    """``MessageQueue`` on one SQS queue: ``SendMessageBatch`` (at most 10 messages per call)."""

    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._client = client
        self._queue_url = queue_url

    def send_batch(self, messages: Sequence[QueueMessage]) -> SendBatchResult:
        entries: list[SendMessageBatchRequestEntryTypeDef] = [
            {
                "Id": m.id,
                "MessageBody": m.body,
                "MessageAttributes": {
                    name: {"DataType": "String", "StringValue": value} for name, value in m.attributes.items()
                },
            }
            for m in messages
        ]
        answer = self._client.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
        return SendBatchResult(
            sent=len(answer.get("Successful", [])),
            failed=[
                SendFailure(
                    id=f["Id"],
                    code=f.get("Code", ""),
                    message=f.get("Message", ""),
                    sender_fault=bool(f.get("SenderFault")),
                )
                for f in answer.get("Failed", [])
            ],
        )


class SqsDeadLetters:
    """``DeadLetters`` on an SQS queue: the message's body as it came, the reason and the original
    message id as message attributes."""

    def __init__(self, client: SQSClient, queue_url: str) -> None:
        self._client, self._queue_url = client, queue_url

    def park(self, body: str, *, reason: str, message_id: str) -> None:
        self._client.send_message(
            QueueUrl=self._queue_url,
            MessageBody=body,
            MessageAttributes={
                "reason": {"DataType": "String", "StringValue": reason[:1000]},
                "original_message_id": {"DataType": "String", "StringValue": message_id},
            },
        )


class StepFunctionsWorkflowStarter:
    """``WorkflowStarter`` on one Step Functions state machine: ``StartExecution`` with a name."""

    def __init__(self, client: SFNClient, state_machine_arn: str) -> None:
        self._client = client
        self._state_machine_arn = state_machine_arn

    def start(self, name: str, input: Mapping[str, Any]) -> bool:
        try:
            self._client.start_execution(
                stateMachineArn=self._state_machine_arn, name=name, input=json.dumps(dict(input))
            )
        except self._client.exceptions.ExecutionAlreadyExists:
            return False  # the port's answer for "already started", not an error (see WorkflowStarter)
        return True


class StepFunctionsRunningExecutions:
    """``RunningExecutions`` by ``ListExecutions`` (status RUNNING), every page."""

    def __init__(self, client: SFNClient) -> None:
        self._client = client

    def running(self, state_machine_arn: str) -> list[RunningExecution]:
        pages = self._client.get_paginator("list_executions").paginate(
            stateMachineArn=state_machine_arn, statusFilter="RUNNING"
        )
        return [
            RunningExecution(e["executionArn"], e["startDate"]) for page in pages for e in page["executions"]
        ]


class DynamoDbCustomerStateStore:
    """``CustomerStateStore`` on one DynamoDB table, one item per customer: key ``user_id`` (S),
    ``version`` (N, for conditional writes), ``state`` (B), ``last_event_s`` (N), the last score and
    warning state, and ``ttl`` (N, epoch seconds = last event + ``retention_days``) for DynamoDB TTL:
    a customer silent for longer than the retention period is removed by DynamoDB itself.

    User ids are data: nothing here logs them, and an error raised here never quotes one."""

    def __init__(self, client: DynamoDBClient, table: str, *, retention_days: float = 730.0) -> None:
        self._client, self._table, self._retention_s = client, table, retention_days * SECONDS_PER_DAY

    def get(self, user_id: str) -> tuple[CustomerRecord | None, int]:
        answer = self._client.get_item(TableName=self._table, Key=_key(user_id), ConsistentRead=True)
        item = answer.get("Item")
        return (None, 0) if item is None else (_record(item), int(item["version"]["N"]))

    def put(self, user_id: str, record: CustomerRecord, expected_version: int) -> int:
        version = new_record_version()
        item = {**_key(user_id), **self._attributes(record), "version": {"N": str(version)}}
        condition = (
            {"ConditionExpression": "attribute_not_exists(user_id)"}
            if expected_version == 0
            else {
                "ConditionExpression": "#version = :version",
                "ExpressionAttributeNames": {"#version": "version"},
                "ExpressionAttributeValues": {":version": {"N": str(expected_version)}},
            }
        )
        try:
            self._client.put_item(TableName=self._table, Item=item, **condition)
        except self._client.exceptions.ConditionalCheckFailedException:
            raise StateConflictError(
                f"the customer record is no longer at version {expected_version}"
            ) from None  # botocore's message would not quote the key, but keep nothing of it
        return version

    def delete(self, user_id: str) -> None:
        self._client.delete_item(TableName=self._table, Key=_key(user_id))

    def scan_page(
        self, cursor: str | None, limit: int, *, segment: int = 0, segments: int = 1
    ) -> CustomerPage:
        request: ScanInputTypeDef = {"TableName": self._table, "Limit": limit}
        if segments > 1:
            request = {**request, "Segment": segment, "TotalSegments": segments}
        if cursor is not None:
            request = {**request, "ExclusiveStartKey": _key(cursor)}
        answer = self._client.scan(**request)
        customers = [
            StoredCustomer(item["user_id"]["S"], _record(item), int(item["version"]["N"]))
            for item in answer.get("Items", [])
        ]
        last = answer.get("LastEvaluatedKey")
        return CustomerPage(customers, None if not last else last["user_id"]["S"])

    def approximate_count(self) -> int:
        return int(self._client.describe_table(TableName=self._table)["Table"].get("ItemCount", 0))

    def _attributes(self, record: CustomerRecord) -> dict[str, AttributeValueTypeDef]:
        attributes: dict[str, AttributeValueTypeDef] = {
            "state": {"B": record.state},
            "armed": {"BOOL": record.armed},
        }
        numbers = {
            "last_event_s": record.last_event_s,
            "risk": record.risk,
            "scored_at_s": record.scored_at_s,
            "last_warning_s": record.last_warning_s,
        }
        attributes |= {
            k: {"N": repr(float(v))} for k, v in numbers.items() if v is not None and math.isfinite(v)
        }
        if math.isfinite(record.last_event_s):
            attributes["ttl"] = {"N": str(math.ceil(record.last_event_s + self._retention_s))}
        texts = {"risk_tier": record.risk_tier, "model_version": record.model_version}
        attributes |= {k: {"S": v} for k, v in texts.items() if v is not None}
        if record.outbox:
            attributes["outbox"] = {"L": [{"S": message} for message in record.outbox]}
        return attributes


def _key(user_id: str) -> dict[str, AttributeValueTypeDef]:
    return {"user_id": {"S": user_id}}


def _record(item: Mapping[str, Any]) -> CustomerRecord:
    def number(name: str) -> float | None:
        return float(item[name]["N"]) if name in item else None

    last_event = number("last_event_s")
    return CustomerRecord(
        state=bytes(item["state"]["B"]),
        last_event_s=-math.inf if last_event is None else last_event,
        risk=number("risk"),
        risk_tier=item["risk_tier"]["S"] if "risk_tier" in item else None,
        model_version=item["model_version"]["S"] if "model_version" in item else None,
        scored_at_s=number("scored_at_s"),
        armed=bool(item.get("armed", {"BOOL": True})["BOOL"]),
        last_warning_s=number("last_warning_s"),
        outbox=tuple(m["S"] for m in item.get("outbox", {"L": []})["L"]),
    )
