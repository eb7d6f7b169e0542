"""``make demo``: the main job on the embedded default.

Today: train on CDNOW with the benchmark protocol, evaluate, export to TFLite, and print the metrics
table and where the artifacts are. (The infra issue grows this into the full local stack.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from training import train
from training.evaluate import SUMMARY_METRICS

MODEL_DIR = Path("artifacts/model")


def metrics_table(metadata: dict) -> str:
    shown = [k for k in SUMMARY_METRICS if k != "accuracy"]
    rows = [("split", *shown)]
    for split in ("validation", "test"):
        rows.append((split, *(f"{metadata['metrics'][split][k]:.4f}" for k in shown)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    code = train.main(["--model-dir", str(MODEL_DIR), "--verbose", "0"])
    if code != 0:
        return code
    metadata = json.loads((MODEL_DIR / "metadata.json").read_text())
    cm = json.loads((MODEL_DIR / "report" / "metrics.json").read_text())["test"]["confusion_matrix"]
    print()
    print(
        f"ChurnGuard model {metadata['model_version']} — CDNOW, cutoff {metadata['protocol']['as_of']}, "
        f"horizon {metadata['protocol']['horizon_weeks']} weeks, "
        f"customers train/val/test {'/'.join(str(v) for v in metadata['data']['customers'].values())}"
    )
    print()
    print(metrics_table(metadata))
    print()
    t = metadata["thresholds"]
    print(
        f"decision threshold ({t['policy']['name']}, chosen on validation): {t['decision']:.4f}; "
        f"test confusion matrix tn={cm['tn']} fp={cm['fp']} fn={cm['fn']} tp={cm['tp']}"
    )
    files = metadata["files"]
    dynamic = files.get("model_dynamic_range.tflite")
    refused = metadata.get("dynamic_range_refused")
    dynamic_text = f"{dynamic['parity_max_abs_diff']:.1e}" if dynamic else f"refused ({refused})"
    print(
        f"TFLite parity vs Keras: float32 {files['model.tflite']['parity_max_abs_diff']:.1e}, "
        f"dynamic range {dynamic_text}; ops: {', '.join(files['model.tflite']['ops'])}"
    )
    print()
    print(f"artifacts in {MODEL_DIR.resolve()}:")
    for path in sorted(MODEL_DIR.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(MODEL_DIR)}  ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
