"""One typed settings object for the scoring functions, validated at cold start.

Read from the environment by the handlers (never at import time of domain code). A bad value fails
the cold start with a message naming the variable, rather than a confusing error on the first call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, Json, ValidationError, model_validator

from churnguard.control import ControlPolicy
from churnguard.promotions import DEFAULT_ACTIONS, Action, PromotionPolicy
from churnguard.validation import describe

PREFIX = r"^([^/].*/)?$"  # an S3 key prefix: empty, or ending in "/" and not starting with one


class SettingsError(RuntimeError):
    pass


class EnvSettings(BaseModel):
    """Settings read from CHURNGUARD_* environment variables (and the few the Lambda runtime sets
    that settings use); a bad value names the variable."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    RUNTIME_VARIABLES: ClassVar[frozenset[str]] = frozenset({"AWS_LAMBDA_FUNCTION_MEMORY_SIZE"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        ours = {k: v for k, v in environ.items() if k.startswith("CHURNGUARD_") or k in cls.RUNTIME_VARIABLES}
        try:
            return cls.model_validate(ours)
        except ValidationError as exc:
            raise SettingsError(f"invalid {cls.__name__}: {describe(exc, root='settings')}") from exc


class ActionSetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    cost: float = Field(ge=0)
    uplift: float = Field(gt=0, le=1)
    min_customer_value: float = Field(0.0, ge=0)


class ServingSettings(EnvSettings):
    # Where the model comes from: a local directory (tests, local stack) or an SSM pointer to S3.
    model_dir: str | None = Field(None, alias="CHURNGUARD_MODEL_DIR")
    model_pointer_parameter: str | None = Field(None, alias="CHURNGUARD_MODEL_POINTER")
    model_pointer_max_age_s: int = Field(60, alias="CHURNGUARD_MODEL_POINTER_MAX_AGE", ge=0)
    model_cache_dir: str = Field("/tmp/churnguard-models", alias="CHURNGUARD_MODEL_CACHE_DIR")
    model_file: Literal["model.tflite", "model_dynamic_range.tflite"] = Field(
        "model.tflite", alias="CHURNGUARD_MODEL_FILE"
    )

    promotions_queue_url: str | None = Field(None, alias="CHURNGUARD_PROMOTIONS_QUEUE_URL")
    # DynamoDB table for Powertools idempotency (no duplicate promotions); unset = no idempotency.
    idempotency_table: str | None = Field(None, alias="CHURNGUARD_IDEMPOTENCY_TABLE")

    max_customers_per_request: int = Field(100, alias="CHURNGUARD_MAX_CUSTOMERS", ge=1, le=1000)
    max_body_bytes: int = Field(1_048_576, alias="CHURNGUARD_MAX_BODY_BYTES", ge=1024)
    reasons_top_k: int = Field(3, alias="CHURNGUARD_REASONS_TOP_K", ge=1, le=10)

    # Batch scoring: which customers get reasons, and the largest object one invocation takes.
    batch_reasons: Literal["all", "promoted", "none"] = Field("promoted", alias="CHURNGUARD_BATCH_REASONS")
    batch_max_object_bytes: int = Field(2 * 1024**3, alias="CHURNGUARD_BATCH_MAX_OBJECT_BYTES", ge=1)
    # The memory batch admission budgets for (churnguard.admission); Lambda sets it from MemorySize.
    batch_memory_mb: float = Field(3008, alias="AWS_LAMBDA_FUNCTION_MEMORY_SIZE", ge=128)

    # Dataset drops (churnguard.dataset_steps): the state machine a dataset's marker starts (unset: a
    # marker is acknowledged with an error log and metric, nothing is scored) and how many part or
    # shard Lambdas each of its distributed maps runs at once (passed in the execution's input).
    dataset_state_machine_arn: str | None = Field(
        None, alias="CHURNGUARD_DATASET_STATE_MACHINE_ARN", min_length=1
    )
    dataset_max_concurrency: int = Field(100, alias="CHURNGUARD_DATASET_MAX_CONCURRENCY", ge=1, le=10_000)

    # Real-time mode (churnguard.realtime, issue 13): the DynamoDB table of per-customer states. Unset:
    # POST /v1/events and GET/DELETE /v1/customers/{user_id} answer 404 "real-time mode is not
    # configured" (the stateless routes work as before).
    state_table: str | None = Field(None, alias="CHURNGUARD_STATE_TABLE", min_length=3, max_length=255)
    # A customer silent for this long is removed by the table's TTL (last event + retention).
    state_retention_days: float = Field(730.0, alias="CHURNGUARD_STATE_RETENTION_DAYS", gt=0, le=36_500)
    # Warnings: no second warning within the cool-down; re-armed below threshold - margin (hysteresis).
    warning_cooldown_days: float = Field(14.0, alias="CHURNGUARD_WARNING_COOLDOWN_DAYS", ge=0, le=3_650)
    warning_margin: float = Field(0.05, alias="CHURNGUARD_WARNING_MARGIN", ge=0, lt=1)
    # POST /v1/events: at most this many events per request (and max_customers_per_request customers).
    max_events_per_request: int = Field(1_000, alias="CHURNGUARD_MAX_EVENTS", ge=1, le=10_000)
    # Events through the queue (churnguard.event_messages): where a message that can never be applied
    # goes at once (unset: it is retried until the queue's redrive policy parks it).
    events_dead_letter_queue_url: str | None = Field(None, alias="CHURNGUARD_EVENTS_DLQ_URL", min_length=1)
    # The inactivity sweep (churnguard.sweep): a parallel-scan segment per this many stored customers
    # (at least sweep_min_segments), each scanned in pages of sweep_page_size items.
    sweep_customers_per_segment: int = Field(
        500_000, alias="CHURNGUARD_SWEEP_CUSTOMERS_PER_SEGMENT", ge=1_000, le=100_000_000
    )
    sweep_min_segments: int = Field(1, alias="CHURNGUARD_SWEEP_MIN_SEGMENTS", ge=1, le=1_000)
    sweep_page_size: int = Field(1_000, alias="CHURNGUARD_SWEEP_PAGE_SIZE", ge=1, le=10_000)
    # A sweep refuses a tick more than 15 min ahead of the clock; a local stack that simulates the
    # passing of time (tests, the demo) allows it. The template declares it "false".
    sweep_allow_future_ticks: bool = Field(False, alias="CHURNGUARD_SWEEP_ALLOW_FUTURE_TICKS")

    # Control groups and the decision log (churnguard.decisions, issue 10 §1). Decisions go to the
    # decision-log queue (its writer keeps them as Parquet in S3); unset: nothing is logged and every
    # decision is treated. Of the customers the policy acts on, control_fraction is held out (0: none),
    # drawn from a salted hash of the customer and the campaign period (control_period_days long).
    decisions_queue_url: str | None = Field(None, alias="CHURNGUARD_DECISIONS_QUEUE_URL", min_length=1)
    control_fraction: float = Field(0.10, alias="CHURNGUARD_CONTROL_FRACTION", ge=0, lt=1)
    control_salt: str = Field("", alias="CHURNGUARD_CONTROL_SALT", max_length=256)
    # Whole days, at least twice the model's horizon for half the decisions to be measurable (a window
    # must end inside its period: churnguard.control). 546 = twice the default 39-week horizon.
    control_period_days: int = Field(546, alias="CHURNGUARD_CONTROL_PERIOD_DAYS", ge=1, le=36_500)

    # Promotion policy parameters (see churnguard.promotions; defaults documented in the README).
    value_horizon_weeks: float = Field(39.0, alias="CHURNGUARD_VALUE_HORIZON_WEEKS", gt=0)
    min_customer_value: float = Field(10.0, alias="CHURNGUARD_MIN_CUSTOMER_VALUE", ge=0)
    # JSON list of {"name", "cost", "uplift", "min_customer_value"?}; unset = DEFAULT_ACTIONS.
    promotion_actions: Json[list[ActionSetting]] | None = Field(None, alias="CHURNGUARD_PROMOTION_ACTIONS")

    def promotion_policy(self) -> PromotionPolicy:
        actions = (
            tuple(Action(a.name, a.cost, a.uplift, a.min_customer_value) for a in self.promotion_actions)
            if self.promotion_actions
            else DEFAULT_ACTIONS
        )
        return PromotionPolicy(
            actions=actions,
            value_horizon_weeks=self.value_horizon_weeks,
            min_customer_value=self.min_customer_value,
        )

    def control_policy(self) -> ControlPolicy:
        return ControlPolicy(self.control_fraction, self.control_salt, self.control_period_days)

    @model_validator(mode="after")
    def _one_model_source(self) -> ServingSettings:
        if bool(self.model_dir) == bool(self.model_pointer_parameter):
            raise ValueError("set exactly one of CHURNGUARD_MODEL_DIR or CHURNGUARD_MODEL_POINTER")
        return self

    @model_validator(mode="after")
    def _salted_control(self) -> ServingSettings:
        # Unsalted, anyone who knows the scheme can tell (or steer) who is held out.
        if self.decisions_queue_url and self.control_fraction > 0 and not self.control_salt:
            raise ValueError("control groups need CHURNGUARD_CONTROL_SALT (one secret value per deployment)")
        return self


class DecisionLogSettings(EnvSettings):
    """Settings of the decision-log writer (rows from the decision-log queue -> Parquet in S3)."""

    data_bucket: str = Field(alias="CHURNGUARD_DATA_BUCKET", min_length=3)
    decisions_prefix: str = Field("decisions/", alias="CHURNGUARD_DECISIONS_PREFIX", pattern=PREFIX)
    # DynamoDB table of the decisions ledger (no decision logged twice); unset = object names only.
    idempotency_table: str | None = Field(None, alias="CHURNGUARD_IDEMPOTENCY_TABLE", min_length=3)


class GateSettings(EnvSettings):
    """Settings of the promote (champion/challenger) function."""

    data_bucket: str = Field(alias="CHURNGUARD_DATA_BUCKET", min_length=3)
    model_pointer_parameter: str = Field(alias="CHURNGUARD_MODEL_POINTER", min_length=1)
    max_auc_drop: float = Field(0.005, alias="CHURNGUARD_GATE_MAX_AUC_DROP", ge=0)
    max_log_loss_increase: float = Field(0.002, alias="CHURNGUARD_GATE_MAX_LOG_LOSS_INCREASE", ge=0)
    min_holdout_customers: int = Field(200, alias="CHURNGUARD_GATE_MIN_HOLDOUT_CUSTOMERS", ge=1)


class RetrainSettings(EnvSettings):
    """Settings of the scheduled retrain function (one SageMaker training job per run)."""

    data_bucket: str = Field(alias="CHURNGUARD_DATA_BUCKET", min_length=3)
    # repository URI + ":" + a tag: an empty tag means the image was never pushed (make deploy does it)
    training_image: str = Field(
        alias="CHURNGUARD_TRAINING_IMAGE", pattern=r"^[^\s:]+(:\d+)?/[^\s:]+:[A-Za-z0-9_][A-Za-z0-9_.-]*$"
    )
    training_role_arn: str = Field(alias="CHURNGUARD_TRAINING_ROLE_ARN", pattern=r"^arn:aws[a-z-]*:iam::")
    instance_type: str = Field("ml.m5.xlarge", alias="CHURNGUARD_TRAINING_INSTANCE_TYPE", pattern=r"^ml\.")
    events_prefix: str = Field("training-events/", alias="CHURNGUARD_TRAINING_EVENTS_PREFIX")
    max_runtime_s: int = Field(7200, alias="CHURNGUARD_TRAINING_MAX_RUNTIME", ge=600)
    hyperparameters: Json[dict[str, str | int | float]] | None = Field(
        None, alias="CHURNGUARD_TRAINING_HYPERPARAMETERS"
    )
    # A drift-alarm start is skipped when a training job was created within this many hours (0: never)
    retrain_cooldown_hours: float = Field(24, alias="CHURNGUARD_RETRAIN_COOLDOWN_HOURS", ge=0)


class OutcomeSettings(EnvSettings):
    """Settings of the outcome job (churnguard.outcome_job): where decisions, the event history and
    the reports live."""

    data_bucket: str = Field(alias="CHURNGUARD_DATA_BUCKET", min_length=3)
    decisions_prefix: str = Field("decisions/", alias="CHURNGUARD_DECISIONS_PREFIX", pattern=PREFIX)
    events_prefix: str = Field(
        "training-events/", alias="CHURNGUARD_OUTCOME_EVENTS_PREFIX", pattern=r"^([^/].*/)?$"
    )
    reports_prefix: str = Field(
        "outcomes/", alias="CHURNGUARD_OUTCOME_REPORTS_PREFIX", pattern=r"^([^/].*/)?$"
    )
