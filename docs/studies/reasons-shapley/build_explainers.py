"""Export explainer TFLite models for each reference; check parity of p(customer) with model.tflite."""
import sys, time, json
sys.path.insert(0, "/tmp/reasons_study")
from common import *

d = data()
groups, static_groups = spec_groups()
print("groups", groups, "G =", len(groups))
model = load_keras()
refs = {"median_all": ref_median_all(d), "median_retained": ref_median_retained(d)}
s, t, i = ref_medoid_retained(d)
refs["medoid_retained"] = (s, t)
json.dump({"medoid_train_index": i, "medoid_id": str(d["train_ids"][i])}, open("/tmp/reasons_study/medoid.json", "w"))
base = Interp(open(f"{MODEL_DIR}/model.tflite", "rb").read())
seq = np.concatenate([d["train_seq"], d["validation_seq"], d["test_seq"]])
sta = np.concatenate([d["train_static"], d["validation_static"], d["test_static"]])
p_base = base(seq, sta).reshape(-1)
for name, (rs, rt) in refs.items():
    for phi in (False, True):
        a = time.time()
        content = explainer_tflite(model, groups, static_groups, rs.astype(np.float32), rt.astype(np.float32), in_graph_phi=phi)
        path = f"/tmp/reasons_study/explainer_{name}{'_phi' if phi else ''}.tflite"
        open(path, "wb").write(content)
        ex = Interp(content)
        out = ex(seq, sta)
        pc = out[:, -1] if not phi else out[:, 0]
        pref = float(base(rs[None], rt[None])[0, 0])
        print(name, "phi" if phi else "P", f"{time.time()-a:.1f}s", len(content), "bytes; max|p_expl-p_tflite| =",
              float(np.abs(pc - p_base).max()), "p_ref(model.tflite) =", round(pref, 4),
              ("p_ref(expl) = %.6f" % out[0, 0]) if not phi else "", ex.ops())
