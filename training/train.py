"""ChurnGuard training entry point — SageMaker script mode, and the same code locally.

SageMaker contract: hyperparameters arrive as ``--name value`` arguments; event files (CSV, CSV.gz,
Parquet in the canonical schema) in ``SM_CHANNEL_TRAIN`` (optional ``SM_CHANNEL_VALIDATION``); the
model directory goes to ``SM_MODEL_DIR`` and the report to ``SM_OUTPUT_DATA_DIR``. Without those
variables (or ``--train``) it trains on a named real dataset, ``--dataset cdnow`` (the default) or
``tafeng``, with that dataset's default protocol (``training.data.NAMED_DATASETS``; ``--as-of``,
``--horizon-weeks`` and ``--weeks`` given explicitly win), and writes ``artifacts/model``.

Output (the model directory): model.tflite, model_dynamic_range.tflite, model_reasons.tflite (exact
group Shapley reasons: training/reasons_model.py), feature_spec.json, drift_reference.json (training's
binned feature and score distributions: training/drift_reference.py), metadata.json, report/. Files
are written to a staging folder first and moved in only after every check has passed, metadata.json
last, so a failed run never leaves a model directory that looks valid.

Exit codes: 0 success, 1 internal error, 2 bad input data or arguments, 3 export/parity check failed.
With ``main(failure_file=...)`` the reason for a failure is also written to that file (SageMaker's
``/opt/ml/output/failure``, shown as the job's FailureReason; see training/sagemaker_entry.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if __package__ in (None, ""):  # run as a script (SageMaker: python train.py ...)
    _root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(_root), str(_root / "shared")]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from churnguard.events import EventLogError
from churnguard.features import FeatureConfig, FeatureSpecError
from churnguard.model_metadata import DRIFT_REFERENCE, FORMAT_VERSION, MODEL_FORMAT, ModelMetadata
from training.data import (
    DEFAULT_WEEKS,
    NAMED_DATASETS,
    EventSource,
    NamedDataset,
    PreparedData,
    Protocol,
    Split,
    check_protocol_fits,
    default_as_of,
    default_protocol,
    feature_config_for,
    load_channel,
    load_named_source,
    prepare,
    snapshot_augmentation,
)
from training.evaluate import (
    SUMMARY_METRICS,
    ThresholdPolicy,
    band,
    choose_threshold,
    classification_metrics,
    risk_tiers,
    segment_metrics,
    write_plots,
)
from training.model import HyperParameters
from training.sagemaker_entry import write_failure

if TYPE_CHECKING:
    import keras

    from training.export import Exports
    from training.reasons_model import ReasonsExport

log = logging.getLogger("churnguard.train")

EXIT_INTERNAL_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_EXPORT_FAILED = 3
MODEL_FILES = (
    "model.tflite",
    "model_dynamic_range.tflite",
    "model_reasons.tflite",
    "feature_spec.json",
    "drift_reference.json",
    "model.keras",
)

# Random-search space for --hpo-trials (validation only). Mirrored by infra/sagemaker/hpo.json.
SEARCH_SPACE: dict[str, list] = {
    "conv_filters": [16, 32, 64],
    "lstm_units": [16, 32, 64],
    "lstm_units_2": [8, 16, 32],
    "static_units": [16, 32, 64],
    "head_units": [16, 32, 64],
    "dropout": [0.0, 0.1, 0.2, 0.3],
    "l2": [0.0, 1e-5, 1e-4, 1e-3],
    "learning_rate": [3e-4, 1e-3, 3e-3],
    "batch_size": [128, 256, 512],
}


class BadArguments(SystemExit):
    """argparse's exit (status 2, message printed) carrying the message, so main() can report it."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_BAD_INPUT)
        self.message = message


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise BadArguments(message)


def _per_dataset(value: Callable[[NamedDataset], object]) -> str:
    """A default per named dataset for the help text, e.g. ``cdnow 39, tafeng 4``."""
    return ", ".join(f"{name} {value(d)}" for name, d in NAMED_DATASETS.items())


def _boolean(value: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    env = os.environ.get
    p.add_argument(
        "--train", default=env("SM_CHANNEL_TRAIN"), help="directory of event files; default: --dataset"
    )
    p.add_argument(
        "--dataset",
        choices=sorted(NAMED_DATASETS),
        default=None,
        help="a named real dataset to train on when no --train directory is given (default: cdnow); "
        "it also sets the defaults of --as-of, --horizon-weeks and --weeks",
    )
    p.add_argument(
        "--validation", default=env("SM_CHANNEL_VALIDATION"), help="optional validation event files"
    )
    p.add_argument("--model-dir", default=env("SM_MODEL_DIR", "artifacts/model"))
    p.add_argument("--output-data-dir", default=env("SM_OUTPUT_DATA_DIR"), help="copy of report/ (SageMaker)")
    p.add_argument(
        "--as-of",
        default=None,
        help="cutoff (exclusive end of observation), YYYY-MM-DD; default: the dataset's "
        f"({_per_dataset(lambda d: d.protocol.as_of)}), else the latest cutoff with a full horizon",
    )
    p.add_argument(
        "--horizon-weeks",
        type=int,
        default=None,
        help=f"label horizon; default: the dataset's ({_per_dataset(lambda d: d.protocol.horizon_weeks)}), "
        f"else {DEFAULT_WEEKS}",
    )
    p.add_argument(
        "--weeks",
        type=int,
        default=None,
        help=f"length of the weekly sequence; default: the dataset's ({_per_dataset(lambda d: d.weeks)}), "
        f"else {DEFAULT_WEEKS}",
    )
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--validation-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=42)
    defaults = HyperParameters()
    for name in HyperParameters.names():
        value = getattr(defaults, name)
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(value), default=value)
    p.add_argument("--threshold-policy", choices=["max_f1", "min_cost"], default="max_f1")
    p.add_argument("--promotion-cost", type=float, default=5.0)
    p.add_argument("--customer-value", type=float, default=60.0)
    p.add_argument("--uplift", type=float, default=0.15)
    p.add_argument("--hpo-trials", type=int, default=0, help="random-search trials on validation (0 = off)")
    p.add_argument("--snapshots", type=int, default=0, help="extra earlier cutoffs of training customers")
    # "--baselines false" as SageMaker passes hyperparameters, "--no-baselines" on a command line
    p.add_argument(
        "--baselines",
        nargs="?",
        const=True,
        default=True,
        type=_boolean,
        help="compare with the baselines (recency, BG/NBD, logistic RFM, LightGBM) in report/baselines.json",
    )
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--snapshot-step-weeks", type=int, default=4)
    p.add_argument("--max-reject-fraction", type=float, default=0.05)
    p.add_argument(
        "--verbose", type=int, default=2, help="Keras fit verbosity (0 silent, 2 one line per epoch)"
    )
    args, unknown = p.parse_known_args(argv)
    if unknown:  # SageMaker passes only declared hyperparameters; anything else is a typo
        p.error(f"unknown arguments: {unknown}")
    if args.train and args.dataset:
        p.error("--dataset names the data to train on when there is no --train directory: give one of them")
    _apply_dataset_defaults(args)
    return args


def _apply_dataset_defaults(args: argparse.Namespace) -> None:
    """Fill the protocol arguments not given: a named dataset's defaults, or (event files) 39 weeks
    of horizon and sequence; the cutoff of event files is found from the data (``_load_sources``)."""
    if args.train:
        args.horizon_weeks = DEFAULT_WEEKS if args.horizon_weeks is None else args.horizon_weeks
        args.weeks = DEFAULT_WEEKS if args.weeks is None else args.weeks
        return
    args.dataset = args.dataset or "cdnow"
    protocol, weeks = default_protocol(args.dataset)
    args.as_of = args.as_of or protocol.as_of
    args.horizon_weeks = protocol.horizon_weeks if args.horizon_weeks is None else args.horizon_weeks
    args.weeks = weeks if args.weeks is None else args.weeks


def hyperparameters_from(args: argparse.Namespace) -> HyperParameters:
    return HyperParameters(**{name: getattr(args, name) for name in HyperParameters.names()})


def code_version() -> str:
    if os.environ.get("CHURNGUARD_CODE_VERSION"):
        return os.environ["CHURNGUARD_CODE_VERSION"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        if sha:
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from churnguard import __version__

    return f"churnguard-{__version__}"


@dataclass
class FitResult:
    network: object
    history: dict
    val_logits: np.ndarray
    val_auc: float
    val_log_loss: float
    epochs: int


def fit_network(
    data: PreparedData, hp: HyperParameters, extra: list[Split], seed: int, verbose: int
) -> FitResult:
    import keras
    from sklearn.metrics import log_loss, roc_auc_score

    from training.model import build_model, fit_callbacks, fit_platt

    keras.utils.set_random_seed(seed)
    x_train = list(data.inputs(data.train))
    y_train = data.train.labels
    for split in extra:
        xs, xt = data.inputs(split)
        x_train = [np.concatenate([x_train[0], xs]), np.concatenate([x_train[1], xt])]
        y_train = np.concatenate([y_train, split.labels])
    x_val = list(data.inputs(data.validation))
    y_val = data.validation.labels
    class_weight = None
    if hp.class_weight == "balanced":
        pos = y_train.mean()
        class_weight = {0: 0.5 / (1 - pos), 1: 0.5 / pos}
    elif hp.class_weight != "none":
        raise ValueError(f"class_weight must be 'none' or 'balanced', got {hp.class_weight!r}")

    network = build_model(data.spec.weeks, data.spec.n_channels, data.spec.n_static, hp)
    network.compile(
        optimizer=keras.optimizers.Adam(hp.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[keras.metrics.AUC(name="auc", from_logits=True)],
    )
    history = network.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=hp.epochs,
        batch_size=hp.batch_size,
        class_weight=class_weight,
        shuffle=True,
        verbose=verbose,
        callbacks=fit_callbacks(hp),
    )
    logits = network.predict(x_val, batch_size=4096, verbose=0).reshape(-1)
    a, b = fit_platt(logits, y_val)
    probs = 1 / (1 + np.exp(-(a * logits + b)))
    return FitResult(
        network=network,
        history={k: [float(v) for v in vals] for k, vals in history.history.items()},
        val_logits=logits,
        val_auc=float(roc_auc_score(y_val, logits)),
        val_log_loss=float(log_loss(y_val, np.clip(probs, 1e-7, 1 - 1e-7))),
        epochs=len(history.history["loss"]),
    )


def random_search(
    data: PreparedData, base: HyperParameters, trials: int, extra: list[Split], seed: int, verbose: int
) -> tuple[HyperParameters, FitResult, list[dict]]:
    rng = np.random.default_rng(seed)
    best: tuple[HyperParameters, FitResult] | None = None
    table = []
    candidates = [base] + [
        HyperParameters(**{**base.to_dict(), **{k: v[rng.integers(len(v))] for k, v in SEARCH_SPACE.items()}})
        for _ in range(trials - 1)
    ]
    for i, hp in enumerate(candidates, 1):
        started = time.time()
        result = fit_network(data, hp, extra, seed, verbose=0 if verbose < 2 else verbose)
        row = {
            "trial": i,
            **{k: getattr(hp, k) for k in SEARCH_SPACE},
            "val_auc": result.val_auc,
            "val_log_loss": result.val_log_loss,
            "epochs": result.epochs,
            "seconds": time.time() - started,
        }
        table.append(row)
        log.info(
            "hpo trial %d/%d val_auc=%.4f val_log_loss=%.4f %s",
            i,
            len(candidates),
            result.val_auc,
            result.val_log_loss,
            {k: getattr(hp, k) for k in SEARCH_SPACE},
        )
        if best is None or result.val_log_loss < best[1].val_log_loss:
            best = (hp, result)
    assert best is not None
    return best[0], best[1], table


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def publish(staging: Path, model_dir: Path) -> None:
    """Move a finished model directory into place; metadata.json last marks it complete."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("metadata.json", *MODEL_FILES):
        (model_dir / name).unlink(missing_ok=True)
    if (model_dir / "report").exists():
        shutil.rmtree(model_dir / "report")
    for item in staging.iterdir():
        if item.name != "metadata.json":
            shutil.move(str(item), str(model_dir / item.name))
    shutil.move(str(staging / "metadata.json"), str(model_dir / "metadata.json"))


def feature_config_from(args: argparse.Namespace) -> FeatureConfig:
    # A shorter --weeks keeps only the recent windows, and two trend windows, that fit in the sequence.
    return feature_config_for(args.weeks)


@dataclass(frozen=True)
class TrainingData:
    """The prepared splits, where they came from, and the extra (snapshot) training rows."""

    source: EventSource
    protocol: Protocol
    data: PreparedData
    extra: list[Split]


def _load_sources(args: argparse.Namespace) -> tuple[EventSource, EventSource | None, str]:
    """The training events, the optional validation events, and the cutoff (as_of)."""
    if args.train:
        source = load_channel(args.train, channel="train", max_reject_fraction=args.max_reject_fraction)
        as_of = args.as_of or default_as_of(source.events, args.horizon_weeks)
    else:  # a named dataset; parse_args filled in its protocol
        source = load_named_source(args.dataset)
        as_of = args.as_of or default_protocol(args.dataset)[0].as_of
    validation_source = (
        load_channel(args.validation, channel="validation", max_reject_fraction=args.max_reject_fraction)
        if args.validation
        else None
    )
    return source, validation_source, as_of


def load_training_data(args: argparse.Namespace) -> TrainingData:
    """Read and validate the events, label and split the customers, fit the feature spec."""
    source, validation_source, as_of = _load_sources(args)
    protocol = Protocol(
        as_of=as_of,
        horizon_weeks=args.horizon_weeks,
        test_fraction=args.test_fraction,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    check_protocol_fits(source.events, protocol)
    data = prepare(source, protocol, config=feature_config_from(args), validation_source=validation_source)
    log.info(
        "data %s: %d rows (%d rejected), %d event types %s; cutoff %s, horizon %d weeks",
        source.name,
        source.rows_in,
        source.rows_rejected,
        len(data.event_types),
        data.event_types,
        protocol.as_of,
        protocol.horizon_weeks,
    )
    log.info(
        "customers: train %d, validation %d, test %d; churn rate %.4f",
        len(data.train.labels),
        len(data.validation.labels),
        len(data.test.labels),
        float(np.concatenate([data.train.labels, data.validation.labels, data.test.labels]).mean()),
    )
    for name, split in (("train", data.train), ("validation", data.validation)):
        if len(np.unique(split.labels)) < 2:
            raise EventLogError(f"the {name} split has a single class; need more customers")

    extra = snapshot_augmentation(data, args.snapshots, args.snapshot_step_weeks) if args.snapshots else []
    if extra:
        log.info("snapshot augmentation: +%d training rows", sum(len(s.labels) for s in extra))
    return TrainingData(source=source, protocol=protocol, data=data, extra=extra)


@dataclass(frozen=True)
class TrainedNetwork:
    hp: HyperParameters  # after a random search: the chosen trial's
    fit: FitResult
    hpo_table: list[dict[str, Any]]  # one row per random-search trial; empty without a search


def train_network(args: argparse.Namespace, training: TrainingData, hp: HyperParameters) -> TrainedNetwork:
    """Fit the network (or run the random search and keep the best trial on validation)."""
    hpo_table: list[dict[str, Any]] = []
    if args.hpo_trials > 1:
        hp, fit, hpo_table = random_search(
            training.data, hp, args.hpo_trials, training.extra, args.seed, args.verbose
        )
    else:
        fit = fit_network(training.data, hp, training.extra, args.seed, args.verbose)
    log.info(
        "validation_auc=%.5f validation_log_loss=%.5f epochs=%d", fit.val_auc, fit.val_log_loss, fit.epochs
    )
    return TrainedNetwork(hp=hp, fit=fit, hpo_table=hpo_table)


@dataclass(frozen=True)
class CalibratedExport:
    """The network with Platt calibration built in, and its checked TFLite exports."""

    serving_model: keras.Model
    slope: float
    intercept: float
    exports: Exports
    reasons: ReasonsExport


def export_calibrated(
    fit: FitResult, data: PreparedData, x_test: tuple[np.ndarray, np.ndarray]
) -> CalibratedExport:
    """Calibrate on validation, export to TFLite and check parity on the test inputs."""
    from churnguard.scorer import TFLiteScorer
    from training.export import export_all
    from training.model import fit_platt, with_calibration
    from training.reasons_model import choose_reference, export_reasons_model

    slope, intercept = fit_platt(fit.val_logits, data.validation.labels)
    serving_model = with_calibration(fit.network, slope, intercept)
    exports = export_all(serving_model, *x_test)
    x_train = data.inputs(data.train)
    reference = choose_reference(
        *x_train,
        data.train.labels,
        TFLiteScorer(exports.float32.content).predict(*x_train),
        data.train.raw.static,
        data.train.raw.static_names,
    )
    reasons = export_reasons_model(
        serving_model, data.spec.static_groups, reference, exports.float32.content, *x_test
    )
    log.info(
        "reasons model: %d groups, reference p=%.4f, efficiency max error %.1e, |p - model.tflite| max %.1e",
        len(reasons.groups),
        reference.probability,
        reasons.efficiency_max_abs_error,
        reasons.served_max_abs_diff,
    )
    float_model, dr_model = exports.float32, exports.dynamic_range
    if dr_model is None:
        log.warning("dynamic-range model refused, not written: %s", exports.dynamic_range_refusal)
    log.info(
        "export: builtin ops %s; parity float32 %.2e, dynamic range %s",
        float_model.ops,
        float_model.max_abs_diff,
        f"{dr_model.max_abs_diff:.2e}" if dr_model else "refused",
    )
    return CalibratedExport(
        serving_model=serving_model, slope=slope, intercept=intercept, exports=exports, reasons=reasons
    )


@dataclass(frozen=True)
class Evaluation:
    policy: ThresholdPolicy
    threshold: float
    risk_tiers: dict[str, float]
    metrics: dict[str, Any]  # report/metrics.json
    test_probs: np.ndarray
    scorer_runtime: str  # the TFLite runtime that produced every number
    baselines: dict[str, Any] | None = None  # report/baselines.json (training.baselines), None: off


def _test_segments(data: PreparedData) -> tuple[dict[str, np.ndarray], list[float]]:
    """Test customers by tenure band and by value band; the value edges are training spend terciles."""
    names = list(data.spec.static_names)
    raw_test = data.test.raw.static
    tenure_w = raw_test[:, names.index("tenure_days")] / 7
    spend = raw_test[:, names.index("total_spend")]
    spend_edges = np.quantile(data.train.raw.static[:, names.index("total_spend")], [1 / 3, 2 / 3]).tolist()
    segments = {
        "tenure_band": band(tenure_w, [13, 26, 39], ["<13w", "13-26w", "26-39w", ">=39w"]),
        "value_band": band(spend, spend_edges, ["low", "mid", "high"]),
    }
    return segments, spend_edges


def evaluate_exported(
    args: argparse.Namespace,
    data: PreparedData,
    exported: CalibratedExport,
    x_test: tuple[np.ndarray, np.ndarray],
) -> Evaluation:
    """Choose the thresholds on validation and measure validation, test and test segments."""
    # Thresholds and every reported number come from the exported float32 TFLite model.
    from churnguard.scorer import TFLiteScorer

    float_model, dr_model = exported.exports.float32, exported.exports.dynamic_range
    scorer = TFLiteScorer(float_model.content)
    p_val = scorer.predict(*data.inputs(data.validation))
    p_test = scorer.predict(*x_test)
    policy = ThresholdPolicy(args.threshold_policy, args.promotion_cost, args.customer_value, args.uplift)
    threshold = choose_threshold(data.validation.labels, p_val, policy)
    segments, spend_edges = _test_segments(data)
    metrics = {
        "model": "model.tflite",
        "validation": classification_metrics(data.validation.labels, p_val, threshold),
        "test": classification_metrics(data.test.labels, p_test, threshold),
        "test_dynamic_range": classification_metrics(
            data.test.labels, TFLiteScorer(dr_model.content).predict(*x_test), threshold
        )
        if dr_model
        else None,
        "test_by_segment": segment_metrics(data.test.labels, p_test, threshold, segments),
        "segment_edges": {"tenure_weeks": [13, 26, 39], "total_spend": spend_edges},
    }
    test = metrics["test"]
    log.info(
        "test_auc=%.5f test_log_loss=%.5f test_pr_auc=%.5f test_f1=%.5f test_ece=%.5f threshold=%.4f",
        test["roc_auc"],
        test["log_loss"],
        test["pr_auc_churn"],
        test["f1"],
        test["ece"],
        threshold,
    )
    return Evaluation(
        policy=policy,
        threshold=threshold,
        risk_tiers=risk_tiers(p_val, threshold),
        metrics=metrics,
        test_probs=p_test,
        scorer_runtime=scorer.runtime,
        baselines=_compare_with_baselines(data, p_val, p_test) if args.baselines else None,
    )


def _compare_with_baselines(data: PreparedData, p_val: np.ndarray, p_test: np.ndarray) -> dict[str, Any]:
    from training.baselines import compare_with_baselines

    comparison = compare_with_baselines(data, (p_val, p_test))
    best, diff = comparison["best_baseline"], comparison["auc_diff_to_best_baseline"]
    methods = comparison["methods"]
    log.info(
        "baselines: best %s test AUC %.4f / log-loss %.4f; this model %.4f / %.4f; "
        "AUC difference %+.4f [%+.4f, %+.4f]",
        best,
        methods[best]["roc_auc"],
        methods[best]["log_loss"],
        methods[comparison["model"]]["roc_auc"],
        methods[comparison["model"]]["log_loss"],
        diff["estimate"],
        *diff["ci95"],
    )
    return comparison


def _data_section(training: TrainingData) -> dict[str, Any]:
    source, data = training.source, training.data
    return {
        "source": source.name,
        "sha256": source.data_sha256,
        "rows_in": source.rows_in,
        "rows_rejected": source.rows_rejected,
        "event_types": list(data.event_types),
        "customers": {
            "train": len(data.train.labels),
            "validation": len(data.validation.labels),
            "test": len(data.test.labels),
        },
        "augmentation_rows": sum(len(s.labels) for s in training.extra),
    }


def _reason_baseline(data: PreparedData) -> dict[str, list[Any]]:
    """The median training customer's model inputs, the reference point of the score reasons."""
    x_train_seq, x_train_static = data.inputs(data.train)
    return {
        "static": np.median(x_train_static, axis=0).astype(float).tolist(),
        "sequence": np.median(x_train_seq, axis=0).astype(float).tolist(),
    }


def _reason_reference(reasons: ReasonsExport) -> dict[str, Any]:
    from training.reasons_model import REFERENCE_QUANTILE_BAND

    reference = reasons.reference
    low, high = REFERENCE_QUANTILE_BAND
    return {
        "method": "exact_group_shapley",
        "model_file": reasons.model.name,
        "groups": list(reasons.groups),
        "probability": reference.probability,
        "selection": (
            f"a retained training customer: of the {reference.retained_customers} retained, those whose "
            f"churn probability lies between the {low:.0%} and {high:.0%} quantiles, the one nearest "
            "their median model inputs"
        ),
        "features": reference.features,
        "static": reference.static.astype(float).tolist(),
        "sequence": reference.sequence.astype(float).tolist(),
        "efficiency_max_abs_error": reasons.efficiency_max_abs_error,
    }


def _files_section(
    spec_json: str, exports: Exports, reasons: ReasonsExport, drift_json: str | None = None
) -> dict[str, dict[str, Any]]:
    """Hash and size of the feature spec and of each written TFLite model, with its parity check, and
    of the drift reference."""
    from training.drift_reference import file_entry

    drift = {DRIFT_REFERENCE: file_entry(drift_json)} if drift_json is not None else {}
    return {
        "feature_spec.json": {"sha256": _sha256(spec_json.encode()), "bytes": len(spec_json.encode())},
        **{
            m.name: {
                "sha256": m.sha256,
                "bytes": len(m.content),
                "ops": m.ops,
                "parity_max_abs_diff": m.max_abs_diff,
                "parity_tolerance": m.tolerance,
            }
            for m in (exports.float32, exports.dynamic_range, reasons.model)
            if m is not None
        },
        **drift,
    }


def build_metadata(
    training: TrainingData,
    trained: TrainedNetwork,
    exported: CalibratedExport,
    evaluation: Evaluation,
    *,
    spec_json: str,
    keras_sha256: str,
    plot_files: list[str],
    created: dt.datetime,
    code: str,
    training_seconds: float,
    drift_reference_json: str | None = None,
) -> ModelMetadata:
    """metadata.json: what the model is, what it was trained on and how, and how well it did.

    ``code`` is ``code_version()``; ``plot_files`` what ``write_plots`` wrote into report/;
    ``drift_reference_json`` the drift_reference.json written (listed in ``files`` when given).
    """
    spec, exports = training.data.spec, exported.exports
    # Validated on the way out: a model directory training writes is one every reader accepts.
    return ModelMetadata.from_dict(
        {
            "format": MODEL_FORMAT,
            "format_version": FORMAT_VERSION,
            "model_version": f"{created:%Y%m%dT%H%M%SZ}-{exports.float32.sha256[:8]}",
            "created_at": created.isoformat(timespec="seconds"),
            "code_version": code,
            "data": _data_section(training),
            "protocol": training.protocol.to_dict(),
            "hyperparameters": trained.hp.to_dict(),
            "hpo_trials": len(trained.hpo_table),
            "epochs_trained": trained.fit.epochs,
            "calibration": {"method": "platt", "slope": exported.slope, "intercept": exported.intercept},
            "thresholds": {
                "policy": evaluation.policy.to_dict(),
                "decision": evaluation.threshold,
                "promotion": evaluation.threshold,
                "risk_tiers": evaluation.risk_tiers,
            },
            "metrics": {
                split: {k: evaluation.metrics[split][k] for k in SUMMARY_METRICS}
                for split in ("validation", "test")
            },
            "inputs": {"sequence": [None, spec.weeks, spec.n_channels], "static": [None, spec.n_static]},
            "reason_baseline": _reason_baseline(training.data),
            "reason_reference": _reason_reference(exported.reasons),
            "files": _files_section(spec_json, exports, exported.reasons, drift_reference_json),
            "dynamic_range_refused": exports.dynamic_range_refusal,
            "keras_model": {"file": "model.keras", "sha256": keras_sha256},
            "report": sorted(["metrics.json", "history.json", *plot_files]),
            "training_seconds": training_seconds,
            "runtime": {
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "tensorflow": __import__("tensorflow").__version__,
                "tflite_runtime": evaluation.scorer_runtime,
            },
        }
    )


def write_report(
    report: Path, data: PreparedData, trained: TrainedNetwork, evaluation: Evaluation
) -> list[str]:
    """report/: the plots, metrics.json, history.json (and hpo_trials.json, baselines.json); returns the
    names of the plots and of baselines.json."""
    report.mkdir()
    fit = trained.fit
    plots = write_plots(
        str(report), data.test.labels, evaluation.test_probs, evaluation.threshold, fit.history
    )
    (report / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2))
    (report / "history.json").write_text(json.dumps(fit.history, indent=2))
    if trained.hpo_table:
        (report / "hpo_trials.json").write_text(json.dumps(trained.hpo_table, indent=2))
    if evaluation.baselines is not None:
        (report / "baselines.json").write_text(json.dumps(evaluation.baselines, indent=2))
        return [*plots, "baselines.json"]
    return plots


def write_model_files(staging: Path, data: PreparedData, exported: CalibratedExport) -> str:
    """The feature spec, the models and the drift reference; returns the feature spec's JSON text."""
    from training.drift_reference import build_drift_reference

    spec_json = data.spec.to_json()
    (staging / "feature_spec.json").write_text(spec_json)
    (staging / "model.tflite").write_bytes(exported.exports.float32.content)
    # The Keras model, for parity checks (benchmarks, promotion gate); serving never loads it.
    exported.serving_model.save(staging / "model.keras")
    if exported.exports.dynamic_range:
        (staging / "model_dynamic_range.tflite").write_bytes(exported.exports.dynamic_range.content)
    (staging / exported.reasons.model.name).write_bytes(exported.reasons.model.content)
    drift = build_drift_reference(data, exported.exports.float32.content)
    (staging / DRIFT_REFERENCE).write_text(drift.to_json())
    log.info("drift reference: %d customers, %d features", drift.customers, len(drift.features))
    return spec_json


def write_model_directory(
    model_dir: Path,
    training: TrainingData,
    trained: TrainedNetwork,
    exported: CalibratedExport,
    evaluation: Evaluation,
    started: float,
) -> ModelMetadata:
    """Write every file to a staging folder beside ``model_dir``, then ``publish`` it.

    Returns the metadata written.
    """
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir.parent))
    try:
        plots = write_report(staging / "report", training.data, trained, evaluation)
        spec_json = write_model_files(staging, training.data, exported)
        created = dt.datetime.now(dt.UTC)
        metadata = build_metadata(
            training,
            trained,
            exported,
            evaluation,
            spec_json=spec_json,
            keras_sha256=_sha256((staging / "model.keras").read_bytes()),
            plot_files=plots,
            created=created,
            code=code_version(),
            training_seconds=round(time.time() - started, 1),
            drift_reference_json=(staging / DRIFT_REFERENCE).read_text(),
        )
        (staging / "metadata.json").write_text(metadata.to_json())
        publish(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def run(args: argparse.Namespace) -> ModelMetadata:
    """Load, fit, export, evaluate and write the model directory; returns its metadata."""
    started = time.time()
    hp = hyperparameters_from(args)
    training = load_training_data(args)
    trained = train_network(args, training, hp)
    data = training.data
    x_test = data.inputs(data.test)
    exported = export_calibrated(trained.fit, data, x_test)
    evaluation = evaluate_exported(args, data, exported, x_test)
    model_dir = Path(args.model_dir)
    metadata = write_model_directory(model_dir, training, trained, exported, evaluation, started)
    if args.output_data_dir:
        out = Path(args.output_data_dir) / "report"
        shutil.copytree(model_dir / "report", out, dirs_exist_ok=True)
    log.info("model %s written to %s in %.0fs", metadata.model_version, model_dir, time.time() - started)
    return metadata


def main(argv: list[str] | None = None, *, failure_file: str | os.PathLike | None = None) -> int:
    """Train; the exit code as documented above. ``failure_file``: also write the reason there."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    try:
        args = parse_args(argv)
    except BadArguments as exc:  # still exits 2 after argparse's usage message, as before
        write_failure(failure_file, f"bad arguments: {exc.message}")
        raise
    from training.export import ExportError

    try:
        run(args)
    except (EventLogError, FeatureSpecError, ValueError) as exc:
        log.error("bad input: %s", exc)
        print(f"churnguard-train: error: {exc}", file=sys.stderr)
        write_failure(failure_file, f"bad input: {exc}")
        return EXIT_BAD_INPUT
    except ExportError as exc:
        log.error("export failed: %s", exc)
        print(f"churnguard-train: export failed: {exc}", file=sys.stderr)
        write_failure(failure_file, f"export failed: {exc}")
        return EXIT_EXPORT_FAILED
    except Exception as exc:
        message = f"internal error: {type(exc).__name__}: {exc}"
        log.error("%s", message)
        traceback.print_exc()
        print(f"churnguard-train: {message}", file=sys.stderr)
        write_failure(failure_file, message)
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
