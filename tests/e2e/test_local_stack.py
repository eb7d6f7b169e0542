"""The local stack end to end, as a user runs it: a subprocess, real HTTP, boto3 against its endpoint."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import pandas as pd
import pytest

from churnguard.datasets import generate_synthetic_events
from tests.helpers import ROOT, check_scoring_api_over_http, model_variant, tarball

FIXTURE_MODEL = ROOT / "tests" / "fixtures" / "model"


def start_stack_process() -> tuple[subprocess.Popen, dict]:
    """`python -m infra.local_stack --serve` on the fixture model, up to its ready line."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.local_stack",
            "--serve",
            "--no-demo",
            "--model-dir",
            str(FIXTURE_MODEL),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHURNGUARD_"))},
    )
    deadline = time.time() + 120
    ready = None
    while time.time() < deadline and ready is None:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        if line.startswith('{"ready"'):
            ready = json.loads(line)
    if ready is None:
        process.kill()
        pytest.fail(f"local stack did not start: {process.stdout.read()[-3000:]}")
    return process, ready


@pytest.fixture(scope="module")
def stack():
    process, ready = start_stack_process()
    yield process, ready
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def clients(ready):
    kwargs = {
        "endpoint_url": ready["aws_endpoint"],
        "region_name": ready["region"],
        "aws_access_key_id": "local",
        "aws_secret_access_key": "local",
    }
    return boto3.client("s3", **kwargs), boto3.client("sqs", **kwargs)


def test_the_api_answers_real_http_with_the_published_model(stack):
    _, ready = stack
    check_scoring_api_over_http(ready["api"], ready["model_version"])


def test_responses_keep_their_headers_and_a_malformed_content_length_is_a_400(stack):
    import http.client
    from urllib.parse import urlsplit

    _, ready = stack
    with urllib.request.urlopen(ready["api"] + "/v1/health", timeout=10) as response:
        assert response.headers["Content-Type"] == "application/json"  # Powertools' multiValueHeaders
    address = urlsplit(ready["api"])
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=10)
    connection.putrequest("POST", "/v1/scores")
    connection.putheader("Content-Length", "abc")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and b"Content-Length" in response.read()
    connection.close()


def test_sigterm_stops_the_stack_and_its_moto_server():
    process, ready = start_stack_process()
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        with pytest.raises(urllib.error.URLError, match="refused"):  # its moto child is gone too
            urllib.request.urlopen(ready["aws_endpoint"] + "/moto-api/", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()


def test_an_s3_drop_is_scored_through_the_queue_and_promotions_arrive(stack):
    _, ready = stack
    s3, sqs = clients(ready)
    events = generate_synthetic_events(300, seed=8, weeks=78)
    events = events[events["timestamp"] < "2024-09-30"]
    s3.put_object(
        Bucket=ready["bucket"],
        Key="incoming/e2e drop.csv",
        Body=events.to_csv(index=False).encode(),
        Metadata={"as-of": "2024-09-30"},
    )
    deadline = time.time() + 90
    while True:
        try:
            summary = json.loads(
                s3.get_object(Bucket=ready["bucket"], Key="scored/e2e drop.summary.json")["Body"].read()
            )
            break
        except s3.exceptions.NoSuchKey:
            assert time.time() < deadline, "the drop was not scored"
            time.sleep(0.5)
    assert summary["status"] == "ok" and summary["rows_in"] == len(events)
    scored = pd.read_parquet(
        io.BytesIO(s3.get_object(Bucket=ready["bucket"], Key="scored/e2e drop.parquet")["Body"].read())
    )
    assert set(scored["user_id"]) == set(events["user_id"])
    waiting = int(
        sqs.get_queue_attributes(
            QueueUrl=ready["promotions_queue"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
    )
    assert waiting >= summary["customers_queued"] > 0


def test_the_demo_runs_the_whole_loop_and_exits_0():
    result = subprocess.run(
        [sys.executable, "-m", "infra.local_stack", "--model-dir", str(FIXTURE_MODEL)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CHURNGUARD_"))},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout
    for marker in (
        "== HTTP scoring: POST",
        "-> 200",
        "curl -s -X POST",
        "== Batch: s3://",
        "rejected 0;",
        "== Promotions waiting in",
        "== Retraining: challenger",
        "decision: PROMOTED",
        "-retrained",
    ):
        assert marker in out, marker


def _health_version(api):
    with urllib.request.urlopen(api + "/v1/health", timeout=10) as response:
        return json.loads(response.read())["model_version"]


def _training_job_completes(ready, job, model_dir):
    """What SageMaker does at the end of a job: model.tar.gz under the output path, then the event."""
    s3, _ = clients(ready)
    key = f"training/{job}/output/model.tar.gz"
    s3.put_object(Bucket=ready["bucket"], Key=key, Body=tarball(model_dir))
    events = boto3.client(
        "events",
        endpoint_url=ready["aws_endpoint"],
        region_name=ready["region"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    detail = {
        "TrainingJobName": job,
        "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{ready['bucket']}/{key}"},
    }
    result = events.put_events(
        Entries=[
            {
                "Source": "aws.sagemaker",
                "DetailType": "SageMaker Training Job State Change",
                "Detail": json.dumps(detail),
            }
        ]
    )
    assert result["FailedEntryCount"] == 0


def _decision(ready, version, timeout_s=60):
    s3, _ = clients(ready)
    deadline = time.time() + timeout_s
    while True:
        try:
            return json.loads(
                s3.get_object(Bucket=ready["bucket"], Key=f"model-decisions/{version}.json")["Body"].read()
            )
        except s3.exceptions.NoSuchKey:
            assert time.time() < deadline, f"no gate decision for {version}"
            time.sleep(0.5)


def test_retraining_cycle_promotes_a_better_model_rejects_a_degraded_one_api_follows_without_restart(
    stack, tmp_path
):
    """Kept last in this file: it changes the serving model of the shared stack."""
    process, ready = stack
    assert _health_version(ready["api"]) == ready["model_version"]

    _training_job_completes(ready, "churnguard-e2e-1", model_variant(tmp_path, "e2e-challenger"))
    decision = _decision(ready, "e2e-challenger")
    assert decision["accepted"] is True, decision["reasons"]
    deadline = time.time() + 20  # the API re-reads the pointer every 2 s locally
    while _health_version(ready["api"]) != "e2e-challenger":
        assert time.time() < deadline, "the API did not move to the promoted model"
        time.sleep(0.5)
    assert process.poll() is None  # same process: no restart, no cold start of the stack

    _training_job_completes(ready, "churnguard-e2e-2", model_variant(tmp_path, "e2e-degraded", degrade=True))
    rejected = _decision(ready, "e2e-degraded")
    assert (
        rejected["accepted"] is False and rejected["challenger"]["roc_auc"] < rejected["champion"]["roc_auc"]
    )
    time.sleep(3)
    assert _health_version(ready["api"]) == "e2e-challenger"
