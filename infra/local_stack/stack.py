"""Starting and stopping the local stack: moto, the template's resources, the model, the functions,
and the runner of the state machines' executions."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from infra.lambda_harness import load_handler
from infra.local_aws import MotoServer, aws_environment
from infra.local_stack.api import make_api_server
from infra.local_stack.deliveries import EventRuleDelivery, SqsEventSourceDelivery
from infra.local_stack.model import ensure_model, write_holdout
from infra.local_stack.resources import LocalResources, create_resources
from infra.local_stack.step_functions import (
    ExecutionPoller,
    LocalFunctions,
    function_aliases,
    function_timeouts,
)
from infra.template import load_template

AWS_SERVICES = ("s3", "sqs", "ssm", "dynamodb", "events", "stepfunctions")
# Locally a Retry waits a tenth of what the state machine's definition says.
LOCAL_RETRY_TIME_SCALE = 0.1
# Locally the pointer is re-read every 2 s (cloud: 60 s) so a promotion shows up promptly, and the
# inactivity sweep may be started for a future tick (the way to see a customer lapse without waiting).
LOCAL_FUNCTION_SETTINGS = {
    "CHURNGUARD_MODEL_POINTER_MAX_AGE": "2",
    "CHURNGUARD_SWEEP_ALLOW_FUTURE_TICKS": "true",
    # The demo and the tests replay history (CDNOW 1997, synthetic 2024) at one cutoff each: a 10-year
    # campaign period holds each replay's outcome windows whole, so all of them are measured (the
    # template's default, 546 days, is twice the default horizon: churnguard.control).
    "CHURNGUARD_CONTROL_PERIOD_DAYS": "3650",
}


@dataclass
class Stack:
    moto: MotoServer
    resources: LocalResources
    clients: dict[str, Any]
    api_url: str
    server: ThreadingHTTPServer
    delivery: SqsEventSourceDelivery
    promote_delivery: EventRuleDelivery | None
    model_version: str
    model_dir: Path
    trained: bool
    # Runs the executions moto records (None: the template has no dataset function).
    step_functions: ExecutionPoller | None = None
    # The real-time events queue -> RealtimeEventsFunction (None: not in the template).
    events_delivery: SqsEventSourceDelivery | None = None
    # The decision-log queue -> DecisionLogFunction (None: not in the template).
    decisions_delivery: SqsEventSourceDelivery | None = None

    def stop(self) -> None:
        if self.step_functions:
            self.step_functions.stop()
        if self.events_delivery:
            self.events_delivery.stop()
        if self.decisions_delivery:
            self.decisions_delivery.stop()
        self.delivery.stop()
        if self.promote_delivery:
            self.promote_delivery.stop()
        self.server.shutdown()
        self.delivery.join(timeout=5)
        self.moto.stop()


@dataclass
class _Functions:
    server: ThreadingHTTPServer
    delivery: SqsEventSourceDelivery
    promote_delivery: EventRuleDelivery | None
    step_functions: ExecutionPoller | None
    events_delivery: SqsEventSourceDelivery | None
    decisions_delivery: SqsEventSourceDelivery | None


def start_stack(model_dir: Path | None = None, port: int = 0, quiet: bool = False) -> Stack:
    """Everything up: moto, the resources, the model published (``model_dir``, or the CDNOW model,
    trained if its inputs changed) with its holdout, the API on ``port``, the deliveries and the
    runner of the state machines' executions."""
    moto = MotoServer()
    moto.start()
    try:
        os.environ.update(aws_environment(moto.url))
        settings = LOCAL_FUNCTION_SETTINGS | (_quiet_functions() if quiet else {})
        import boto3

        clients = {name: boto3.client(name) for name in AWS_SERVICES}
        template = load_template()
        # State machines included, before the functions load their environment: a function's
        # !Ref to a state machine is then the ARN moto gave it.
        resources = create_resources(template, clients)
        trained = False
        if model_dir is None:
            model_dir, trained = ensure_model()
        model_version = _publish(clients, resources, Path(model_dir))
        functions = _start_functions(template, clients, resources, settings, port)
    except BaseException:
        moto.stop()
        raise
    api_url = f"http://127.0.0.1:{functions.server.server_address[1]}"
    return Stack(
        moto,
        resources,
        clients,
        api_url,
        functions.server,
        functions.delivery,
        functions.promote_delivery,
        model_version,
        Path(model_dir),
        trained,
        functions.step_functions,
        functions.events_delivery,
        functions.decisions_delivery,
    )


def _quiet_functions() -> dict[str, str]:
    """For the demo's output: the functions log warnings only and publish no metrics; returns the
    function settings that say so."""
    import logging
    import warnings

    logging.getLogger("churnguard").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    return {"POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}


def _publish(clients: dict[str, Any], resources: LocalResources, model_dir: Path) -> str:
    """The gate's holdout for the model, the model under ``models/<version>/``, the pointer set;
    returns the version."""
    from churnguard.model_store import publish_model

    bucket = resources.refs["DataBucket"]
    write_holdout(clients["s3"], bucket, model_dir)
    pointer = publish_model(
        model_dir,
        s3_client=clients["s3"],
        ssm_client=clients["ssm"],
        bucket=bucket,
        parameter_name=resources.refs["ModelPointer"],
    )
    return pointer.version


def _start_functions(
    template: dict[str, Any],
    clients: dict[str, Any],
    resources: LocalResources,
    settings: dict[str, str],
    port: int,
) -> _Functions:
    """Each function loaded warm with the template's environment (plus ``settings``), and what
    invokes it: the API server, the scoring-jobs delivery, the dataset state machine's executions
    (``ExecutionPoller``), the promote rule's delivery."""

    def load(folder: str, logical_id: str) -> Any:
        return load_handler(folder, {**resources.function_env[logical_id], **settings}, cold_start=True)

    score_api = load("score_api", "ScoreApiFunction")
    batch = load("batch_score", "BatchScoreFunction")
    server = make_api_server(score_api, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="api").start()
    delivery = SqsEventSourceDelivery(
        clients["sqs"], resources.refs["ScoringJobsQueue"], resources.arns["ScoringJobsQueue"], batch
    )
    delivery.start()
    step_functions = None
    if "DatasetScoreFunction" in resources.function_env:
        dataset = load("dataset_score", "DatasetScoreFunction")
        handlers = {"DatasetScoreFunction": dataset}
        if "InactivitySweepFunction" in resources.function_env:
            handlers["InactivitySweepFunction"] = load("realtime_sweep", "InactivitySweepFunction")
        functions = LocalFunctions(
            handlers,
            function_timeouts(template),
            function_aliases(template, resources),
        )
        step_functions = ExecutionPoller(
            clients["stepfunctions"], functions, s3=clients["s3"], time_scale=LOCAL_RETRY_TIME_SCALE
        )
        step_functions.start()
    promote_delivery = None
    if "PromoteFunction" in resources.event_queues:
        promote = load("promote", "PromoteFunction")
        promote_delivery = EventRuleDelivery(
            clients["sqs"], resources.event_queues["PromoteFunction"][0], promote, "PromoteFunction"
        )
        promote_delivery.start()

    def queue_delivery(folder: str, function: str, queue: str) -> SqsEventSourceDelivery | None:
        """``function``'s SQS event source (batches of up to 10), started; None when not in the template."""
        if function not in resources.function_env:
            return None
        started = SqsEventSourceDelivery(
            clients["sqs"],
            resources.refs[queue],
            resources.arns[queue],
            load(folder, function),
            function=function,
            timeout_s=function_timeouts(template)[function],
            batch_size=10,
        )
        started.start()
        return started

    events_delivery = queue_delivery("realtime_events", "RealtimeEventsFunction", "RealtimeEventsQueue")
    decisions_delivery = queue_delivery("decision_log", "DecisionLogFunction", "DecisionsQueue")
    return _Functions(server, delivery, promote_delivery, step_functions, events_delivery, decisions_delivery)
