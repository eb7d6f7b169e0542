"""AWS on this machine: moto's server on 127.0.0.1 and the environment that points boto3 at it.

One implementation for the local stack, the integration tests and the benchmarks. moto runs as a
child process (``python -m moto.server``), not in a thread of the caller (``ThreadedMotoServer``):
the local stack runs the Lambdas in its own process, so the API, the queue deliveries and the
model's scoring would otherwise share one GIL with moto's pure-Python request handling. Measured on
2 cores (SQS SendMessage, median of 50): 5-7 ms either way while the caller is idle; while another
thread of the caller is busy in Python (a batch file scored while the API answers), about 30 ms
with moto in a child process and 400-500 ms with moto in a thread. A child process also keeps
moto's backends out of the memory of the process that stands in for a Lambda, and its werkzeug
request log out of the stack's output.
"""

from __future__ import annotations

import socket
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

REGION = "eu-west-1"
START_TIMEOUT_S = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 as a child process; ``url`` is its endpoint."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and return once it answers (RuntimeError if it does not within 30 s)."""
        # Imported here: the serving benchmark's cold start imports this module (for REGION) and
        # should pay for nothing a Lambda runtime would not import.
        import subprocess
        import urllib.request

        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                if time.time() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def aws_environment(endpoint: str) -> dict[str, str]:
    """The environment variables that send boto3 (in this process or a child) to ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }
