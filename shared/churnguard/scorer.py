"""The TFLite scorer: one loader for every runtime, one interpreter allocated per batch size.

Runtime order: ``ai_edge_litert`` (LiteRT, numpy 2), then ``tflite_runtime`` (the classic light
runtime, numpy<2), then ``tensorflow.lite`` (training machines). Inputs are matched by rank: the
sequence input is 3-D, the static input 2-D, so converter-generated tensor names do not matter.

The interpreter is re-allocated only when the batch size changes; a warm API container scoring one
customer at a time never re-allocates.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

RUNTIME_MODULES: tuple[tuple[str, str], ...] = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


class ModelLoadError(RuntimeError):
    """The model file is missing, corrupt or has unexpected inputs/outputs."""


def load_interpreter_class(preferred: str | None = None) -> tuple[str, Callable[..., Any]]:
    """The first importable runtime's ``Interpreter`` class (or ``preferred`` only)."""
    errors = []
    for name, module_name in RUNTIME_MODULES:
        if preferred and name != preferred:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{module_name}: {exc}")
            continue
        return name, module.Interpreter
    raise ModelLoadError("no TFLite runtime importable: " + "; ".join(errors))


@dataclass(frozen=True)
class _Io:
    sequence: int
    static: int
    output: int


class TFLiteScorer:
    """Scores model inputs ``(sequence [n, W, C], static [n, S])`` -> probabilities ``[n]``
    (``predict``), or rows ``[n, output_width]`` for a model with several outputs per customer (the
    reasons model; ``predict_rows``)."""

    def __init__(
        self,
        model_content: bytes,
        *,
        num_threads: int = 1,
        max_batch: int = 1024,
        runtime: str | None = None,
    ) -> None:
        self.runtime, interpreter_class = load_interpreter_class(runtime)
        try:
            self._interpreter = interpreter_class(model_content=model_content, num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"TFLite model cannot be loaded: {exc}") from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        ranks = {len(d["shape"]): d["index"] for d in inputs}
        if len(inputs) != 2 or set(ranks) != {2, 3} or len(outputs) != 1:
            raise ModelLoadError(
                f"expected inputs (sequence rank 3, static rank 2) and one output, got "
                f"{[(d['name'], list(d['shape'])) for d in inputs]} -> {[d['name'] for d in outputs]}"
            )
        self._io = _Io(sequence=ranks[3], static=ranks[2], output=outputs[0]["index"])
        shapes = {d["index"]: d["shape"] for d in inputs}
        self.weeks = int(shapes[self._io.sequence][1])
        self.channels = int(shapes[self._io.sequence][2])
        self.n_static = int(shapes[self._io.static][1])
        output_shape = outputs[0]["shape"]
        self.output_width = int(output_shape[-1]) if len(output_shape) == 2 else 1
        self.max_batch = int(max_batch)
        self._allocated_batch = -1
        self._lock = threading.Lock()  # one interpreter is not re-entrant

    @classmethod
    def from_file(cls, path: str, **kwargs: Any) -> TFLiteScorer:
        try:
            with open(path, "rb") as fh:
                content = fh.read()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model {path}: {exc}") from exc
        return cls(content, **kwargs)

    def _ensure_batch(self, batch: int) -> None:
        if batch != self._allocated_batch:
            self._interpreter.resize_tensor_input(self._io.sequence, [batch, self.weeks, self.channels])
            self._interpreter.resize_tensor_input(self._io.static, [batch, self.n_static])
            self._interpreter.allocate_tensors()
            self._allocated_batch = batch

    def predict(self, sequence: np.ndarray, static: np.ndarray) -> np.ndarray:
        """Probabilities ``[n]`` float32 of a one-output-per-customer model."""
        if self.output_width != 1:
            raise ValueError(f"the model gives {self.output_width} values per customer: use predict_rows")
        return self.predict_rows(sequence, static).reshape(-1)

    def predict_rows(self, sequence: np.ndarray, static: np.ndarray) -> np.ndarray:
        """``[n, output_width]`` float32."""
        n = len(sequence)
        if sequence.shape[1:] != (self.weeks, self.channels) or static.shape != (n, self.n_static):
            raise ValueError(
                f"inputs {sequence.shape}, {static.shape} do not fit the model "
                f"([n, {self.weeks}, {self.channels}], [n, {self.n_static}])"
            )
        out = np.empty((n, self.output_width), dtype=np.float32)
        if n == 0:
            return out
        sequence = np.ascontiguousarray(sequence, dtype=np.float32)
        static = np.ascontiguousarray(static, dtype=np.float32)
        with self._lock:
            for start in range(0, n, self.max_batch):
                stop = min(start + self.max_batch, n)
                self._ensure_batch(stop - start)
                self._interpreter.set_tensor(self._io.sequence, sequence[start:stop])
                self._interpreter.set_tensor(self._io.static, static[start:stop])
                self._interpreter.invoke()
                out[start:stop] = self._interpreter.get_tensor(self._io.output).reshape(stop - start, -1)
        return out

    def op_names(self) -> list[str]:
        """Operator names in the graph (builtin ops by name; custom/Flex ops show as such)."""
        details = self._interpreter._get_ops_details()  # no public API lists ops
        # After allocation XNNPACK shows up as a DELEGATE node: the runtime's, not the file's.
        return sorted({d["op_name"] for d in details} - {"DELEGATE"})
