"""The SageMaker training image (training/Containerfile), built from wheels prepared on the host.

    python -m infra.training_image      # build if needed; prints the tag and the timings as JSON

The tag is ``localhost/churnguard-training:<code_version()>``: a hash of what the image holds, i.e.
training/ (code and Containerfile), shared/churnguard/, pyproject.toml and the versions of the
``churnguard[train]`` dependencies installed in the running environment (the dev venv, the versions
the tests ran with; the wheels are pinned to them). An existing tag is not rebuilt. The same hash is
the image's ``CHURNGUARD_CODE_VERSION``, so a model's metadata.json names the image that trained it.

The build context is ``.cache/containers/training-context/``: ``pip wheel`` of the project (from a
copy of the hashed sources, so no build/ or stale files from the work tree get in) into ``project/``
and of all its dependencies into ``deps/`` (with ``requirements.txt`` pinning them), kept between runs
and reused while the pins stay the same. The engine's layer cache then keeps the dependency layer, so
a code change rebuilds only the project layer.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from infra.containers import CACHE, PYTHON_BASE, Engine, ensure_base_images, ensure_engine, inputs_hash
from infra.template import ROOT

IMAGE = "localhost/churnguard-training"
CONTAINERFILE = ROOT / "training" / "Containerfile"
CONTEXT = CACHE / "training-context"
EXTRA = "train"
SOURCES = (ROOT / "training", ROOT / "shared" / "churnguard")

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _log(message: str) -> None:
    print(f"[training-image] {message}", file=sys.stderr, flush=True)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def source_files() -> list[Path]:
    """The project files that go into the image (besides pyproject.toml), sorted."""
    return sorted(
        path
        for directory in SOURCES
        for path in directory.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def dependency_pins(project: str = "churnguard", extra: str = EXTRA) -> list[str]:
    """``name==version`` of each installed distribution ``project[extra]`` needs, transitively.

    Markers other than ``extra`` are not evaluated: a dependency that is installed is pinned, one that
    is not (another platform's) is left to pip.
    """
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(project, frozenset({extra}))]
    while todo:
        name, extras = todo.pop()
        if (_normalize(name), extras) in seen:
            continue
        seen.add((_normalize(name), extras))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if _normalize(name) != project:
            pins[_normalize(name)] = f"{dist.metadata['Name']}=={dist.version}"
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            wanted = _EXTRA_MARKER.search(marker)
            if wanted and _normalize(wanted.group(1)) not in extras:
                continue
            match = _NAME.match(spec)
            if match:
                sub = frozenset(_normalize(e) for e in (match.group(2) or "").split(",") if e.strip())
                todo.append((match.group(1), sub))
    return sorted(pins.values(), key=str.lower)


def code_version() -> str:
    """12 hex digits identifying the image's contents (the tag, and CHURNGUARD_CODE_VERSION)."""
    manifest = [f"{path.relative_to(ROOT)}\0{inputs_hash(path)}" for path in source_files()]
    manifest += [f"pyproject.toml\0{inputs_hash(ROOT / 'pyproject.toml')}", *dependency_pins()]
    if CONTAINERFILE not in source_files():  # it lives in training/ today; keep it hashed if it moves
        manifest.append(f"Containerfile\0{inputs_hash(CONTAINERFILE)}")
    return inputs_hash("\n".join(manifest))


def _stage_sources(target: Path) -> None:
    """The hashed sources in the layout pyproject.toml expects; infra/ and benchmarks/ (packaged too,
    never used in the image) as empty packages, README.md as a stub, so nothing unhashed gets in."""
    for path in source_files():
        destination = target / path.relative_to(ROOT)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
    shutil.copy2(ROOT / "pyproject.toml", target / "pyproject.toml")
    (target / "README.md").write_text("ChurnGuard (training image build); see the repository README.\n")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    directories = setuptools.get("package-dir", {})
    for package in setuptools["packages"]:  # every package pyproject.toml lists must exist to build
        folder = target / directories.get(package, package.replace(".", "/"))
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "__init__.py").write_text("")


def prepare_wheels(context: Path = CONTEXT) -> Path:
    """``pip wheel`` churnguard[train] with the host's pip (and its config): dependencies into
    ``context/deps`` (+ ``requirements.txt``), the project's wheel into ``context/project``."""
    deps, project = context / "deps", context / "project"
    pins = "\n".join(dependency_pins()) + "\n"
    marker = deps / "requirements.txt"
    if deps.exists() and (not marker.exists() or marker.read_text() != pins):
        shutil.rmtree(deps)  # other versions: start afresh so the image cannot pick a stale one
    deps.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(pins)
        source = Path(tmp) / "churnguard"
        _stage_sources(source)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--wheel-dir",
                str(deps),
                "--find-links",
                str(deps),  # wheels built from sdists last time are taken as they are
                "--constraint",
                str(constraints),
                f"{source}[{EXTRA}]",
            ],
            check=True,
            timeout=1800,
        )
    for wheel in deps.glob("churnguard-*.whl"):
        wheel.rename(project / wheel.name)
    marker.write_text(pins)
    return context


# Debian packages the image needs beyond Python wheels: LightGBM's wheel (the baselines of the
# training report) links the system OpenMP runtime, which the slim base image lacks.
SYSTEM_PACKAGES = ("libgomp1",)


def prepare_system_packages(context: Path = CONTEXT) -> Path:
    """The ``.deb`` files of ``SYSTEM_PACKAGES`` in ``context/debs`` (``apt-get download`` on the
    Debian host; the build has no network). On a host without apt-get the folder stays empty and the
    Containerfile installs them with apt-get instead (a build with network, e.g. Docker elsewhere)."""
    debs = context / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    (debs / ".keep").write_text("")  # COPY needs the folder to exist
    if shutil.which("apt-get"):
        download = ["apt-get", "download", *SYSTEM_PACKAGES]
        if subprocess.run(download, cwd=debs, timeout=300, capture_output=True).returncode != 0:
            # a fresh machine may have no package lists yet (as after infra.containers' install)
            subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600, capture_output=True)
            subprocess.run(download, cwd=debs, check=True, timeout=300, capture_output=True)
    return debs


def build_training_image(engine: Engine) -> str:
    """The training image's tag, built (base images, wheels, image) unless it exists already."""
    version = code_version()
    tag = f"{IMAGE}:{version}"
    if engine.image_exists(tag):
        return tag
    ensure_base_images(engine)
    started = time.time()
    prepare_wheels(CONTEXT)
    prepare_system_packages(CONTEXT)
    _log(f"wheels and system packages prepared in {time.time() - started:.0f} s")
    started = time.time()
    engine.build(tag, CONTAINERFILE, CONTEXT, {"BASE_IMAGE": PYTHON_BASE, "CODE_VERSION": version})
    _log(f"{tag} built in {time.time() - started:.0f} s")
    _remove_older_tags(engine, tag)
    return tag


def _remove_older_tags(engine: Engine, keep: str) -> None:
    """Earlier local builds (3 GB each, sharing the cached dependency layer); ECR keeps what was pushed."""
    listed = engine.run("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE, check=False).stdout.split()
    older = [tag for tag in listed if tag != keep and tag.split(":")[0].endswith(IMAGE.split("/")[-1])]
    if older:
        engine.run("rmi", *older, check=False)


def main() -> int:
    engine = ensure_engine()
    started = time.time()
    tag = build_training_image(engine)
    seconds = round(time.time() - started, 1)
    size = engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    print(json.dumps({"tag": tag, "seconds": seconds, "bytes": int(size) if size.isdigit() else size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
