"""Fault injection at the HTTP level: a small proxy on 127.0.0.1 in front of the moto server.

The code under test reaches AWS through ``AWS_ENDPOINT_URL``; pointing it at a ``FaultProxy`` lets a
test make chosen calls fail the way AWS or the network fails, while every other call is forwarded
unchanged:

* ``ERROR``: an AWS error answer (throttling, 5xx) in the service's own error format;
* ``DROP``: the request never reaches AWS; the connection stays silent for ``wait_s`` (longer than
  the client's read timeout: the client times out) and is then closed (``wait_s=0``: reset at once);
* ``LOSE_ANSWER``: AWS acts on the request, but the answer never reaches the client (it times out);
* ``HOLD``: the request waits until the test releases it (then forwarded if ``then_forward``, else
  dropped): a process can be killed while its call is in flight, or two deliveries forced to overlap;
* ``UNPROCESSED``: DynamoDB's partial throttling of a batch call: 200 with every item (BatchWriteItem)
  or key (BatchGetItem) handed back as unprocessed.

Calls are matched by operation: the ``X-Amz-Target`` header of the JSON protocols (SQS, DynamoDB),
or method and URL-decoded path for S3 (``/bucket/key``).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from tests.helpers import ROOT

ERROR, DROP, LOSE_ANSWER, HOLD, UNPROCESSED = "error", "drop", "lose-answer", "hold", "unprocessed"
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # URL-decoded, without the query
    target: str  # X-Amz-Target (JSON protocols), else ""

    @property
    def operation(self) -> str:
        """``SendMessageBatch``, ``BatchWriteItem``, ... or ``PUT /bucket/key`` for S3."""
        return self.target.rsplit(".", 1)[-1] if self.target else f"{self.method} {self.path}"


def operation(name: str) -> Callable[[Call], bool]:
    """A JSON-protocol operation by name (SQS ``SendMessageBatch``, DynamoDB ``PutItem``, ...)."""
    return lambda call: call.target.rsplit(".", 1)[-1] == name if call.target else False


def dynamodb() -> Callable[[Call], bool]:
    """Every DynamoDB call."""
    return lambda call: call.target.startswith("DynamoDB_")


def s3_put(key_suffix: str) -> Callable[[Call], bool]:
    """An S3 PUT of an object whose key ends with ``key_suffix``."""
    return lambda call: not call.target and call.method == "PUT" and call.path.endswith(key_suffix)


@dataclass
class Fault:
    match: Callable[[Call], bool]
    action: str
    times: int | None = None  # how many matching calls it affects; None: until removed
    skip: int = 0  # matching calls let through before it starts
    for_s: float | None = None  # active for this long from its first hit (None: no time limit)
    status: int = 500  # ERROR
    code: str = "InternalError"  # ERROR: the AWS error code
    wait_s: float = 0.0  # DROP / LOSE_ANSWER: silence before the connection is closed
    then_forward: bool = False  # HOLD: forward once released (else the request never arrives)
    matched: int = 0
    hits: int = 0
    first_hit: float | None = None
    reached: threading.Event = field(default_factory=threading.Event)  # set on the first hit
    release: threading.Event = field(default_factory=threading.Event)  # HOLD


class FaultProxy:
    """``with FaultProxy(upstream) as proxy:`` point AWS_ENDPOINT_URL at ``proxy.url``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str]] = []  # (operation, what happened)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for fault in self.faults:
            fault.release.set()
        self._server.shutdown()
        self._server.server_close()

    def inject(self, match: Callable[[Call], bool], action: str, **options: Any) -> Fault:
        fault = Fault(match, action, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """Every fault removed (held requests are dropped, not forwarded)."""
        with self._lock:
            faults, self.faults = self.faults, []
        for fault in faults:
            fault.then_forward = False
            fault.release.set()

    def count(self, op: str, outcome: str | None = None) -> int:
        with self._lock:
            return sum(1 for o, what in self.log if o == op and (outcome is None or what == outcome))

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 60, what: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
            time.sleep(0.02)

    # -- used by the handler threads -------------------------------------------------------------
    def _select(self, call: Call) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if not fault.match(call):
                    continue
                fault.matched += 1
                if fault.matched <= fault.skip or (fault.times is not None and fault.hits >= fault.times):
                    continue
                now = time.monotonic()
                if (
                    fault.for_s is not None
                    and fault.first_hit is not None
                    and now - fault.first_hit > fault.for_s
                ):
                    continue
                fault.first_hit = fault.first_hit or now
                fault.hits += 1
                return fault
        return None

    def _record(self, call: Call, outcome: str) -> None:
        with self._lock:
            self.log.append((call.operation, outcome))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        proxy = self.owner
        body = self._body()
        call = Call(self.command, unquote(urlsplit(self.path).path), self.headers.get("X-Amz-Target", ""))
        fault = proxy._select(call)
        if fault is None:
            self._forward(body)
            proxy._record(call, "forwarded")
            return
        fault.reached.set()
        if fault.action == ERROR:
            self._error(call, fault)
            proxy._record(call, "error")
        elif fault.action == DROP:
            proxy._record(call, "dropped")
            proxy._stop.wait(fault.wait_s)
            self.close_connection = True
        elif fault.action == LOSE_ANSWER:
            self._upstream(body)  # AWS acts on it
            proxy._record(call, "answer-lost")
            proxy._stop.wait(fault.wait_s)
            self.close_connection = True
        elif fault.action == HOLD:
            proxy._record(call, "held")
            fault.release.wait()
            if fault.then_forward and not proxy._stop.is_set():
                self._forward(body)
                proxy._record(call, "forwarded")
            else:
                self.close_connection = True
                proxy._record(call, "dropped")
        elif fault.action == UNPROCESSED:
            self._unprocessed(call, body)
            proxy._record(call, "unprocessed")
        else:
            raise ValueError(fault.action)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve  # noqa: N815 (http.server's names)

    def _upstream(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def _forward(self, body: bytes) -> None:
        status, reason, headers, data = self._upstream(body)
        try:
            self.send_response_only(status, reason)
            for name, value in headers:
                # HEAD keeps the object's Content-Length; other answers get the length of what is sent.
                if name.lower() not in HOP_BY_HOP | {"content-length"} or (
                    name.lower() == "content-length" and self.command == "HEAD"
                ):
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client gave up (timed out, killed)
            self.close_connection = True

    def _unprocessed(self, call: Call, body: bytes) -> None:
        items = json.loads(body)["RequestItems"]
        if call.operation == "BatchWriteItem":
            answer = {"UnprocessedItems": items}
        elif call.operation == "BatchGetItem":
            answer = {"Responses": {table: [] for table in items}, "UnprocessedKeys": items}
        else:
            raise ValueError(f"{call.operation} has no unprocessed items")
        self._send(200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(answer).encode())

    def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response_only(status)
        for name, value in {**headers, "x-amzn-RequestId": "injected"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, call: Call, fault: Fault) -> None:
        if call.target:  # JSON protocol (SQS is "query compatible": the code also in a header)
            service = "dynamodb.v20120810" if call.target.startswith("DynamoDB") else "sqs"
            data = json.dumps({"__type": f"com.amazonaws.{service}#{fault.code}", "message": "injected"})
            headers = {
                "Content-Type": "application/x-amz-json-1.0",
                "x-amzn-query-error": f"{fault.code};Sender",
            }
        else:
            data = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                f"<Message>injected</Message><RequestId>injected</RequestId></Error>"
            )
            headers = {"Content-Type": "application/xml"}
        self._send(fault.status, headers, data.encode())


CHILD = """
import json, sys
from infra.lambda_harness import LambdaContext, load_handler
event, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
handler = load_handler("batch_score")
# the invocation ends ``seconds`` from now: idempotency stores that as the IN_PROGRESS record's expiry
result = handler.lambda_handler(event, LambdaContext(timeout_s=seconds))
errors = [info[0].__name__ for info in handler.processor.exceptions]  # why records failed
print("RESULT " + json.dumps({**result, "errors": errors}), flush=True)
"""


def start_batch_handler(event: dict[str, Any], deadline_s: float) -> subprocess.Popen[str]:
    """The batch function in a process of its own (a Lambda instance), with this process's
    environment (AWS_ENDPOINT_URL, CHURNGUARD_*): it can be killed, or run beside another one."""
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(event), str(deadline_s)],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen[str], timeout_s: float = 60) -> dict[str, Any]:
    """What the child's handler returned, plus ``errors``: the exception types of its failed records
    (its stdout also carries the function's JSON logs)."""
    out, err = process.communicate(timeout=timeout_s)
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise AssertionError(f"the handler process ended ({process.returncode}) without a result: {err[-2000:]}")
