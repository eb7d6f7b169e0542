"""Cold-start wiring of the scoring functions: settings -> AWS clients -> adapters -> domain objects.

One place for what ``score_api``, ``batch_score`` and ``dataset_score`` share (settings validated
once, the model provider, the SQS promotions publisher with its ledger, the idempotency layer), each
with its own client budget (``churnguard.aws``). The handlers call their builder once per container (their
``runtime()``) and stay thin: parse the event, call the domain, shape the response.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from churnguard import aws
from churnguard.adapters import (
    DynamoDbCustomerStateStore,
    S3ObjectStore,
    SqsDeadLetters,
    SqsMessageQueue,
    StepFunctionsRunningExecutions,
    StepFunctionsWorkflowStarter,
)
from churnguard.admission import MemoryModel
from churnguard.decisions import ControlledPublisher, Decisions
from churnguard.model_provider import ModelEventSink, ModelProvider, provider_from_settings
from churnguard.ports import CustomerStateStore, DeadLetters, ObjectStore, RunningExecutions, WorkflowStarter
from churnguard.promotions import PromotionPolicy, PromotionsPublisher, PublishResult, SqsPromotionsPublisher
from churnguard.realtime import RealtimeRules
from churnguard.settings import DecisionLogSettings, ServingSettings, SettingsError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer, IdempotencyConfig

    from churnguard.decision_store import ParquetDecisionLog


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class NoQueuePublisher:
    """Where real-time warnings go when no promotions queue is configured: nowhere. The warning is
    still decided and stored (``warning.fired``), reported as not queued; nothing waits in an outbox."""

    def publish(self, messages: Sequence[dict[str, Any]]) -> PublishResult:
        return PublishResult(sent=0)


@dataclass(frozen=True)
class RealtimeRuntime:
    """The real-time routes' wiring (``churnguard.realtime``): the per-customer state store, the
    warning rules, where warnings go, and the clock."""

    store: CustomerStateStore
    rules: RealtimeRules
    publisher: PromotionsPublisher  # the API's (ledgered) publisher, or ``NoQueuePublisher``
    queue_configured: bool  # False: warnings are reported, never queued
    clock: Callable[[], dt.datetime] = utc_now


@dataclass(frozen=True)
class ApiRuntime:
    settings: ServingSettings
    models: ModelProvider
    publisher: PromotionsPublisher | None  # idempotent and ledgered when a table is configured
    policy: PromotionPolicy
    idempotency: IdempotencyConfig | None = None  # the handler registers the Lambda context on it
    realtime: RealtimeRuntime | None = None  # None: no state table (CHURNGUARD_STATE_TABLE unset)
    decisions: Decisions | None = None  # None: no decision log (CHURNGUARD_DECISIONS_QUEUE_URL unset)


# (bucket, key, eTag) -> the loggable summary of processing that object version
ObjectProcessor = Callable[[str, str, str], dict[str, Any]]


@dataclass(frozen=True)
class BatchRuntime:
    settings: ServingSettings
    models: ModelProvider
    publisher: PromotionsPublisher | None  # ledgered when a table is configured
    policy: PromotionPolicy
    store: ObjectStore
    memory: MemoryModel
    process: ObjectProcessor  # once per object version when a table is configured
    idempotency: IdempotencyConfig | None = None  # the handler registers the Lambda context on it
    workflow: WorkflowStarter | None = None  # the dataset state machine (a marker starts a run)
    decisions: Decisions | None = None  # None: no decision log (CHURNGUARD_DECISIONS_QUEUE_URL unset)


@dataclass(frozen=True)
class DatasetRuntime:
    """The dataset function's wiring: batch's scoring objects, without the per-object idempotency
    (a step is retried by the state machine; the ledger keeps promotions once per dataset)."""

    settings: ServingSettings
    models: ModelProvider
    publisher: PromotionsPublisher | None  # ledgered when a table is configured
    policy: PromotionPolicy
    store: ObjectStore
    memory: MemoryModel
    decisions: Decisions | None = None  # None: no decision log (CHURNGUARD_DECISIONS_QUEUE_URL unset)


def api_runtime(on_model_event: ModelEventSink) -> ApiRuntime:
    """The HTTP scoring function's wiring (``aws.API`` budget): a retried request publishes nothing
    it already sent."""
    settings = ServingSettings.from_env()
    models = provider_from_settings(settings, on_event=on_model_event, budget=aws.API)
    decisions = decisions_of(settings, aws.API)
    publisher = promotions_publisher(settings, aws.API, decisions)
    idempotency: IdempotencyConfig | None = None
    if publisher is not None and settings.idempotency_table:
        from churnguard.idempotency import IdempotentPublisher, idempotency_config

        idempotency = idempotency_config("@")  # the sorted list of message idempotency keys
        persistence = persistence_layer(settings.idempotency_table, aws.API)
        publisher = IdempotentPublisher(publisher, persistence, idempotency)
    realtime = realtime_runtime(settings, publisher, aws.API)
    policy = settings.promotion_policy()
    return ApiRuntime(settings, models, publisher, policy, idempotency, realtime, decisions)


def realtime_runtime(
    settings: ServingSettings, publisher: PromotionsPublisher | None, budget: aws.ClientBudget
) -> RealtimeRuntime | None:
    """The state store (DynamoDB, ``budget``) and warning rules of the settings; None without a
    state table (real-time mode off)."""
    if not settings.state_table:
        return None
    store = DynamoDbCustomerStateStore(
        aws.client("dynamodb", budget), settings.state_table, retention_days=settings.state_retention_days
    )
    rules = RealtimeRules(margin=settings.warning_margin, cooldown_days=settings.warning_cooldown_days)
    if publisher is None:
        return RealtimeRuntime(store, rules, NoQueuePublisher(), queue_configured=False)
    return RealtimeRuntime(store, rules, publisher, queue_configured=True)


def _required_realtime(settings: ServingSettings, budget: aws.ClientBudget, who: str) -> RealtimeRuntime:
    """``realtime_runtime`` with the promotions publisher of the settings, for a function that has
    nothing to do without a state table (the cold start fails, naming the variable)."""
    publisher = promotions_publisher(settings, budget, decisions_of(settings, budget))
    realtime = realtime_runtime(settings, publisher, budget)
    if realtime is None:
        raise SettingsError(f"{who} needs CHURNGUARD_STATE_TABLE (the customers' state table)")
    return realtime


@dataclass(frozen=True)
class EventsQueueRuntime:
    """The events-queue function's wiring (``churnguard.event_messages``): the API's real-time
    objects, and where refused messages go."""

    settings: ServingSettings
    models: ModelProvider
    realtime: RealtimeRuntime
    policy: PromotionPolicy
    dead_letters: DeadLetters | None  # None: a refused message is retried until the redrive parks it


def events_queue_runtime(on_model_event: ModelEventSink) -> EventsQueueRuntime:
    """The events-queue function's wiring (``aws.API`` budget: a message is small, and a slow call
    is better retried by SQS than waited for); a state table is required."""
    settings = ServingSettings.from_env()
    realtime = _required_realtime(settings, aws.API, "the events queue")
    models = provider_from_settings(settings, on_event=on_model_event, budget=aws.API)
    dead_letters = None
    if settings.events_dead_letter_queue_url:
        dead_letters = SqsDeadLetters(aws.client("sqs", aws.API), settings.events_dead_letter_queue_url)
    return EventsQueueRuntime(settings, models, realtime, settings.promotion_policy(), dead_letters)


@dataclass(frozen=True)
class SweepRuntime:
    """The inactivity sweep's wiring (``churnguard.sweep``): the model, the state store and rules,
    the policy and where warnings go (ledgered, so a re-run sends nothing twice)."""

    settings: ServingSettings
    models: ModelProvider
    realtime: RealtimeRuntime
    policy: PromotionPolicy
    runs: RunningExecutions  # the sweep state machine's running executions (the overlap check)


def sweep_runtime(on_model_event: ModelEventSink) -> SweepRuntime:
    """The sweep function's wiring (``aws.BATCH`` budget: long scans, no caller waiting); a state
    table is required (the function has nothing to sweep without one)."""
    settings = ServingSettings.from_env()
    realtime = _required_realtime(settings, aws.BATCH, "the sweep")
    models = provider_from_settings(settings, on_event=on_model_event, budget=aws.BATCH)
    runs = StepFunctionsRunningExecutions(aws.client("stepfunctions", aws.CONTROL))
    return SweepRuntime(settings, models, realtime, settings.promotion_policy(), runs)


def batch_runtime(
    score_object: Callable[[BatchRuntime, str, str], dict[str, Any]], on_model_event: ModelEventSink
) -> BatchRuntime:
    """The batch function's wiring (``aws.BATCH`` budget); ``process`` runs
    ``score_object(runtime, bucket, key)``, at most once per object version (bucket, key, eTag)
    when an idempotency table is configured."""
    settings = ServingSettings.from_env()
    memory = batch_memory(settings)
    models = provider_from_settings(settings, on_event=on_model_event, budget=aws.BATCH)
    decisions = decisions_of(settings, aws.BATCH)
    publisher = promotions_publisher(settings, aws.BATCH, decisions)
    store = S3ObjectStore(aws.client("s3", aws.BATCH))
    runtime: BatchRuntime  # bound below, before anything can call ``process``

    def process(bucket: str, key: str) -> dict[str, Any]:
        return score_object(runtime, bucket, key)

    def every_time(bucket: str, key: str, etag: str) -> dict[str, Any]:
        return process(bucket, key)

    idempotency: IdempotencyConfig | None = None
    processor: ObjectProcessor = every_time
    if settings.idempotency_table:
        from churnguard.idempotency import idempotency_config, once_per_object

        idempotency = idempotency_config("[bucket, key, etag]")
        persistence = persistence_layer(settings.idempotency_table, aws.BATCH)
        processor = once_per_object(process, persistence, idempotency)
    policy = settings.promotion_policy()
    workflow = dataset_workflow(settings)
    runtime = BatchRuntime(
        settings, models, publisher, policy, store, memory, processor, idempotency, workflow, decisions
    )
    return runtime


def dataset_workflow(settings: ServingSettings) -> WorkflowStarter | None:
    """The dataset state machine's starter (control-plane budget); None when none is configured."""
    if not settings.dataset_state_machine_arn:
        return None
    return StepFunctionsWorkflowStarter(
        aws.client("stepfunctions", aws.CONTROL), settings.dataset_state_machine_arn
    )


def dataset_runtime(on_model_event: ModelEventSink) -> DatasetRuntime:
    """The dataset function's wiring (``aws.BATCH`` budget: it streams parts and shards as batch
    streams files)."""
    settings = ServingSettings.from_env()
    memory = batch_memory(settings)
    models = provider_from_settings(settings, on_event=on_model_event, budget=aws.BATCH)
    decisions = decisions_of(settings, aws.BATCH)
    publisher = promotions_publisher(settings, aws.BATCH, decisions)
    store = S3ObjectStore(aws.client("s3", aws.BATCH))
    policy = settings.promotion_policy()
    return DatasetRuntime(settings, models, publisher, policy, store, memory, decisions)


def batch_memory(settings: ServingSettings) -> MemoryModel:
    """The batch admission budget; a memory size that would refuse every file fails the cold start."""
    memory = MemoryModel(budget_mb=settings.batch_memory_mb)
    if memory.usable_mb <= memory.base_mb:
        raise SettingsError(
            f"AWS_LAMBDA_FUNCTION_MEMORY_SIZE={settings.batch_memory_mb:g} MB leaves no memory for data "
            f"after the runtime's {memory.base_mb:.0f} MB: give the batch function at least "
            f"{2 * memory.base_mb / memory.headroom:.0f} MB"
        )
    return memory


def decisions_of(settings: ServingSettings, budget: aws.ClientBudget) -> Decisions | None:
    """The control policy and the decision log (rows to the decision-log queue); None without one."""
    if not settings.decisions_queue_url:
        return None
    from churnguard.decision_store import QueuedDecisionLog

    log = QueuedDecisionLog(SqsMessageQueue(aws.client("sqs", budget), settings.decisions_queue_url))
    return Decisions(settings.control_policy(), log)


def promotions_publisher(
    settings: ServingSettings, budget: aws.ClientBudget, decisions: Decisions | None = None
) -> PromotionsPublisher | None:
    """SQS ``SendMessageBatch`` to the promotions queue (None without one), behind the ledger of sent
    promotions when an idempotency table is configured, and behind the control arm and the decision
    log when ``decisions`` is given (every decision logged, only the treated sent)."""
    if not settings.promotions_queue_url:
        return None
    publisher: PromotionsPublisher = SqsPromotionsPublisher(
        aws.client("sqs", budget), settings.promotions_queue_url
    )
    if settings.idempotency_table:
        from churnguard.idempotency import LedgeredPublisher, SentLedger

        ledger = SentLedger(aws.client("dynamodb", budget), settings.idempotency_table)
        publisher = LedgeredPublisher(publisher, ledger)
    if decisions is not None:
        publisher = ControlledPublisher(publisher, decisions)
    return publisher


def decision_log_writer() -> ParquetDecisionLog:
    """The decision-log writer's wiring: Parquet objects in the data bucket, behind the decisions
    ledger when an idempotency table is configured (``aws.BATCH`` budget: no caller waits)."""
    from churnguard.decision_store import ParquetDecisionLog
    from churnguard.idempotency import DecisionLedger

    settings = DecisionLogSettings.from_env()
    ledger = None
    if settings.idempotency_table:
        ledger = DecisionLedger(aws.client("dynamodb", aws.BATCH), settings.idempotency_table)
    store = S3ObjectStore(aws.client("s3", aws.BATCH))
    return ParquetDecisionLog(store, settings.data_bucket, settings.decisions_prefix, ledger)


def sends_once(publisher: PromotionsPublisher | None) -> bool:
    """Whether ``publisher`` keeps a ledger of sent promotions, so that a retry (a redelivered file, a
    retried step) sends only what did not go out and failures are worth retrying."""
    from churnguard.idempotency import LedgeredPublisher

    if isinstance(publisher, ControlledPublisher):
        publisher = publisher.inner
    return isinstance(publisher, LedgeredPublisher)


def persistence_layer(table: str, budget: aws.ClientBudget) -> BasePersistenceLayer:
    """Powertools idempotency records in ``table`` (DynamoDB, the function's client budget)."""
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=table, boto_config=budget.config())
