"""The functions from their `sam build` packages under real `sam local` (layer 4 of the tests).

Needs a container engine: Docker if it runs, else podman installed as root (infra/containers.py).
Where neither can be had the tests skip with the reason; with CI=true they must run, so they fail.
"""

import os

import pytest


@pytest.fixture(scope="session")
def engine():
    from infra.containers import EngineUnavailableError, ensure_engine

    try:
        return ensure_engine()
    except EngineUnavailableError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"sam local tests must run in CI, but: {exc}")
        pytest.skip(f"sam local tests skipped: {exc}")


@pytest.fixture(scope="session")
def sam_stack(engine, tmp_path_factory):
    from infra.sam_local import start_sam_stack
    from tests.helpers import FIXTURE_MODEL, ROOT, cached_venv

    cached_venv(
        "venv-infra", "-r", str(ROOT / "infra/requirements-checks.txt")
    )  # the SAM CLI (make does it first)

    stack = start_sam_stack(FIXTURE_MODEL, tmp_path_factory.mktemp("sam"), engine)
    yield stack
    stack.stop()
    if os.environ.get("CI") == "true" and engine.kind == "podman":
        from infra.containers import stop_podman_service

        stop_podman_service()  # a CI checkout is thrown away: leave no service behind
