"""Issue 9 §3 study: configs A/B/C(/D) x cdnow/tafeng x seeds 42-44, two trainings at a time, niced."""
import subprocess, sys, time, json, os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path("/tmp/exp9")
PY = "/work/main/.venv/bin/python"
CONFIGS = {
    "A": [],
    "B": ["--lr-patience", "3", "--lr-factor", "0.5", "--lr-min", "1e-5", "--patience", "12"],
    "C": ["--lr-patience", "3", "--lr-factor", "0.5", "--lr-min", "1e-5", "--patience", "12", "--snapshots", "2"],
    "E": ["--snapshots", "2"],
    "D": ["--lr-patience", "3", "--lr-factor", "0.5", "--lr-min", "1e-5", "--patience", "12", "--batch-size", "128"],
}
configs = sys.argv[1].split(",") if len(sys.argv) > 1 else ["A", "B", "C"]
jobs = [(c, d, s) for s in (42, 43, 44) for c in configs for d in ("cdnow", "tafeng")]

def run(job):
    c, d, s = job
    out = ROOT / f"{c}-{d}-{s}"
    if (out / "metadata.json").exists():
        return job, 0, 0.0
    t0 = time.time()
    cmd = ["nice", "-n", "19", PY, "-m", "training.train", "--dataset", d, "--seed", str(s),
           "--model-dir", str(out), "--verbose", "0", *CONFIGS[c]]
    with open(ROOT / f"{c}-{d}-{s}.log", "w") as log:
        rc = subprocess.run(cmd, cwd="/work/main", stdout=log, stderr=subprocess.STDOUT).returncode
    dt = time.time() - t0
    print(f"{time.strftime('%H:%M:%S')} {c}-{d}-{s} rc={rc} {dt:.0f}s", flush=True)
    return job, rc, dt

with ThreadPoolExecutor(2) as ex:
    results = list(ex.map(run, jobs))
with open(ROOT / "timings.jsonl", "a") as f:
    for (c, d, s), rc, dt in results:
        f.write(json.dumps({"config": c, "dataset": d, "seed": s, "rc": rc, "wall_s": round(dt, 1)}) + "\n")
