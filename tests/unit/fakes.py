"""In-memory implementations of the ports (``churnguard.ports``): domain tests without moto or network.

They fail the way the boto3 adapters do — botocore's exceptions, unchanged — so the domain's
retry / summary decisions can be driven from here: ``MemoryObjectStore.faults`` makes one call
raise, ``MemoryObjectStore.stream_faults`` makes a streamed body break after some bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from churnguard.ports import (
    CustomerPage,
    CustomerRecord,
    ListedObject,
    ObjectInfo,
    ParameterVersion,
    QueueMessage,
    ReadableStream,
    SendBatchResult,
    SendFailure,
    StateConflictError,
    StoredCustomer,
    new_record_version,
)
from churnguard.promotions import PublishResult


def client_error(code: str, operation: str) -> ClientError:
    """What boto3 raises for an AWS error answer."""
    return ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, operation)


@dataclass
class StoredObject:
    body: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    last_modified: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class BreakingStream(io.RawIOBase):
    """A body that raises ``error`` once ``after`` bytes have been read (a connection cut mid-body)."""

    def __init__(self, data: bytes, after: int, error: BaseException) -> None:
        self._data, self._after, self._error, self._at = data, after, error, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._at >= self._after:
            raise self._error
        size = min(len(buffer), self._after - self._at, len(self._data) - self._at)
        buffer[:size] = self._data[self._at : self._at + size]
        self._at += size
        return size


class MemoryObjectStore:
    """``ObjectStore`` over a dict; every call is recorded as (operation, key)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], StoredObject] = {}
        self.calls: list[tuple[str, str]] = []
        self.faults: dict[tuple[str, str], BaseException] = {}  # (operation, key) -> raised by that call
        self.stream_faults: dict[str, tuple[int, BaseException]] = {}  # key -> (after bytes, error)

    def add(self, bucket: str, key: str, body: bytes, metadata: Mapping[str, str] | None = None) -> None:
        self.objects[(bucket, key)] = StoredObject(body, dict(metadata or {}))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(k for b, k in self.objects if b == bucket and k.startswith(prefix))

    def body(self, bucket: str, key: str) -> bytes:
        return self.objects[(bucket, key)].body

    def _call(self, operation: str, key: str) -> None:
        self.calls.append((operation, key))
        fault = self.faults.get((operation, key))
        if fault is not None:
            raise fault

    def _get(self, bucket: str, key: str, operation: str) -> StoredObject:
        try:
            return self.objects[(bucket, key)]
        except KeyError:
            raise client_error("NoSuchKey" if operation == "GetObject" else "404", operation) from None

    def get_bytes(self, bucket: str, key: str) -> bytes:
        self._call("get_bytes", key)
        return self._get(bucket, key, "GetObject").body

    def get_range(self, bucket: str, key: str, start: int, stop: int) -> bytes:
        self._call(f"get_range {start}-{stop}", key)
        return self._get(bucket, key, "GetObject").body[start:stop]

    def open(self, bucket: str, key: str) -> ReadableStream:
        self._call("open", key)
        data = self._get(bucket, key, "GetObject").body
        if key in self.stream_faults:
            after, error = self.stream_faults[key]
            return io.BufferedReader(BreakingStream(data, after, error))
        return io.BytesIO(data)

    def head(self, bucket: str, key: str) -> ObjectInfo:
        self._call("head", key)
        stored = self._get(bucket, key, "HeadObject")
        return ObjectInfo(size=len(stored.body), metadata=dict(stored.metadata))

    def list_objects(self, bucket: str, prefix: str) -> list[ListedObject]:
        self._call("list_objects", prefix)
        return [
            ListedObject(key, len(stored.body), stored.last_modified, hashlib.md5(stored.body).hexdigest())
            for (b, key), stored in sorted(self.objects.items())
            if b == bucket and key.startswith(prefix)
        ]

    def copy(self, bucket: str, source_key: str, key: str) -> None:
        self._call("copy", key)
        stored = self._get(bucket, source_key, "CopyObject")
        self.objects[(bucket, key)] = StoredObject(stored.body, dict(stored.metadata), stored.content_type)

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        for key in keys:
            self._call("delete", key)
            self.objects.pop((bucket, key), None)

    def put_bytes(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None:
        self._call("put_bytes", key)
        self.objects[(bucket, key)] = StoredObject(body, {}, content_type)

    def upload_file(
        self,
        path: str | Path,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self._call("upload_file", key)
        self.objects[(bucket, key)] = StoredObject(
            Path(path).read_bytes(), dict(metadata or {}), content_type
        )


class MemoryParameterStore:
    """``ParameterStore`` keeping every value of every parameter."""

    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {}

    def get(self, name: str) -> str:
        if name not in self.values:
            raise client_error("ParameterNotFound", "GetParameter")
        return self.values[name][-1]

    def put(self, name: str, value: str) -> None:
        self.values.setdefault(name, []).append(value)

    def history(self, name: str) -> list[ParameterVersion]:
        return [ParameterVersion(i + 1, v) for i, v in enumerate(self.values.get(name, []))]


class MemoryQueue:
    """``MessageQueue`` that accepts everything, except ids listed in ``fail`` (once per listing)."""

    def __init__(self) -> None:
        self.messages: list[QueueMessage] = []
        self.batches: list[int] = []
        self.fail: dict[str, SendFailure] = {}  # body's user_id -> the failure answered (once)

    def send_batch(self, messages: Sequence[QueueMessage]) -> SendBatchResult:
        self.batches.append(len(messages))
        failed = []
        for message in messages:
            user = next((u for u in self.fail if f'"user_id":"{u}"' in message.body), None)
            if user is not None:
                failure = self.fail.pop(user)
                failed.append(SendFailure(message.id, failure.code, failure.message, failure.sender_fault))
            else:
                self.messages.append(message)
        return SendBatchResult(sent=len(messages) - len(failed), failed=failed)


class MemoryLedger:
    """``PromotionLedger`` in a set."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.marks: list[list[str]] = []

    def sent(self, keys: Sequence[str]) -> set[str]:
        return self.keys & set(keys)

    def mark(self, keys: Sequence[str]) -> None:
        self.marks.append(list(keys))
        self.keys |= set(keys)


class RecordingPublisher:
    """A promotions publisher that keeps what it was given and sends nothing."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, messages: list[dict[str, Any]]) -> PublishResult:
        self.messages += messages
        return PublishResult(sent=len(messages))


class MemoryWorkflowStarter:
    """``WorkflowStarter`` keeping its runs by name: a name started again starts nothing (False),
    as Step Functions answers ``ExecutionAlreadyExists``."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def start(self, name: str, input: Mapping[str, Any]) -> bool:
        self.calls.append(name)
        if name in self.runs:
            return False
        self.runs[name] = dict(input)
        return True


class MemoryCustomerStateStore:
    """``CustomerStateStore`` in a dict, with DynamoDB's conditional-write semantics.

    ``before_put(user_id)`` runs inside each ``put`` before its condition is checked (a concurrent
    writer getting there first); ``faults[(operation, user_id)]`` raises from that call (once)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[CustomerRecord, int]] = {}
        self.calls: list[tuple[str, str]] = []
        self.faults: dict[tuple[str, str], BaseException] = {}
        self.before_put: Callable[[str], None] | None = None
        self._in_hook = False

    def _call(self, operation: str, user_id: str) -> None:
        self.calls.append((operation, user_id))
        fault = self.faults.pop((operation, user_id), None)
        if fault is not None:
            raise fault

    def get(self, user_id: str) -> tuple[CustomerRecord | None, int]:
        self._call("get", user_id)
        record, version = self.items.get(user_id, (None, 0))
        return record, version

    def put(self, user_id: str, record: CustomerRecord, expected_version: int) -> int:
        self._call("put", user_id)
        if self.before_put is not None and not self._in_hook:
            self._in_hook = True  # the hook's own writes run without it
            try:
                self.before_put(user_id)
            finally:
                self._in_hook = False
        _, version = self.items.get(user_id, (None, 0))
        if version != expected_version:
            raise StateConflictError(f"at version {version}, not {expected_version}")
        new_version = new_record_version()
        self.items[user_id] = (record, new_version)
        return new_version

    def delete(self, user_id: str) -> None:
        self._call("delete", user_id)
        self.items.pop(user_id, None)

    def scan_page(
        self, cursor: str | None, limit: int, *, segment: int = 0, segments: int = 1
    ) -> CustomerPage:
        self._call("scan", cursor or "")
        keys = sorted(
            k
            for k in self.items
            if zlib.crc32(k.encode()) % segments == segment and (cursor is None or k > cursor)
        )
        page = keys[:limit]
        customers = [StoredCustomer(k, *self.items[k]) for k in page]
        return CustomerPage(customers, page[-1] if len(keys) > limit else None)

    def approximate_count(self) -> int:
        return len(self.items)
