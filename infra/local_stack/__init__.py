"""The Docker-free local stack: moto server + resources from template.yaml + the Lambdas in-process.

    python -m infra.local_stack            # the demo (make demo): everything once, then exit 0
    python -m infra.local_stack --serve    # keep the stack up until Ctrl-C

1. moto in server mode on 127.0.0.1 (a real HTTP endpoint; boto3 reaches it via AWS_ENDPOINT_URL;
   ``infra.local_aws``);
2. the resources template.yaml declares (bucket + S3 -> scoring-jobs notification, queues with their
   DLQs, idempotency table, model pointer), read from the template so local and cloud cannot drift
   (``resources``);
3. a model trained on CDNOW (reused while its inputs are unchanged), published to the bucket, pointer
   set, and the promote gate's holdout (``model``);
4. the API on 127.0.0.1: HTTP requests become the REST proxy events API Gateway sends, handled by
   ``functions/score_api/app.py:lambda_handler`` in-process and warm, like one Lambda container (``api``);
5. S3 drops delivered the way production does: scoring-jobs queue -> ``batch_score`` with an SQS
   event, batch item failures left on the queue for retry (and, after maxReceiveCount, the DLQ); the
   promote function behind the template's EventBridge rule (``deliveries``);
6. multi-part dataset drops (``incoming/<dataset>/part-*`` + ``_SUCCESS`` or ``_manifest.json``):
   batch_score starts an execution of the template's dataset state machine, created in moto with its
   resolved definition; moto only records executions, so ``step_functions.ExecutionPoller`` runs each
   one in-process (``dataset_score`` warm, the Distributed Maps on a small thread pool).

``stack`` starts and stops it all, ``demo`` is what ``make demo`` shows, ``__main__`` the command line.

Local differences from the cloud, on purpose: queue visibility timeouts are capped at 10 s so
retries show up in seconds, a state machine's Retry waits a tenth of its definition's, and functions
run in this process instead of separate containers (see ``step_functions`` for the interpreter's).
"""

from infra.local_aws import REGION, MotoServer, aws_environment, free_port
from infra.local_stack.api import api_gateway_event, make_api_server
from infra.local_stack.deliveries import EventRuleDelivery, SqsEventSourceDelivery
from infra.local_stack.model import (
    MODEL_DIR,
    cdnow_holdout,
    ensure_model,
    put_holdout,
    training_inputs_hash,
    write_holdout,
)
from infra.local_stack.resources import LOCAL_VISIBILITY_CAP_S, LocalResources, create_resources
from infra.local_stack.stack import Stack, start_stack

__all__ = [
    "LOCAL_VISIBILITY_CAP_S",
    "MODEL_DIR",
    "REGION",
    "EventRuleDelivery",
    "LocalResources",
    "MotoServer",
    "SqsEventSourceDelivery",
    "Stack",
    "api_gateway_event",
    "aws_environment",
    "cdnow_holdout",
    "create_resources",
    "ensure_model",
    "free_port",
    "make_api_server",
    "put_holdout",
    "start_stack",
    "training_inputs_hash",
    "write_holdout",
]
