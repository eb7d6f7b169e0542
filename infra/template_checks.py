"""Checks on template.yaml that need the SAM CLI and checkov (run in their own venv: `make template-checks`).

1. ``sam validate --lint`` (offline);
2. cfn-lint on the *translated* template (SAM -> CloudFormation, as deployed): the SAM-level lint
   misses e.g. circular dependencies between generated resources;
3. ``checkov --skip-download``: every skipped check carries its justification in the template;
4. ``sam build`` without Docker, and the built sizes against Lambda's limits (unzipped function +
   layer: score <= 150 MB, batch, promote and dataset <= 230 MB);
5. every shared object in the built packages loads on the python3.11 runtime's glibc (2.26, Amazon
   Linux 2): our emulated runtime image is Debian (glibc 2.36), so this is what catches a wheel that
   would fail with "GLIBC_2.27 not found" in AWS;
6. the dataset state machine's definition (``statemachine/dataset.asl.json``, as committed and with
   its substitutions made) through ``asl-validator`` (npm, installed under ``.cache/node``).

Exit code 0 when all pass; each failure is printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # `make template-checks` runs this file as a script in the infra venv
    sys.path.insert(0, str(ROOT))

from infra.template import TemplateParseError, decode_template  # noqa: E402 (after the path above)

BIN = Path(sys.executable).parent
# On the translated template only: W3005 flags redundant DependsOn in resources SAM itself generates
# (usage plan key); E2533 is the python3.11 deprecation, ignored in .cfnlintrc with its reason.
TRANSLATED_IGNORES = ["W3005", "E2533"]
SIZE_LIMITS_MB = {
    "ScoreApiFunction": 150,
    "InactivitySweepFunction": 150,
    "RealtimeEventsFunction": 150,
    "BatchScoreFunction": 230,
    "PromoteFunction": 230,
    "DatasetScoreFunction": 230,
    "DecisionLogFunction": 230,
    "OutcomesFunction": 230,
}
STATE_MACHINE_DEFINITIONS = {
    "DatasetStateMachine": ROOT / "statemachine/dataset.asl.json",
    "InactivitySweepStateMachine": ROOT / "statemachine/sweep.asl.json",
}
ASL_VALIDATOR = "asl-validator@4.0.0"  # npm; pinned: its schema is what "valid" means here
NODE_PREFIX = ROOT / ".cache/node"
LAMBDA_GLIBC_MINOR = 26  # python3.11 runs on Amazon Linux 2
_GLIBC_VERSION = re.compile(rb"GLIBC_2\.(\d+)")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "AWS_DEFAULT_REGION": "eu-west-1", "SAM_CLI_TELEMETRY": "0"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, **kwargs)


def translated_template() -> dict:
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    from samtranslator.translator.transform import transform

    class OfflinePolicies:  # no IAM calls: SAM falls back to its bundled managed-policy ARNs
        def load(self) -> dict:
            return {}

    try:
        template = decode_template(ROOT / "template.yaml")
    except TemplateParseError as error:
        raise SystemExit(str(error)) from None
    for resource in template["Resources"].values():  # what `sam package` does to local paths
        props = resource.get("Properties", {})
        for key in ("CodeUri", "ContentUri", "DefinitionUri"):
            if isinstance(props.get(key), str) and not props[key].startswith("s3://"):
                props[key] = f"s3://packaged-artifacts/{props[key].strip('/')}.zip"
    return transform(template, {}, OfflinePolicies())


def asl_validator(prefix: Path = NODE_PREFIX) -> Path | None:
    """The asl-validator command, installed under ``prefix`` on first use; None without npm."""
    import shutil

    command = prefix / "node_modules/.bin/asl-validator"
    installed = prefix / "node_modules/asl-validator/package.json"
    wanted = ASL_VALIDATOR.rpartition("@")[2]
    if command.exists() and json.loads(installed.read_text()).get("version") == wanted:
        return command
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent", ASL_VALIDATOR],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return command


def substituted_definition(path: Path, substitutions: dict[str, str]) -> dict:
    """A definition as Step Functions gets it: each ``${Name}`` of DefinitionSubstitutions replaced."""
    text = path.read_text()
    for name, value in substitutions.items():
        text = text.replace("${" + name + "}", value)
    return json.loads(text)


def validate_state_machines(validator: Path) -> subprocess.CompletedProcess:
    """asl-validator on every definition, as committed and with example substitutions (a Lambda ARN
    for each ``${...Arn}``), in one run."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, path in STATE_MACHINE_DEFINITIONS.items():
            names = re.findall(r"\$\{(\w+)\}", path.read_text())
            example = {n: f"arn:aws:lambda:eu-west-1:123456789012:function:example-{n}" for n in names}
            resolved = Path(tmp) / f"{name}.json"
            resolved.write_text(json.dumps(substituted_definition(path, example)))
            paths += [path, resolved]
        args = [a for p in paths for a in ("--json-path", str(p))]
        return run([str(validator), *args])


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024**2


def glibc_too_new(build_dir: Path, max_minor: int = LAMBDA_GLIBC_MINOR) -> dict[str, str]:
    """Shared objects that reference a glibc symbol version newer than 2.<max_minor> -> that version."""
    found = {}
    for path in build_dir.rglob("*.so*"):
        if path.is_file() and not path.is_symlink():
            minors = [int(m) for m in _GLIBC_VERSION.findall(path.read_bytes())]
            if minors and max(minors) > max_minor:
                found[str(path.relative_to(build_dir))] = f"GLIBC_2.{max(minors)}"
    return found


def main() -> int:
    failures = []
    result = run([str(BIN / "sam"), "validate", "--lint"])
    print("sam validate --lint:", "ok" if result.returncode == 0 else "FAILED")
    if result.returncode:
        failures.append(result.stdout + result.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        translated = Path(tmp) / "translated.json"
        translated.write_text(json.dumps(translated_template(), default=str))
        result = run([str(BIN / "cfn-lint"), str(translated), "--ignore-checks", *TRANSLATED_IGNORES])
        print("cfn-lint on the translated template:", "ok" if result.returncode == 0 else "FAILED")
        if result.returncode:
            failures.append(result.stdout + result.stderr)

    result = run(
        [
            str(BIN / "checkov"),
            "-f",
            "template.yaml",
            "--framework",
            "cloudformation",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ]
    )
    report = json.loads(result.stdout or "{}")
    report = report[0] if isinstance(report, list) else report
    summary = report.get("summary", {})
    print(
        f"checkov: passed {summary.get('passed')}, failed {summary.get('failed')}, "
        f"skipped {summary.get('skipped')}"
    )
    if summary.get("failed", 1):
        failures.append(json.dumps(report.get("results", {}).get("failed_checks", []), indent=1)[:4000])

    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            [str(BIN / "sam"), "build", "--build-dir", tmp, "--template", "template.yaml"], timeout=900
        )
        print("sam build (no Docker):", "ok" if result.returncode == 0 else "FAILED")
        if result.returncode:
            failures.append(result.stdout[-3000:] + result.stderr[-3000:])
        else:
            layer = dir_mb(Path(tmp) / "ChurnGuardLayer")
            for function, limit in SIZE_LIMITS_MB.items():
                size = layer + dir_mb(Path(tmp) / function)
                print(f"  {function} + layer: {size:.1f} MB (limit {limit})")
                if size > limit:
                    failures.append(f"{function} + layer is {size:.1f} MB > {limit}")
            too_new = glibc_too_new(Path(tmp))
            print(f"glibc <= 2.{LAMBDA_GLIBC_MINOR} (python3.11 runtime):", "ok" if not too_new else "FAILED")
            if too_new:
                failures.append(f"needs a newer glibc than Lambda python3.11 has: {too_new}")
    validator = asl_validator()
    if validator is None:
        print("asl-validator: FAILED (npm and node are needed)")
        failures.append("asl-validator: npm/node not found")
    else:
        result = validate_state_machines(validator)
        print("asl-validator:", "ok" if result.returncode == 0 else "FAILED")
        if result.returncode:
            failures.append(result.stdout + result.stderr)
    for failure in failures:
        print("----\n" + failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
