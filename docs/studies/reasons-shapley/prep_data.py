"""Cache CDNOW train/test model inputs (transformed with the served model's spec) + labels + raw statics."""
import sys, numpy as np
sys.path[:0] = ["/work/main", "/work/main/shared"]
from churnguard.bundle import ModelBundle
from training.data import CDNOW_PROTOCOL, load_cdnow_source, prepare

MODEL = sys.argv[1] if len(sys.argv) > 1 else "/work/main/artifacts/model"
bundle = ModelBundle.from_directory(MODEL)
data = prepare(load_cdnow_source(), CDNOW_PROTOCOL)
out = {}
for name in ("train", "validation", "test"):
    split = getattr(data, name)
    seq, sta = bundle.spec.transform(split.raw)
    seq2, sta2 = data.inputs(split)
    assert np.allclose(seq, seq2) and np.allclose(sta, sta2), "spec mismatch"
    out[f"{name}_seq"], out[f"{name}_static"], out[f"{name}_y"] = seq, sta, split.labels
    out[f"{name}_raw_static"] = split.raw.static
    out[f"{name}_raw_seq"] = split.raw.sequence
    out[f"{name}_ids"] = split.user_ids.astype(str)
out["static_names"] = np.array(data.spec.static_names)
out["raw_channels"] = np.array(split.raw.sequence_channels)
np.savez_compressed("/tmp/reasons_study/cdnow.npz", **out)
print({k: v.shape for k, v in out.items()})
