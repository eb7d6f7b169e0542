"""Running a function's handler outside Lambda: its module, its context object, its sample events.

Used by the local stack (the functions in-process), the tests and the benchmarks.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

from infra.local_aws import REGION
from infra.template import ROOT

EVENTS = ROOT / "events"


@dataclass
class LambdaContext:
    """The context object Lambda passes a handler: what Powertools reads (names, memory, request id)
    and the invocation's deadline, ``timeout_s`` after the context was made (idempotency stores it
    as an in-progress record's expiry)."""

    function_name: str = "churnguard-local"
    timeout_s: float = 30
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_stream_name: str = "local"
    started: float = field(default_factory=time.time)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:000000000000:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_s - time.time()) * 1000))


def load_handler(
    function: str, environment: Mapping[str, str] | None = None, *, cold_start: bool = False
) -> ModuleType:
    """``functions/<function>/app.py`` imported afresh under a module name of its own (each function's
    module is called app), as a new Lambda instance would import it.

    ``environment`` is set in ``os.environ`` first (the function reads its configuration from there);
    ``cold_start`` runs the module's ``runtime()`` now (settings validated, model loaded) instead of
    on the first invocation.
    """
    if environment:
        os.environ.update(environment)
    name = f"churnguard_fn_{function}"
    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / function / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    if cold_start:
        module.runtime()
    return module


def load_event(relative: str) -> dict:
    """A sample event from ``events/`` (a fresh copy each call: callers edit it)."""
    return copy.deepcopy(json.loads((EVENTS / relative).read_text()))
