"""The reasons model: exact group Shapley values of the served probability, as a second TFLite file.

Why a customer is at risk is answered relative to a **reference customer**: a real retained customer
of the training window (``choose_reference``). For the G feature groups (the static groups in
first-use order, then the weekly activity sequence) the value of a coalition S of groups is the
model's probability for the customer's inputs in S and the reference's inputs elsewhere. The exact
Shapley value of each group is a weighted sum over the 2^G coalitions, so the contributions **add up**
to the customer's probability minus the reference's (efficiency), a group the model ignores gets
exactly 0.0 (every paired difference is 0.0), and no sampling noise makes two calls disagree.

Why this is affordable (G is 6 on CDNOW, at most 9): the graph runs the Conv1D/LSTM encoder once per
customer and once (a constant) for the reference; a coalition only chooses between those two
embeddings and between the customer's and the reference's static columns, so only the small static
layer and the head run per coalition. The Shapley sum is done in the graph from paired differences.
Output ``[n, 1 + G]``: column 0 is the customer's probability through the same layers as
model.tflite, columns 1.. the groups' contributions.

The export refuses (``ExportError``) a graph with non-builtin ops, one that does not resize, a
probability column more than 1e-5 from Keras, or contributions whose sum misses
``p - p_reference`` by more than ``EFFICIENCY_TOLERANCE``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from churnguard.model_metadata import FLOAT32_MODEL, PARITY_TOLERANCE, REASONS_MODEL
from churnguard.reasons import EFFICIENCY_TOLERANCE, SEQUENCE_GROUP, reason_groups
from churnguard.scorer import TFLiteScorer
from training.export import ExportedModel, ExportError, check_builtin_only
from training.model import encoder_and_head

# The reference is the retained training customer typical of this band of the retained customers'
# probabilities (quantiles). At the 25th percentile the reference is a customer the model is fairly
# sure will stay, so a customer flagged for a promotion is above it and always has a positive reason
# (the median retained customer of CDNOW has p = 0.53: above the promotion cut of 0.38).
REFERENCE_QUANTILE_BAND = (0.20, 0.30)
REFERENCE_FEATURES = ("recency_days", "n_order_days", "total_spend", "tenure_days")
RESIZE_BATCHES = (1, 7, 256)


@dataclass(frozen=True)
class Reference:
    sequence: np.ndarray  # [weeks, channels] model inputs
    static: np.ndarray  # [n_static] model inputs
    probability: float  # the served model's probability for the reference
    features: dict[str, float]  # a few raw features, so a reader knows who the reference is
    retained_customers: int  # how many retained training customers the band was drawn from


def choose_reference(
    sequence: np.ndarray,
    static: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    raw_static: np.ndarray,
    raw_static_names: tuple[str, ...] | list[str],
) -> Reference:
    """The retained training customer (label 0) nearest, over the standardized static inputs, to the
    per-feature medians of the retained customers whose probability lies in ``REFERENCE_QUANTILE_BAND``
    of the retained customers' probabilities. A real customer, so its weekly sequence and its static
    inputs belong together (medians of each would describe nobody)."""
    retained = np.flatnonzero(np.asarray(labels) == 0)
    if len(retained) == 0:
        raise ExportError("no retained customer in the training split: no reference for the reasons")
    low, high = np.quantile(probabilities[retained], REFERENCE_QUANTILE_BAND)
    band = retained[(probabilities[retained] >= low) & (probabilities[retained] <= high)]
    if len(band) == 0:  # ties at a single probability
        band = retained
    distance = ((static[band] - np.median(static[band], axis=0)) ** 2).sum(axis=1)
    chosen = int(band[int(np.argmin(distance))])
    names = list(raw_static_names)
    return Reference(
        sequence=np.asarray(sequence[chosen], dtype=np.float32),
        static=np.asarray(static[chosen], dtype=np.float32),
        probability=float(probabilities[chosen]),
        features={
            name: float(raw_static[chosen, names.index(name)]) for name in REFERENCE_FEATURES if name in names
        },
        retained_customers=len(retained),
    )


@dataclass(frozen=True)
class _ShapleyPairs:
    """phi_g = sum_j weight[g, j] * (v(with_[g, j]) - v(without[g, j])) over the coalitions without g."""

    without: np.ndarray  # [G, K/2] coalition indices (bit g = group g present)
    with_: np.ndarray  # [G, K/2]
    weight: np.ndarray  # [G, K/2] float32: |S|! (G - |S| - 1)! / G!

    @classmethod
    def for_groups(cls, n_groups: int) -> _ShapleyPairs:
        coalitions = np.arange(1 << n_groups)
        size = np.array([bin(k).count("1") for k in coalitions])
        factorial = math.factorial
        by_size = np.array(
            [factorial(s) * factorial(n_groups - s - 1) / factorial(n_groups) for s in range(n_groups)]
        )
        without = np.stack([coalitions[(coalitions >> g) & 1 == 0] for g in range(n_groups)])
        return cls(
            without=without,
            with_=without | (1 << np.arange(n_groups))[:, None],
            weight=by_size[size[without]].astype(np.float32),
        )


def _coalition_masks(
    groups: tuple[str, ...], static_groups: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Per coalition k: which static columns [K, S] and whether the sequence [K] are the customer's."""
    present = ((np.arange(1 << len(groups))[:, None] >> np.arange(len(groups))[None, :]) & 1).astype(bool)
    static_mask = present[:, [groups.index(g) for g in static_groups]]
    return static_mask, present[:, groups.index(SEQUENCE_GROUP)]


def convert_reasons_model(serving_model: Any, static_groups: tuple[str, ...], reference: Reference) -> bytes:
    """The TFLite reasons model for ``serving_model`` (the calibrated Keras model)."""
    groups = reason_groups(static_groups)
    encode, head = encoder_and_head(serving_model)
    static_mask, sequence_mask = _coalition_masks(groups, tuple(static_groups))
    pairs = _ShapleyPairs.for_groups(len(groups))
    n_coalitions, n_static = len(static_mask), len(reference.static)
    weeks, channels = reference.sequence.shape
    reference_embedding = np.asarray(encode(tf.constant(reference.sequence[None])))[0]
    signature = [
        tf.TensorSpec([None, weeks, channels], tf.float32, name="sequence"),
        tf.TensorSpec([None, n_static], tf.float32, name="static"),
    ]

    @tf.function(input_signature=signature)
    def explain(sequence: tf.Tensor, static: tf.Tensor) -> tf.Tensor:
        n = tf.shape(sequence)[0]
        embedding = encode(sequence)
        probability = head(embedding, static)  # the layers of model.tflite, on the customer's inputs
        width = embedding.shape[-1]
        # Selections, not arithmetic: a coalition's inputs are exact copies of the customer's or the
        # reference's, so the all-groups coalition is the customer bit for bit.
        coalition_embedding = tf.where(
            sequence_mask[None, :, None], embedding[:, None, :], reference_embedding[None, None, :]
        )
        coalition_static = tf.where(static_mask[None], static[:, None, :], reference.static[None, None, :])
        values = tf.reshape(
            head(tf.reshape(coalition_embedding, [-1, width]), tf.reshape(coalition_static, [-1, n_static])),
            [n, n_coalitions],
        )
        differences = tf.gather(values, pairs.with_.reshape(-1), axis=1) - tf.gather(
            values, pairs.without.reshape(-1), axis=1
        )
        contributions = tf.reduce_sum(
            tf.reshape(differences, [n, len(groups), n_coalitions // 2]) * pairs.weight, axis=2
        )
        return tf.concat([probability, contributions], axis=1)

    frozen = convert_variables_to_constants_v2(explain.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and friends
        raise ExportError(f"reasons model: TFLite conversion with builtin ops only failed: {exc}") from exc


@dataclass(frozen=True)
class ReasonsExport:
    model: ExportedModel
    reference: Reference
    groups: tuple[str, ...]
    efficiency_max_abs_error: float
    served_max_abs_diff: float  # max |probability column - model.tflite| on the check inputs


def export_reasons_model(
    serving_model: Any,
    static_groups: tuple[str, ...],
    reference: Reference,
    served_model: bytes,
    sequence: np.ndarray,
    static: np.ndarray,
) -> ReasonsExport:
    """Convert, then prove on ``(sequence, static)``: builtin ops, resizing, the probability column
    against Keras and model.tflite, and efficiency (contributions sum to p - p_reference)."""
    groups = reason_groups(static_groups)
    content = convert_reasons_model(serving_model, static_groups, reference)
    scorer = TFLiteScorer(content, max_batch=max(RESIZE_BATCHES))
    ops = scorer.op_names()
    check_builtin_only(ops)
    if scorer.output_width != 1 + len(groups):
        raise ExportError(f"reasons model outputs {scorer.output_width} columns, expected {1 + len(groups)}")
    rng = np.random.default_rng(0)
    for batch in RESIZE_BATCHES:
        rows = scorer.predict_rows(
            rng.normal(size=(batch, *sequence.shape[1:])).astype(np.float32),
            rng.normal(size=(batch, static.shape[1])).astype(np.float32),
        )
        if rows.shape != (batch, 1 + len(groups)) or not np.all(np.isfinite(rows)):
            raise ExportError(f"reasons model resized to batch {batch} gave {rows.shape} / non-finite output")
    rows = scorer.predict_rows(sequence, static)
    keras_p = np.asarray(serving_model([sequence, static], training=False)).reshape(-1)
    parity = float(np.max(np.abs(rows[:, 0] - keras_p)))
    tolerance = PARITY_TOLERANCE[FLOAT32_MODEL]
    if not parity <= tolerance:
        raise ExportError(f"{REASONS_MODEL}: max |TFLite - Keras| = {parity:.2e} exceeds {tolerance:.0e}")
    served = float(np.max(np.abs(rows[:, 0] - TFLiteScorer(served_model).predict(sequence, static))))
    efficiency = float(
        np.max(np.abs(rows[:, 1:].astype(np.float64).sum(axis=1) - (rows[:, 0] - reference.probability)))
    )
    if not efficiency <= EFFICIENCY_TOLERANCE:
        raise ExportError(
            f"{REASONS_MODEL}: contributions miss p - p_reference by up to {efficiency:.2e} "
            f"(tolerance {EFFICIENCY_TOLERANCE:.0e})"
        )
    return ReasonsExport(
        model=ExportedModel(REASONS_MODEL, content, ops, parity, tolerance),
        reference=reference,
        groups=groups,
        efficiency_max_abs_error=efficiency,
        served_max_abs_diff=served,
    )
