"""Risk check: with the reference's probability above the promotion cut, promoted customers with
p < p_ref get a negative total and may get no positive reason. Compare reference bands (quantile of
retained customers' probability the medoid is drawn from): share of promoted test customers with no
reason > 1e-4, and the lapsed-customer top-reason share."""
import sys, json; sys.path.insert(0, "/tmp/reasons_study")
from common import *
d = data(); groups, static_groups = spec_groups(); G = len(groups); pairs = ShapleyPairs(G)
meta = json.load(open(f"{MODEL_DIR}/metadata.json")); promo = meta["thresholds"]["promotion"]; high = meta["thresholds"]["risk_tiers"]["high"]
model = load_keras(); base = Interp(open(f"{MODEL_DIR}/model.tflite", "rb").read())
p_train = base(d["train_seq"], d["train_static"]).reshape(-1)
names = list(d["static_names"]); raw = d["test_raw_static"]
keep = np.flatnonzero(d["train_y"] == 0)
for centre in (0.5, 0.25, 0.1):
    q = np.quantile(p_train[keep], [centre - 0.05, centre + 0.05])
    band = keep[(p_train[keep] >= q[0]) & (p_train[keep] <= q[1])]
    s, t, i = ref_medoid_static(d, band)
    P = Interp(explainer_tflite(model, groups, static_groups, s, t))(d["test_seq"], d["test_static"])
    phi = pairs(P); p = P[:, -1]
    target = (p >= high) & (raw[:, names.index("n_order_days")] == 1) & (raw[:, names.index("recency_days")] >= 182)
    share = float(np.isin(np.array(groups)[np.argmax(phi[target], 1)], ["recency", SEQ]).mean())
    promoted = p >= promo
    none = float(((phi[promoted] > 1e-4).sum(1) == 0).mean())
    r = {f: float(d["train_raw_static"][i, names.index(f)]) for f in ("recency_days", "n_order_days", "total_spend", "tenure_days")}
    print(f"band centred on retained-p quantile {centre}: p_ref={P[0,0]:.3f} ref {r}; lapsed top=recency|weekly {share:.1%}; "
          f"promoted with p<p_ref {float((p[promoted] < P[0,0]).mean()):.1%}, promoted with no positive reason {none:.1%}; "
          f"max efficiency err {np.abs(phi.sum(1) - (p - P[0,0])).max():.1e}")
