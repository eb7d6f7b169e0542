"""The arrows allowed between the parts (ARCHITECTURE.md), checked on every import statement.

Static (ast), so lazy imports inside functions count too, and nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"churnguard", "training", "infra", "benchmarks", "tests", "functions"}
# part -> the first-party parts it may import (itself included)
ALLOWED = {
    "shared/churnguard": {"churnguard"},
    "functions": {"churnguard"},
    "training": {"churnguard", "training"},
    "infra": {"churnguard", "training", "infra"},
    "benchmarks": {"churnguard", "training", "infra", "benchmarks"},
}
# Third-party packages the Lambda side must never import: not in the packages, or far too heavy.
NOT_ON_THE_SERVING_PATH = {"tensorflow", "keras", "sklearn", "lightgbm", "lifetimes", "matplotlib", "moto"}
TYPE_ONLY = ("mypy_boto3_",)
# The one exception: the outcome report's pictures (issue 10). Only the outcome job's package ships
# matplotlib (functions/outcomes/requirements.txt); no scoring function imports this module.
PLOTTING_MODULE = "shared/churnguard/outcome_plots.py"
PLOTTING_USERS = ("functions/outcomes/app.py", "shared/churnguard/outcome_job.py")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported only for type checking) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only_nodes.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.extend((name.split(".")[0], id(node) in type_only_nodes) for name in names)
    return found


def _files(part: str) -> list[Path]:
    files = sorted(p for p in (ROOT / part).rglob("*.py") if "__pycache__" not in p.parts)
    assert files, part
    return files


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_the_parts_it_may_depend_on(part):
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _files(part)
        for module, _ in _imports(path)
        if module in FIRST_PARTY and module not in ALLOWED[part]
    )
    assert not wrong, wrong


@pytest.mark.parametrize("part", ["shared/churnguard", "functions"])
def test_lambda_code_imports_no_training_stack_and_type_stubs_only_for_type_checking(part):
    wrong = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _files(part)
        for module, type_only in _imports(path)
        if (module in NOT_ON_THE_SERVING_PATH and not (module == "matplotlib" and _is(path, PLOTTING_MODULE)))
        or (module.startswith(TYPE_ONLY) and not type_only)
    )
    assert not wrong, wrong


def _is(path: Path, *relative: str) -> bool:
    return str(path.relative_to(ROOT)) in relative


def test_only_the_outcome_job_imports_the_plotting_module():
    importers = sorted(
        str(path.relative_to(ROOT))
        for part in ("shared/churnguard", "functions")
        for path in _files(part)
        if "outcome_plots" in path.read_text() and not _is(path, PLOTTING_MODULE, *PLOTTING_USERS)
    )
    assert not importers, importers


def test_the_checker_sees_lazy_and_type_only_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mypy_boto3_s3 import S3Client\n"
        "def f():\n    import tensorflow as tf\n    from training.data import x\n"
    )
    assert sorted(_imports(sample)) == [
        ("mypy_boto3_s3", True),
        ("tensorflow", False),
        ("training", False),
        ("typing", False),
    ]


MAX_FUNCTION_LINES = 80


@pytest.mark.parametrize("part", ["shared/churnguard", "training", "functions"])
def test_no_function_is_too_long_to_read(part):
    too_long = sorted(
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in _files(part)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    )
    assert not too_long, too_long
