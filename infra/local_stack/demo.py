"""The demo on a running stack (``make demo``): the model, HTTP scoring of real customers, a batch drop
through the queue, the promotions waiting, then a retraining cycle through the promote gate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from churnguard.model_metadata import ModelMetadata
from infra.cdnow_requests import CDNOW_AS_OF, cdnow_scoring_request, one_time_lapsed_and_active
from infra.local_stack.api import http_json
from infra.local_stack.stack import Stack
from infra.model_fixtures import tarball

DEMO_HTTP_TIMEOUT_S = 30
PROMOTION_FIELDS = (
    "user_id",
    "churn_probability",
    "risk_tier",
    "suggested_action",
    "expected_value",
    "source",
)


def wait_for_object(s3: Any, bucket: str, key: str, timeout_s: float = 180) -> bytes:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except s3.exceptions.NoSuchKey:
            time.sleep(0.5)
    raise TimeoutError(f"s3://{bucket}/{key} did not appear within {timeout_s:.0f} s")


OUTPUT_DIR = Path("artifacts/local-stack")  # the demo's pictures and pages (relative to the checkout)


def run_demo(stack: Stack, customers_in_file: int = 2000, output_dir: Path = OUTPUT_DIR) -> None:
    _show_model(stack)
    _score_over_http(stack)
    summary = _score_a_drop(stack, customers_in_file)
    _show_promotions(stack)
    _measure_outcomes(stack, summary, customers_in_file, output_dir)


def _show_model(stack: Stack) -> None:
    from infra.report import metrics_table

    bucket = stack.resources.refs["DataBucket"]
    metadata = ModelMetadata.from_directory(stack.model_dir)
    how = "trained now" if stack.trained else "reused: inputs unchanged"
    print(
        f"\n== Model {stack.model_version} ({how}), "
        f"published to s3://{bucket}/models/{stack.model_version}/, "
        f"pointer {stack.resources.refs['ModelPointer']}"
    )
    print(metrics_table(metadata))


def _score_over_http(stack: Stack) -> None:
    request = cdnow_scoring_request(one_time_lapsed_and_active)
    status, body = http_json("POST", f"{stack.api_url}/v1/scores", request, timeout=DEMO_HTTP_TIMEOUT_S)
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


def _score_a_drop(stack: Stack, customers_in_file: int) -> dict[str, Any]:
    """The first ``customers_in_file`` CDNOW customers as a CSV dropped under incoming/, scored
    through the S3 notification -> scoring-jobs queue -> batch_score."""
    from churnguard.datasets import load_cdnow

    s3, bucket = stack.clients["s3"], stack.resources.refs["DataBucket"]
    events = load_cdnow()
    sample = sorted(events["user_id"].unique(), key=int)[:customers_in_file]
    drop = events[events["user_id"].isin(sample)]
    key = "incoming/cdnow sample.csv"
    started = time.time()
    s3.put_object(
        Bucket=bucket, Key=key, Body=drop.to_csv(index=False).encode(), Metadata={"as-of": CDNOW_AS_OF}
    )
    summary = json.loads(wait_for_object(s3, bucket, "scored/cdnow sample.summary.json"))
    print(
        f"\n== Batch: s3://{bucket}/{key} ({len(drop):,} rows, {len(sample):,} customers, "
        f"as-of {CDNOW_AS_OF}) -> scoring-jobs queue -> batch_score, {time.time() - started:.1f} s"
    )
    print(
        f"  rows in {summary['rows_in']:,} = used {summary['rows_used']:,} "
        f"+ rejected {summary['rows_rejected']:,};"
        f" customers scored {summary['customers_scored']:,}; at/above promotion threshold "
        f"{summary['customers_at_or_above_promotion']:,}; queued {summary['customers_queued']:,}"
    )
    print(
        f"  control groups: {summary['customers_queued']:,} treated (queued), "
        f"{summary['customers_held_out']:,} held out as control (logged, not sent); "
        f"{summary['monitoring_sample']:,} more customers logged as the monitoring sample"
    )
    _print_drift(summary.get("drift"))
    print(
        f"  outputs: s3://{bucket}/scored/cdnow sample.parquet, .summary.json, "
        f"s3://{bucket}/rejected/cdnow sample.csv"
    )
    return summary


def _print_drift(drift: dict[str, Any] | None) -> None:
    if not drift or drift.get("score_psi") is None:
        print(f"  drift: not measured ({(drift or {}).get('status', 'no drift section')})")
        return
    groups = ", ".join(f"{g} {v:.3f}" for g, v in sorted(drift["group_psi"].items(), key=lambda kv: -kv[1]))
    print(f"  drift against the training customers: score PSI {drift['score_psi']:.3f}; per group: {groups}")
    print(
        "  (the file holds the 2,000 lowest CDNOW ids, its earliest buyers: longer tenure and more orders"
        " than the training population, which the PSI flags; a random sample reads ~0.002)"
    )


def _measure_outcomes(
    stack: Stack, summary: dict[str, Any], customers_in_file: int, output_dir: Path
) -> None:
    """The closed loop on the demo's batch: its decisions reach the decision log, the customers' real
    following weeks (CDNOW until June 1998) are added to the event history, and the outcome job
    measures the promotions' uplift and the model's live quality on the control arm."""
    from churnguard.adapters import S3ObjectStore
    from churnguard.datasets import load_cdnow
    from churnguard.decision_store import read_decisions
    from churnguard.outcome_job import run

    s3, bucket = stack.clients["s3"], stack.resources.refs["DataBucket"]
    store = S3ObjectStore(s3)
    expected = summary["customers_queued"] + summary["customers_held_out"] + summary["monitoring_sample"]
    deadline = time.time() + 120
    while len(read_decisions(store, bucket).query("source == 'batch'")) < expected and time.time() < deadline:
        time.sleep(1)  # the decision-log queue's writer batches its messages
    events = load_cdnow()
    sample = sorted(events["user_id"].unique(), key=int)[:customers_in_file]
    history = events[events["user_id"].isin(sample)]
    s3.put_object(
        Bucket=bucket, Key="training-events/cdnow sample.csv", Body=history.to_csv(index=False).encode()
    )
    started = time.time()
    result = run(store, bucket, out_dir=output_dir / "outcomes", drift=summary.get("drift"))
    report = result.report
    print(
        f"\n== Outcomes: the decision log + what the customers did next (their CDNOW history in "
        f"s3://{bucket}/training-events/) -> outcome job, {time.time() - started:.1f} s"
    )
    counts = report["counts"]
    print(
        f"  decisions {counts['decisions']:,}: matured {counts['matured']:,}, pending {counts['pending']:,}"
    )
    _print_uplift(report)
    for version, quality in report["live_quality"].items():
        auc = quality["roc_auc"]
        offline = ModelMetadata.from_directory(stack.model_dir).metrics["test"].get("roc_auc")
        print(
            f"  live ROC-AUC of {version} on {quality['n']:,} control customers: "
            f"{_ci(auc)} (offline test AUC {offline or float('nan'):.3f})"
        )
    pictures = output_dir / "outcomes"
    shown = ", ".join(
        str(pictures / p)
        for p in ("uplift.png", "live_calibration.png", "drift.png")
        if (pictures / p).exists()
    )
    print(f"  report: {pictures / 'outcomes.html'} ({shown})")
    print(f"          s3://{bucket}/outcomes/latest/")


def _ci(block: dict[str, Any]) -> str:
    if block.get("value") is None:
        return f"n/a ({block.get('reason', 'not enough data')})"
    return f"{block['value']:.3f} [95% CI {block['ci_low']:.3f}, {block['ci_high']:.3f}]"


def _print_uplift(report: dict[str, Any]) -> None:
    overall = report["uplift"]["overall"]
    arms = report["arms"]
    print(
        f"  churn rate: treated {arms['treated'].get('churn_rate') or 0:.3f} (n {arms['treated']['n']:,}), "
        f"control {arms['control'].get('churn_rate') or 0:.3f} (n {arms['control']['n']:,})"
    )
    print(
        "  measured uplift (incremental retention, treated - control): "
        f"{_ci(overall['incremental_retention'])}"
    )
    print(
        "  (CDNOW is history: nobody received these offers, so about 0 is the right answer;"
        " a planted uplift is recovered: tests/e2e/test_local_stack_outcomes.py)"
    )


def _show_promotions(stack: Stack) -> None:
    sqs, queue = stack.clients["sqs"], stack.resources.refs["PromotionsQueue"]
    waiting = int(
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
    )
    print(f"\n== Promotions waiting in {stack.resources.names['PromotionsQueue']}: {waiting:,}")
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=1, VisibilityTimeout=0)
    if got.get("Messages"):
        message = json.loads(got["Messages"][0]["Body"])
        print("  e.g. " + json.dumps({k: message[k] for k in PROMOTION_FIELDS}))


def run_retraining_demo(stack: Stack, reuse_model_dir: bool) -> None:
    """A retraining cycle: a challenger, the training-job-completed event, the gate, the API following."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        challenger, how = _challenger(stack, Path(tmp) / "challenger", reuse_model_dir)
        version = ModelMetadata.from_directory(challenger).model_version
        archive = tarball(challenger)
    _training_job_completes(stack, archive)
    s3, bucket = stack.clients["s3"], stack.resources.refs["DataBucket"]
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
    print(f"  the API (same process, no restart) now serves {_serving_after(stack, decision, version)}")


def _challenger(stack: Stack, target: Path, reuse_model_dir: bool) -> tuple[Path, str]:
    """A challenger model in ``target`` and how it was made: with a given model directory, a
    re-versioned copy of it (stands in for a retrain); otherwise CDNOW retrained with another seed."""
    if reuse_model_dir:
        import shutil

        shutil.copytree(stack.model_dir, target)
        metadata = ModelMetadata.from_directory(target)
        retrained = metadata.model_copy(update={"model_version": metadata.model_version + "-retrained"})
        (target / "metadata.json").write_text(retrained.to_json())
        return target, "a re-versioned copy of the model"
    from training import train

    started = time.time()
    if train.main(["--model-dir", str(target), "--verbose", "0", "--seed", "7"]) != 0:
        raise SystemExit("challenger training failed")
    return target, f"CDNOW retrained with seed 7 in {time.time() - started:.0f} s"


def _training_job_completes(stack: Stack, archive: bytes) -> None:
    """What SageMaker does at the end of a job: model.tar.gz under the job's output, then the
    "Training Job State Change" (Completed) event."""
    bucket = stack.resources.refs["DataBucket"]
    job = f"churnguard-demo-{int(time.time())}"
    key = f"training/{job}/output/model.tar.gz"
    stack.clients["s3"].put_object(Bucket=bucket, Key=key, Body=archive)
    detail = {
        "TrainingJobName": job,
        "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/{key}"},
    }
    stack.clients["events"].put_events(
        Entries=[
            {
                "Source": "aws.sagemaker",
                "DetailType": "SageMaker Training Job State Change",
                "Detail": json.dumps(detail),
            }
        ]
    )


def _serving_after(stack: Stack, decision: dict[str, Any], version: str, timeout_s: float = 15) -> str | None:
    """The model version the API serves once a promotion has reached it (within ``timeout_s``)."""
    deadline = time.time() + timeout_s
    serving = None
    while time.time() < deadline:
        serving = http_json("GET", f"{stack.api_url}/v1/health", timeout=DEMO_HTTP_TIMEOUT_S)[1].get(
            "model_version"
        )
        if not decision["accepted"] or serving == version:
            break
        time.sleep(0.5)
    return serving
