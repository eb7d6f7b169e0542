"""How the structured exact Shapley cost grows with the number of groups G (K = 2^G coalitions):
CDNOW's 26 static inputs re-split round-robin into G-1 synthetic groups (+ weekly). One core.
Chunks of max(1, 65536 // K) customers per interpreter call (bounded intermediate memory)."""
import sys, time, json
sys.path.insert(0, "/tmp/reasons_study")
from common import *
d = data(); model = load_keras()
r = np.load("/tmp/reasons_study/refs.npz"); rs, rt = r["proposed_seq"], r["proposed_static"]
seq = np.concatenate([d["train_seq"], d["test_seq"]])[:10000]; sta = np.concatenate([d["train_static"], d["test_static"]])[:10000]
for G in (6, 7, 8, 9, 10):
    gs = [f"g{i}" for i in range(G - 1)]
    static_groups = np.array([gs[j % (G - 1)] for j in range(sta.shape[1])], dtype=object)
    groups = [*gs, SEQ]
    K = 1 << G
    for phi in ("pairs", True, False):
        it = Interp(explainer_tflite(model, groups, static_groups, rs, rt, in_graph_phi=phi), max_batch=max(1, 65536 // K))
        pairs = ShapleyPairs(G)
        f = (lambda s, t: it(s, t)) if phi else (lambda s, t: pairs(it(s, t)))
        best = 1e9
        for _ in range(3):
            a = time.perf_counter(); f(seq, sta); best = min(best, time.perf_counter() - a)
        for _ in range(50): f(seq[:1], sta[:1])
        ts = []
        for _ in range(300):
            a = time.perf_counter(); f(seq[:1], sta[:1]); ts.append(time.perf_counter() - a)
        print(json.dumps({"G": G, "K": K, "phi": {"pairs": "in-graph pairs", True: "in-graph matmul", False: "numpy pairs"}[phi], "batch_cust_per_s": round(10000 / best),
                          "single_p50_ms": round(float(np.median(ts)) * 1e3, 4), "load": open("/proc/loadavg").read().split()[0]}), flush=True)
