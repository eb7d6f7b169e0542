"""infra/deploy.py: the dry run as a subprocess (no AWS), and the data steps against moto over HTTP."""

import base64
import dataclasses
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from botocore.stub import Stubber

from infra import deploy
from tests.helpers import FIXTURE_MODEL, ROOT

BUCKET = "churnguard-databucket-abc"
POINTER = "ModelPointer-abc"
PLACEHOLDER = '{"version": "none", "s3_uri": "s3://replace-me/models/none/"}'  # the template's default
CLOSED_PORT = "http://127.0.0.1:9"


def run_dry(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": CLOSED_PORT,  # any AWS call would fail
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    env.pop("AWS_REGION", None)
    env.pop("AWS_DEFAULT_REGION", None)
    return subprocess.run(
        [sys.executable, "-m", "infra.deploy", "--dry-run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_events(directory: Path, events: pd.DataFrame, customers: int) -> pd.DataFrame:
    """A few hundred CDNOW rows as CSV + CSV.gz + Parquet (in a subdirectory)."""
    users = sorted(events["user_id"].unique(), key=int)[:customers]
    sample = events[events["user_id"].isin(users)].reset_index(drop=True)
    thirds = [sample.iloc[i::3] for i in range(3)]
    (directory / "more").mkdir(parents=True)
    thirds[0].to_csv(directory / "part-1.csv", index=False)
    thirds[1].to_csv(directory / "part-2.csv.gz", index=False)
    thirds[2].to_parquet(directory / "more" / "part-3.parquet", index=False)
    return sample


def read_object(s3, key: str) -> pd.DataFrame:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    if key.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(body))
    return pd.read_csv(io.BytesIO(gzip.decompress(body) if key.endswith(".gz") else body))


@pytest.fixture
def stack(aws):
    """The bucket and the model pointer as a fresh stack has them."""
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    aws["ssm"].put_parameter(Name=POINTER, Value=PLACEHOLDER, Type="String")
    return aws


# --- the dry run ---------------------------------------------------------------------------------


def test_dry_run_prints_every_step_in_order_and_makes_no_aws_call(tmp_path, cdnow_subset):
    events = tmp_path / "events"
    write_events(events, cdnow_subset, 40)
    result = run_dry(
        "--region",
        "eu-west-1",
        "--config-file",
        str(tmp_path / "samconfig.toml"),  # absent: the first deploy, guided
        "--events",
        str(events),
        "--model-dir",
        str(FIXTURE_MODEL),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    version = json.loads((FIXTURE_MODEL / "metadata.json").read_text())["model_version"]
    in_order = [
        "sam build",
        "sam deploy --guided",
        "TrainingImageTag=",
        "login --username AWS --password-stdin",
        "push <TrainingImageRepositoryUri>:",
        f"-> s3://<DataBucketName>/{deploy.TRAINING_EVENTS_PREFIX}more/part-3.parquet",
        f"-> s3://<DataBucketName>/{deploy.TRAINING_EVENTS_PREFIX}part-1.csv",
        f"-> s3://<DataBucketName>/{deploy.TRAINING_EVENTS_PREFIX}part-2.csv.gz",
        "-> s3://<DataBucketName>/holdout/events.csv",
        f"-> s3://<DataBucketName>/models/{version}/model.tflite",
        f"-> s3://<DataBucketName>/models/{version}/metadata.json",
        f'SSM PutParameter <ModelPointerParameter> = {{"version": "{version}"',
        "aws apigateway get-api-keys --include-values",
        'curl -s -X POST <ApiUrl>/v1/scores -H "x-api-key: $API_KEY"',
    ]
    positions = [out.find(marker) for marker in in_order]
    assert all(p >= 0 for p in positions), [m for m, p in zip(in_order, positions, strict=True) if p < 0]
    assert positions == sorted(positions), out
    for flag in (
        "--capabilities CAPABILITY_IAM",
        "--resolve-s3",
        "--stack-name churnguard",
        "--region eu-west-1",
    ):
        assert flag in out
    assert "dry run complete" in out
    assert not (tmp_path / "samconfig.toml").exists()  # a dry run writes nothing


def test_dry_run_deploys_plainly_once_samconfig_remembers_the_settings(tmp_path):
    config = tmp_path / "samconfig.toml"
    config.write_text(
        'version = 0.1\n[default.deploy.parameters]\nstack_name = "cg-prod"\nregion = "eu-central-1"\n'
        'capabilities = "CAPABILITY_IAM"\n'
    )
    result = run_dry("--config-file", str(config), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    deploy_line = next(line for line in result.stdout.splitlines() if "$ " in line and "sam deploy" in line)
    assert "--guided" not in deploy_line
    assert "--stack-name cg-prod --region eu-central-1" in deploy_line  # read back from samconfig
    assert "upload CDNOW" in result.stdout  # no --events: CDNOW, when the prefix is empty


def test_dry_run_names_the_failing_step(tmp_path):
    result = run_dry("--region", "eu-west-1", "--events", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert result.returncode == 1
    assert "deploy failed at step 5/7 (training events" in result.stderr
    assert "not a directory" in result.stderr


def test_the_first_deploy_is_guided_and_later_ones_follow_what_it_saved(tmp_path, monkeypatch):
    """A stand-in `sam` records its arguments; its guided deploy saves other answers than asked."""
    sam = tmp_path / "sam"
    sam.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, sys\n"
        "args = sys.argv[1:]\n"
        "with open(os.environ['FAKE_SAM_LOG'], 'a') as log:\n"
        "    log.write(json.dumps(args) + '\\n')\n"
        "if '--guided' in args:\n"
        "    config = pathlib.Path(args[args.index('--config-file') + 1])\n"
        "    assert config.exists(), 'sam refuses a --config-file that does not exist'\n"
        "    config.write_text('version = 0.1\\n[default.deploy.parameters]\\n'\n"
        '                      \'stack_name = "cg-typed"\\nregion = "eu-central-1"\\n\')\n'
    )
    sam.chmod(0o755)
    monkeypatch.setenv("FAKE_SAM_LOG", str(tmp_path / "calls.jsonl"))
    config = tmp_path / "samconfig.toml"
    options = deploy.parse_options(["--region", "eu-west-1", "--config-file", str(config)])
    state = deploy.Deploy(dataclasses.replace(options, sam=str(sam)), _code_version="abc123")

    deploy.run_build(state)
    deploy.run_deploy(state)  # guided: no samconfig yet
    deploy.run_deploy(state)  # plain: samconfig remembers

    build, guided, plain = (json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines())
    assert build == ["build"]
    assert guided[:2] == ["deploy", "--guided"]
    assert plain[0] == "deploy" and "--guided" not in plain
    assert "TrainingImageTag=abc123" in guided and "TrainingImageTag=abc123" in plain
    # the answers given to the prompts win over the defaults passed in
    assert (state.options.stack_name, state.options.region) == ("cg-typed", "eu-central-1")
    assert plain[plain.index("--stack-name") + 1] == "cg-typed"


def test_a_failing_command_stops_the_deploy_naming_the_step(tmp_path, capsys):
    options = deploy.parse_options(["--region", "eu-west-1", "--config-file", str(tmp_path / "s.toml")])
    state = deploy.Deploy(dataclasses.replace(options, sam="false"))  # exits 1, like a failed sam build
    assert deploy.execute(state, deploy.plan()) == 1
    assert (
        "deploy failed at step 1/7 (sam build: functions and layer): `false build` exited with status 1"
        in (capsys.readouterr().err)
    )


# --- step 5: training events ----------------------------------------------------------------------


def test_events_are_validated_then_uploaded_and_read_back_whole(stack, tmp_path, cdnow_subset):
    s3 = stack["s3"]
    s3.put_object(Bucket=BUCKET, Key="training-events/from-last-deploy.csv", Body=b"stale")
    sample = write_events(tmp_path / "events", cdnow_subset, 120)
    assert 200 <= len(sample) <= 1000

    keys = deploy.upload_training_events(s3, BUCKET, tmp_path / "events")

    assert keys == [
        "training-events/more/part-3.parquet",
        "training-events/part-1.csv",
        "training-events/part-2.csv.gz",
    ]
    assert deploy.keys_under(s3, BUCKET, "training-events/") == keys  # the stale object is gone
    assert sum(len(read_object(s3, key)) for key in keys) == len(sample)


def test_a_file_with_wrong_columns_is_refused_before_anything_is_uploaded(stack, tmp_path, cdnow_subset):
    events = tmp_path / "events"
    write_events(events, cdnow_subset, 20)
    bad = cdnow_subset.head(10).rename(columns={"user_id": "customer"})
    bad.to_csv(events / "zz-export.csv", index=False)  # sorts last: the good files are checked first

    with pytest.raises(deploy.DeployError) as refused:
        deploy.upload_training_events(stack["s3"], BUCKET, events)

    message = str(refused.value)
    assert "zz-export.csv" in message
    assert "user_id" in message
    assert deploy.keys_under(stack["s3"], BUCKET, "training-events/") == []


def test_cdnow_is_the_default_without_the_gate_holdout_customers_and_never_replaces_events(stack):
    from churnguard.datasets import load_cdnow
    from infra.local_stack import cdnow_holdout

    s3 = stack["s3"]
    assert deploy.upload_training_events(s3, BUCKET, None) == ["training-events/cdnow.csv.gz"]
    uploaded = read_object(s3, "training-events/cdnow.csv.gz")
    holdout_users = set(cdnow_holdout()[0])
    events = load_cdnow()
    assert len(uploaded) == (~events["user_id"].isin(holdout_users)).sum()
    assert not set(uploaded["user_id"].astype(str)) & holdout_users  # the gate compares on unseen customers
    assert deploy.upload_training_events(s3, BUCKET, None) == []  # a re-deploy keeps them


# --- step 6: first model and the gate's holdout ---------------------------------------------------


def test_first_model_is_published_with_the_gate_holdout(stack, tmp_path):
    s3, ssm = stack["s3"], stack["ssm"]
    version = json.loads((FIXTURE_MODEL / "metadata.json").read_text())["model_version"]

    result = deploy.publish_first_model(
        s3, ssm, bucket=BUCKET, parameter_name=POINTER, model_dir=FIXTURE_MODEL
    )

    assert result.published
    assert result.holdout_customers > 0
    pointer = json.loads(ssm.get_parameter(Name=POINTER)["Parameter"]["Value"])
    assert pointer == {"version": version, "s3_uri": f"s3://{BUCKET}/models/{version}/"}
    for name in ("metadata.json", "feature_spec.json", "model.tflite"):
        stored = s3.get_object(Bucket=BUCKET, Key=f"models/{version}/{name}")["Body"].read()
        assert stored == (FIXTURE_MODEL / name).read_bytes()
    for key in deploy.HOLDOUT_KEYS:
        assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0
    labels = read_object(s3, "holdout/labels.csv")
    assert list(labels.columns) == ["user_id", "churned"]
    assert len(labels) == result.holdout_customers

    # a re-deploy keeps the serving model (e.g. one the gate promoted since)
    again = deploy.publish_first_model(
        s3, ssm, bucket=BUCKET, parameter_name=POINTER, model_dir=tmp_path / "not-used"
    )
    assert (again.published, again.pointer.version) == (False, version)


def test_a_model_trained_on_the_events_gets_its_own_test_customers_as_holdout(stack, tmp_path, cdnow_subset):
    from training.data import load_channel

    events = tmp_path / "events"
    write_events(events, cdnow_subset, 400)
    model = tmp_path / "model"
    shutil.copytree(FIXTURE_MODEL, model)
    metadata = json.loads((model / "metadata.json").read_text())
    metadata["data"] |= {"source": "channel:train", "sha256": load_channel(str(events)).data_sha256}
    metadata["protocol"] |= {"as_of": "1997-10-01", "horizon_weeks": 39}
    (model / "metadata.json").write_text(json.dumps(metadata))

    customers = deploy.write_gate_holdout(stack["s3"], BUCKET, model, events)

    labels = read_object(stack["s3"], "holdout/labels.csv")
    holdout_events = read_object(stack["s3"], "holdout/events.csv")
    assert len(labels) == customers
    assert 0.15 * 400 < customers < 0.25 * 400  # train.py's 20% test split of the cohort
    assert set(holdout_events["user_id"].astype(str)) <= set(labels["user_id"].astype(str))
    assert holdout_events["timestamp"].max() < "1997-10-01"
    meta = json.loads(stack["s3"].get_object(Bucket=BUCKET, Key="holdout/meta.json")["Body"].read())
    assert meta == {"as_of": "1997-10-01"}


# --- steps 3, 4 and 7: outputs, image push, API key --------------------------------------------------


class FakeEngine:
    kind, cli = "podman", "podman"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict]] = []

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        self.calls.append((args, kwargs))
        return subprocess.CompletedProcess(args, 0, "", "")


@pytest.fixture
def image_step(aws, monkeypatch):
    import boto3

    ecr = boto3.client("ecr")
    uri = ecr.create_repository(repositoryName="churnguard-training")["repository"]["repositoryUri"]
    engine = FakeEngine()
    monkeypatch.setattr("infra.containers.ensure_engine", lambda: engine)
    monkeypatch.setitem(
        sys.modules,
        "infra.training_image",  # stands in for the real builder: no container engine here
        types.SimpleNamespace(build_training_image=lambda _engine: "localhost/churnguard-training:abc123"),
    )
    options = deploy.parse_options(["--region", "eu-west-1", "--config-file", "/nonexistent/samconfig.toml"])
    state = deploy.Deploy(options, outputs={"TrainingImageRepositoryUri": uri}, _code_version="abc123")
    return state, ecr, engine, uri


def test_the_training_image_is_pushed_with_the_ecr_password_on_stdin(image_step):
    state, ecr, engine, uri = image_step
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().partition(":")[2]

    deploy.run_image(state)

    login, tag, push = engine.calls
    assert login[0] == ("login", "--username", "AWS", "--password-stdin", uri.partition("/")[0])
    assert login[1]["input"] == password
    assert all(password not in " ".join(args) for args, _ in engine.calls)
    assert tag[0] == ("tag", "localhost/churnguard-training:abc123", f"{uri}:abc123")
    assert push[0] == ("push", "--format", "v2s2", f"{uri}:abc123")  # SageMaker refuses OCI manifests


def test_an_image_tag_already_in_ecr_is_not_built_or_pushed_again(image_step):
    state, ecr, engine, _ = image_step
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    ecr.put_image(repositoryName="churnguard-training", imageManifest=json.dumps(manifest), imageTag="abc123")

    deploy.run_image(state)

    assert engine.calls == []


def test_stack_outputs_and_the_api_key_id_come_from_cloudformation():
    import boto3

    cloudformation = boto3.client("cloudformation", region_name="eu-west-1")
    outputs = {
        "ApiUrl": "https://abc123.execute-api.eu-west-1.amazonaws.com/v1",
        "DataBucketName": BUCKET,
        "ModelPointerParameter": POINTER,
        "TrainingImageRepositoryUri": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training",
        "PromotionsQueueUrl": "https://sqs.eu-west-1.amazonaws.com/123456789012/promotions",
    }
    with Stubber(cloudformation) as stub:
        stub.add_response(
            "describe_stacks",
            {
                "Stacks": [
                    {
                        "StackName": "churnguard",
                        "CreationTime": "2026-01-01T00:00:00Z",
                        "StackStatus": "UPDATE_COMPLETE",
                        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
                    }
                ]
            },
            {"StackName": "churnguard"},
        )
        stub.add_response(
            "describe_stack_resource",
            {
                "StackResourceDetail": {
                    "LogicalResourceId": "ScoringApiApiKey",
                    "PhysicalResourceId": "k3y1d",
                    "ResourceType": "AWS::ApiGateway::ApiKey",
                    "LastUpdatedTimestamp": "2026-01-01T00:00:00Z",
                    "ResourceStatus": "CREATE_COMPLETE",
                }
            },
            {"StackName": "churnguard", "LogicalResourceId": "ScoringApiApiKey"},
        )
        assert deploy.stack_outputs(cloudformation, "churnguard") == outputs
        assert deploy.api_key_id(cloudformation, "churnguard") == "k3y1d"

    options = deploy.parse_options(["--region", "eu-west-1", "--config-file", "/nonexistent/samconfig.toml"])
    text = "\n".join(deploy.instructions(deploy.Deploy(options, outputs=outputs, api_key_id="k3y1d")))
    # ApiUrl is the v1 stage and the routes are /v1/...: the scoring URL has v1 twice
    assert "POST https://abc123.execute-api.eu-west-1.amazonaws.com/v1/v1/scores" in text
    assert "--query \"items[?id=='k3y1d'].value\"" in text
