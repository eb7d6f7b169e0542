"""template.yaml passes the SAM CLI and checkov checks (their own venv, built on first use)."""

import subprocess
from pathlib import Path

from tests.helpers import cached_venv

ROOT = Path(__file__).resolve().parents[2]


def test_sam_validate_translated_cfn_lint_checkov_and_sam_build_pass():
    python = cached_venv("venv-infra", "-r", str(ROOT / "infra/requirements-checks.txt"))
    result = subprocess.run(
        [str(python), str(ROOT / "infra/template_checks.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    for line in (
        "sam validate --lint: ok",
        "cfn-lint on the translated template: ok",
        "failed 0",
        "sam build (no Docker): ok",
        "glibc <= 2.26 (python3.11 runtime): ok",
    ):
        assert line in result.stdout, result.stdout
