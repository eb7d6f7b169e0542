"""Model loading from S3 via the SSM pointer, over the real boto3 HTTP path (moto server)."""

import json

import pytest

from churnguard.adapters import S3ObjectStore
from churnguard.model_provider import ModelUnavailableError
from churnguard.model_store import ModelPointer, S3PointerModelProvider, publish_model
from tests.helpers import FakeLambdaContext, load_event, load_handler, model_variant

BUCKET = "churnguard-data"
POINTER = "/churnguard/model/current"


@pytest.fixture
def store(aws, tmp_path):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    events = []

    def get_parameter(name, max_age):
        return aws["ssm"].get_parameter(Name=name)["Parameter"]["Value"]

    provider = S3PointerModelProvider(
        parameter_name=POINTER,
        store=S3ObjectStore(aws["s3"]),
        get_parameter=get_parameter,
        max_age_s=0,
        cache_dir=tmp_path / "cache",
        on_event=lambda name, details: events.append((name, details)),
    )

    def publish(model_dir):
        return publish_model(
            model_dir, s3_client=aws["s3"], ssm_client=aws["ssm"], bucket=BUCKET, parameter_name=POINTER
        )

    return provider, publish, events


def test_cold_start_loads_the_pointed_model_and_caches_it_in_tmp(store, tmp_path):
    provider, publish, events = store
    pointer = publish(model_variant(tmp_path, "v1"))
    assert pointer == ModelPointer("v1", f"s3://{BUCKET}/models/v1/")
    assert provider.current().version == "v1"
    assert (tmp_path / "cache" / "v1" / "model.tflite").exists()
    assert events == [("ModelLoaded", {"version": "v1", "previous": None})]


def test_a_new_pointer_moves_the_warm_provider_to_the_new_model(store, tmp_path):
    provider, publish, events = store
    publish(model_variant(tmp_path, "v1"))
    first = provider.current()
    publish(model_variant(tmp_path, "v2"))
    second = provider.current()
    assert (first.version, second.version) == ("v1", "v2")
    assert provider.current() is second  # no reload while the pointer stays
    assert events == [
        ("ModelLoaded", {"version": "v1", "previous": None}),
        ("ModelLoaded", {"version": "v2", "previous": "v1"}),
    ]


def test_a_corrupt_model_is_refused_once_and_the_previous_keeps_serving(store, tmp_path, aws):
    provider, publish, events = store
    publish(model_variant(tmp_path, "v1"))
    provider.current()
    publish(model_variant(tmp_path, "v2-bad", corrupt=True))
    assert provider.current().version == "v1"
    assert provider.current().version == "v1"
    refused = [e for e in events if e[0] == "ModelRefused"]
    assert len(refused) == 1  # not downloaded and refused again on every request
    assert "sha256" in refused[0][1]["reason"] and refused[0][1]["serving"] == "v1"
    publish(model_variant(tmp_path, "v3"))
    assert provider.current().version == "v3"  # a good version after a bad one is taken


def test_pointer_and_files_disagreeing_on_the_version_is_refused(store, tmp_path, aws):
    provider, publish, events = store
    publish(model_variant(tmp_path, "v1"))
    provider.current()
    aws["ssm"].put_parameter(
        Name=POINTER,
        Type="String",
        Overwrite=True,
        Value=ModelPointer("v9", f"s3://{BUCKET}/models/v1/").to_json(),
    )
    assert provider.current().version == "v1"
    assert "pointer says version v9" in events[-1][1]["reason"]


def test_with_nothing_to_fall_back_to_a_refused_model_is_unavailable(store, tmp_path, aws):
    provider, publish, _ = store
    publish(model_variant(tmp_path, "v1-bad", corrupt=True))
    with pytest.raises(ModelUnavailableError, match="refused"):
        provider.current()
    aws["ssm"].put_parameter(
        Name=POINTER,
        Type="String",
        Overwrite=True,
        Value=ModelPointer("v0", f"s3://{BUCKET}/models/missing/").to_json(),
    )
    with pytest.raises(ModelUnavailableError, match="could not be read: NoSuchKey"):
        provider.current()


def _point(aws, version, s3_uri):
    aws["ssm"].put_parameter(
        Name=POINTER, Type="String", Overwrite=True, Value=ModelPointer(version, s3_uri).to_json()
    )


def test_an_unreadable_pointer_target_keeps_the_previous_model_says_degraded_and_is_retried(
    store, tmp_path, aws
):
    """Any S3 error (no such bucket; a version not uploaded yet) used to escape as a 500 on every
    request, /v1/health included; now the previous model serves and the fetch is retried."""
    provider, publish, events = store
    publish(model_variant(tmp_path, "v1"))
    assert provider.current().version == "v1" and provider.status().state == "ok"

    _point(aws, "ob", "s3://no-such-bucket/models/ob/")
    assert provider.current().version == "v1"
    status = provider.status()
    assert (status.state, status.serving, status.wanted) == ("degraded", "v1", "ob")
    assert "NoSuchBucket" in status.reason

    _point(aws, "v2", f"s3://{BUCKET}/models/v2/")  # the pointer moved before the upload finished
    assert provider.current().version == "v1"
    assert "NoSuchKey" in provider.status().reason
    publish(model_variant(tmp_path, "v2"))  # the upload lands: the next read (max age 0) takes it
    assert provider.current().version == "v2" and provider.status().state == "ok"
    assert [name for name, _ in events] == ["ModelLoaded", "ModelRefused", "ModelRefused", "ModelLoaded"]


def test_metadata_thresholds_outside_zero_one_are_refused(tmp_path):
    from churnguard.bundle import ModelBundle
    from churnguard.scorer import ModelLoadError

    model = model_variant(tmp_path, "v-bad-threshold")
    metadata = json.loads((model / "metadata.json").read_text())
    metadata["thresholds"]["promotion"] = -1
    (model / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match=r"\['promotion'\] are not probabilities"):
        ModelBundle.from_directory(model)


def test_the_api_moves_to_a_new_model_without_a_cold_start(aws, tmp_path, monkeypatch):
    aws["s3"].create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for version in ("v1", "v2"):
        publish_model(
            model_variant(tmp_path, version),
            s3_client=aws["s3"],
            ssm_client=aws["ssm"],
            bucket=BUCKET,
            parameter_name=f"{POINTER}-{version}",
        )
    aws["ssm"].put_parameter(
        Name=POINTER,
        Type="String",
        Overwrite=True,
        Value=aws["ssm"].get_parameter(Name=f"{POINTER}-v1")["Parameter"]["Value"],
    )
    monkeypatch.delenv("CHURNGUARD_MODEL_DIR", raising=False)
    monkeypatch.setenv("CHURNGUARD_MODEL_POINTER", POINTER)
    monkeypatch.setenv("CHURNGUARD_MODEL_POINTER_MAX_AGE", "0")
    monkeypatch.setenv("CHURNGUARD_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    api = load_handler("score_api")
    try:

        def version():
            response = api.lambda_handler(load_event("score_api/post_scores.json"), FakeLambdaContext())
            assert response["statusCode"] == 200, response["body"]
            return json.loads(response["body"])["model_version"]

        assert version() == "v1"
        aws["ssm"].put_parameter(
            Name=POINTER,
            Type="String",
            Overwrite=True,
            Value=aws["ssm"].get_parameter(Name=f"{POINTER}-v2")["Parameter"]["Value"],
        )
        assert version() == "v2"

        # a pointer to a location that cannot be read: scores and health still answer, health says why
        aws["ssm"].put_parameter(
            Name=POINTER,
            Type="String",
            Overwrite=True,
            Value=ModelPointer("ob", "s3://no-such-bucket/ob/").to_json(),
        )
        assert version() == "v2"
        health = api.lambda_handler(load_event("score_api/get_health.json"), FakeLambdaContext())
        body = json.loads(health["body"])
        assert health["statusCode"] == 200 and body["status"] == "degraded" and body["model_version"] == "v2"
        assert "NoSuchBucket" in body["reason"]
    finally:
        api.runtime.cache_clear()


def test_rollback_is_one_command_that_restores_the_previous_version(store, tmp_path, aws):
    import os
    import subprocess
    import sys

    provider, publish, _ = store
    aws["ssm"].put_parameter(
        Name=POINTER, Type="String", Value='{"version": "none", "s3_uri": "s3://x/none/"}'
    )
    publish(model_variant(tmp_path, "v1"))
    v2 = model_variant(tmp_path, "v2")
    publish(v2)
    publish(v2)  # re-publishing the same version is not a rollback target
    assert provider.current().version == "v2"
    result = subprocess.run(
        [sys.executable, "-m", "churnguard.model_store", "rollback", POINTER],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version"] == "v1"
    assert provider.current().version == "v1"
