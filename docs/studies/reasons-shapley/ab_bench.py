"""Paired A/B in ONE process on one core (taskset -c 0), robust to the shared machine's load drift:
the score_api lambda_handler (1 customer with reasons, the serving benchmark's request) alternating
between methods call by call (random order per round), and batch score_file (CDNOW, reasons for all)
alternating run by run. Usage: ab_bench.py [api_calls] [batch_rounds] METHOD..."""
import os, sys, time, json, random, tempfile
sys.path.insert(0, "/tmp/reasons_study")
os.chdir("/work/main")
os.environ["CHURNGUARD_MODEL_DIR"] = "/work/main/artifacts/model"
calls, rounds, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
from methods import *
import churnguard.api, churnguard.batch, churnguard.scoring as sc
from churnguard.bundle import ModelBundle
from benchmarks.serving import _api_event, _cdnow_customer_request
from infra.lambda_harness import LambdaContext, load_handler

original = sc.score_customers
handler = load_handler("score_api")
bundle_for_methods = ModelBundle.from_directory(MODEL_DIR)
fns = {}
for n in names:
    if n == "today":
        fns[n] = original
    else:
        patch_scoring(make(n, bundle_for_methods))
        fns[n] = sc.score_customers
def use(n):
    sc.score_customers = churnguard.api.score_customers = churnguard.batch.score_customers = fns[n]
event, ctx = _api_event(_cdnow_customer_request()), LambdaContext()
for n in names:
    use(n)
    for _ in range(200): assert handler.lambda_handler(event, ctx)["statusCode"] == 200
times = {n: [] for n in names}
rng = random.Random(0)
for _ in range(calls):
    order = names[:]; rng.shuffle(order)
    for n in order:
        use(n); a = time.perf_counter(); handler.lambda_handler(event, ctx); times[n].append((time.perf_counter() - a) * 1e3)
res = {"load_start": open("/proc/loadavg").read().split()[0]}
for n in names:
    t = np.sort(times[n]); res[f"api_p50_ms.{n}"] = round(float(t[len(t) // 2]), 4); res[f"api_p99_ms.{n}"] = round(float(t[int(len(t) * .99)]), 4)
    if n != names[0]:
        res[f"api_paired_median_diff_ms.{n}-{names[0]}"] = round(float(np.median(np.array(times[n]) - np.array(times[names[0]]))), 4)
if rounds:
    from churnguard.batch import score_file
    from churnguard.datasets import load_cdnow
    from churnguard.promotions import PromotionPolicy
    import fastparquet
    body = load_cdnow().to_csv(index=False).encode()
    bundle = ModelBundle.from_directory(MODEL_DIR)
    bt = {n: [] for n in names}
    for _ in range(rounds):
        order = names[:]; rng.shuffle(order)
        for n in order:
            use(n); a = time.perf_counter()
            result = score_file(body, "cdnow.csv", bundle, as_of="1997-10-01", policy=PromotionPolicy(),
                                publisher=None, source="bench", reasons_for=sc.ReasonsFor.ALL)
            with tempfile.TemporaryDirectory() as tmp:
                fastparquet.write(f"{tmp}/scored.parquet", result.scored, compression="SNAPPY", stats=False)
            bt[n].append(time.perf_counter() - a)
    for n in names:
        res[f"batch_best_cust_per_s.{n}"] = round(result.summary.customers_scored / min(bt[n]))
        res[f"batch_median_cust_per_s.{n}"] = round(result.summary.customers_scored / float(np.median(bt[n])))
res["load_end"] = open("/proc/loadavg").read().split()[0]
print(json.dumps(res))
