"""The quality bench (K=5, cdnow + tafeng) with the calibration slice at 30% of train instead of 15%,
for every method (the protocol's validation_fraction; the baselines tune on the same larger slice).
No repository file is changed: benchmarks.quality's default_protocol is wrapped in this process.
Test numbers: information only (the choice of 0.3 rests on the validation/simulation evidence).
Usage: nice -n 15 .venv/bin/python docs/studies/calibration/bench_vf30.py
  -> /tmp/calib/bench_vf30/quality.{md,json} (copied here as quality_vf30_k5.{md,json}); models in /tmp/calib/bench_vf30_models
"""
import sys
from dataclasses import replace

sys.path[:0] = ["/work/main", "/work/main/shared"]
import benchmarks.quality as q

_orig = q.default_protocol


def _vf30(name):
    protocol, weeks = _orig(name)
    return replace(protocol, validation_fraction=0.3), weeks


q.default_protocol = _vf30
sys.exit(q.main(["--data", "cdnow,tafeng", "--splits", "5", "--model-dir", "/tmp/calib/bench_vf30_models",
                 "--out", "/tmp/calib/bench_vf30"]))
