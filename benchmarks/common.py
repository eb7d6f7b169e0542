"""What every benchmark shares: its results files, its child processes, their peak memory and core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHILD_TIMEOUT_S = 3600


def write_results(name: str, result: dict[str, Any], markdown: str, directory: Path = RESULTS) -> None:
    """``benchmarks/results/<name>.json`` (the result, indented) and ``<name>.md`` (its table), and
    the table on stdout. ``directory``: elsewhere (a trial run that must not replace the results)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(result, indent=2))
    (directory / f"{name}.md").write_text(markdown)
    print(markdown)


def run_child(module: str, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """``python -m <module> --child <args>`` in a fresh process, so that imports, caches and peak RSS
    of one measurement do not leak into another; returns the JSON object the child printed last and
    the wall time. The child prints it with ``print(json.dumps(result))``."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", module, "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=CHILD_TIMEOUT_S,
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{module} --child {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), wall


def pin_one_core() -> None:
    """Run this process on one core, as the targets that say "one core" are measured."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM). Not ru_maxrss: that survives exec and reports the forked
    parent's peak (a child of a 230 MB parent "peaks" at 230 MB before doing anything)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
