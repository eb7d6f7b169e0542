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


@pytest.fixture(scope="session")
def trained(cdnow_subset):
    """A small hybrid model fitted on 3,000 real CDNOW customers, calibrated and exported (shared by
    the parity and reasons-model tests): (data, calibrated Keras model, float32, dynamic range)."""
    from churnguard.events import validate_events
    from training.data import EventSource, Protocol, prepare
    from training.export import export_all
    from training.model import HyperParameters, fit_platt, with_calibration
    from training.train import fit_network

    validated = validate_events(cdnow_subset)
    source = EventSource("cdnow-subset", validated.events, (), "test", validated.rows_in, 0)
    data = prepare(source, Protocol("1997-10-01"))
    fit = fit_network(data, HyperParameters(epochs=15, patience=3, batch_size=64), [], seed=3, verbose=0)
    slope, intercept = fit_platt(fit.val_logits, data.validation.labels)
    model = with_calibration(fit.network, slope, intercept)
    exports = export_all(model, *data.inputs(data.test))
    assert exports.dynamic_range is not None, exports.dynamic_range_refusal
    return data, model, exports.float32, exports.dynamic_range


STATE_TABLE = "churnguard-local-CustomerStateTable"


@pytest.fixture
def state_table(aws) -> str:
    """The customers' state table as template.yaml declares its key (on moto, emptied per test)."""
    aws["dynamodb"].create_table(
        TableName=STATE_TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
    )
    return STATE_TABLE
