"""Every function from its `sam build` package (function folder + layer, the runtime's boto3 only),
invoked by `sam local` in a Lambda runtime container against moto in a container; the scoring API
served by `sam local start-api`; the training image run the way SageMaker runs it.

One module on purpose: the stack (build, containers) is shared, and `--dist loadfile` keeps it on
one worker. Timings are printed (-s / the note), never asserted.
"""

import io
import json
import time

import pandas as pd
import pytest

from churnguard.datasets import generate_synthetic_events
from tests.helpers import FIXTURE_MODEL, check_scoring_api_over_http, http, load_event, model_variant, tarball

AS_OF = "2024-09-30"


def _queue_depth(stack, logical_id: str) -> int:
    attributes = stack.clients["sqs"].get_queue_attributes(
        QueueUrl=stack.resources.refs[logical_id],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _pointer_version(stack) -> str:
    value = stack.clients["ssm"].get_parameter(Name=stack.resources.refs["ModelPointer"])["Parameter"][
        "Value"
    ]
    return json.loads(value)["version"]


def _s3_json(stack, key: str) -> dict:
    return json.loads(stack.clients["s3"].get_object(Bucket=stack.bucket, Key=key)["Body"].read())


def _completed_event(stack, job: str, artifacts: str) -> dict:
    event = load_event("promote/training_job_completed.json")
    event["detail"].update(
        TrainingJobName=job, ModelArtifacts={"S3ModelArtifacts": artifacts}, TrainingJobStatus="Completed"
    )
    return event


def test_score_api_package_scores_customers_and_queues_promotions(sam_stack):
    before = _queue_depth(sam_stack, "PromotionsQueue")
    invocation = sam_stack.invoke("ScoreApiFunction", load_event("score_api/post_scores.json"))
    print(f"\nScoreApiFunction cold invoke: {invocation.seconds:.2f} s")
    assert invocation.response["statusCode"] == 200, invocation.logs[-3000:]
    body = json.loads(invocation.response["body"])
    assert body["model_version"] == _pointer_version(sam_stack)
    assert all(0.0 <= c["churn_probability"] <= 1.0 for c in body["customers"])
    queued = sum(c["queued"] for c in body["customers"])
    assert queued >= 1  # the fixture request holds a lapsed high-value customer
    assert _queue_depth(sam_stack, "PromotionsQueue") == before + queued
    message = sam_stack.clients["sqs"].receive_message(QueueUrl=sam_stack.resources.refs["PromotionsQueue"])
    promotion = json.loads(message["Messages"][0]["Body"])
    assert (
        promotion["schema"] == "churnguard.promotion/v1"
        and promotion["model_version"] == body["model_version"]
    )

    # the same request again (a client retry): idempotency in DynamoDB publishes nothing new
    depth = _queue_depth(sam_stack, "PromotionsQueue")
    again = sam_stack.invoke("ScoreApiFunction", load_event("score_api/post_scores.json"))
    assert again.response["statusCode"] == 200
    assert _queue_depth(sam_stack, "PromotionsQueue") == depth


def test_score_api_package_answers_health_with_the_pointer_model(sam_stack):
    invocation = sam_stack.invoke("ScoreApiFunction", load_event("score_api/get_health.json"))
    assert invocation.response["statusCode"] == 200
    assert json.loads(invocation.response["body"]) == {
        "status": "ok",
        "model_version": _pointer_version(sam_stack),
    }


def test_batch_package_scores_a_drop_writes_rejects_and_summary_and_redelivery_adds_no_promotion(sam_stack):
    s3 = sam_stack.clients["s3"]
    events = generate_synthetic_events(400, seed=11, weeks=78)
    events = events[events["timestamp"] < AS_OF].copy()
    events["timestamp"] = events["timestamp"].astype(str)
    bad = pd.DataFrame(
        {"user_id": ["", "bad-2"], "timestamp": ["2024-01-01", "not a date"], "event_type": ["order"] * 2}
    )
    frame = pd.concat([events, bad], ignore_index=True)
    key = "incoming/sam-d\u00e9mo events+v1.csv"  # URL-encoded in the notification, decoded by the function
    s3.put_object(
        Bucket=sam_stack.bucket, Key=key, Body=frame.to_csv(index=False).encode(), Metadata={"as-of": AS_OF}
    )
    event = sam_stack.scoring_job_event(key)
    assert "d%C3%A9mo+events%2Bv1.csv" in event["Records"][0]["body"]

    before = _queue_depth(sam_stack, "PromotionsQueue")
    invocation = sam_stack.invoke("BatchScoreFunction", event)
    print(f"\nBatchScoreFunction cold invoke ({len(frame)} rows): {invocation.seconds:.2f} s")
    assert invocation.response == {"batchItemFailures": []}, invocation.logs[-3000:]
    summary = _s3_json(sam_stack, "scored/sam-d\u00e9mo events+v1.summary.json")
    assert summary["status"] == "ok", summary
    assert summary["rows_in"] == len(frame) == summary["rows_used"] + summary["rows_rejected"]
    assert summary["rows_rejected"] == 2
    scored = pd.read_parquet(
        io.BytesIO(
            s3.get_object(Bucket=sam_stack.bucket, Key="scored/sam-d\u00e9mo events+v1.parquet")[
                "Body"
            ].read()
        )
    )
    assert sorted(scored["user_id"]) == sorted(events["user_id"].unique())
    assert scored["churn_probability"].between(0, 1).all()
    rejects = pd.read_csv(
        io.BytesIO(
            s3.get_object(Bucket=sam_stack.bucket, Key="rejected/sam-d\u00e9mo events+v1.csv")["Body"].read()
        )
    )
    assert len(rejects) == 2 and rejects["reason"].str.len().gt(0).all()
    queued = summary["customers_queued"]
    assert queued > 0 and _queue_depth(sam_stack, "PromotionsQueue") == before + queued

    redelivered = sam_stack.invoke("BatchScoreFunction", event)  # SQS at-least-once: same message again
    assert redelivered.response == {"batchItemFailures": []}
    assert _queue_depth(sam_stack, "PromotionsQueue") == before + queued


def test_batch_package_reads_parquet_in_its_isolated_reader_and_survives_a_corrupt_one(sam_stack):
    from tests.integration.test_batch_score import _corrupt_parquet

    s3 = sam_stack.clients["s3"]
    events = generate_synthetic_events(200, seed=12, weeks=78)
    events = events[events["timestamp"] < AS_OF]
    buffer = io.BytesIO()
    events.to_parquet(buffer, index=False)
    for name, body in (("good", buffer.getvalue()), ("corrupt", _corrupt_parquet(0))):
        key = f"incoming/sam-{name}.parquet"
        s3.put_object(Bucket=sam_stack.bucket, Key=key, Body=body, Metadata={"as-of": AS_OF})
        invocation = sam_stack.invoke("BatchScoreFunction", sam_stack.scoring_job_event(key))
        assert invocation.response == {"batchItemFailures": []}, invocation.logs[-3000:]
        summary = _s3_json(sam_stack, f"scored/sam-{name}.summary.json")
        if name == "good":
            assert summary["status"] == "ok" and summary["customers_scored"] == events["user_id"].nunique()
        else:  # the child decoder fails (segfault, runaway allocation or an error); the function reports it
            assert summary["status"] == "failed" and "not a readable Parquet file" in summary["error"], (
                summary
            )


def _lambda_invoker(port: int):
    """The local runner's ``invoke`` through `sam local start-lambda`: a function's unhandled error comes
    back as the error Step Functions would see (its errorType, the payload as cause)."""
    import boto3
    from botocore.config import Config

    from infra.local_aws import REGION
    from infra.local_stack.step_functions import StatesError

    client = boto3.client(
        "lambda",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name=REGION,
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(read_timeout=900, retries={"total_max_attempts": 1}),
    )

    def invoke(function: str, payload):
        answer = client.invoke(FunctionName=function.rsplit(":", 1)[-1], Payload=json.dumps(payload).encode())
        body = answer["Payload"].read()
        result = json.loads(body)
        # `sam local start-lambda` does not always set the FunctionError header (seen with podman):
        # an unhandled error is also told by its payload, which no handler of ours returns.
        unhandled = isinstance(result, dict) and {"errorType", "errorMessage"} <= result.keys()
        if answer.get("FunctionError") or unhandled:
            raise StatesError(result.get("errorType", "Lambda.Unknown"), body.decode())
        return result

    return invoke


def test_dataset_package_runs_every_step_of_the_state_machine_and_scores_each_customer_once(sam_stack):
    """A two-part dataset with customers in both parts: the batch package routes the marker to a
    StartExecution, and the template's own ASL runs (local runner) with every step in the
    DatasetScoreFunction package under `sam local start-lambda`."""
    from infra.local_aws import free_port
    from infra.local_stack.step_functions import StateMachine, state_machine_definitions
    from infra.sam_local import stop_process
    from infra.template import load_template

    s3, sfn = sam_stack.clients["s3"], sam_stack.clients["stepfunctions"]
    events = generate_synthetic_events(300, seed=13, weeks=78)
    events = events[events["timestamp"] < AS_OF].sort_values("timestamp", kind="stable")
    events["timestamp"] = events["timestamp"].astype(str)
    halves = [events.iloc[: len(events) // 2], events.iloc[len(events) // 2 :]]
    spanning = set(halves[0]["user_id"]) & set(halves[1]["user_id"])
    assert len(spanning) > 20  # cut by rows: customers span the parts
    prefix = "incoming/sam-export/"
    for number, half in enumerate(halves):
        s3.put_object(
            Bucket=sam_stack.bucket,
            Key=f"{prefix}part-{number:04d}.csv",
            Body=half.to_csv(index=False).encode(),
        )
    s3.put_object(Bucket=sam_stack.bucket, Key=f"{prefix}_SUCCESS", Body=b"")

    routed = sam_stack.invoke("BatchScoreFunction", sam_stack.scoring_job_event(f"{prefix}_SUCCESS"))
    assert routed.response == {"batchItemFailures": []}, routed.logs[-3000:]
    machine = sam_stack.resources.refs["DatasetStateMachine"]
    (execution,) = sfn.list_executions(stateMachineArn=machine)["executions"]
    execution_input = json.loads(sfn.describe_execution(executionArn=execution["executionArn"])["input"])

    definition = state_machine_definitions(load_template(), sam_stack.resources)["DatasetStateMachine"]
    before = _queue_depth(sam_stack, "PromotionsQueue")
    port = free_port()
    process = sam_stack.start_lambda(port)
    try:
        started = time.time()
        outcome = StateMachine(definition, _lambda_invoker(port), s3=s3, map_workers=1).execute(
            execution_input
        )
        print(f"\nDatasetStateMachine over start-lambda ({len(events)} rows): {time.time() - started:.1f} s")
    finally:
        stop_process(process)
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.cause)

    summary = _s3_json(sam_stack, "scored/sam-export/_summary.json")
    assert summary["status"] == "ok" and summary["parts"] == 2, summary
    assert (
        summary["as_of"]
        == (pd.Timestamp(events["timestamp"].max()) + pd.Timedelta(days=1)).date().isoformat()
    )
    assert summary["rows_in"] == len(events) == summary["rows_used"] + summary["rows_rejected"]
    scored = pd.concat(
        [
            pd.read_parquet(io.BytesIO(s3.get_object(Bucket=sam_stack.bucket, Key=k)["Body"].read()))
            for k in summary["outputs"]
        ],
        ignore_index=True,
    )
    assert scored["user_id"].is_unique and set(scored["user_id"]) == set(events["user_id"])
    assert scored["churn_probability"].between(0, 1).all()
    assert _queue_depth(sam_stack, "PromotionsQueue") == before + summary["customers_queued"]


def test_realtime_routes_and_the_inactivity_sweep_run_from_their_packages(sam_stack):
    """Real-time mode as deployed: POST /v1/events, GET and DELETE /v1/customers/{user_id} in the
    ScoreApiFunction package against the template's state table, the sweep's own ASL (local runner)
    with every step in the InactivitySweepFunction package under `sam local start-lambda`, and an
    SQS batch of events through the RealtimeEventsFunction package."""
    import datetime as dt

    from infra.local_aws import free_port
    from infra.local_stack.step_functions import StateMachine, state_machine_definitions
    from infra.sam_local import stop_process
    from infra.template import load_template

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    user = "sam-realtime-1"
    events = [
        {"user_id": user, "timestamp": (now - dt.timedelta(weeks=11 - w, hours=1)).isoformat(),
         "event_type": "order", "amount": 40.0, "event_id": f"order-{w}"}
        for w in range(12)
    ]  # fmt: skip
    post = load_event("score_api/post_events.json")
    post["body"] = json.dumps({"events": events})
    posted = sam_stack.invoke("ScoreApiFunction", post)
    assert posted.response["statusCode"] == 202, posted.logs[-3000:]
    (customer,) = json.loads(posted.response["body"])["customers"]
    assert customer["events_applied"] == 12
    get = load_event("score_api/get_customer.json")
    get["path"], get["pathParameters"] = f"/v1/customers/{user}", {"user_id": user}
    viewed = sam_stack.invoke("ScoreApiFunction", get)
    assert viewed.response["statusCode"] == 200, viewed.logs[-3000:]
    assert json.loads(viewed.response["body"])["churn_probability"] == pytest.approx(
        customer["churn_probability"], abs=1e-6
    )

    definition = state_machine_definitions(load_template(), sam_stack.resources)[
        "InactivitySweepStateMachine"
    ]
    # a tick 300 days ahead: the way to see a customer lapse without waiting (refused in AWS)
    sam_stack.env_overrides["InactivitySweepFunction"] = {"CHURNGUARD_SWEEP_ALLOW_FUTURE_TICKS": "true"}
    before = _queue_depth(sam_stack, "PromotionsQueue")
    port = free_port()
    process = sam_stack.start_lambda(port)
    try:
        started = time.time()
        tick = {"scheduled_time": (now + dt.timedelta(days=300)).isoformat()}
        machine = sam_stack.resources.refs["InactivitySweepStateMachine"]  # its executions, in moto
        outcome = StateMachine(definition, _lambda_invoker(port), arn=machine, map_workers=1).execute(tick)
        print(f"\nInactivitySweepStateMachine over start-lambda: {time.time() - started:.1f} s")
    finally:
        stop_process(process)
    assert outcome.status == "SUCCEEDED", (outcome.error, outcome.cause)
    assert outcome.output["complete"] and outcome.output["totals"]["scored"] >= 1, outcome.output
    assert outcome.output["totals"]["warnings"] >= 1  # ten months of silence
    assert _queue_depth(sam_stack, "PromotionsQueue") == before + outcome.output["totals"]["queued"]

    # events by queue: the RealtimeEventsFunction package applies two messages, parks the third
    queued = sam_stack.invoke("RealtimeEventsFunction", load_event("realtime_events/sqs_events.json"))
    assert queued.response == {"batchItemFailures": []}, queued.logs[-3000:]
    assert _queue_depth(sam_stack, "RealtimeEventsDLQ") == 1
    stored = sam_stack.clients["dynamodb"].get_item(
        TableName=sam_stack.resources.refs["CustomerStateTable"], Key={"user_id": {"S": "c-1001"}}
    )
    assert "Item" in stored

    delete = load_event("score_api/delete_customer.json")
    delete["path"], delete["pathParameters"] = f"/v1/customers/{user}", {"user_id": user}
    deleted = sam_stack.invoke("ScoreApiFunction", delete)
    assert deleted.response["statusCode"] == 204, deleted.logs[-3000:]
    table = sam_stack.resources.refs["CustomerStateTable"]
    item = sam_stack.clients["dynamodb"].get_item(TableName=table, Key={"user_id": {"S": user}})
    assert "Item" not in item


def test_retrain_package_creates_the_training_job_and_promote_package_gates_it(sam_stack, tmp_path):
    sam_stack.env_overrides["RetrainFunction"] = {
        "CHURNGUARD_TRAINING_IMAGE": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training:abc123"
    }
    invocation = sam_stack.invoke("RetrainFunction", {"source": "aws.scheduler"})
    job_name = invocation.response["training_job"]
    job = sam_stack.clients["sagemaker"].describe_training_job(TrainingJobName=job_name)
    assert job["AlgorithmSpecification"]["TrainingImage"].endswith(":abc123")
    assert (
        job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        == f"s3://{sam_stack.bucket}/training-events/"
    )

    # the gate, from its package (pandas in the function, numpy from the layer): a valid challenger is
    # promoted and the pointer moves; a degraded one is refused and the pointer stays
    s3 = sam_stack.clients["s3"]
    for version, degrade in (("sam-challenger", False), ("sam-degraded", True)):
        key = f"training/{job_name}-{version}/output/model.tar.gz"
        s3.put_object(
            Bucket=sam_stack.bucket, Key=key, Body=tarball(model_variant(tmp_path, version, degrade=degrade))
        )
        decision = sam_stack.invoke(
            "PromoteFunction",
            _completed_event(sam_stack, f"{job_name}-{version}", f"s3://{sam_stack.bucket}/{key}"),
        )
        print(f"\nPromoteFunction cold invoke: {decision.seconds:.2f} s")
        recorded = _s3_json(sam_stack, f"model-decisions/{version}.json")
        assert recorded["accepted"] is (not degrade), recorded
        assert decision.response["accepted"] is (not degrade)
    assert _pointer_version(sam_stack) == "sam-challenger"
    sam_stack.publish(FIXTURE_MODEL)  # back to the fixture champion for the tests that follow


def test_start_api_serves_the_scoring_api_over_http_from_the_package(sam_stack):
    from infra.local_aws import free_port
    from infra.sam_local import stop_process

    port = free_port()
    process = sam_stack.start_api(port)
    try:
        api = f"http://127.0.0.1:{port}"
        check_scoring_api_over_http(api, _pointer_version(sam_stack))
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            status, _ = http("GET", api + "/v1/health")
            latencies.append((time.perf_counter() - started) * 1000)
            assert status == 200
        print(f"\nstart-api warm GET /v1/health: median {sorted(latencies)[10]:.0f} ms")
    finally:
        stop_process(process)


@pytest.mark.slow
def test_training_image_trains_cdnow_as_sagemaker_runs_it_and_the_packaged_gate_promotes_it(
    sam_stack, engine, tmp_path
):
    from churnguard.datasets import load_cdnow
    from infra.local_stack.model import cdnow_holdout, put_holdout
    from infra.sam_local import run_training_job
    from infra.training_image import build_training_image

    started = time.time()
    image = build_training_image(engine)
    print(f"\ntraining image {image}: {time.time() - started:.0f} s (cached when unchanged)")
    s3 = sam_stack.clients["s3"]
    users, labels, holdout_events, as_of = cdnow_holdout()
    put_holdout(s3, sam_stack.bucket, users, labels, holdout_events, as_of)
    events = load_cdnow()
    training_events = events[~events["user_id"].isin(set(users))]  # the holdout stays unseen
    s3.put_object(
        Bucket=sam_stack.bucket,
        Key="training-events/cdnow.csv",
        Body=training_events.to_csv(index=False).encode(),
    )
    sam_stack.env_overrides["RetrainFunction"] = {
        "CHURNGUARD_TRAINING_IMAGE": image,
        "CHURNGUARD_TRAINING_HYPERPARAMETERS": json.dumps(
            {"epochs": 20, "patience": 3, "as_of": "1997-10-01"}
        ),
    }
    job_name = sam_stack.invoke("RetrainFunction", {"source": "aws.scheduler"}).response["training_job"]
    job = sam_stack.clients["sagemaker"].describe_training_job(TrainingJobName=job_name)

    run = run_training_job(engine, job, s3, tmp_path)
    print(f"training job in the image: {run.seconds:.0f} s")
    assert run.exit_code == 0 and run.failure is None, run.logs[-4000:]
    metadata = json.loads((run.opt_ml / "model" / "metadata.json").read_text())
    assert metadata["files"]["model.tflite"]["parity_max_abs_diff"] <= 1e-5

    champion = _pointer_version(sam_stack)
    decision = sam_stack.invoke("PromoteFunction", _completed_event(sam_stack, job_name, run.model_artifacts))
    recorded = _s3_json(sam_stack, f"model-decisions/{metadata['model_version']}.json")
    assert recorded["accepted"] is True, recorded
    assert recorded["champion_version"] == champion and recorded["champion"]["customers"] == len(users)
    assert decision.response["accepted"] is True
    assert _pointer_version(sam_stack) == metadata["model_version"]


def test_training_image_with_a_bad_channel_fails_with_the_reason_in_the_failure_file(
    sam_stack, engine, tmp_path
):
    from infra.sam_local import run_training_job
    from infra.training_image import build_training_image

    image = build_training_image(engine)
    s3 = sam_stack.clients["s3"]
    s3.put_object(Bucket=sam_stack.bucket, Key="bad-events/part-1.csv", Body=b"customer,when\n1,1997-01-01\n")
    job = {
        "TrainingJobName": "churnguard-bad-channel",
        "AlgorithmSpecification": {"TrainingImage": image, "TrainingInputMode": "File"},
        "HyperParameters": {"epochs": "2"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3Uri": f"s3://{sam_stack.bucket}/bad-events/"}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{sam_stack.bucket}/training/"},
    }
    run = run_training_job(engine, job, s3, tmp_path)
    assert run.exit_code != 0 and run.model_artifacts is None
    assert run.failure and "user_id" in run.failure, run.logs[-3000:]

    job["TrainingJobName"] = "churnguard-empty-channel"
    job["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = (
        f"s3://{sam_stack.bucket}/no-such-prefix/"
    )
    run = run_training_job(engine, job, s3, tmp_path)
    assert run.exit_code != 0 and run.failure and "empty" in run.failure.lower(), run.logs[-3000:]


def test_decision_log_and_outcome_packages_keep_the_apis_decisions_and_report_on_them(sam_stack):
    """The API's decisions go to the decision-log queue; the writer package turns those messages into
    Parquet (pandas + fastparquet from its package, numpy from the layer) and the outcome package
    reads them back with the event history and draws its report (matplotlib from its package)."""
    scored = sam_stack.invoke("ScoreApiFunction", load_event("score_api/post_scores.json"))
    assert scored.response["statusCode"] == 200, scored.logs[-3000:]
    sqs, queue = sam_stack.clients["sqs"], sam_stack.resources.refs["DecisionsQueue"]
    messages = []
    while got := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=300).get(
        "Messages"
    ):
        messages += got
    assert messages, "the API logged no decision"
    event = load_event("decision_log/sqs_decisions.json")
    template = event["Records"][0]
    event["Records"] = [{**template, "messageId": m["MessageId"], "body": m["Body"]} for m in messages]
    written = sam_stack.invoke("DecisionLogFunction", event)
    print(f"\nDecisionLogFunction cold invoke: {written.seconds:.2f} s ({len(messages)} messages)")
    assert written.response == {"batchItemFailures": []}, written.logs[-3000:]
    s3 = sam_stack.clients["s3"]
    logged = s3.list_objects_v2(Bucket=sam_stack.bucket, Prefix="decisions/").get("Contents", [])
    assert logged and all(o["Key"].endswith(".parquet") for o in logged)

    request = load_event("score_api/post_scores.json")
    history = [
        {"user_id": c["user_id"], **e} for c in json.loads(request["body"])["customers"] for e in c["events"]
    ]
    s3.put_object(
        Bucket=sam_stack.bucket,
        Key="training-events/history.csv",
        Body=pd.DataFrame(history).to_csv(index=False),
    )
    measured = sam_stack.invoke("OutcomesFunction", load_event("outcomes/scheduled.json"))
    print(f"OutcomesFunction cold invoke: {measured.seconds:.2f} s")
    assert measured.response["counts"]["decisions"] >= 1, measured.logs[-3000:]
    picture = s3.get_object(Bucket=sam_stack.bucket, Key="outcomes/latest/live_calibration.png")[
        "Body"
    ].read()
    assert picture.startswith(b"\x89PNG")
