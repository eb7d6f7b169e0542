"""Per method, on one core (run under taskset -c 0):
  core: explain() alone on 10k CDNOW customers (customers/s) and on 1 customer (p50 of 300 warm calls)
  e2e : the score_api lambda_handler warm p50/p99 (1 customer with reasons, same request as
        benchmarks/serving.py) and batch score_file on the CDNOW file with reasons for all (best of 3).
Usage: bench_methods.py METHOD [core|e2e|both]"""
import os, sys, time, json, tempfile
sys.path.insert(0, "/tmp/reasons_study")
os.chdir("/work/main")
method_name, what = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "both")
os.environ["CHURNGUARD_MODEL_DIR"] = "/work/main/artifacts/model"
from methods import *
from churnguard.bundle import ModelBundle

bundle = ModelBundle.from_directory(MODEL_DIR)
method = make(method_name, bundle)
res = {"method": method_name, "affinity": sorted(os.sched_getaffinity(0))}
if what in ("core", "both"):
    d = data()
    seq = np.concatenate([d["train_seq"], d["test_seq"]])[:10000]
    sta = np.concatenate([d["train_static"], d["test_static"]])[:10000]
    best = bestc = 1e9
    for _ in range(3):
        a, c = time.perf_counter(), time.process_time(); method.explain(seq, sta)
        best, bestc = min(best, time.perf_counter() - a), min(bestc, time.process_time() - c)
    res["core_batch_cust_per_s"] = round(10000 / best)
    res["core_batch_cust_per_cpu_s"] = round(10000 / bestc)
    s1, t1 = seq[:1], sta[:1]
    for _ in range(100): method.explain(s1, t1)
    ts, cs = [], []
    for _ in range(300):
        a, c = time.perf_counter(), time.process_time(); method.explain(s1, t1)
        ts.append(time.perf_counter() - a); cs.append(time.process_time() - c)
    res["core_single_p50_ms"] = round(float(np.median(ts)) * 1e3, 4)
    res["core_single_p50_cpu_ms"] = round(float(np.median(cs)) * 1e3, 4)
if what in ("e2e", "both"):
    if method_name != "today":
        patch_scoring(method)
    from benchmarks.serving import _api_event, _cdnow_customer_request
    from infra.lambda_harness import LambdaContext, load_handler
    handler = load_handler("score_api")
    event, ctx = _api_event(_cdnow_customer_request()), LambdaContext()
    body = None
    for _ in range(100):
        r = handler.lambda_handler(event, ctx); assert r["statusCode"] == 200
    ts, cs = [], []
    for _ in range(1000):
        a, c = time.perf_counter(), time.process_time(); handler.lambda_handler(event, ctx)
        ts.append((time.perf_counter() - a) * 1e3); cs.append((time.process_time() - c) * 1e3)
    ts.sort(); cs.sort()
    res["api_warm_p50_ms"], res["api_warm_p99_ms"] = round(ts[500], 4), round(ts[990], 4)
    res["api_warm_p50_cpu_ms"] = round(cs[500], 4)
    res["api_reasons"] = json.loads(r["body"])["customers"][0]["reasons"]
    from churnguard.batch import score_file
    from churnguard.datasets import load_cdnow
    from churnguard.promotions import PromotionPolicy
    from churnguard.scoring import ReasonsFor
    import fastparquet
    body = load_cdnow().to_csv(index=False).encode()
    best = bestc = 1e9
    for _ in range(3):
        a, c = time.perf_counter(), time.process_time()
        result = score_file(body, "cdnow.csv", bundle, as_of="1997-10-01", policy=PromotionPolicy(),
                            publisher=None, source="bench", reasons_for=ReasonsFor.ALL)
        with tempfile.TemporaryDirectory() as tmp:
            fastparquet.write(f"{tmp}/scored.parquet", result.scored, compression="SNAPPY", stats=False)
        best, bestc = min(best, time.perf_counter() - a), min(bestc, time.process_time() - c)
    res["batch_with_reasons_cust_per_s"] = round(result.summary.customers_scored / best)
    res["batch_with_reasons_cust_per_cpu_s"] = round(result.summary.customers_scored / bestc)
    res["batch_customers"] = result.summary.customers_scored
print(json.dumps(res))
