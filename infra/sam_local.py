"""`sam local` on the functions as `sam build` packages them, against moto in a container.

    python -m infra.sam_local --serve [--port 3000]   # make serve-sam: sam local start-api until Ctrl-C

What runs is what deploys: each function's built folder plus the built layer, in a Lambda runtime
container that has only the runtime's boto3 (``infra/containers.py``: the official image with
Docker, a home-made stand-in with podman). The AWS side is moto's server as a container on a
container network of ours: function containers reach it by its address on that network, host-side
code (setup, tests) through ``127.0.0.1:<port>``. The resources are the ones ``template.yaml``
declares (``infra.local_stack.resources.create_resources``), and every function gets the template's
environment with the references resolved to them (``--env-vars``), plus ``AWS_ENDPOINT_URL`` through
the template's ``LocalAwsEndpoint`` parameter (empty, so absent, in AWS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from infra.containers import Engine, ensure_base_images, ensure_engine, moto_image
from infra.lambda_harness import load_event
from infra.local_aws import REGION, free_port
from infra.local_stack.model import write_holdout
from infra.local_stack.resources import LocalResources, create_resources
from infra.template import ROOT, load_template

NETWORK_PREFIX = "churnguard-sam"  # one network per stack: stopping it removes exactly its containers
BUILD_DIR = ROOT / ".aws-sam" / "build"
INFRA_VENV = ROOT / ".cache" / "venv-infra"
MOTO_PORT_IN_CONTAINER = 5000
# Credentials the SAM CLI hands to the function containers (moto accepts any).
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}


def sam_cli() -> str:
    candidate = INFRA_VENV / "bin" / "sam"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("sam")
    if not found:
        raise RuntimeError(f"no SAM CLI: make the tool venv ({INFRA_VENV}) or install aws-sam-cli")
    return found


def sam_env(engine: Engine) -> dict[str, str]:
    return {
        **engine.env(),
        **LOCAL_CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "SAM_CLI_TELEMETRY": "0",
        "SAM_CLI_CONTAINER_CONNECTION_TIMEOUT": "60",
    }


def sam_build(engine: Engine, build_dir: Path = BUILD_DIR) -> Path:
    """`sam build` exactly as a deploy does it (no container: makefile + python builders on this host)."""
    started = time.time()
    result = subprocess.run(
        [sam_cli(), "build", "--build-dir", str(build_dir), "--template", str(ROOT / "template.yaml")],
        cwd=ROOT,
        env=sam_env(engine),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode:
        raise RuntimeError(f"sam build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    print(f"[sam] sam build: {time.time() - started:.0f} s", file=sys.stderr)
    return build_dir / "template.yaml"


@dataclass
class MotoContainer:
    """moto's server on our container network, published on 127.0.0.1 only."""

    engine: Engine
    image: str
    host_port: int = field(default_factory=free_port)
    name: str = ""
    address: str = ""

    @property
    def network(self) -> str:
        return f"{NETWORK_PREFIX}-{self.host_port}"

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def network_url(self) -> str:  # what the function containers use
        return f"http://{self.address}:{MOTO_PORT_IN_CONTAINER}"

    def start(self) -> None:
        if self.engine.run("network", "inspect", self.network, check=False).returncode:
            self.engine.run("network", "create", self.network)
        self.name = f"churnguard-moto-{self.host_port}"
        self.engine.run(
            "run",
            "-d",
            "--rm",
            "--name",
            self.name,
            "--network",
            self.network,
            "-p",
            f"127.0.0.1:{self.host_port}:{MOTO_PORT_IN_CONTAINER}",
            self.image,
        )
        inspected = json.loads(self.engine.run("inspect", self.name).stdout)[0]
        self.address = inspected["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.host_url + "/moto-api/", timeout=2)
                return
            except OSError:
                if time.time() > deadline:
                    logs = self.engine.run("logs", self.name, check=False)
                    self.stop()
                    raise RuntimeError(
                        f"moto container did not answer: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"
                    ) from None
                time.sleep(0.3)

    def stop(self) -> None:
        """The moto container, every function container SAM left on our network (warm containers
        outlive `sam local start-api` under podman), and the network."""
        listed = self.engine.run("ps", "-aq", "--filter", f"network={self.network}", check=False, timeout=60)
        containers = set(listed.stdout.split()) | ({self.name} if self.name else set())
        if containers:
            self.engine.run("rm", "-f", *sorted(containers), check=False, timeout=180)
        self.engine.run("network", "rm", self.network, check=False, timeout=60)


@dataclass
class Invocation:
    response: Any  # the function's return value (JSON-decoded)
    logs: str  # the function's and SAM's output (stderr)
    seconds: float


@dataclass
class SamLocalStack:
    engine: Engine
    moto: MotoContainer
    built_template: Path
    resources: LocalResources
    clients: dict[str, Any]
    workdir: Path
    env_overrides: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return self.resources.refs["DataBucket"]

    @property
    def parameter_overrides(self) -> list[str]:
        return ["--parameter-overrides", f"LocalAwsEndpoint={self.moto.network_url}"]

    def env_file(self) -> Path:
        """--env-vars: the template's environment resolved against the moto resources (SAM overrides
        only variables the template declares, which is why AWS_ENDPOINT_URL is declared there)."""
        env = {name: dict(values) for name, values in self.resources.function_env.items()}
        for name, values in self.env_overrides.items():
            env.setdefault(name, {}).update(values)
        path = self.workdir / "env.json"
        path.write_text(json.dumps(env, indent=1))
        return path

    def common_args(self) -> list[str]:
        args = ["--template", str(self.built_template), "--env-vars", str(self.env_file())]
        args += ["--docker-network", self.moto.network, "--region", REGION, *self.parameter_overrides]
        if self.engine.kind == "podman":  # no registry here: the base image was built locally
            args.append("--skip-pull-image")
        return args

    def invoke(self, function: str, event: dict[str, Any], timeout_s: float = 900) -> Invocation:
        event_path = self.workdir / f"event-{function}.json"
        event_path.write_text(json.dumps(event))
        started = time.time()
        result = subprocess.run(
            [sam_cli(), "local", "invoke", function, "--event", str(event_path), *self.common_args()],
            cwd=self.workdir,
            env=sam_env(self.engine),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        seconds = time.time() - started
        if result.returncode:
            raise RuntimeError(
                f"sam local invoke {function} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
            )
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        try:
            response = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            response = lines[-1]
        return Invocation(response, result.stderr, seconds)

    def start_api(self, port: int, warm: bool = True) -> subprocess.Popen:
        """`sam local start-api` on 127.0.0.1:port; returns once /v1/health answers (any status)."""
        return self._serve("start-api", port, warm, f"http://127.0.0.1:{port}/v1/health")

    def start_lambda(self, port: int, warm: bool = True) -> subprocess.Popen:
        """`sam local start-lambda` (the Lambda Invoke API on 127.0.0.1:port, for boto3)."""
        return self._serve("start-lambda", port, warm, f"http://127.0.0.1:{port}/")

    def _serve(self, command: str, port: int, warm: bool, probe: str) -> subprocess.Popen:
        args = [sam_cli(), "local", command, "--host", "127.0.0.1", "--port", str(port), *self.common_args()]
        if warm:
            args += ["--warm-containers", "EAGER"]
        log_path = self.workdir / f"{command}-{port}.log"
        process = subprocess.Popen(
            args,
            cwd=self.workdir,
            env=sam_env(self.engine),
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stop_process() ends SAM and its warm containers together
        )
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(probe, timeout=30)
                return process
            except urllib.error.HTTPError:  # any HTTP answer (503 before a model, 404) means it is up
                return process
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    stop_process(process)
                    raise RuntimeError(
                        f"sam local {command} did not come up: {log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(1)

    def scoring_job_event(self, key: str) -> dict[str, Any]:
        """The SQS event the scoring-jobs queue delivers for an object under incoming/ (its real eTag)."""
        etag = self.clients["s3"].head_object(Bucket=self.bucket, Key=key)["ETag"].strip('"')
        event = load_event("batch_score/sqs_s3_put.json")
        notification = json.loads(event["Records"][0]["body"])
        notification["Records"][0]["s3"]["bucket"]["name"] = self.bucket
        notification["Records"][0]["s3"]["object"].update(key=quote_plus(key, safe="/"), eTag=etag)
        event["Records"][0]["body"] = json.dumps(notification)
        return event

    def publish(self, model_dir: Path) -> str:
        from churnguard.model_store import publish_model

        pointer = publish_model(
            model_dir,
            s3_client=self.clients["s3"],
            ssm_client=self.clients["ssm"],
            bucket=self.bucket,
            parameter_name=self.resources.refs["ModelPointer"],
        )
        return pointer.version

    def stop(self) -> None:
        self.moto.stop()


@dataclass
class TrainingJobRun:
    exit_code: int
    failure: str | None  # /opt/ml/output/failure, as SageMaker reports it (FailureReason)
    model_artifacts: str | None  # s3://.../<job>/output/model.tar.gz on success
    opt_ml: Path
    logs: str
    seconds: float


def run_training_job(engine: Engine, job: dict[str, Any], s3: Any, workdir: Path) -> TrainingJobRun:
    """Run a CreateTrainingJob request (as DescribeTrainingJob returns it) the way SageMaker does:
    /opt/ml laid out from the request (hyperparameters.json, inputdataconfig.json, each File-mode
    channel downloaded from its S3 prefix), ``docker run <image> train`` without network, then
    /opt/ml/model packed as model.tar.gz under the output path."""
    name = job["TrainingJobName"]
    opt_ml = _lay_out_opt_ml(job, s3, workdir / name / "opt_ml")
    started = time.time()
    result = engine.run(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{opt_ml}:/opt/ml",
        job["AlgorithmSpecification"]["TrainingImage"],
        "train",
        check=False,
        timeout=job.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 3600),
    )
    seconds = time.time() - started
    failure_file = opt_ml / "output" / "failure"
    failure = failure_file.read_text() if failure_file.exists() else None
    artifacts = _upload_model_artifacts(job, s3, opt_ml, workdir / name) if result.returncode == 0 else None
    return TrainingJobRun(
        result.returncode, failure, artifacts, opt_ml, result.stdout + result.stderr, seconds
    )


def _lay_out_opt_ml(job: dict[str, Any], s3: Any, opt_ml: Path) -> Path:
    """/opt/ml as SageMaker prepares it for ``job``: config files, and each channel's S3 prefix
    downloaded under input/data/<channel>."""
    from urllib.parse import urlparse

    config = opt_ml / "input" / "config"
    config.mkdir(parents=True)
    for folder in ("model", "output/data", "code"):
        (opt_ml / folder).mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(job.get("HyperParameters", {})))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    channels = {}
    for channel in job.get("InputDataConfig", []):
        source = urlparse(channel["DataSource"]["S3DataSource"]["S3Uri"])
        prefix = source.path.lstrip("/")
        target = opt_ml / "input" / "data" / channel["ChannelName"]
        target.mkdir(parents=True)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source.netloc, Prefix=prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix) :].lstrip("/")
                if relative and not relative.endswith("/"):
                    (target / relative).parent.mkdir(parents=True, exist_ok=True)
                    s3.download_file(source.netloc, obj["Key"], str(target / relative))
        channels[channel["ChannelName"]] = {
            "TrainingInputMode": job["AlgorithmSpecification"].get("TrainingInputMode", "File"),
            "S3DistributionType": channel["DataSource"]["S3DataSource"].get("S3DataDistributionType", ""),
            "RecordWrapperType": "None",
        }
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    return opt_ml


def _upload_model_artifacts(job: dict[str, Any], s3: Any, opt_ml: Path, job_dir: Path) -> str:
    """/opt/ml/model packed as model.tar.gz under the job's output path; returns its s3:// URI."""
    import tarfile
    from urllib.parse import urlparse

    name = job["TrainingJobName"]
    archive = job_dir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted((opt_ml / "model").iterdir()):
            tar.add(path, arcname=path.name)
    output = urlparse(job["OutputDataConfig"]["S3OutputPath"])
    key = f"{output.path.strip('/')}/{name}/output/model.tar.gz".lstrip("/")
    s3.upload_file(str(archive), output.netloc, key)
    return f"s3://{output.netloc}/{key}"


def stop_process(process: subprocess.Popen) -> None:
    """Stop sam local start-api and the warm containers it started (its whole process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_sam_stack(model_dir: Path | None, workdir: Path, engine: Engine | None = None) -> SamLocalStack:
    """Engine + base images, `sam build`, the moto container with the template's resources, and (if
    given) a model published and a holdout written for the gate."""
    import boto3

    engine = engine or ensure_engine()
    ensure_base_images(engine)
    moto = MotoContainer(engine, moto_image(engine))
    built = sam_build(engine)
    moto.start()
    try:
        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION
        )
        clients = {
            name: session.client(name, endpoint_url=moto.host_url)
            for name in ("s3", "sqs", "ssm", "dynamodb", "events", "sagemaker", "stepfunctions")
        }
        resources = create_resources(
            load_template(),
            clients,
            prefix="churnguard-sam",
            parameters={"LocalAwsEndpoint": moto.network_url},
        )
        stack = SamLocalStack(engine, moto, built, resources, clients, workdir)
        if model_dir is not None:
            stack.publish(model_dir)
            write_holdout(clients["s3"], stack.bucket, model_dir)
        return stack
    except BaseException:
        moto.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help="keep sam local start-api up until Ctrl-C")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="default: the CDNOW model (trained if needed)"
    )
    args = parser.parse_args(argv)
    from infra.local_stack.model import ensure_model

    model_dir = args.model_dir or ensure_model()[0]
    with tempfile.TemporaryDirectory(prefix="churnguard-sam-") as tmp:
        stack = start_sam_stack(Path(model_dir), Path(tmp))
        api = None
        try:
            api = stack.start_api(args.port)
            print(
                f"sam local start-api: http://127.0.0.1:{args.port}/v1/scores (model from {model_dir})\n"
                f"AWS (moto) for the AWS CLI: AWS_ENDPOINT_URL={stack.moto.host_url} "
                f"bucket={stack.bucket}\nCtrl-C to stop.",
                flush=True,
            )
            if not args.serve:
                return 0
            while api.poll() is None:
                time.sleep(1)
            return api.returncode or 0
        except KeyboardInterrupt:
            return 0
        finally:
            if api is not None:
                stop_process(api)
            stack.stop()


if __name__ == "__main__":
    sys.exit(main())
