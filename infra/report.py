"""Human-readable summaries of a model directory (used by the local stack's demo)."""

from __future__ import annotations

from churnguard.model_metadata import ModelMetadata
from training.evaluate import SUMMARY_METRICS


def metrics_table(metadata: ModelMetadata) -> str:
    shown = [k for k in SUMMARY_METRICS if k != "accuracy"]
    rows = [("split", *shown)]
    for split in ("validation", "test"):
        rows.append((split, *(f"{metadata.metrics[split][k]:.4f}" for k in shown)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
