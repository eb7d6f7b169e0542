import sys; sys.path.insert(0, "/tmp/reasons_study")
from common import *
d = data()
base = Interp(open(f"{MODEL_DIR}/model.tflite", "rb").read())
p = base(d["train_seq"], d["train_static"]).reshape(-1)
y = d["train_y"]; names = list(d["static_names"]); raw = d["train_raw_static"]
print("churn rate", y.mean())
for lab in (0, 1):
    print("label", lab, "p quantiles", np.round(np.quantile(p[y == lab], [.1, .25, .5, .75, .9]), 3))
for f in ("recency_days", "n_order_days", "total_spend", "tenure_days", "orders_13w"):
    j = names.index(f)
    print(f, "retained median", np.nanmedian(raw[y == 0, j]), "churner median", np.nanmedian(raw[y == 1, j]))
s, t, i = ref_medoid_retained(d)
print("medoid raw:", {f: float(raw[i, names.index(f)]) for f in ("recency_days", "n_order_days", "total_spend", "tenure_days", "orders_13w")}, "p", p[i])
print("weekly orders medoid", d["train_raw_seq"][i, :, 0].astype(int))
# distribution of recency among retained
j = names.index("recency_days")
print("retained recency quantiles", np.nanquantile(raw[y == 0, j], [.1, .25, .5, .75, .9]))
print("retained n_order_days quantiles", np.nanquantile(raw[y == 0, names.index('n_order_days')], [.1, .25, .5, .75, .9]))
