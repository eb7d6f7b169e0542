"""Top-reason check on the CDNOW test split for each method x reference, and efficiency of each.
Target: test customers with p >= high tier, one order day, last order >= 26 weeks before as_of."""
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
names = list(d["static_names"]); raw = d["test_raw_static"]
p_test = base(d["test_seq"], d["test_static"]).reshape(-1)
rec, nod = raw[:, names.index("recency_days")], raw[:, names.index("n_order_days")]
target = (p_test >= high) & (nod == 1) & (rec >= 182)
print(f"test customers {len(p_test)}, high-risk {int((p_test >= high).sum())}, target (high, 1 order day, >=26 wk ago) {int(target.sum())}")
refs = {"median_all (today)": ref_median_all(d), "median_retained (per-feature)": ref_median_retained(d)}
for label, fn in (("medoid_retained static+seq", lambda: ref_medoid_retained(d)),
                  ("medoid_retained static", lambda: ref_medoid_static(d)),
                  ("medoid_retained median-p", lambda: ref_medoid_median_p(d, p_train))):
    s, t, i = fn()
    refs[label] = (s, t)
    print(f"{label}: train idx {i} id {d['train_ids'][i]} p={p_train[i]:.3f} raw:",
          {f: float(d['train_raw_static'][i, names.index(f)]) for f in ('recency_days', 'n_order_days', 'total_spend', 'tenure_days')},
          "orders by week:", "".join(str(min(int(v), 9)) for v in d["train_raw_seq"][i, :, 0]))
# check our occlusion equals the repo's OcclusionExplainer
from churnguard.bundle import ModelBundle
bundle = ModelBundle.from_directory(MODEL_DIR)
rs0, rt0 = np.asarray(meta["reason_baseline"]["sequence"]), np.asarray(meta["reason_baseline"]["static"])
print("metadata baseline == median_all:", np.allclose(rs0, refs["median_all (today)"][0], atol=1e-6), np.allclose(rt0, refs["median_all (today)"][1], atol=1e-6))
ex = bundle.explainer
st = bundle.scorer.predict(*ex.occluded_inputs(d["test_seq"], d["test_static"]))
repo_occ = ex.contributions(st, len(p_test))
results = {}
rank_names = {"recency", SEQ}
for name, (rs, rt) in refs.items():
    content = explainer_tflite(model, groups, static_groups, rs.astype(np.float32), rt.astype(np.float32))
    P = Interp(content)(d["test_seq"], d["test_static"]).astype(np.float64)
    p_ref = P[0, 0]
    for method, phi in (("occlusion", occlusion_from_P(P, G)), ("antithetic", antithetic_from_P(P, G)), ("shapley", P @ Phi)):
        if name.startswith("median_all") and method == "occlusion":
            assert np.abs(phi - repo_occ).max() < 1e-5, np.abs(phi - repo_occ).max()
        top = np.argmax(phi[target], 1)
        share = float(np.isin(np.array(groups)[top], list(rank_names)).mean())
        eff = float(np.abs(phi.sum(1) - (P[:, -1] - p_ref)).max())
        counts = {g: int((np.array(groups)[top] == g).sum()) for g in groups}
        mean_phi = dict(zip(groups, np.round(phi[target].mean(0), 3).tolist()))
        results[f"{name} | {method}"] = {"p_ref": round(p_ref, 4), "top_recency_or_weekly_share": round(share, 3),
                                         "max_efficiency_error": eff, "top_counts": counts, "mean_phi_target": mean_phi}
        print(f"{name:32s} {method:10s} p_ref={p_ref:.3f} top=recency|weekly {share:6.1%}  max|sum-dp|={eff:.2e}  top counts {counts}\n    mean phi on target {mean_phi}")
json.dump(results, open("/tmp/reasons_study/evaluate_refs.json", "w"), indent=1)
