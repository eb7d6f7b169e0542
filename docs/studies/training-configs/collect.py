"""Tables for the issue 9 §3 study from /tmp/exp9/<config>-<dataset>-<seed>/metadata.json."""
import json, statistics as st
from pathlib import Path

ROOT = Path("/tmp/exp9")
SEEDS = (42, 43, 44)
timing = {}
for line in (ROOT / "timings.jsonl").read_text().splitlines() if (ROOT / "timings.jsonl").exists() else []:
    r = json.loads(line); timing[(r["config"], r["dataset"], r["seed"])] = r["wall_s"]

def load(c, d, s):
    p = ROOT / f"{c}-{d}-{s}" / "metadata.json"
    return json.loads(p.read_text()) if p.exists() else None

def best_epoch(c, d, s):
    h = json.loads((ROOT / f"{c}-{d}-{s}" / "report" / "history.json").read_text())
    vl = h["val_loss"]
    lr = h.get("learning_rate")
    return vl.index(min(vl)) + 1, (min(lr) if lr else None)

def ms(xs):
    return f"{st.mean(xs):.4f} ± {st.stdev(xs):.4f}" if len(xs) > 1 else (f"{xs[0]:.4f}" if xs else "-")

for d in ("cdnow", "tafeng"):
    print(f"\n## {d}\n")
    print("| config | n | val AUC | val log-loss | val ECE max | epochs run (best) | train s | test AUC | test log-loss | test ECE max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    per_seed = {}
    for c in "ABCDE":
        ms_ = [m for s in SEEDS if (m := load(c, d, s))]
        if not ms_:
            continue
        v = [m["metrics"]["validation"] for m in ms_]; t = [m["metrics"]["test"] for m in ms_]
        per_seed[c] = {s: m for s in SEEDS if (m := load(c, d, s))}
        ep = ",".join("%d(%d)" % (m["epochs_trained"], best_epoch(c, d, m["protocol"]["seed"])[0]) for m in ms_)
        print(f"| {c} | {len(ms_)} | {ms([x['roc_auc'] for x in v])} | {ms([x['log_loss'] for x in v])} | "
              f"{max(x['ece'] for x in v):.4f} | {ep} | "
              f"{','.join(str(m['training_seconds']) for m in ms_)} | {ms([x['roc_auc'] for x in t])} | "
              f"{ms([x['log_loss'] for x in t])} | {max(x['ece'] for x in t):.4f} |")
    print("\nper seed (validation AUC / log-loss / ECE; Δ vs A):")
    for c, runs in per_seed.items():
        for s, m in runs.items():
            v = m["metrics"]["validation"]; a = per_seed.get("A", {}).get(s)
            delta = ""
            if a and c != "A":
                av = a["metrics"]["validation"]
                delta = f"  ΔAUC {v['roc_auc']-av['roc_auc']:+.4f}  Δll {v['log_loss']-av['log_loss']:+.4f}"
            print(f"  {c} seed {s}: {v['roc_auc']:.4f} / {v['log_loss']:.4f} / {v['ece']:.4f} epochs {m['epochs_trained']} best {best_epoch(c, d, s)[0]} min lr {best_epoch(c, d, s)[1]}{delta}")
