"""Raw TFLite cost of R rows per customer: single-customer latency (p50 of warm calls) and batch
customers/s over 10k CDNOW customers. Run under `taskset -c 0`."""
import sys, time, json, numpy as np
sys.path[:0] = ["/work/main", "/work/main/shared"]
from churnguard.scorer import TFLiteScorer

model = sys.argv[1] if len(sys.argv) > 1 else "/work/main/artifacts/model/model.tflite"
d = np.load("/tmp/reasons_study/cdnow.npz")
seq = np.concatenate([d["train_seq"], d["validation_seq"], d["test_seq"]])[:10000]
sta = np.concatenate([d["train_static"], d["validation_static"], d["test_static"]])[:10000]
res = {}
for max_batch in (1024, 8192):
    sc = TFLiteScorer.from_file(model, max_batch=max_batch)
    for R in (1, 7, 11, 12, 64):
        # single customer: R rows in one call
        s1 = np.repeat(seq[:1], R, 0); t1 = np.repeat(sta[:1], R, 0)
        for _ in range(50): sc.predict(s1, t1)
        ts = []
        for _ in range(300):
            a = time.perf_counter(); sc.predict(s1, t1); ts.append(time.perf_counter() - a)
        p50 = float(np.median(ts)) * 1e3
        # batch: 10k customers x R rows (the rows themselves don't matter for cost)
        S = np.repeat(seq, R, 0); T = np.repeat(sta, R, 0)
        best = 1e9
        for _ in range(2):
            a = time.perf_counter(); sc.predict(S, T); best = min(best, time.perf_counter() - a)
        res[f"mb{max_batch}_R{R}"] = {"single_p50_ms": round(p50, 4), "batch_cust_per_s": round(len(seq) / best)}
        print(max_batch, R, res[f"mb{max_batch}_R{R}"], flush=True)
json.dump(res, open(f"/tmp/reasons_study/bench_rows_{int(time.time())}.json", "w"), indent=1)
