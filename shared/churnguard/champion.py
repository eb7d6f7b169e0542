"""Champion/challenger gate: a new model replaces the serving one only when it is valid and not worse.

Validation of the challenger (numpy + TFLite only, so it runs in a Lambda without TensorFlow):
files present and hashes matching metadata.json, feature spec fitting the model, builtin ops only,
the interpreter resizing to batch 1 and 256, and the Keras parity recorded at export within the
export tolerances. (Keras itself is not in the Lambda; the export step measured parity on held-out
customers and refuses to write a model that fails it.)

Comparison: both models score the same labelled holdout (``holdout/events.csv`` +
``holdout/labels.csv`` with ``user_id,churned`` + ``holdout/meta.json`` with ``as_of``) through
their own feature specs. Accepted when challenger AUC >= champion AUC - ``max_auc_drop`` and
challenger log-loss <= champion log-loss + ``max_log_loss_increase``.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from churnguard.bundle import ModelBundle
from churnguard.model_metadata import DYNAMIC_RANGE_MODEL, FLOAT32_MODEL, PARITY_TOLERANCE, REASONS_MODEL
from churnguard.reasons import EFFICIENCY_TOLERANCE
from churnguard.scorer import ModelLoadError, TFLiteScorer

if TYPE_CHECKING:
    from churnguard.ports import ObjectStore

# The exporter's own limits: a challenger whose recorded parity is above them was not written by it.
FLOAT32_PARITY = PARITY_TOLERANCE[FLOAT32_MODEL]
DYNAMIC_RANGE_PARITY = PARITY_TOLERANCE[DYNAMIC_RANGE_MODEL]


@dataclass(frozen=True)
class GatePolicy:
    max_auc_drop: float = 0.005
    max_log_loss_increase: float = 0.002
    min_holdout_customers: int = 200


@dataclass
class GateDecision:
    accepted: bool
    challenger_version: str | None
    champion_version: str | None
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties (numpy only)."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.r_[0, boundaries]
    ends = np.r_[boundaries, len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes in the holdout")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def files_from_tarball(content: bytes) -> dict[str, bytes]:
    """SageMaker's model.tar.gz -> {file name: bytes} (flat names; nested report/ is ignored)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
            files = {}
            for member in archive.getmembers():
                # only a "./" prefix (tar -C dir .): lstrip("./") made "../model.tflite" and
                # ".metadata.json" stand in for the model's own files
                name = member.name.removeprefix("./")
                stream = archive.extractfile(member) if member.isfile() and "/" not in name else None
                if stream is not None:
                    files[name] = stream.read()
            return files
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelLoadError(f"model artifact is not a readable tar.gz: {exc}") from exc


def validate_challenger(files: dict[str, bytes]) -> ModelBundle:
    bundle = ModelBundle.from_files(files)  # files, hashes, spec/model fit, thresholds
    ops = bundle.scorer.op_names()
    bad = [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    if bad:
        raise ModelLoadError(f"challenger uses non-builtin ops {bad}")
    probe = TFLiteScorer(files["model.tflite"], max_batch=256)
    for batch in (1, 256):
        out = probe.predict(
            np.zeros((batch, probe.weeks, probe.channels), np.float32),
            np.zeros((batch, probe.n_static), np.float32),
        )
        if out.shape != (batch,) or not np.all(np.isfinite(out)):
            raise ModelLoadError(f"challenger does not run at batch {batch}")
    parity = bundle.metadata.parity(FLOAT32_MODEL)
    if parity is None or not parity <= FLOAT32_PARITY:
        raise ModelLoadError(f"challenger float32 parity {parity} is missing or above {FLOAT32_PARITY}")
    dynamic = bundle.metadata.parity(DYNAMIC_RANGE_MODEL)
    if dynamic is not None and not dynamic <= DYNAMIC_RANGE_PARITY:
        raise ModelLoadError(f"challenger dynamic-range parity {dynamic} above {DYNAMIC_RANGE_PARITY}")
    _check_reasons(bundle, files)
    return bundle


def _check_reasons(bundle: ModelBundle, files: dict[str, bytes]) -> None:
    """A challenger with a reasons model: builtin ops, its recorded parity and efficiency in bounds."""
    reference = bundle.metadata.reason_reference
    if reference is None:
        return  # occlusion reasons (a directory from before the reasons model)
    if not reference.efficiency_max_abs_error <= EFFICIENCY_TOLERANCE:
        raise ModelLoadError(
            f"challenger reasons miss p - p_reference by {reference.efficiency_max_abs_error} "
            f"(above {EFFICIENCY_TOLERANCE})"
        )
    parity = bundle.metadata.parity(reference.model_file)
    if parity is None or not parity <= PARITY_TOLERANCE[REASONS_MODEL]:
        raise ModelLoadError(f"challenger reasons-model parity {parity} is missing or above tolerance")
    ops = TFLiteScorer(files[reference.model_file]).op_names()
    bad = [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    if bad:
        raise ModelLoadError(f"challenger reasons model uses non-builtin ops {bad}")


@dataclass
class Holdout:
    user_ids: np.ndarray
    labels: np.ndarray
    events: Any  # validated canonical events (pandas)
    as_of: str
    profile_columns: tuple[str, ...] = ()

    @classmethod
    def from_s3(cls, store: ObjectStore, bucket: str, prefix: str = "holdout/") -> Holdout:
        """``meta.json``, ``labels.csv`` and ``events.csv`` under ``prefix``; AWS errors propagate."""
        import pandas as pd

        from churnguard.events import validate_events

        def read(key: str) -> bytes:
            return store.get_bytes(bucket, prefix + key)

        meta = json.loads(read("meta.json"))
        labels = pd.read_csv(io.BytesIO(read("labels.csv")), dtype={"user_id": str})
        validated = validate_events(pd.read_csv(io.BytesIO(read("events.csv")), dtype=str))
        return cls(
            user_ids=labels["user_id"].to_numpy(dtype=object),
            labels=labels["churned"].to_numpy(dtype=np.int64),
            events=validated.events,
            as_of=str(meta["as_of"]),
            profile_columns=validated.profile_columns,
        )

    def evaluate(self, bundle: ModelBundle) -> dict[str, float]:
        from churnguard.scoring import ReasonsFor, score_customers
        from churnguard.tabular import customer_events, to_epoch_seconds

        customers = customer_events(
            self.events, profile_columns=self.profile_columns, user_ids=self.user_ids, as_of=self.as_of
        )
        scored = score_customers(
            bundle,
            list(self.user_ids),
            customers.arrays,
            to_epoch_seconds(self.as_of),
            profile=customers.profile,
            reasons_for=ReasonsFor.NONE,
        )
        p = scored.churn_probability
        return {"roc_auc": roc_auc(self.labels, p), "log_loss": log_loss(self.labels, p), "customers": len(p)}


def decide(
    challenger: ModelBundle, champion: ModelBundle | None, holdout: Holdout, policy: GatePolicy
) -> GateDecision:
    decision = GateDecision(False, challenger.version, champion.version if champion else None)
    if len(holdout.user_ids) < policy.min_holdout_customers:
        decision.reasons.append(
            f"holdout has {len(holdout.user_ids)} customers, fewer than {policy.min_holdout_customers}"
        )
        return decision
    decision.challenger = holdout.evaluate(challenger)
    if champion is None:
        decision.accepted = True
        decision.reasons.append("no champion: the first valid model is promoted")
        return decision
    decision.champion = holdout.evaluate(champion)
    auc_floor = decision.champion["roc_auc"] - policy.max_auc_drop
    loss_ceiling = decision.champion["log_loss"] + policy.max_log_loss_increase
    if decision.challenger["roc_auc"] < auc_floor:
        decision.reasons.append(
            f"AUC {decision.challenger['roc_auc']:.4f} < champion "
            f"{decision.champion['roc_auc']:.4f} - {policy.max_auc_drop}"
        )
    if decision.challenger["log_loss"] > loss_ceiling:
        decision.reasons.append(
            f"log-loss {decision.challenger['log_loss']:.4f} > champion "
            f"{decision.champion['log_loss']:.4f} + {policy.max_log_loss_increase}"
        )
    decision.accepted = not decision.reasons
    if decision.accepted:
        decision.reasons.append("challenger is not worse than the champion on the holdout")
    return decision
