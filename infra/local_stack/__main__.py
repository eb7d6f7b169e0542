"""``python -m infra.local_stack [--serve]``: the demo, or the stack kept up until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import infra.local_stack
from infra.local_aws import REGION
from infra.local_stack.demo import run_demo, run_retraining_demo
from infra.local_stack.stack import Stack, start_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=infra.local_stack.__doc__.split("\n")[0])
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
        _announce(stack)
        if not args.no_demo:
            run_demo(stack)
            run_retraining_demo(stack, reuse_model_dir=args.model_dir is not None)
        if args.serve:
            print(
                f"\nServing until Ctrl-C. Try: export AWS_ENDPOINT_URL={stack.moto.url} "
                f"AWS_DEFAULT_REGION={REGION}"
                f" AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local; "
                f"aws s3 cp events.csv 's3://{stack.resources.refs['DataBucket']}/incoming/events.csv'",
                flush=True,
            )
            while True:  # until SIGINT / SIGTERM (see _stop_on_signals)
                time.sleep(1)
    finally:
        stack.stop()
    return 0


def _announce(stack: Stack) -> None:
    """The ready line (one JSON object: what tests and scripts read) and a line for people."""
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


if __name__ == "__main__":
    sys.exit(main())
