#!/bin/bash
# Interleaved rounds of every method, one core (taskset -c 0); one JSON line per run in runs.jsonl.
cd /work/main
for round in 1 2 3; do
  for m in today antithetic naive struct struct_phi; do
    echo "{\"round\": $round, \"load\": \"$(cut -d' ' -f1 /proc/loadavg)\", \"result\": $(taskset -c 0 .venv/bin/python /tmp/reasons_study/bench_methods.py $m both 2>/dev/null | tail -1)}" >> /tmp/reasons_study/runs.jsonl
  done
done
