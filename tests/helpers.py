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
# Planted in test data (user ids of bad rows, hostile requests): tests/conftest.py fails the session if
# any log record of any test carries it.
PLANTED = "PLANTED-7f3a"


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


FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "model"


def model_variant(tmp_path: Path, version: str, *, corrupt: bool = False, degrade: bool = False) -> Path:
    """A copy of the fixture model under a new version: intact, corrupt (truncated TFLite file, so the
    hash check fails) or degraded (valid directory, scrambled fitted scaling, so it scores worse)."""
    import hashlib
    import shutil

    import numpy as np

    target = tmp_path / version
    shutil.copytree(FIXTURE_MODEL, target)
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["model_version"] = version
    if degrade:
        spec = json.loads((target / "feature_spec.json").read_text())
        order = np.random.default_rng(0).permutation(len(spec["static"]["mean"]))
        for key in ("mean", "std"):
            spec["static"][key] = [spec["static"][key][i] for i in order]
        text = json.dumps(spec, indent=2)
        (target / "feature_spec.json").write_text(text)
        metadata["files"]["feature_spec.json"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (target / "metadata.json").write_text(json.dumps(metadata))
    if corrupt:
        content = (target / "model.tflite").read_bytes()
        (target / "model.tflite").write_bytes(content[: len(content) // 2])
    return target


def tarball(model_dir: Path) -> bytes:
    """A model directory as SageMaker's model.tar.gz."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in model_dir.iterdir():
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def http(method: str, url: str, body: bytes | dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """One HTTP request; JSON bodies both ways; an HTTP error status is returned, not raised."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def check_scoring_api_over_http(api: str, model_version: str) -> None:
    """The scoring API's contract over real HTTP (the in-process local stack and `sam local start-api`
    run the same checks): health, scores, and the 4xx answers that name what is wrong."""
    assert http("GET", api + "/v1/health") == (200, {"status": "ok", "model_version": model_version})
    customer = {
        "user_id": "x",
        "as_of": "2024-09-30",
        "events": [{"timestamp": "2024-02-01", "event_type": "order", "amount": 900, "quantity": 3}],
    }
    status, body = http("POST", api + "/v1/scores", {"customers": [customer]})
    assert status == 200 and body["model_version"] == model_version, body
    assert 0.0 <= body["customers"][0]["churn_probability"] <= 1.0
    assert body["customers"][0]["risk_tier"] in {"low", "medium", "high"}
    status, body = http(
        "POST", api + "/v1/scores", {"customers": [{"user_id": "x", "events": [{"event_type": "x"}]}]}
    )
    assert status == 422 and body["errors"][0]["field"].startswith("customers[0].events[0]"), body
    status, body = http("POST", api + "/v1/scores", b"{not json")
    assert status == 400 and "not valid JSON" in body["message"], body
    status, body = http("POST", api + "/v1/scores", {"customers": [customer] * 101})
    assert status == 413 and body["limit"] == 100, body
    status, body = http("GET", api + "/v1/model")
    assert status == 200 and body["model_version"] == model_version, body
