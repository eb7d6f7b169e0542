"""moto in server mode: a real HTTP endpoint on 127.0.0.1 that boto3 reaches via AWS_ENDPOINT_URL."""

import os
import urllib.request

import pytest

from infra.local_aws import MotoServer


@pytest.fixture(scope="session")
def moto_server():
    with MotoServer() as server:
        yield server.url


@pytest.fixture
def aws(moto_server, monkeypatch):
    """AWS clients against the moto server over HTTP; state reset per test."""
    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    urllib.request.urlopen(urllib.request.Request(moto_server + "/moto-api/reset", method="POST"), timeout=5)
    from aws_lambda_powertools.utilities.parameters import base

    base.DEFAULT_PROVIDERS.clear()  # Powertools caches clients (and their endpoint) per process
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    return {name: boto3.client(name) for name in ("s3", "sqs", "ssm", "dynamodb")}
