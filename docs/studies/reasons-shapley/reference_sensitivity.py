"""Proposed reference = 'median-p retained medoid'. Saves it (refs.npz, explainer_proposed*.tflite) and
checks how much the top-reason share depends on which customer is picked: the 15 retained customers
nearest the retained medians within the median-p band, each used as the reference (exact Shapley)."""
import sys, json; sys.path.insert(0, "/tmp/reasons_study")
from common import *

d = data()
groups, static_groups = spec_groups()
G = len(groups); Phi = shapley_matrix(G)
meta = json.load(open(f"{MODEL_DIR}/metadata.json"))
high = meta["thresholds"]["risk_tiers"]["high"]
model = load_keras()
base = Interp(open(f"{MODEL_DIR}/model.tflite", "rb").read())
p_train = base(d["train_seq"], d["train_static"]).reshape(-1)
p_test = base(d["test_seq"], d["test_static"]).reshape(-1)
names = list(d["static_names"]); raw = d["test_raw_static"]
target = (p_test >= high) & (raw[:, names.index("n_order_days")] == 1) & (raw[:, names.index("recency_days")] >= 182)
s, t, i = ref_medoid_median_p(d, p_train)
np.savez("/tmp/reasons_study/refs.npz", proposed_seq=s, proposed_static=t, proposed_index=i,
         median_all_seq=ref_median_all(d)[0], median_all_static=ref_median_all(d)[1])
for phi in (False, True):
    open(f"/tmp/reasons_study/explainer_proposed{'_phi' if phi else ''}.tflite", "wb").write(
        explainer_tflite(model, groups, static_groups, s, t, in_graph_phi=phi))
# candidates
keep = np.flatnonzero(d["train_y"] == 0)
q = np.quantile(p_train[keep], [0.45, 0.55])
band = keep[(p_train[keep] >= q[0]) & (p_train[keep] <= q[1])]
S = d["train_static"][band]
order = band[np.argsort(((S - np.median(S, 0)) ** 2).sum(1))][:15]
rows = []
for rank, j in enumerate(order):
    P = Interp(explainer_tflite(model, groups, static_groups, d["train_seq"][j], d["train_static"][j]))(d["test_seq"], d["test_static"]).astype(np.float64)
    phi = P @ Phi
    top = np.array(groups)[np.argmax(phi[target], 1)]
    share = float(np.isin(top, ["recency", SEQ]).mean())
    r = {f: float(d["train_raw_static"][j, names.index(f)]) for f in ("recency_days", "n_order_days", "total_spend")}
    rows.append(share)
    print(f"rank {rank:2d} idx {j:5d} p={p_train[j]:.3f} {r} share top=recency|weekly {share:.1%} tops:",
          {g: int((top == g).sum()) for g in groups if (top == g).any()})
print("share over 15 candidates: min %.3f median %.3f" % (min(rows), float(np.median(rows))))
