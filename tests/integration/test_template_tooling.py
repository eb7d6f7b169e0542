"""template.yaml passes the SAM CLI and checkov checks (their own venv, built on first use)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "venv-infra"


def test_sam_validate_translated_cfn_lint_checkov_and_sam_build_pass():
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(ROOT / "infra/requirements-checks.txt"),
        ],
        check=True,
        timeout=900,
    )
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
    ):
        assert line in result.stdout, result.stdout
