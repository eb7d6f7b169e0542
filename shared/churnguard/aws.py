"""One place that configures AWS clients: timeouts and retries that fit each function's time budget.

botocore's defaults (60 s connect and read timeouts, legacy retries) let one unreachable endpoint
outlast the scoring API's 10 s timeout. Every client the functions create comes from here, with
the standard retry mode (exponential backoff with jitter, throttling and transient errors only).
The clients are typed with the ``mypy_boto3_*`` stubs for the type checker only (the Lambda
packages have no stubs); the domain reaches them through ``churnguard.adapters``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_stepfunctions import SFNClient


@dataclass(frozen=True)
class ClientBudget:
    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int  # including the first call

    def config(self) -> Config:
        from botocore.config import Config

        return Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # botocore's ``max_attempts`` counts retries only (2 meant three calls); this is the total.
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
        )


# HTTP scoring (10 s function timeout): a failing call gives up after ~6 s at worst, leaving time to
# answer (promotion failures are reported in the response, not waited out).
API = ClientBudget(connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=2)
# Batch (900 s): streamed S3 reads of large objects need a long read timeout; more attempts are affordable.
BATCH = ClientBudget(connect_timeout_s=3.0, read_timeout_s=60.0, max_attempts=5)
# Promote (300 s) and retrain (60 s): control-plane calls.
CONTROL = ClientBudget(connect_timeout_s=2.0, read_timeout_s=10.0, max_attempts=3)


@overload
def client(service: Literal["s3"], budget: ClientBudget) -> S3Client: ...
@overload
def client(service: Literal["sqs"], budget: ClientBudget) -> SQSClient: ...
@overload
def client(service: Literal["ssm"], budget: ClientBudget) -> SSMClient: ...
@overload
def client(service: Literal["dynamodb"], budget: ClientBudget) -> DynamoDBClient: ...
@overload
def client(service: Literal["stepfunctions"], budget: ClientBudget) -> SFNClient: ...
@overload
def client(service: str, budget: ClientBudget) -> Any: ...  # services without stubs here (sagemaker)
def client(service: str, budget: ClientBudget) -> Any:
    import boto3

    make: Callable[..., Any] = boto3.client
    return make(service, config=budget.config())


def aws_errors() -> tuple[type[BaseException], ...]:
    """What an AWS call raises when AWS (not our code) failed: for narrow excepts."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def error_code(exc: BaseException) -> str | None:
    """The AWS error code an error answer carried (``NoSuchKey``, ``ThrottlingException``, ...);
    None for anything else (timeouts and resets carry no answer)."""
    answer = getattr(exc, "response", None)
    if not isinstance(answer, dict):
        return None
    code = answer.get("Error", {}).get("Code")
    return str(code) if code else None


# The codes the SDKs' standard retry mode treats as throttling or transient (the AWS SDKs and Tools
# reference, "Retry behavior"), plus S3's SlowDown and the 5xx answers.
RETRYABLE_CODES = frozenset(
    {
        "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
        "TooManyRequestsException", "ProvisionedThroughputExceededException",
        "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
        "LimitExceededException", "RequestThrottled",
        "SlowDown", "PriorRequestNotComplete", "EC2ThrottledException", "RequestTimeout",
        "RequestTimeoutException", "InternalError", "InternalFailure", "ServiceUnavailable",
    }
)  # fmt: skip


class AwsCallError(Exception):
    """An AWS call that failed after the client's own retries, named for an orchestrator: Step
    Functions matches a Retry on the error's class name, and botocore raises a class per error code
    (``NoSuchKey``, ``ProvisionedThroughputExceededException``, ...), so no fixed list of botocore
    names can say "retry throttling, not access denied". The message is the operation, the error code
    and the HTTP status: never the request's keys or the service's message (which may quote them)."""


class TransientAwsError(AwsCallError):
    """Throttling, a 5xx answer, a timeout or a reset: the same call may succeed later."""


class RefusedAwsError(AwsCallError):
    """AWS refused the request (access denied, a missing bucket, a bad parameter): retrying cannot help."""


def classify_aws_error(exc: BaseException) -> AwsCallError:
    """``exc`` (a botocore ``ClientError`` or ``BotoCoreError``) as a transient or a refused call."""
    code = error_code(exc)
    if code is None:  # no answer at all: a timeout, a reset, an unreachable endpoint
        return TransientAwsError(f"{type(exc).__name__} (no answer from AWS)")
    answer = getattr(exc, "response", {})
    status = int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    operation = getattr(exc, "operation_name", "an AWS call")
    text = f"{operation} failed: {code} (HTTP {status or 'unknown'})"
    if code in RETRYABLE_CODES or status >= 500 or status == 429:
        return TransientAwsError(text)
    return RefusedAwsError(text)
