"""Test helpers: load a Lambda handler by path (each function's module is called app) and fake contexts."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
EVENTS = ROOT / "events"


def load_handler(function: str) -> ModuleType:
    name = f"churnguard_fn_{function}"
    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / function / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_event(relative: str) -> dict:
    return copy.deepcopy(json.loads((EVENTS / relative).read_text()))


@dataclass
class FakeLambdaContext:
    function_name: str = "churnguard-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:churnguard-test"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"
    log_group_name: str = "/aws/lambda/churnguard-test"
    log_stream_name: str = "2024/09/30/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def cached_venv(name: str, *requirements: str) -> Path:
    """A tool environment under .cache/ (built once, reused): for tools whose pins fight ours."""
    import subprocess

    venv = ROOT / ".cache" / name
    python = venv / "bin" / "python"
    marker = venv / ".ready"
    wanted = "\n".join(requirements)
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
            check=True,
            timeout=900,
        )
        marker.write_text(wanted)
    return python
