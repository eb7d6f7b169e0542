"""The Docker-free local stack: moto server + resources from template.yaml + both Lambdas in-process.

    python -m infra.local_stack            # the demo (make demo): everything once, then exit 0
    python -m infra.local_stack --serve    # keep the stack up until Ctrl-C

1. moto in server mode on 127.0.0.1 (a real HTTP endpoint; boto3 reaches it via AWS_ENDPOINT_URL);
2. the resources template.yaml declares (bucket + S3 -> scoring-jobs notification, queues with their
   DLQs, idempotency table, model pointer), read from the template so local and cloud cannot drift;
3. a model trained on CDNOW (reused while its inputs are unchanged), published to the bucket, pointer set;
4. the API on 127.0.0.1: HTTP requests become the REST proxy events API Gateway sends, handled by
   ``functions/score_api/app.py:lambda_handler`` in-process and warm, like one Lambda container;
5. S3 drops delivered the way production does: scoring-jobs queue -> ``batch_score`` with an SQS
   event, batch item failures left on the queue for retry (and, after maxReceiveCount, the DLQ).

Local differences from the cloud, on purpose: queue visibility timeouts are capped at 10 s so
retries show up in seconds, and functions run in this process instead of separate containers.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from infra.template import ROOT, load_template, resources_of_type

REGION = "eu-west-1"
LOCAL_VISIBILITY_CAP_S = 10
MODEL_DIR = ROOT / "artifacts" / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                if time.time() > deadline or self._process.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)


def aws_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


@dataclass
class LocalResources:
    """What was created, by logical id, and how the template's references resolve locally."""

    refs: dict[str, str] = field(default_factory=dict)  # Ref value (name / URL)
    arns: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    function_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # function logical id -> (queue url, queue arn) receiving what its EventBridge rules match
    event_queues: dict[str, tuple[str, str]] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)

    def resolve(self, value: Any) -> Any:
        """!Ref / !GetAtt / !Sub / !If against what was created; resources not emulated locally (IAM
        roles, schedules) resolve to a local placeholder ARN; ``AWS::NoValue`` resolves to None."""
        if isinstance(value, dict) and len(value) == 1:
            ((kind, arg),) = value.items()
            if kind == "Ref" and arg == "AWS::NoValue":
                return None
            if kind == "If":
                condition, if_true, if_false = arg
                return self.resolve(if_true if self.condition(condition) else if_false)
            if kind == "Ref":
                return self.refs.get(arg, f"local-{arg}")
            if kind == "GetAtt":
                logical, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                if attribute == "Arn":
                    return self.arns.get(logical, f"arn:aws:iam::000000000000:role/local-{logical}")
                return self.names.get(logical, f"local-{logical}")
            if kind == "Sub" and isinstance(arg, str):
                return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub_variable(m.group(1)), arg)
        return value

    def condition(self, name: str) -> bool:
        def evaluate(expression: dict[str, Any]) -> bool:
            ((kind, arg),) = expression.items()
            if kind == "Not":
                return not evaluate(arg[0])
            if kind == "Equals":
                return str(self.resolve(arg[0])) == str(self.resolve(arg[1]))
            if kind == "Condition":
                return self.condition(arg)
            raise ValueError(f"condition function {kind} is not supported by the local stack")

        return evaluate(self.conditions[name])

    def _sub_variable(self, name: str) -> str:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": "000000000000",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "churnguard-local",
        }
        if name in pseudo:
            return pseudo[name]
        if "." in name:
            return str(self.resolve({"GetAtt": name}))
        return str(self.resolve({"Ref": name}))


def create_resources(
    template: dict[str, Any],
    clients: dict[str, Any],
    prefix: str = "churnguard-local",
    parameters: dict[str, str] | None = None,
) -> LocalResources:
    """Create what the template declares in moto; ``parameters`` override the template's defaults."""
    res = LocalResources(conditions=template.get("Conditions", {}))
    for name, parameter in template.get("Parameters", {}).items():  # !Ref Parameter -> its default
        if "Default" in parameter:
            res.refs[name] = str(parameter["Default"])
    res.refs.update(parameters or {})
    s3, sqs, ddb, ssm = clients["s3"], clients["sqs"], clients["dynamodb"], clients["ssm"]
    queues = resources_of_type(template, "AWS::SQS::Queue")
    # Dead-letter queues first: the others name them in their RedrivePolicy.
    for logical in sorted(queues, key=lambda k: "RedrivePolicy" in queues[k].get("Properties", {})):
        props = queues[logical].get("Properties", {})
        name = f"{prefix}-{logical}"
        attributes = {}
        if "VisibilityTimeout" in props:
            attributes["VisibilityTimeout"] = str(
                min(int(props["VisibilityTimeout"]), LOCAL_VISIBILITY_CAP_S)
            )
        if "MessageRetentionPeriod" in props:
            attributes["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
        if "RedrivePolicy" in props:
            redrive = props["RedrivePolicy"]
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": res.resolve(redrive["deadLetterTargetArn"]),
                    "maxReceiveCount": int(redrive["maxReceiveCount"]),
                }
            )
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        res.refs[logical] = url
        res.names[logical] = name
        res.arns[logical] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]

    for logical, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        props = resource["Properties"]
        name = f"{prefix}-{logical}"
        ddb.create_table(
            TableName=name,
            BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
            KeySchema=props["KeySchema"],
            AttributeDefinitions=props["AttributeDefinitions"],
        )
        if props.get("TimeToLiveSpecification", {}).get("Enabled"):
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "Enabled": True,
                    "AttributeName": props["TimeToLiveSpecification"]["AttributeName"],
                },
            )
        res.refs[logical] = res.names[logical] = name

    for logical, resource in resources_of_type(template, "AWS::SSM::Parameter").items():
        props = resource["Properties"]
        value = res.resolve(props["Value"])
        name = f"/{prefix}/{logical}"
        ssm.put_parameter(Name=name, Value=value, Type=props.get("Type", "String"), Overwrite=True)
        res.refs[logical] = res.names[logical] = name

    for logical, resource in resources_of_type(template, "AWS::S3::Bucket").items():
        props = resource.get("Properties", {})
        name = f"{prefix}-{logical.lower()}"
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        res.refs[logical] = res.names[logical] = name
        res.arns[logical] = f"arn:aws:s3:::{name}"
        configs = props.get("NotificationConfiguration", {}).get("QueueConfigurations", [])
        if configs:
            s3.put_bucket_notification_configuration(
                Bucket=name,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "QueueArn": res.resolve(c["Queue"]),
                            "Events": [c["Event"]],
                            "Filter": {"Key": {"FilterRules": c["Filter"]["S3Key"]["Rules"]}},
                        }
                        for c in configs
                    ]
                },
            )

    for logical, resource in template["Resources"].items():
        if logical not in res.names:
            res.skipped[logical] = {
                "AWS::Serverless::Function": "runs in-process",
                "AWS::Serverless::LayerVersion": "the local Python environment",
                "AWS::SQS::QueuePolicy": "moto does not enforce IAM",
            }.get(resource["Type"], "not needed locally")

    # EventBridge rules from the functions' EventBridgeRule events, same patterns, each delivering to a
    # queue the stack polls (Lambda cannot be an EventBridge target here).
    events_client = clients.get("events")
    for logical, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        for event_id, event in resource["Properties"].get("Events", {}).items():
            if event["Type"] != "EventBridgeRule" or events_client is None:
                continue
            name = f"{prefix}-{logical}-{event_id}"
            url = sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            events_client.put_rule(Name=name, EventPattern=json.dumps(event["Properties"]["Pattern"]))
            events_client.put_targets(Rule=name, Targets=[{"Id": "local-queue", "Arn": arn}])
            res.event_queues[logical] = (url, arn)

    globals_env = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    for logical, resource in resources_of_type(template, "AWS::Serverless::Function").items():
        own = resource["Properties"].get("Environment", {}).get("Variables", {})
        resolved = {k: res.resolve(v) for k, v in {**globals_env, **own}.items()}
        res.function_env[logical] = {k: str(v) for k, v in resolved.items() if v is not None}
    return res


# ---------------------------------------------------------------------------------------------
# the two Lambdas, in-process
# ---------------------------------------------------------------------------------------------


@dataclass
class LocalLambdaContext:
    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    timeout_s: int = 30
    started: float = field(default_factory=time.time)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_s - time.time()) * 1000))


def load_function(folder: str, env: dict[str, str], overrides: dict[str, str] | None = None) -> Any:
    import importlib.util

    os.environ.update({**env, **(overrides or {})})
    name = f"churnguard_local_{folder}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    module.runtime()  # cold start now: settings validated, model loaded
    return module


def api_gateway_event(method: str, raw_path: str, headers: dict[str, str], body: bytes, client: str) -> dict:
    """The REST (v1) proxy event API Gateway sends for a request."""
    parts = urlsplit(raw_path)
    query = dict(parse_qsl(parts.query)) or None
    try:
        text, is_base64 = (body.decode("utf-8") if body else None), False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    request_id = str(uuid.uuid4())
    return {
        "resource": parts.path,
        "path": parts.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
        "pathParameters": None,
        "stageVariables": None,
        "body": text,
        "isBase64Encoded": is_base64,
        "requestContext": {
            "requestId": request_id,
            "stage": "local",
            "httpMethod": method,
            "path": parts.path,
            "resourcePath": parts.path,
            "identity": {"sourceIp": client},
            "requestTimeEpoch": int(time.time() * 1000),
        },
    }


def make_api_server(handler_module: Any, port: int) -> ThreadingHTTPServer:
    lock = threading.Lock()  # one warm container handles one request at a time

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length < 0:
                    raise ValueError
            except ValueError:  # API Gateway answers a malformed Content-Length itself, with a 400
                self._reply(400, {"Content-Type": "application/json"}, b'{"message": "bad Content-Length"}')
                return
            body = self.rfile.read(length) if length else b""
            event = api_gateway_event(
                self.command, self.path, dict(self.headers.items()), body, self.client_address[0]
            )
            with lock:
                response = handler_module.lambda_handler(
                    event, LocalLambdaContext("ScoreApiFunction", timeout_s=10)
                )
            payload = response.get("body") or ""
            data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
            # API Gateway merges both header maps; Powertools' REST resolver sets multiValueHeaders
            headers = {k: [v] for k, v in (response.get("headers") or {}).items()}
            for key, values in (response.get("multiValueHeaders") or {}).items():
                headers[key] = [*headers.get(key, []), *(v for v in values if v not in headers.get(key, []))]
            self._reply(int(response["statusCode"]), headers, data)

        def _reply(self, status: int, headers: dict[str, Any], data: bytes) -> None:
            self.send_response(status)
            for key, values in headers.items():
                for value in values if isinstance(values, list) else [values]:
                    if key.lower() != "content-length":
                        self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def __getattr__(self, name: str) -> Any:  # every method goes to the function, as a proxy does
            if name.startswith("do_"):
                return self._handle
            raise AttributeError(name)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


class ScoringJobsDelivery(threading.Thread):
    """Lambda's SQS event source mapping: poll, invoke with an SQS event, delete what succeeded."""

    def __init__(self, sqs: Any, queue_url: str, queue_arn: str, handler_module: Any) -> None:
        super().__init__(daemon=True, name="scoring-jobs")
        self._sqs, self._queue_url, self._queue_arn = sqs, queue_url, queue_arn
        self._handler = handler_module
        self._stopping = threading.Event()
        self.invocations = 0

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                got = self._sqs.receive_message(
                    QueueUrl=self._queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1, AttributeNames=["All"]
                )
            except Exception:  # the server is going away
                if self._stopping.is_set():
                    return
                raise
            messages = got.get("Messages", [])
            if not messages:
                continue
            event = {
                "Records": [
                    {
                        "messageId": m["MessageId"],
                        "receiptHandle": m["ReceiptHandle"],
                        "body": m["Body"],
                        "attributes": m.get("Attributes", {}),
                        "messageAttributes": {},
                        "md5OfBody": m["MD5OfBody"],
                        "eventSource": "aws:sqs",
                        "eventSourceARN": self._queue_arn,
                        "awsRegion": REGION,
                    }
                    for m in messages
                ]
            }
            self.invocations += 1
            try:
                result = self._handler.lambda_handler(
                    event, LocalLambdaContext("BatchScoreFunction", timeout_s=900)
                )
            except Exception as exc:  # like Lambda: a failed invocation leaves the whole batch on the queue
                print(
                    f"BatchScoreFunction invocation failed: {type(exc).__name__}", file=sys.stderr, flush=True
                )
                continue
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
            for m in messages:
                if m["MessageId"] not in failed:
                    self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=m["ReceiptHandle"])

    def stop(self) -> None:
        self._stopping.set()


class EventRuleDelivery(threading.Thread):
    """EventBridge rule -> Lambda (async): each matched event is one invocation with the event itself."""

    def __init__(self, sqs: Any, queue_url: str, handler_module: Any, function_name: str) -> None:
        super().__init__(daemon=True, name=f"events-{function_name}")
        self._sqs, self._queue_url, self._handler, self._name = sqs, queue_url, handler_module, function_name
        self._stopping = threading.Event()
        self.results: list[dict[str, Any]] = []

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                got = self._sqs.receive_message(
                    QueueUrl=self._queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
                )
            except Exception:
                if self._stopping.is_set():
                    return
                raise
            for message in got.get("Messages", []):
                event = json.loads(message["Body"])
                try:
                    self.results.append(
                        self._handler.lambda_handler(event, LocalLambdaContext(self._name, timeout_s=300))
                    )
                except Exception as exc:  # async invocation: logged, not retried locally
                    print(
                        f"{self._name} failed on {event.get('detail-type')}: {exc!r}",
                        file=sys.stderr,
                        flush=True,
                    )
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])

    def stop(self) -> None:
        self._stopping.set()


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


def training_inputs_hash() -> str:
    """What a trained model depends on: the feature path, the training code, the data and the deps."""
    digest = hashlib.sha256()
    shared = ROOT / "shared" / "churnguard"
    used_by_training = [
        shared / f"{name}.py" for name in ("features", "events", "tabular", "datasets", "scorer")
    ]
    files = sorted([*used_by_training, *(ROOT / "training").glob("*.py"), ROOT / "pyproject.toml"])
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    from churnguard.datasets import CDNOW_SHA256

    digest.update(CDNOW_SHA256.encode())
    return digest.hexdigest()


def cdnow_holdout() -> tuple[Any, Any, Any, str]:
    """The CDNOW benchmark protocol's test customers: (user ids, churn labels, their events, as_of)."""
    from training.data import CDNOW_PROTOCOL, load_cdnow_source, prepare

    data = prepare(load_cdnow_source(), CDNOW_PROTOCOL)
    users, labels, events = data.test.user_ids, data.test.labels, data.source.events
    return users, labels, events[events["user_id"].isin(set(users))], str(CDNOW_PROTOCOL.as_of)


def put_holdout(s3: Any, bucket: str, users: Any, labels: Any, events: Any, as_of: str) -> int:
    """Write the gate's labelled holdout: events before ``as_of``, labels, and the cutoff."""
    import pandas as pd

    before = events[events["timestamp"] < pd.Timestamp(as_of)].drop(columns=["source_row"], errors="ignore")
    s3.put_object(Bucket=bucket, Key="holdout/events.csv", Body=before.to_csv(index=False).encode())
    labels_csv = pd.DataFrame({"user_id": users, "churned": labels}).to_csv(index=False)
    s3.put_object(Bucket=bucket, Key="holdout/labels.csv", Body=labels_csv.encode())
    s3.put_object(Bucket=bucket, Key="holdout/meta.json", Body=json.dumps({"as_of": as_of}).encode())
    return len(users)


def write_holdout(s3: Any, bucket: str, model_dir: Path) -> int:
    """The labelled holdout the promote gate compares models on, matching the model's data.

    CDNOW models: the benchmark protocol's test customers. Other models (e.g. the synthetic test
    fixture): a fresh synthetic sample at the model's cutoff.
    """
    from churnguard.tabular import churn_labels, cohort

    metadata = json.loads((model_dir / "metadata.json").read_text())
    as_of = metadata["protocol"]["as_of"]
    horizon = metadata["protocol"]["horizon_weeks"]
    if metadata["data"]["source"] == "cdnow":
        users, labels, events, _ = cdnow_holdout()
    else:
        from churnguard.datasets import generate_synthetic_events
        from churnguard.events import validate_events

        events = validate_events(generate_synthetic_events(800, seed=42, weeks=78)).events
        users = cohort(events, as_of)
        labels = churn_labels(events, users, as_of, horizon)
    return put_holdout(s3, bucket, users, labels, events, as_of)


def ensure_model(model_dir: Path = MODEL_DIR) -> tuple[Path, bool]:
    """A CDNOW model whose inputs match the current code; trains only when they changed."""
    marker = model_dir / ".inputs-sha256"
    expected = training_inputs_hash()
    if (model_dir / "metadata.json").exists() and marker.exists() and marker.read_text() == expected:
        return model_dir, False
    from training import train

    if train.main(["--model-dir", str(model_dir), "--verbose", "0"]) != 0:
        raise SystemExit("training failed")
    marker.write_text(expected)
    return model_dir, True


# ---------------------------------------------------------------------------------------------
# the stack and the demo
# ---------------------------------------------------------------------------------------------


@dataclass
class Stack:
    moto: MotoServer
    resources: LocalResources
    clients: dict[str, Any]
    api_url: str
    server: ThreadingHTTPServer
    delivery: ScoringJobsDelivery
    promote_delivery: EventRuleDelivery | None
    model_version: str
    model_dir: Path
    trained: bool

    def stop(self) -> None:
        self.delivery.stop()
        if self.promote_delivery:
            self.promote_delivery.stop()
        self.server.shutdown()
        self.delivery.join(timeout=5)
        self.moto.stop()


def start_stack(model_dir: Path | None = None, port: int = 0, quiet: bool = False) -> Stack:
    moto = MotoServer()
    moto.start()
    try:
        os.environ.update(aws_environment(moto.url))
        # Locally the pointer is re-read every 2 s (cloud: 60 s) so a promotion shows up promptly.
        overrides = {"CHURNGUARD_MODEL_POINTER_MAX_AGE": "2"}
        if quiet:
            import logging
            import warnings

            overrides |= {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
            logging.getLogger("churnguard").setLevel(logging.WARNING)
            warnings.filterwarnings("ignore", message="No application metrics to publish")
        import boto3

        from churnguard.model_store import publish_model

        clients = {name: boto3.client(name) for name in ("s3", "sqs", "ssm", "dynamodb", "events")}
        resources = create_resources(load_template(), clients)
        trained = False
        if model_dir is None:
            model_dir, trained = ensure_model()
        bucket = resources.refs["DataBucket"]
        write_holdout(clients["s3"], bucket, Path(model_dir))
        pointer = publish_model(
            model_dir,
            s3_client=clients["s3"],
            ssm_client=clients["ssm"],
            bucket=bucket,
            parameter_name=resources.refs["ModelPointer"],
        )
        score_api = load_function("score_api", resources.function_env["ScoreApiFunction"], overrides)
        batch = load_function("batch_score", resources.function_env["BatchScoreFunction"], overrides)
        server = make_api_server(score_api, port)
        threading.Thread(target=server.serve_forever, daemon=True, name="api").start()
        delivery = ScoringJobsDelivery(
            clients["sqs"], resources.refs["ScoringJobsQueue"], resources.arns["ScoringJobsQueue"], batch
        )
        delivery.start()
        promote_delivery = None
        if "PromoteFunction" in resources.event_queues:
            promote = load_function("promote", resources.function_env["PromoteFunction"], overrides)
            promote_delivery = EventRuleDelivery(
                clients["sqs"], resources.event_queues["PromoteFunction"][0], promote, "PromoteFunction"
            )
            promote_delivery.start()
    except BaseException:
        moto.stop()
        raise
    api_url = f"http://127.0.0.1:{server.server_address[1]}"
    return Stack(
        moto,
        resources,
        clients,
        api_url,
        server,
        delivery,
        promote_delivery,
        pointer.version,
        Path(model_dir),
        trained,
    )


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _cdnow_request() -> dict:
    """Three real CDNOW customers: a one-time buyer, a valuable lapsed one, the most active one."""
    from churnguard.datasets import load_cdnow

    events = load_cdnow()
    events = events[events["timestamp"] < "1997-10-01"]
    per_user = events.groupby("user_id").agg(
        orders=("amount", "size"), spend=("amount", "sum"), last=("timestamp", "max")
    )
    one_time = per_user[per_user["orders"] == 1].index[0]
    lapsed = per_user[per_user["last"] < "1997-05-01"]["spend"].idxmax()
    active = per_user["orders"].idxmax()
    customers = []
    for user in (one_time, lapsed, active):
        rows = events[events["user_id"] == user]
        customers.append(
            {
                "user_id": user,
                "as_of": "1997-10-01",
                "events": [
                    {
                        "timestamp": t.strftime("%Y-%m-%d"),
                        "event_type": "order",
                        "amount": round(float(a), 2),
                        "quantity": float(q),
                    }
                    for t, a, q in zip(rows["timestamp"], rows["amount"], rows["quantity"], strict=True)
                ],
            }
        )
    return {"customers": customers}


def wait_for_object(s3: Any, bucket: str, key: str, timeout_s: float = 180) -> bytes:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.5)
    raise TimeoutError(f"s3://{bucket}/{key} did not appear within {timeout_s:.0f} s")


def run_demo(stack: Stack, customers_in_file: int = 2000) -> None:
    from churnguard.datasets import load_cdnow
    from infra.report import metrics_table

    s3, sqs = stack.clients["s3"], stack.clients["sqs"]
    bucket = stack.resources.refs["DataBucket"]
    metadata = json.loads((stack.model_dir / "metadata.json").read_text())
    how = "trained now" if stack.trained else "reused: inputs unchanged"
    print(
        f"\n== Model {stack.model_version} ({how}), "
        f"published to s3://{bucket}/models/{stack.model_version}/, "
        f"pointer {stack.resources.refs['ModelPointer']}"
    )
    print(metrics_table(metadata))

    request = _cdnow_request()
    status, body = _http("POST", f"{stack.api_url}/v1/scores", request)
    print(f"\n== HTTP scoring: POST {stack.api_url}/v1/scores -> {status}")
    for c in body.get("customers", []):
        reasons = ", ".join(f"{r['group']} (+{r['contribution']:.2f})" for r in c["reasons"]) or "-"
        print(
            f"  customer {c['user_id']:>6}: P(churn) {c['churn_probability']:.3f}  tier {c['risk_tier']:<6}"
            f"  queued {c['queued']!s:<5}  reasons: {reasons}"
        )
    example = json.dumps({"customers": request["customers"][:1]})
    print(
        f"  the same with curl:\n  curl -s -X POST {stack.api_url}/v1/scores "
        f"-H 'Content-Type: application/json' -d '{example}'"
    )

    events = load_cdnow()
    sample = sorted(events["user_id"].unique(), key=int)[:customers_in_file]
    drop = events[events["user_id"].isin(sample)]
    key = "incoming/cdnow sample.csv"
    started = time.time()
    s3.put_object(
        Bucket=bucket, Key=key, Body=drop.to_csv(index=False).encode(), Metadata={"as-of": "1997-10-01"}
    )
    summary = json.loads(wait_for_object(s3, bucket, "scored/cdnow sample.summary.json"))
    print(
        f"\n== Batch: s3://{bucket}/{key} ({len(drop):,} rows, {len(sample):,} customers, as-of 1997-10-01)"
        f" -> scoring-jobs queue -> batch_score, {time.time() - started:.1f} s"
    )
    print(
        f"  rows in {summary['rows_in']:,} = used {summary['rows_used']:,} "
        f"+ rejected {summary['rows_rejected']:,};"
        f" customers scored {summary['customers_scored']:,}; at/above promotion threshold "
        f"{summary['customers_at_or_above_promotion']:,}; queued {summary['customers_queued']:,}"
    )
    print(
        f"  outputs: s3://{bucket}/scored/cdnow sample.parquet, .summary.json, "
        f"s3://{bucket}/rejected/cdnow sample.csv"
    )

    queue = stack.resources.refs["PromotionsQueue"]
    waiting = int(
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
    )
    print(f"\n== Promotions waiting in {stack.resources.names['PromotionsQueue']}: {waiting:,}")
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, VisibilityTimeout=0)
    if got.get("Messages"):
        message = json.loads(got["Messages"][0]["Body"])
        print(
            "  e.g. "
            + json.dumps(
                {
                    k: message[k]
                    for k in (
                        "user_id",
                        "churn_probability",
                        "risk_tier",
                        "suggested_action",
                        "expected_value",
                        "source",
                    )
                }
            )
        )


def run_retraining_demo(stack: Stack, reuse_model_dir: bool) -> None:
    """A retraining cycle: a challenger, the training-job-completed event, the gate, the API following."""
    import io
    import shutil
    import tarfile
    import tempfile

    s3, bucket = stack.clients["s3"], stack.resources.refs["DataBucket"]
    with tempfile.TemporaryDirectory() as tmp:
        challenger = Path(tmp) / "challenger"
        if reuse_model_dir:  # a given model directory: re-version it (stands in for a retrain)
            shutil.copytree(stack.model_dir, challenger)
            metadata = json.loads((challenger / "metadata.json").read_text())
            metadata["model_version"] += "-retrained"
            (challenger / "metadata.json").write_text(json.dumps(metadata))
            how = "a re-versioned copy of the model"
        else:
            from training import train

            started = time.time()
            if train.main(["--model-dir", str(challenger), "--verbose", "0", "--seed", "7"]) != 0:
                raise SystemExit("challenger training failed")
            how = f"CDNOW retrained with seed 7 in {time.time() - started:.0f} s"
        version = json.loads((challenger / "metadata.json").read_text())["model_version"]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in challenger.iterdir():
                if path.is_file():
                    archive.add(path, arcname=path.name)
    job = f"churnguard-demo-{int(time.time())}"
    key = f"training/{job}/output/model.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    stack.clients["events"].put_events(
        Entries=[
            {
                "Source": "aws.sagemaker",
                "DetailType": "SageMaker Training Job State Change",
                "Detail": json.dumps(
                    {
                        "TrainingJobName": job,
                        "TrainingJobStatus": "Completed",
                        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/{key}"},
                    }
                ),
            }
        ]
    )
    decision = json.loads(wait_for_object(s3, bucket, f"model-decisions/{version}.json", timeout_s=120))
    print(f"\n== Retraining: challenger {version} ({how}) -> training-job-completed event -> promote")
    for side in ("champion", "challenger"):
        m = decision.get(side) or {}
        if m:
            print(
                f"  {side:<10} holdout AUC {m['roc_auc']:.4f}  log-loss {m['log_loss']:.4f}  "
                f"({m['customers']:,} customers)"
            )
    print(
        f"  decision: {'PROMOTED' if decision['accepted'] else 'REJECTED'} — {'; '.join(decision['reasons'])}"
    )
    deadline = time.time() + 15
    serving = None
    while time.time() < deadline:
        serving = _http("GET", f"{stack.api_url}/v1/health")[1].get("model_version")
        if not decision["accepted"] or serving == version:
            break
        time.sleep(0.5)
    print(f"  the API (same process, no restart) now serves {serving}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="keep the stack up until Ctrl-C")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo requests")
    parser.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    parser.add_argument(
        "--model-dir", type=Path, help="use this model directory instead of training on CDNOW"
    )
    args = parser.parse_args(argv)
    _stop_on_signals()
    try:
        return _run(args)
    except KeyboardInterrupt:  # SIGINT or SIGTERM, in any phase: _run's finally has stopped everything
        print("stopped", flush=True)
        return 0


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM unwind the stack cleanly (moto stopped), from the first line on: a background
    job of a non-interactive shell inherits SIGINT ignored, and SIGTERM's default skips all cleanup."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)


def _run(args: argparse.Namespace) -> int:
    stack = start_stack(args.model_dir, args.port, quiet=not args.serve)
    try:
        r = stack.resources
        print(
            json.dumps(
                {
                    "ready": True,
                    "api": stack.api_url,
                    "aws_endpoint": stack.moto.url,
                    "region": REGION,
                    "bucket": r.refs["DataBucket"],
                    "promotions_queue": r.refs["PromotionsQueue"],
                    "scoring_jobs_queue": r.refs["ScoringJobsQueue"],
                    "model_pointer": r.refs["ModelPointer"],
                    "model_version": stack.model_version,
                }
            ),
            flush=True,
        )
        print(
            f"local stack: API {stack.api_url}, AWS endpoint {stack.moto.url} (AWS_ENDPOINT_URL), "
            f"resources from template.yaml: {', '.join(sorted(r.names))}",
            flush=True,
        )
        if not args.no_demo:
            run_demo(stack)
            run_retraining_demo(stack, reuse_model_dir=args.model_dir is not None)
        if args.serve:
            print(
                f"\nServing until Ctrl-C. Try: export AWS_ENDPOINT_URL={stack.moto.url} "
                f"AWS_DEFAULT_REGION={REGION}"
                f" AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local; "
                f"aws s3 cp events.csv 's3://{r.refs['DataBucket']}/incoming/events.csv'",
                flush=True,
            )
            while True:  # until SIGINT / SIGTERM (see _stop_on_signals)
                time.sleep(1)
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
