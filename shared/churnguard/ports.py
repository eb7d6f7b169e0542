"""Ports: what the domain needs from AWS, as small protocols (boto3 adapters: ``churnguard.adapters``).

Each port has exactly the operations the domain code calls; tests drive the domain through in-memory
fakes of them (``tests/unit/fakes.py``), no moto needed.

Errors: adapters let botocore's exceptions through unchanged — ``ClientError`` carrying the AWS error
code (``NoSuchKey``, ``SlowDown``, ...) and ``BotoCoreError`` for transport faults (a
``ReadTimeoutError`` raised while a streamed body is read is also an ``OSError``). The domain's
retry and summary decisions depend on exactly these types (``churnguard.batch.FILE_ERRORS`` and
``_reraise_transient``, ``churnguard.model_store.download_model_files``, the promotions publisher),
so a fake that simulates an AWS failure raises the same botocore exception.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class ReadableStream(Protocol):
    """A streamed object body (botocore's ``StreamingBody``, ``io.BytesIO``, ...)."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectInfo:
    size: int  # bytes
    metadata: Mapping[str, str] = field(default_factory=dict)  # user metadata (x-amz-meta-*), keys lower case


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int  # bytes
    last_modified: dt.datetime  # UTC
    etag: str = ""  # the object's ETag (quotes stripped): a new upload of a key has another one


class ObjectStore(Protocol):
    """Objects by bucket and key (S3)."""

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """The whole object."""
        ...

    def get_range(self, bucket: str, key: str, start: int, stop: int) -> bytes:
        """Bytes ``start`` to ``stop - 1`` (fewer when the object ends sooner)."""
        ...

    def open(self, bucket: str, key: str) -> ReadableStream:
        """The object as a stream, never read whole."""
        ...

    def head(self, bucket: str, key: str) -> ObjectInfo: ...

    def list_objects(self, bucket: str, prefix: str) -> list[ListedObject]:
        """Every object whose key starts with ``prefix`` (all pages), in key order."""
        ...

    def copy(self, bucket: str, source_key: str, key: str) -> None:
        """A copy of an object within the bucket, made by the store (multipart when large)."""
        ...

    def put_bytes(self, bucket: str, key: str, body: bytes, *, content_type: str | None = None) -> None: ...

    def delete(self, bucket: str, keys: Sequence[str]) -> None:
        """Remove the objects (a key already gone is no error); raises if the store refuses one."""
        ...

    def upload_file(
        self,
        path: str | Path,
        bucket: str,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """A local file as an object (multipart when large)."""
        ...


@dataclass(frozen=True)
class ParameterVersion:
    version: int
    value: str


class ParameterStore(Protocol):
    """Named string parameters that keep their history (SSM Parameter Store)."""

    def get(self, name: str) -> str: ...

    def put(self, name: str, value: str) -> None:
        """Overwrite ``name`` with ``value``; the previous value stays in its history."""
        ...

    def history(self, name: str) -> list[ParameterVersion]: ...


@dataclass(frozen=True)
class QueueMessage:
    id: str  # unique within one batch
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)  # string message attributes


@dataclass(frozen=True)
class SendFailure:
    id: str
    code: str
    message: str
    sender_fault: bool  # the message itself is at fault: sending it again will not help


@dataclass(frozen=True)
class SendBatchResult:
    sent: int
    failed: list[SendFailure] = field(default_factory=list)


class MessageQueue(Protocol):
    """One queue (SQS): a batch send answers per message."""

    def send_batch(self, messages: Sequence[QueueMessage]) -> SendBatchResult: ...


class PromotionLedger(Protocol):
    """Which promotions (by idempotency key) the queue has accepted."""

    def sent(self, keys: Sequence[str]) -> set[str]: ...

    def mark(self, keys: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class RunningExecution:
    arn: str
    started: dt.datetime


class RunningExecutions(Protocol):
    """The runs of a Step Functions state machine still running (the sweep's overlap check)."""

    def running(self, state_machine_arn: str) -> list[RunningExecution]: ...


class WorkflowStarter(Protocol):
    """One workflow (a Step Functions state machine) whose runs are started by name.

    A name identifies a run: starting a name that was already started (a redelivered S3 event) starts
    nothing and answers False — AWS's ``ExecutionAlreadyExists`` is that answer, not an error. Every
    other AWS error passes through unchanged (the caller's record is retried)."""

    def start(self, name: str, input: Mapping[str, Any]) -> bool:
        """False when a run of that name already existed; True otherwise (started now, or — AWS's
        own idempotent answer — the same name and input still running)."""
        ...


@dataclass(frozen=True)
class CustomerRecord:
    """One customer's stored real-time record (``churnguard.realtime``): the behaviour state and,
    next to it, the last score and the warning state, so one conditional write keeps them together."""

    state: bytes  # ``CustomerState.to_bytes()``
    last_event_s: float  # the state's latest event, seconds since the epoch (UTC)
    risk: float | None = None  # the last stored score, made at ``scored_at_s``
    risk_tier: str | None = None
    model_version: str | None = None
    scored_at_s: float | None = None
    armed: bool = True  # a warning may fire (see ``churnguard.realtime``)
    last_warning_s: float | None = None  # the instant of the last warning fired
    outbox: tuple[str, ...] = ()  # warnings (JSON messages) stored but not yet confirmed sent


@dataclass(frozen=True)
class StoredCustomer:
    user_id: str  # data: never log it
    record: CustomerRecord
    version: int


@dataclass(frozen=True)
class CustomerPage:
    customers: list[StoredCustomer]
    cursor: str | None  # where the next page starts (None: the scan is complete); data, never log it


class StateConflictError(Exception):
    """A conditional write found another version than the one read: someone wrote in between."""


class LedgerUnavailableError(RuntimeError):
    """The promotions ledger could not be read or written (after its retries): nothing is known to be
    sent, so callers keep what they would have published for a later attempt."""


def new_record_version() -> int:
    """A fresh version token for ``CustomerStateStore.put``: random, never 0, never reused in practice
    (63 bits), so a version read before an erasure never matches a record written after it."""
    return secrets.randbits(63) + 1


class CustomerStateStore(Protocol):
    """Per-customer records with a version for optimistic concurrency (DynamoDB, one item each).

    Version 0 means "no record": ``put`` with ``expected_version`` 0 creates, and refuses
    (``StateConflictError``) when a record exists; with ``expected_version`` v > 0 it replaces
    version v only (a record deleted meanwhile is a conflict too). AWS errors pass through unchanged.

    A version is an opaque random token (``new_record_version``), not a counter: a counter restarts
    after ``delete``, so a writer still holding the erased record's version could overwrite a record
    created after the erasure with the erased customer's history (an ABA race)."""

    def get(self, user_id: str) -> tuple[CustomerRecord | None, int]:
        """The record and its version (``(None, 0)``: none), read consistently."""
        ...

    def put(self, user_id: str, record: CustomerRecord, expected_version: int) -> int:
        """Write ``record`` if the stored version is ``expected_version``; the new version."""
        ...

    def delete(self, user_id: str) -> None:
        """Remove the record; a record already gone is no error."""
        ...

    def scan_page(
        self, cursor: str | None, limit: int, *, segment: int = 0, segments: int = 1
    ) -> CustomerPage:
        """Up to ``limit`` records from ``cursor`` (None: the start) of one of ``segments`` disjoint
        segments (a parallel scan)."""
        ...

    def approximate_count(self) -> int:
        """How many customers are stored, roughly (DynamoDB refreshes its count every ~6 hours):
        enough to size the sweep's segments."""
        ...


class DeadLetters(Protocol):
    """Where a message that can never be applied goes at once (a dead-letter queue), with the reason
    (field names and rules, never a value) and the id of the message it was."""

    def park(self, body: str, *, reason: str, message_id: str) -> None: ...
