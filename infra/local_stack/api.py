"""API Gateway on 127.0.0.1: each HTTP request becomes the REST (v1) proxy event API Gateway sends and
goes to the scoring function's ``lambda_handler`` in this process, warm, one request at a time like one
Lambda container; plus the small JSON client the demo and the tests call it with."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from infra.lambda_harness import LambdaContext

API_TIMEOUT_S = 10  # ScoreApiFunction's Timeout in template.yaml


def api_gateway_event(method: str, raw_path: str, headers: dict[str, str], body: bytes, client: str) -> dict:
    """The REST (v1) proxy event API Gateway sends for a request."""
    parts = urlsplit(raw_path)
    query = dict(parse_qsl(parts.query)) or None
    try:
        text, is_base64 = (body.decode("utf-8") if body else None), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    request_id = str(uuid.uuid4())
    return {
        "resource": parts.path,
        "path": parts.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "pathParameters": None,
        "stageVariables": None,
        "body": text,
        "isBase64Encoded": is_base64,
        "requestContext": {
            "requestId": request_id,
            "stage": "local",
            "httpMethod": method,
            "path": parts.path,
            "resourcePath": parts.path,
            "identity": {"sourceIp": client},
            "requestTimeEpoch": int(time.time() * 1000),
        },
    }


def http_response(response: dict[str, Any]) -> tuple[int, dict[str, list[str]], bytes]:
    """A proxy integration's answer as API Gateway sends it: status, headers, body bytes."""
    payload = response.get("body") or ""
    data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
    # API Gateway merges both header maps; Powertools' REST resolver sets multiValueHeaders
    headers = {k: [v] for k, v in (response.get("headers") or {}).items()}
    for key, values in (response.get("multiValueHeaders") or {}).items():
        headers[key] = [*headers.get(key, []), *(v for v in values if v not in headers.get(key, []))]
    return int(response["statusCode"]), headers, data


def make_api_server(handler_module: Any, port: int) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) in front of ``handler_module``'s
    ``lambda_handler``; not started (``serve_forever`` in a thread of the caller's)."""
    lock = threading.Lock()  # one warm container handles one request at a time

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length < 0:
                    raise ValueError
            except ValueError:  # API Gateway answers a malformed Content-Length itself, with a 400
                self._reply(400, {"Content-Type": "application/json"}, b'{"message": "bad Content-Length"}')
                return
            body = self.rfile.read(length) if length else b""
            event = api_gateway_event(
                self.command, self.path, dict(self.headers.items()), body, self.client_address[0]
            )
            with lock:
                response = handler_module.lambda_handler(
                    event, LambdaContext("ScoreApiFunction", timeout_s=API_TIMEOUT_S)
                )
            self._reply(*http_response(response))

        def _reply(self, status: int, headers: dict[str, Any], data: bytes) -> None:
            self.send_response(status)
            for key, values in headers.items():
                for value in values if isinstance(values, list) else [values]:
                    if key.lower() != "content-length":
                        self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def __getattr__(self, name: str) -> Any:  # every method goes to the function, as a proxy does
            if name.startswith("do_"):
                return self._handle
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def http_json(
    method: str, url: str, body: bytes | dict | None = None, timeout: float = 60
) -> tuple[int, dict]:
    """One HTTP request; JSON bodies both ways; an HTTP error status is returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
