"""The one deploy command (``make deploy``): stack, training image, training events, first model.

    python -m infra.deploy [--dry-run] [--stack-name churnguard] [--region R] [--model-dir artifacts/model]
                           [--events DIR] [--guided] [--config-file samconfig.toml]
                           [--api-auth API_KEY|IAM|IAM_AND_API_KEY]

Steps, in order (``--dry-run`` prints every command line and every upload, runs nothing, makes no AWS
call; stack outputs not known yet print as ``<DataBucketName>`` placeholders):

1. ``sam build`` (the SAM CLI of ``.cache/venv-infra`` if present, else ``sam`` on PATH);
2. ``sam deploy``: ``--guided`` the first time (no samconfig file yet; its answers are saved there),
   plain after; always ``--parameter-overrides TrainingImageTag=<code version>``, plus
   ``ApiAuth=<mode>`` with ``--api-auth`` (without it the stack keeps its mode: API_KEY when new);
3. the stack outputs (CloudFormation DescribeStacks);
4. the training image: built, tagged ``<TrainingImageRepositoryUri>:<code version>`` and pushed to ECR
   (skipped when that tag is already there: the repository's tags are immutable);
5. the training events the scheduled job trains on, under ``s3://<bucket>/training-events/``: the
   ``--events`` directory (CSV / CSV.gz / Parquet in the canonical schema, every file validated before
   anything is uploaded; objects under the prefix that are not in it are removed), or CDNOW as one
   CSV.gz when the prefix is still empty;
6. the first model: ``--model-dir`` (trained when missing), the gate's holdout, then the pointer moved
   (``publish_model``) — only while the pointer still holds the stack's placeholder, or when
   ``--model-dir`` is given explicitly, so a re-deploy never rolls back a promoted model;
7. the API URL, how to read the API key and a ``curl`` that scores one customer (with IAM auth: the
   invoke policy to attach and an ``awscurl`` that signs the request).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gzip
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from churnguard.model_metadata import ModelMetadata, ModelMetadataError
from infra.template import ROOT

DEFAULT_STACK = "churnguard"
DEFAULT_MODEL_DIR = ROOT / "artifacts" / "model"
SAMCONFIG_NAMES = ("samconfig.toml", "samconfig.yaml", "samconfig.yml")
INFRA_SAM = ROOT / ".cache" / "venv-infra" / "bin" / "sam"
TRAINING_EVENTS_PREFIX = "training-events/"  # RetrainSettings.events_prefix: the job's train channel
MODELS_PREFIX = "models/"
HOLDOUT_KEYS = ("holdout/events.csv", "holdout/labels.csv", "holdout/meta.json")
MAX_REJECT_FRACTION = 0.05  # train.py's default --max-reject-fraction: the job would refuse more
PLACEHOLDER_VERSION = "none"  # the version in the template's ModelPointerInitialValue
API_KEY_RESOURCE = "ScoringApiApiKey"  # SAM: <api logical id>ApiKey for CreateUsagePlan: PER_API
API_AUTH_MODES = ("API_KEY", "IAM", "IAM_AND_API_KEY")  # the template's ApiAuth parameter
DEFAULT_API_AUTH = "API_KEY"
REQUIRED_OUTPUTS = ("ApiUrl", "DataBucketName", "ModelPointerParameter", "TrainingImageRepositoryUri")
# The stage is v1 and the routes are /v1/..., and ApiUrl already ends in the stage: route = ApiUrl + /v1/...
SCORES_ROUTE = "/v1/scores"
HEALTH_ROUTE = "/v1/health"
PLACEHOLDER_WORD = re.compile(r"[\w@%+=:,./-]*<[\w |-]+>[\w@%+=:,./<>-]*")
EXAMPLE_REQUEST = {
    "customers": [
        {
            "user_id": "c-1",
            "as_of": "1997-10-01",
            "events": [{"timestamp": "1997-01-12", "event_type": "order", "amount": 77.0, "quantity": 5}],
        }
    ]
}


class DeployError(RuntimeError):
    """A step cannot go on; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# options and the state the steps share
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    dry_run: bool
    stack_name: str
    region: str | None
    model_dir: Path
    model_dir_given: bool
    events_dir: Path | None
    guided: bool
    config_file: Path
    sam: str
    api_auth: str | None = None  # ApiAuth for this deploy; None: the stack keeps its own


@dataclass
class Deploy:
    """What the steps share: the options, then what earlier steps learned (outputs, code version)."""

    options: Options
    outputs: dict[str, str] = field(default_factory=dict)
    api_key_id: str | None = None
    _code_version: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict)

    def output(self, key: str) -> str:
        """A stack output, or ``<Key>`` while it is not known (dry run, before step 3)."""
        return self.outputs.get(key, f"<{key}>")

    @property
    def bucket(self) -> str:
        return self.output("DataBucketName")

    @property
    def region(self) -> str:
        return self.options.region or "<region>"

    @property
    def api_auth(self) -> str:
        """The stack's ApiAuth (its output, once read), else the one this deploy sets, else the default."""
        return self.outputs.get("ApiAuth") or self.options.api_auth or DEFAULT_API_AUTH

    @property
    def uses_api_key(self) -> bool:
        return self.api_auth != "IAM"

    def code_version(self) -> str:
        """The training image tag. A dry run shows ``<code-version>`` if it cannot be computed."""
        if self._code_version is None:
            try:
                from infra.training_image import code_version
            except ImportError as exc:
                if self.options.dry_run:
                    return "<code-version>"
                raise DeployError(f"infra/training_image.py is needed for the image tag: {exc}") from exc
            try:
                self._code_version = code_version()
            except Exception:
                if self.options.dry_run:
                    return "<code-version>"
                raise
        return self._code_version

    def client(self, service: str) -> Any:
        if self.options.dry_run:  # a dry run must never reach AWS
            raise AssertionError(f"dry run asked for an AWS {service} client")
        if not self.options.region:
            raise DeployError("no AWS region: pass --region (or set AWS_REGION / run sam deploy --guided)")
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.session.Session(region_name=self.options.region).client(service)
        return self._clients[service]


@dataclass(frozen=True)
class Step:
    title: str
    describe: Callable[[Deploy], list[str]]  # the commands / uploads it makes, printed before it runs
    run: Callable[[Deploy], None]


def shown(command: Iterable[str | Path]) -> str:
    """A command line as the user would type it; ``<Placeholder>`` parts are left unquoted."""
    return "$ " + " ".join(_shell_word(relative(part)) for part in command)


def _shell_word(word: str) -> str:
    return word if PLACEHOLDER_WORD.fullmatch(word) else shlex.quote(word)


def relative(path: str | Path) -> str:
    """Paths under the project root are shown relative to it (shorter, and the same on every machine)."""
    text = str(path)
    root = str(ROOT) + os.sep
    return text[len(root) :] if text.startswith(root) else text


def run_command(command: list[str], **kwargs: Any) -> None:
    """Run a command from the project root, its output on the terminal (sam --guided prompts there)."""
    try:
        result = subprocess.run(command, cwd=ROOT, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise DeployError(f"{command[0]} not found: {exc}") from exc
    if result.returncode:
        raise DeployError(
            f"`{shlex.join(relative(p) for p in command)}` exited with status {result.returncode}"
        )


# ---------------------------------------------------------------------------------------------
# samconfig, region, SAM CLI
# ---------------------------------------------------------------------------------------------


def default_config_file(root: Path = ROOT) -> Path:
    """The samconfig SAM itself would use in the project root (toml, yaml or yml)."""
    for name in SAMCONFIG_NAMES:
        if (root / name).exists():
            return root / name
    return root / SAMCONFIG_NAMES[0]


def samconfig_deploy_parameters(path: Path) -> dict[str, Any]:
    """``[default.deploy.parameters]`` merged over ``[default.global.parameters]``; {} when absent."""
    if not path.is_file():
        return {}
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = tomllib.loads(text)
    env = data.get("default", {}) or {}
    return {
        **((env.get("global") or {}).get("parameters") or {}),
        **((env.get("deploy") or {}).get("parameters") or {}),
    }


def resolve_region(explicit: str | None, config_file: Path) -> str | None:
    """--region, else samconfig's, else the AWS configuration's (environment, ~/.aws/config)."""
    if explicit:
        return explicit
    saved = samconfig_deploy_parameters(config_file).get("region")
    if saved:
        return str(saved)
    try:
        import boto3

        return boto3.session.Session().region_name
    except ImportError:
        return None


def sam_cli() -> str:
    if INFRA_SAM.exists():
        return str(INFRA_SAM)
    return shutil.which("sam") or "sam"


def first_deploy(options: Options) -> bool:
    return options.guided or not options.config_file.exists()


def sam_build_command(options: Options) -> list[str]:
    return [options.sam, "build"]


def sam_deploy_command(options: Options, code_version: str, guided: bool) -> list[str]:
    # SAM CLI keeps the stack's value for every parameter not overridden here (UsePreviousValue).
    overrides = [f"TrainingImageTag={code_version}"]
    if options.api_auth:
        overrides.append(f"ApiAuth={options.api_auth}")
    command = [options.sam, "deploy"]
    if guided:
        command.append("--guided")
    if options.config_file != default_config_file():
        command += ["--config-file", str(options.config_file)]
    command += ["--stack-name", options.stack_name]
    if options.region:
        command += ["--region", options.region]
    return [
        *command,
        "--capabilities",
        "CAPABILITY_IAM",
        "--resolve-s3",
        "--no-fail-on-empty-changeset",
        "--parameter-overrides",
        *overrides,
    ]


# ---------------------------------------------------------------------------------------------
# steps 1-3: build, deploy, outputs
# ---------------------------------------------------------------------------------------------


def describe_build(deploy: Deploy) -> list[str]:
    return [shown(sam_build_command(deploy.options))]


def run_build(deploy: Deploy) -> None:
    run_command(sam_build_command(deploy.options))


def describe_deploy(deploy: Deploy) -> list[str]:
    options = deploy.options
    if first_deploy(options):
        why = f"guided: {relative(options.config_file)} does not exist yet; the answers are saved there"
    else:
        why = f"settings remembered in {relative(options.config_file)}"
    return [f"({why})", shown(sam_deploy_command(options, deploy.code_version(), first_deploy(options)))]


def run_deploy(deploy: Deploy) -> None:
    options = deploy.options
    guided = first_deploy(options)
    if guided and options.config_file != default_config_file() and not options.config_file.exists():
        options.config_file.parent.mkdir(parents=True, exist_ok=True)
        options.config_file.touch()  # SAM refuses a --config-file that does not exist; guided fills it
    run_command(sam_deploy_command(options, deploy.code_version(), guided))
    if guided:  # the prompts may have changed the stack name or region: samconfig has the answers
        saved = samconfig_deploy_parameters(options.config_file)
        deploy.options = dataclasses.replace(
            options,
            stack_name=str(saved.get("stack_name") or options.stack_name),
            region=str(saved.get("region") or options.region or "") or None,
        )
        deploy._clients.clear()


def describe_outputs(deploy: Deploy) -> list[str]:
    return [
        f"CloudFormation DescribeStacks {deploy.options.stack_name} ({deploy.region}) -> "
        + ", ".join((*REQUIRED_OUTPUTS, "PromotionsQueueUrl", "ApiAuth"))
    ]


def stack_outputs(cloudformation: Any, stack_name: str) -> dict[str, str]:
    stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    missing = [key for key in REQUIRED_OUTPUTS if not outputs.get(key)]
    if missing:
        raise DeployError(f"stack {stack_name} has no output(s) {missing}: is it this project's template?")
    return outputs


def run_outputs(deploy: Deploy) -> None:
    deploy.outputs = stack_outputs(deploy.client("cloudformation"), deploy.options.stack_name)
    for key in sorted(deploy.outputs):
        print(f"    {key} = {deploy.outputs[key]}")


# ---------------------------------------------------------------------------------------------
# step 4: the training image
# ---------------------------------------------------------------------------------------------


def split_repository_uri(uri: str) -> tuple[str, str]:
    """``123.dkr.ecr.eu-west-1.amazonaws.com/name`` -> (registry, repository name)."""
    registry, _, name = uri.partition("/")
    if not name:
        raise DeployError(f"TrainingImageRepositoryUri {uri!r} is not <registry>/<repository>")
    return registry, name


def image_in_ecr(ecr: Any, repository: str, tag: str) -> bool:
    try:
        ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return False
    return True


def push_commands(engine_cli: str, local_tag: str, remote_tag: str, engine_kind: str) -> list[list[str]]:
    # SageMaker refuses OCI manifests; podman pushes OCI unless told to write Docker v2 schema 2.
    push_format = ["--format", "v2s2"] if engine_kind == "podman" else []
    return [[engine_cli, "tag", local_tag, remote_tag], [engine_cli, "push", *push_format, remote_tag]]


def describe_image(deploy: Deploy) -> list[str]:
    tag = deploy.code_version()
    repository_uri = deploy.output("TrainingImageRepositoryUri")
    registry = repository_uri.partition("/")[0] if "/" in repository_uri else "<registry>"
    remote = f"{repository_uri}:{tag}"
    local = f"localhost/churnguard-training:{tag}"
    engine = "<docker|podman>"
    return [
        f"(skipped when {remote} is already in ECR: the repository's tags are immutable)",
        f"build {local} (infra.training_image.build_training_image, training/Containerfile)",
        "ECR GetAuthorizationToken -> "
        + shown([engine, "login", "--username", "AWS", "--password-stdin", registry])
        + " (the password goes over stdin, never on a command line)",
        *(shown(c) for c in push_commands(engine, local, remote, "")),
    ]


def ecr_login(engine: Any, ecr: Any, registry: str) -> None:
    data = ecr.get_authorization_token()["authorizationData"][0]
    username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    result = engine.run(
        "login", "--username", username, "--password-stdin", registry, input=password, check=False
    )
    if result.returncode:
        raise DeployError(f"{engine.cli} login to {registry} failed: {result.stderr.strip()[-500:]}")


def run_image(deploy: Deploy) -> None:
    tag = deploy.code_version()
    repository_uri = deploy.outputs["TrainingImageRepositoryUri"]
    registry, repository = split_repository_uri(repository_uri)
    remote = f"{repository_uri}:{tag}"
    ecr = deploy.client("ecr")
    if image_in_ecr(ecr, repository, tag):
        print(f"    {remote} is already in ECR: nothing to push")
        return
    from infra.containers import ensure_engine
    from infra.training_image import build_training_image

    engine = ensure_engine()
    local = build_training_image(engine)
    if local.rpartition(":")[2] != tag:
        raise DeployError(f"the training image was built as {local}, but the stack expects the tag {tag}")
    ecr_login(engine, ecr, registry)
    for command in push_commands(engine.cli, local, remote, engine.kind):
        print(f"    {shown(command)}")
        result = engine.run(*command[1:], check=False, timeout=3600)
        if result.returncode:
            raise DeployError(f"`{shlex.join(command)}` failed: {result.stderr.strip()[-1000:]}")


# ---------------------------------------------------------------------------------------------
# step 5: training events (boto3 clients as arguments: tested against moto)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventUpload:
    source: Path | None  # None: CDNOW, written as one CSV.gz
    key: str


def event_files(events_dir: Path) -> list[Path]:
    """The files the training job reads from its train channel (the same suffixes, recursively)."""
    from training.data import DATA_FILE_SUFFIXES

    if not events_dir.is_dir():
        raise DeployError(f"--events {events_dir}: not a directory")
    return sorted(
        p for p in events_dir.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_FILE_SUFFIXES)
    )


def plan_event_uploads(events_dir: Path | None, prefix: str = TRAINING_EVENTS_PREFIX) -> list[EventUpload]:
    if events_dir is None:
        return [EventUpload(None, f"{prefix}cdnow.csv.gz")]
    files = event_files(events_dir)
    if not files:
        raise DeployError(f"--events {events_dir}: no .csv, .csv.gz or .parquet files")
    return [EventUpload(p, prefix + p.relative_to(events_dir).as_posix()) for p in files]


def check_event_file(path: Path) -> int:
    """Validate one file like the training job will; returns its valid rows. Refusals name the file."""
    from churnguard.events import EventLogError, read_event_file, validate_events

    try:
        raw = read_event_file(str(path))
        if raw.empty:
            raise EventLogError("the file has no rows")
        validated = validate_events(raw)
    except EventLogError as exc:
        raise DeployError(f"{path}: {exc}") from exc
    rejected = len(validated.rejected)
    if validated.events.empty or rejected > MAX_REJECT_FRACTION * validated.rows_in:
        examples = validated.rejected.head(3).to_dict("records")
        raise DeployError(
            f"{path}: {rejected} of {validated.rows_in} rows are invalid (the training job accepts at most "
            f"{MAX_REJECT_FRACTION:.0%}); e.g. {examples}"
        )
    if rejected:
        print(f"    {path}: {rejected} of {validated.rows_in} rows invalid (skipped by training)")
    return len(validated.events)


def cdnow_csv_gz() -> bytes:
    """CDNOW without the gate's holdout customers (the protocol's test split): a challenger trained on
    these events is compared on customers it has never seen."""
    from churnguard.datasets import load_cdnow
    from infra.local_stack import cdnow_holdout

    events = load_cdnow()
    holdout_users = set(cdnow_holdout()[0])
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as archive:
        archive.write(events[~events["user_id"].isin(holdout_users)].to_csv(index=False).encode())
    return buffer.getvalue()


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def upload_training_events(
    s3: Any, bucket: str, events_dir: Path | None, *, prefix: str = TRAINING_EVENTS_PREFIX
) -> list[str]:
    """Put the training events under ``s3://bucket/prefix``; returns the keys written.

    With ``events_dir``: every file is validated first (nothing is uploaded if one is refused), then
    uploaded, then objects under the prefix that are not in the directory are deleted (the bucket is
    versioned, so they stay recoverable). Without: CDNOW, unless the prefix already holds events (a
    re-deploy never replaces real data with the default).
    """
    uploads = plan_event_uploads(events_dir, prefix)
    existing = keys_under(s3, bucket, prefix)
    if events_dir is None:
        if existing:
            print(f"    s3://{bucket}/{prefix} already holds {len(existing)} object(s): kept")
            return []
        s3.put_object(Bucket=bucket, Key=uploads[0].key, Body=cdnow_csv_gz())
        return [uploads[0].key]
    rows = sum(check_event_file(u.source) for u in uploads if u.source is not None)
    print(f"    {len(uploads)} file(s), {rows:,} valid rows: ok")
    for upload in uploads:
        s3.upload_file(str(upload.source), bucket, upload.key)
    stale = sorted(set(existing) - {u.key for u in uploads})
    for start in range(0, len(stale), 1000):
        batch = stale[start : start + 1000]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
    if stale:
        print(f"    removed {len(stale)} object(s) under s3://{bucket}/{prefix} not in {events_dir}")
    return [u.key for u in uploads]


def describe_events(deploy: Deploy) -> list[str]:
    events_dir = deploy.options.events_dir
    uploads = plan_event_uploads(events_dir)
    target = f"s3://{deploy.bucket}/"
    if events_dir is None:
        return [
            f"(only while {target}{TRAINING_EVENTS_PREFIX} is empty; --events DIR for your own data)",
            f"upload CDNOW (churnguard.datasets.load_cdnow) as CSV.gz -> {target}{uploads[0].key}",
        ]
    return [
        f"validate {len(uploads)} file(s) with churnguard.events (nothing is uploaded if one is refused)",
        *(f"upload {relative(u.source)} -> {target}{u.key}" for u in uploads),
        f"delete objects under {target}{TRAINING_EVENTS_PREFIX} that are not in {relative(events_dir)}",
    ]


def run_events(deploy: Deploy) -> None:
    keys = upload_training_events(
        deploy.client("s3"), deploy.outputs["DataBucketName"], deploy.options.events_dir
    )
    for key in keys:
        print(f"    uploaded s3://{deploy.outputs['DataBucketName']}/{key}")


# ---------------------------------------------------------------------------------------------
# step 6: first model + gate holdout (boto3 clients as arguments: tested against moto)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstModel:
    pointer: Any  # churnguard.model_store.ModelPointer: the pointer after this step
    published: bool
    holdout_customers: int = 0


def current_model(ssm: Any, parameter_name: str) -> Any | None:
    """The model the pointer names, or None while it holds the stack's placeholder."""
    from churnguard.model_store import ModelPointer
    from churnguard.scorer import ModelLoadError

    value = ssm.get_parameter(Name=parameter_name)["Parameter"]["Value"]
    try:
        pointer = ModelPointer.parse(value)
    except ModelLoadError:
        return None
    return None if pointer.version == PLACEHOLDER_VERSION else pointer


def ensure_first_model(model_dir: Path, events_dir: Path | None = None) -> Path:
    """An existing model directory is used as is; a missing one is trained (CDNOW, or ``events_dir``)."""
    if (model_dir / "metadata.json").exists():
        return model_dir
    if events_dir is None:
        from infra.local_stack import ensure_model

        try:
            ensure_model(model_dir)
        except SystemExit as exc:
            raise DeployError(f"training the CDNOW model into {model_dir} failed: {exc}") from exc
        return model_dir
    from training import train

    if train.main(["--model-dir", str(model_dir), "--train", str(events_dir), "--verbose", "0"]) != 0:
        raise DeployError(f"training on {events_dir} into {model_dir} failed")
    return model_dir


def holdout_from_events(s3: Any, bucket: str, metadata: ModelMetadata, events_dir: Path) -> int | None:
    """For a model trained on exactly ``events_dir``: its test customers (train.py's split), else None."""
    if metadata.data.source != "channel:train":
        return None
    from churnguard.tabular import churn_labels, cohort
    from training.data import load_channel, stratified_split

    source = load_channel(str(events_dir))
    if source.data_sha256 != metadata.data.sha256:
        return None
    protocol = metadata.protocol
    users = cohort(source.events, protocol.as_of)
    labels = churn_labels(source.events, users, protocol.as_of, protocol.horizon_weeks)
    _, test = stratified_split(labels, protocol.test_fraction, protocol.seed)
    from infra.local_stack import put_holdout

    events = source.events[source.events["user_id"].isin(set(users[test]))]
    return put_holdout(s3, bucket, users[test], labels[test], events, protocol.as_of)


def write_gate_holdout(s3: Any, bucket: str, model_dir: Path, events_dir: Path | None = None) -> int:
    """The labelled holdout the promote gate compares champion and challenger on; returns its customers.

    A model trained on the ``--events`` data gets its own test customers; otherwise
    ``infra.local_stack.write_holdout`` (CDNOW test customers, or a synthetic sample for other models).
    """
    metadata = ModelMetadata.from_directory(model_dir)
    if events_dir is not None:
        customers = holdout_from_events(s3, bucket, metadata, events_dir)
        if customers is not None:
            return customers
        print(
            f"    warning: {model_dir} was not trained on {events_dir}; the gate's holdout follows the "
            f"model's data ({metadata.data.source}), not the events retraining will use"
        )
    from infra.local_stack import write_holdout

    return write_holdout(s3, bucket, model_dir)


def publish_first_model(
    s3: Any,
    ssm: Any,
    *,
    bucket: str,
    parameter_name: str,
    model_dir: Path,
    events_dir: Path | None = None,
    replace: bool = False,
) -> FirstModel:
    """Holdout, then ``publish_model`` (the pointer moves last), unless the stack already has a model.

    ``replace``: publish even if the pointer names a model (an explicit ``--model-dir``).
    """
    from churnguard.model_store import publish_model

    current = current_model(ssm, parameter_name)
    if current is not None and not replace:
        return FirstModel(current, published=False)
    model_dir = ensure_first_model(model_dir, events_dir)
    customers = write_gate_holdout(s3, bucket, model_dir, events_dir)
    pointer = publish_model(
        model_dir, s3_client=s3, ssm_client=ssm, bucket=bucket, parameter_name=parameter_name
    )
    return FirstModel(pointer, published=True, holdout_customers=customers)


def model_version(model_dir: Path) -> str | None:
    try:
        return ModelMetadata.from_directory(model_dir).model_version
    except (OSError, ModelMetadataError):
        return None


def describe_model(deploy: Deploy) -> list[str]:
    from churnguard.model_store import MODEL_FILES

    options = deploy.options
    pointer = deploy.output("ModelPointerParameter")
    version = model_version(options.model_dir)
    lines = [
        "(always: --model-dir was given)"
        if options.model_dir_given
        else f"(only while {pointer} holds the stack's placeholder: a re-deploy keeps the serving model)"
    ]
    if version is None:
        data = (
            relative(options.events_dir) if options.events_dir else "CDNOW (infra.local_stack.ensure_model)"
        )
        lines.append(f"train a model on {data} into {relative(options.model_dir)} (it does not exist yet)")
        version, names = "<model version>", [n for n in MODEL_FILES if n != "model_dynamic_range.tflite"]
    else:
        lines.append(f"model {relative(options.model_dir)}, version {version}")
        names = [n for n in MODEL_FILES if (options.model_dir / n).exists()]
    prefix = f"s3://{deploy.bucket}/{MODELS_PREFIX}{version}/"
    lines += [f"upload gate holdout -> s3://{deploy.bucket}/{key}" for key in HOLDOUT_KEYS]
    for name in sorted(names, key=lambda n: n == "metadata.json"):  # publish_model's order
        lines.append(f"upload {relative(options.model_dir / name)} -> {prefix}{name}")
    lines.append(f"SSM PutParameter {pointer} = " + json.dumps({"version": version, "s3_uri": prefix}))
    return lines


def run_model(deploy: Deploy) -> None:
    result = publish_first_model(
        deploy.client("s3"),
        deploy.client("ssm"),
        bucket=deploy.outputs["DataBucketName"],
        parameter_name=deploy.outputs["ModelPointerParameter"],
        model_dir=deploy.options.model_dir,
        events_dir=deploy.options.events_dir,
        replace=deploy.options.model_dir_given,
    )
    if result.published:
        print(
            f"    published {result.pointer.version} to {result.pointer.s3_uri}; gate holdout: "
            f"{result.holdout_customers:,} customers"
        )
    else:
        print(
            f"    the pointer already names {result.pointer.version}: kept "
            "(pass --model-dir to publish another model; rollback: python -m churnguard.model_store rollback)"
        )


# ---------------------------------------------------------------------------------------------
# step 7: how to call the API
# ---------------------------------------------------------------------------------------------


def api_key_id(cloudformation: Any, stack_name: str) -> str:
    resource = cloudformation.describe_stack_resource(
        StackName=stack_name, LogicalResourceId=API_KEY_RESOURCE
    )
    return resource["StackResourceDetail"]["PhysicalResourceId"]


def instructions(deploy: Deploy) -> list[str]:
    """The API URL, the command that reads the API key (never the key itself), a scoring request:
    ``curl`` with the key, or with IAM auth ``awscurl`` (signs with the caller's AWS credentials)."""
    api_url = deploy.output("ApiUrl").rstrip("/")
    scores_url = f"{api_url}{SCORES_ROUTE}"
    body = shlex.quote(json.dumps(EXAMPLE_REQUEST))
    lines = [
        f"API: {api_url} (ApiUrl ends in the stage, v1; the routes under it are {SCORES_ROUTE}, "
        f"/v1/model and {HEALTH_ROUTE}); auth: ApiAuth={deploy.api_auth}",
        f"health (no key, no signature): curl -s {api_url}{HEALTH_ROUTE}",
    ]
    key_header = ""
    if deploy.uses_api_key:
        key_id = deploy.api_key_id or f"<id of {API_KEY_RESOURCE}>"
        get_key = (
            f"aws apigateway get-api-keys --include-values --region {deploy.region} "
            f"--query \"items[?id=='{key_id}'].value\" --output text"
        )
        lines.append(f"API key ({API_KEY_RESOURCE} in the usage plan): export API_KEY=$({get_key})")
        key_header = ' -H "x-api-key: $API_KEY"'
    if deploy.api_auth == DEFAULT_API_AUTH:
        client = "curl -s"
    else:
        lines.append(
            "IAM: the caller's role or user needs execute-api:Invoke on the scoring routes: attach "
            f"{deploy.output('ScoringApiInvokePolicyArn')}; requests are SigV4-signed (service "
            "execute-api), e.g. with awscurl (pip install awscurl) or botocore's SigV4Auth"
        )
        client = f"awscurl --service execute-api --region {deploy.region}"
    return [
        *lines,
        "score one customer:",
        f"  {client} -X POST {_shell_word(scores_url)}{key_header} "
        f"-H 'Content-Type: application/json' -d {body}",
        f"promotions queue: {deploy.output('PromotionsQueueUrl')}",
    ]


def describe_instructions(deploy: Deploy) -> list[str]:
    lines = []
    if deploy.uses_api_key:
        lines.append(
            f"CloudFormation DescribeStackResource {API_KEY_RESOURCE} -> the API key id (not the key)"
        )
    return lines + instructions(deploy) if deploy.options.dry_run else lines


def run_instructions(deploy: Deploy) -> None:
    if deploy.uses_api_key:
        deploy.api_key_id = api_key_id(deploy.client("cloudformation"), deploy.options.stack_name)
    for line in instructions(deploy):
        print(f"    {line}")


# ---------------------------------------------------------------------------------------------
# the plan and the command line
# ---------------------------------------------------------------------------------------------


def plan() -> list[Step]:
    return [
        Step("sam build: functions and layer", describe_build, run_build),
        Step("sam deploy: the stack, TrainingImageTag = the code version", describe_deploy, run_deploy),
        Step("read the stack outputs", describe_outputs, run_outputs),
        Step("training image: build, tag, push to ECR", describe_image, run_image),
        Step(
            f"training events for scheduled retraining -> {TRAINING_EVENTS_PREFIX}",
            describe_events,
            run_events,
        ),
        Step("first model: gate holdout, publish, model pointer", describe_model, run_model),
        Step("how to call the API", describe_instructions, run_instructions),
    ]


def execute(deploy: Deploy, steps: list[Step]) -> int:
    if deploy.options.dry_run:
        print("DRY RUN: nothing runs and no AWS call is made; <Name> = a stack output not known yet\n")
    for number, step in enumerate(steps, start=1):
        label = f"step {number}/{len(steps)} ({step.title})"
        print(f"[{number}/{len(steps)}] {step.title}", flush=True)
        try:
            for line in step.describe(deploy):
                print(f"    {line}", flush=True)
            if not deploy.options.dry_run:
                step.run(deploy)
        except KeyboardInterrupt:
            print(f"\ndeploy interrupted at {label}", file=sys.stderr)
            return 130
        except Exception as exc:
            kind = "" if isinstance(exc, DeployError) else f"{type(exc).__name__}: "
            print(f"\ndeploy failed at {label}: {kind}{exc}", file=sys.stderr)
            return 1
    print("\ndry run complete" if deploy.options.dry_run else "\ndeployed", flush=True)
    return 0


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print every command and upload, run nothing")
    parser.add_argument("--stack-name", help=f"default: samconfig's stack_name, else {DEFAULT_STACK}")
    parser.add_argument("--region", help="default: samconfig's region, else the AWS configuration's")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="the first model (default artifacts/model, trained when missing); given explicitly, it is "
        "published even if the stack already serves a model",
    )
    parser.add_argument(
        "--events",
        type=Path,
        help="directory of CSV / CSV.gz / Parquet events to retrain on (default: CDNOW)",
    )
    parser.add_argument("--guided", action="store_true", help="sam deploy --guided even if samconfig exists")
    parser.add_argument(
        "--api-auth",
        choices=API_AUTH_MODES,
        help="the template's ApiAuth: API_KEY (x-api-key + usage plan), IAM (SigV4) or IAM_AND_API_KEY; "
        "default: the stack keeps its current mode (API_KEY on a new stack)",
    )
    parser.add_argument(
        "--config-file", type=Path, help="samconfig file (default: samconfig.toml in the project root)"
    )
    args = parser.parse_args(argv)
    config_file = (args.config_file or default_config_file()).absolute()
    saved = samconfig_deploy_parameters(config_file)
    return Options(
        dry_run=args.dry_run,
        stack_name=args.stack_name or str(saved.get("stack_name") or DEFAULT_STACK),
        region=resolve_region(args.region, config_file),
        model_dir=(args.model_dir or DEFAULT_MODEL_DIR).absolute(),
        model_dir_given=args.model_dir is not None,
        events_dir=args.events.absolute() if args.events else None,
        guided=args.guided,
        config_file=config_file,
        sam=sam_cli(),
        api_auth=args.api_auth,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    return execute(Deploy(options), plan())


if __name__ == "__main__":
    sys.exit(main())
