"""Keras -> TFLite (builtin ops only), float32 and dynamic-range quantized, with parity checks.

The export fails loudly (``ExportError``) when:
* the converter needs Flex (SELECT_TF_OPS) or custom ops — only TFLITE_BUILTINS are allowed, and the
  resulting graph is inspected again for ``Flex*`` / ``CUSTOM`` ops;
* the interpreter cannot resize to batch 1, 256 and 4096 and run;
* parity against Keras on held-out customers exceeds 1e-5 (float32) or 5e-3 (dynamic range).

Dynamic-range quantization uses per-tensor weights for dense layers so FULLY_CONNECTED stays at op
version 9, which tflite-runtime 2.14 (numpy<2 environments) can still execute.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from churnguard.model_metadata import DYNAMIC_RANGE_MODEL, FLOAT32_MODEL, PARITY_TOLERANCE
from churnguard.scorer import TFLiteScorer

FLOAT32_TOLERANCE = PARITY_TOLERANCE[FLOAT32_MODEL]
DYNAMIC_RANGE_TOLERANCE = PARITY_TOLERANCE[DYNAMIC_RANGE_MODEL]
RESIZE_BATCHES = (1, 256, 4096)
STATEFUL_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExportedModel:
    name: str
    content: bytes
    ops: list[str]
    max_abs_diff: float
    tolerance: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def convert(model: tf.keras.Model, weeks: int, channels: int, n_static: int, *, quantize: bool) -> bytes:
    signature = [
        tf.TensorSpec([None, weeks, channels], tf.float32, name="sequence"),
        tf.TensorSpec([None, n_static], tf.float32, name="static"),
    ]

    @tf.function(input_signature=signature)
    def serve(sequence: tf.Tensor, static: tf.Tensor) -> tf.Tensor:
        return model([sequence, static], training=False)

    # Freeze weights into constants: Keras 3 variables otherwise convert to resource variables
    # (VAR_HANDLE/READ_VARIABLE) that the interpreter never initialises, and the model returns NaN.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and friends
        raise ExportError(f"TFLite conversion with builtin ops only failed: {exc}") from exc


def check_builtin_only(ops: list[str]) -> None:
    bad = [op for op in ops if op.startswith("Flex") or op.upper() == "CUSTOM"]
    if bad:
        raise ExportError(f"exported graph contains non-builtin ops: {bad}")
    stateful = [op for op in ops if op in STATEFUL_OPS]
    if stateful:
        raise ExportError(f"exported graph keeps variables ({stateful}): state would persist across calls")


def check_resizable(content: bytes, weeks: int, channels: int, n_static: int) -> None:
    scorer = TFLiteScorer(content, max_batch=max(RESIZE_BATCHES))
    rng = np.random.default_rng(0)
    for batch in RESIZE_BATCHES:
        out = scorer.predict(
            rng.normal(size=(batch, weeks, channels)).astype(np.float32),
            rng.normal(size=(batch, n_static)).astype(np.float32),
        )
        if out.shape != (batch,) or not np.all(np.isfinite(out)):
            raise ExportError(f"interpreter resized to batch {batch} gave {out.shape} / non-finite output")


@dataclass(frozen=True)
class Exports:
    float32: ExportedModel
    dynamic_range: ExportedModel | None  # None: refused (see dynamic_range_refusal)
    dynamic_range_refusal: str | None = None


def export_all(model: tf.keras.Model, sequence: np.ndarray, static: np.ndarray) -> Exports:
    """Convert both flavours and prove builtin ops, resizing and parity on ``(sequence, static)``.

    Any failure of the float32 model (the one serving uses) raises ``ExportError``. The dynamic-range
    model is an optional smaller artifact: when its parity exceeds 5e-3 it is refused (not written)
    and the reason returned, so one data set's quantization error cannot block the float32 model.
    """
    weeks, channels, n_static = sequence.shape[1], sequence.shape[2], static.shape[1]
    reference = np.asarray(model([sequence, static], training=False)).reshape(-1)
    results: list[ExportedModel | None] = []
    refusal = None
    for name, quantize, tolerance in (
        (FLOAT32_MODEL, False, FLOAT32_TOLERANCE),
        (DYNAMIC_RANGE_MODEL, True, DYNAMIC_RANGE_TOLERANCE),
    ):
        content = convert(model, weeks, channels, n_static, quantize=quantize)
        scorer = TFLiteScorer(content)
        ops = scorer.op_names()
        check_builtin_only(ops)
        check_resizable(content, weeks, channels, n_static)
        diff = float(np.max(np.abs(scorer.predict(sequence, static) - reference)))
        if not diff <= tolerance:
            message = f"{name}: max |TFLite - Keras| = {diff:.2e} exceeds {tolerance:.0e}"
            if not quantize:
                raise ExportError(message)
            refusal = message
            results.append(None)
            continue
        results.append(ExportedModel(name, content, ops, diff, tolerance))
    assert results[0] is not None
    return Exports(results[0], results[1], refusal)
