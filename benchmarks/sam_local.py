"""`sam local` latency of every function from its `sam build` package (make bench-sam).

Cold: one `sam local invoke` per call (a new runtime container each time, as a Lambda cold start
plus the SAM CLI's own start-up), wall time. Warm: `sam local start-lambda --warm-containers EAGER`
invoked through boto3's Lambda client, one container per function kept warm, wall time per call.
The engine here is podman with home-made base images (infra/containers.py); with Docker the numbers
differ. Results: benchmarks/results/sam_local.{json,md}.

    python -m benchmarks.sam_local [--cold 2] [--warm 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_results
from infra.lambda_harness import load_event
from infra.local_aws import free_port
from infra.model_fixtures import FIXTURE_MODEL, model_variant, tarball
from infra.sam_local import SamLocalStack, start_sam_stack, stop_process


def _batch_event(stack: SamLocalStack, index: int) -> dict[str, Any]:
    """A fresh small drop (400 synthetic customers), so every call scores a new object version."""
    from churnguard.datasets import generate_synthetic_events

    s3 = stack.clients["s3"]
    key = f"incoming/bench-drop-{index}.csv"  # top level: a file in a folder is a dataset part
    events = generate_synthetic_events(400, seed=index, weeks=78)
    events = events[events["timestamp"] < "2024-09-30"]
    s3.put_object(Bucket=stack.bucket, Key=key, Body=events.to_csv(index=False).encode())
    return stack.scoring_job_event(key)


def _promote_event(stack: SamLocalStack, work: Path, index: int) -> dict[str, Any]:
    """A completed job whose challenger is the fixture model under a new version (gate runs fully)."""
    version = f"bench-{index}"
    key = f"training/churnguard-bench-{index}/output/model.tar.gz"
    stack.clients["s3"].put_object(Bucket=stack.bucket, Key=key, Body=tarball(model_variant(work, version)))
    event = load_event("promote/training_job_completed.json")
    event["detail"].update(
        TrainingJobName=f"churnguard-bench-{index}",
        ModelArtifacts={"S3ModelArtifacts": f"s3://{stack.bucket}/{key}"},
    )
    return event


def events_for(stack: SamLocalStack, work: Path, function: str, index: int) -> dict[str, Any]:
    if function == "ScoreApiFunction":
        return load_event("score_api/post_scores.json")
    if function == "BatchScoreFunction":
        return _batch_event(stack, index)
    if function == "PromoteFunction":
        return _promote_event(stack, work, index)
    return {"source": "aws.scheduler"}


FUNCTIONS = ("ScoreApiFunction", "BatchScoreFunction", "PromoteFunction", "RetrainFunction")


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 1), "max_ms": round(ms[-1], 1)}


def run(cold: int, warm: int) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    results: dict[str, Any] = {"engine": None, "functions": {}}
    with tempfile.TemporaryDirectory(prefix="churnguard-bench-sam-") as tmp:
        work = Path(tmp)
        started = time.time()
        stack = start_sam_stack(FIXTURE_MODEL, work)
        results["engine"] = stack.engine.kind
        results["stack_setup_s"] = round(time.time() - started, 1)
        image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/churnguard-training:bench"
        stack.env_overrides["RetrainFunction"] = {"CHURNGUARD_TRAINING_IMAGE": image}
        index = 0
        try:
            for function in FUNCTIONS:
                times = []
                for _ in range(cold):
                    index += 1
                    times.append(stack.invoke(function, events_for(stack, work, function, index)).seconds)
                results["functions"][function] = {"cold_sam_local_invoke": _summary(times)}
            port = free_port()
            server = stack.start_lambda(port)
            try:
                client = boto3.client(
                    "lambda",
                    endpoint_url=f"http://127.0.0.1:{port}",
                    region_name="eu-west-1",
                    aws_access_key_id="local",
                    aws_secret_access_key="local",
                    config=Config(read_timeout=900, retries={"max_attempts": 0}),
                )
                for function in FUNCTIONS:
                    times = []
                    for call in range(warm + 1):  # the first call starts nothing (EAGER) but loads the model
                        index += 1
                        if function == "RetrainFunction":
                            time.sleep(1.05)  # job names carry the second: one job per second at most
                        payload = json.dumps(events_for(stack, work, function, index)).encode()
                        begun = time.perf_counter()
                        response = client.invoke(FunctionName=function, Payload=payload)
                        elapsed = time.perf_counter() - begun
                        if "FunctionError" in response:
                            raise RuntimeError(f"{function}: {response['Payload'].read()[:2000]!r}")
                        if call:
                            times.append(elapsed)
                        else:
                            results["functions"][function]["first_call_warm_container_ms"] = round(
                                elapsed * 1000, 1
                            )
                    results["functions"][function]["warm_start_lambda"] = _summary(times)
            finally:
                stop_process(server)
        finally:
            stack.stop()
    return results


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"`sam local` on the `sam build` packages ({results['engine']}; "
        f"stack setup {results['stack_setup_s']} s)",
        "",
        "| function | cold: `sam local invoke` wall (median) | warm container: first call "
        "| warm: median / max |",
        "|---|---|---|---|",
    ]
    for name, r in results["functions"].items():
        cold, warm = r["cold_sam_local_invoke"], r["warm_start_lambda"]
        lines.append(
            f"| {name} | {cold['median_ms'] / 1000:.1f} s (n={cold['n']}) | "
            f"{r['first_call_warm_container_ms']:.0f} ms | "
            f"{warm['median_ms']:.0f} / {warm['max_ms']:.0f} ms (n={warm['n']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cold", type=int, default=2)
    parser.add_argument("--warm", type=int, default=20)
    args = parser.parse_args(argv)
    results = run(args.cold, args.warm)
    write_results("sam_local", results, to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
