"""A container engine for `sam local` and the training image: Docker where one runs, else podman.

With a working Docker (``docker info`` answers) everything uses it and the official images (SAM pulls
``public.ecr.aws/lambda/python:3.11-x86_64``; the training image builds FROM ``python:3.11-slim``).

Without Docker (our machines: no engine, no registry), as root, this sets up Debian's podman with
runc, serves the Docker API on a socket under /tmp (one per checkout) for the SAM CLI, and builds the
base images locally under the public names the rest expects:

* ``docker.io/library/python:3.11-slim-bookworm`` from ``debootstrap`` (Debian bookworm, Python 3.11);
* ``public.ecr.aws/lambda/python:3.11-x86_64``: that base plus what the official Lambda image adds
  and our functions rely on: ``awslambdaric`` and the runtime's ``boto3``/``botocore`` in
  ``/var/runtime``, a ``/var/runtime/bootstrap``, and the layer paths on ``sys.path``.

Images built from our own files (moto server, training image) are tagged with a hash of their inputs,
so a rebuild happens only when an input changed. Everything is idempotent and cached between runs.

    python -m infra.containers          # set up the engine and base images; prints DOCKER_HOST
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from infra.template import ROOT

CACHE = ROOT / ".cache" / "containers"
CONTAINER_FILES = ROOT / "infra" / "containers"
PYTHON_BASE = "docker.io/library/python:3.11-slim-bookworm"
LAMBDA_BASE = "public.ecr.aws/lambda/python:3.11-x86_64"
# The boto3 the python3.11 Lambda runtime ships (the functions' packages leave it out, so the emulated
# runtime must carry one, pinned like the real one).
LAMBDA_RUNTIME_BOTO3 = "boto3==1.40.4"
AWSLAMBDARIC = "awslambdaric==3.1.1"
DEBIAN_PACKAGES = [
    "podman",
    "runc",
    "debootstrap",
    "uidmap",
    "slirp4netns",
    "containernetworking-plugins",
    "fuse-overlayfs",
    "iptables",
]
# crun (podman's default) fails here (setrlimit not permitted; cgroups in hybrid mode); runc works
# once the default ulimits stay within what the sandbox allows.
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""
HOST_WHEEL_FLAGS = [
    "--quiet",
    "--disable-pip-version-check",
    "--no-compile",
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
]


class EngineUnavailableError(RuntimeError):
    """No container engine can be had here; the message says why (tests print it when they skip)."""


@dataclass(frozen=True)
class Engine:
    kind: str  # "docker" or "podman"
    docker_host: str | None  # the Docker API socket SAM talks to (podman's service); None = default

    @property
    def cli(self) -> str:
        return self.kind

    def env(self) -> dict[str, str]:
        """Environment for the SAM CLI and docker-API clients."""
        env = dict(os.environ)
        if self.docker_host:
            env["DOCKER_HOST"] = self.docker_host
        if self.kind == "podman":
            env["CONTAINERS_CONF"] = str(CACHE / "containers.conf")
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 1800, **kwargs
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.cli, *args],
            env=self.env(),
            check=check,
            timeout=timeout,
            text=True,
            capture_output=True,
            **kwargs,
        )

    def image_exists(self, tag: str) -> bool:
        return self.run("image", "inspect", tag, check=False).returncode == 0

    def build(
        self, tag: str, containerfile: Path, context: Path, build_args: dict[str, str] | None = None
    ) -> None:
        args = ["build", "-t", tag, "-f", str(containerfile)]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        result = self.run(*args, str(context), check=False)
        if result.returncode:
            raise RuntimeError(f"building {tag} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def _docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    try:  # a client alone is not enough: our machines have the docker CLI and no daemon
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _log(message: str) -> None:
    print(f"[containers] {message}", file=sys.stderr, flush=True)


def _install_podman() -> None:
    if all(shutil.which(tool) for tool in ("podman", "runc", "debootstrap")):
        return
    if os.geteuid() != 0:
        raise EngineUnavailableError(
            "no running Docker, and installing podman needs root (apt-get): run as root or start Docker"
        )
    if not shutil.which("apt-get"):
        raise EngineUnavailableError("no running Docker, and no apt-get to install podman (Debian or Ubuntu)")
    _log("installing podman + runc + debootstrap (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *DEBIAN_PACKAGES],
        check=True,
        env=env,
        timeout=1200,
        stdout=subprocess.DEVNULL,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _podman_service(conf: Path) -> str:
    # Under /tmp, named per checkout: a unix socket path must stay under 108 bytes, checkouts may not.
    socket_path = Path(tempfile.gettempdir()) / f"churnguard-podman-{inputs_hash(str(ROOT))[:8]}.sock"
    host = f"unix://{socket_path}"
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def answers() -> bool:
        result = subprocess.run(
            ["podman", "--url", host, "version"], env=env, capture_output=True, timeout=30
        )
        return result.returncode == 0

    pid_file = CACHE / "podman-service.pid"
    if socket_path.exists() and pid_file.exists() and _alive(int(pid_file.read_text())) and answers():
        return host
    # Not ours, or not alive: e.g. a service left by an earlier checkout at the same path, started with a
    # containers.conf (and log and state) that no longer exist; containers it starts fail at random.
    subprocess.run(["pkill", "-f", f"podman system service --time=0 {host}"], check=False)
    socket_path.unlink(missing_ok=True)
    log = (CACHE / "podman-service.log").open("ab")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", host],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # outlives this process: the next make target reuses it
    )
    pid_file.write_text(str(service.pid))
    deadline = time.time() + 30
    while not (socket_path.exists() and answers()):
        if time.time() > deadline:
            raise EngineUnavailableError(
                f"podman system service did not come up (see {CACHE / 'podman-service.log'})"
            )
        time.sleep(0.3)
    return host


def stop_podman_service() -> bool:
    """Stop the podman API service this checkout started (``_podman_service``), if it runs; True if
    one was stopped. It outlives a run on purpose (the next make target reuses it), so a throwaway
    checkout (CI) stops it when its tests end, rather than leave a service per clone behind."""
    pid_file = CACHE / "podman-service.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink(missing_ok=True)
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    return True


def ensure_engine() -> Engine:
    """Docker if it runs; else podman, installed and configured on first use (root)."""
    if os.environ.get("CHURNGUARD_CONTAINER_ENGINE", "") != "podman" and _docker_works():
        return Engine("docker", None)
    _install_podman()
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != PODMAN_CONF:
        conf.write_text(PODMAN_CONF)
    return Engine("podman", _podman_service(conf))


def inputs_hash(*parts: str | bytes | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            part = part.read_bytes()
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:12]


def pip_target(directory: Path, *requirements: str) -> None:
    """Install manylinux cp311 wheels into ``directory`` from the host (no network in the build)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            *HOST_WHEEL_FLAGS,
            "--target",
            str(directory),
            *requirements,
        ],
        check=True,
        timeout=900,
    )


def _python_base(engine: Engine) -> None:
    """Debian bookworm + Python 3.11 (venv, CA certificates), named like the public slim image."""
    if engine.image_exists(PYTHON_BASE):
        return
    started = time.time()
    _log(f"building {PYTHON_BASE} with debootstrap (once; about 90 s)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
            ],
            check=True,
            timeout=1200,
            stdout=subprocess.DEVNULL,
        )
        (rootfs / "usr/bin/python").symlink_to("python3")  # the public image answers to `python` too
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        engine.run(
            "import",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            str(archive),
            PYTHON_BASE,
        )
    _log(f"{PYTHON_BASE} built in {time.time() - started:.0f} s")


def _lambda_base(engine: Engine) -> None:
    containerfile = CONTAINER_FILES / "lambda-python.Containerfile"
    version = inputs_hash(
        containerfile, CONTAINER_FILES / "lambda-bootstrap", LAMBDA_RUNTIME_BOTO3, AWSLAMBDARIC
    )
    marker = CACHE / "lambda-base.version"
    if engine.image_exists(LAMBDA_BASE) and marker.exists() and marker.read_text() == version:
        return
    started = time.time()
    _log(f"building {LAMBDA_BASE} (home-made stand-in for the official image)")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        context = Path(tmp)
        pip_target(context / "runtime", AWSLAMBDARIC, LAMBDA_RUNTIME_BOTO3)
        shutil.copy(CONTAINER_FILES / "lambda-bootstrap", context / "bootstrap")
        engine.build(LAMBDA_BASE, containerfile, context, {"BASE_IMAGE": PYTHON_BASE})
    marker.write_text(version)
    _log(f"{LAMBDA_BASE} built in {time.time() - started:.0f} s")


def ensure_base_images(engine: Engine) -> None:
    """The images SAM and our Containerfiles start FROM; with Docker they come from the registries."""
    if engine.kind == "docker":
        return
    _python_base(engine)
    _lambda_base(engine)


def moto_image(engine: Engine) -> str:
    """The moto server as a container, so that function containers reach it on a container network."""
    from importlib.metadata import version

    requirement = f"moto[server,s3,sqs,dynamodb,ssm,events,sagemaker,stepfunctions]=={version('moto')}"
    containerfile = CONTAINER_FILES / "moto.Containerfile"
    tag = f"localhost/churnguard-moto:{inputs_hash(containerfile, requirement)}"
    if engine.image_exists(tag):
        return tag
    ensure_base_images(engine)
    _log(f"building {tag}")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        pip_target(Path(tmp) / "site-packages", requirement)
        engine.build(tag, containerfile, Path(tmp), {"BASE_IMAGE": PYTHON_BASE})
    return tag


def main() -> int:
    try:
        engine = ensure_engine()
        ensure_base_images(engine)
    except EngineUnavailableError as exc:
        print(f"no container engine: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"engine": engine.kind, "DOCKER_HOST": engine.docker_host}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
