"""The scale benchmark's own pipeline on its smallest size (issue 12 §3), so CI keeps the dataset
invariants honest: a time-sorted export of 20k customers cut into 4 gzip CSV parts (customers span
parts, a few planted bad rows), scored step by step as the state machine runs it — plan, every part,
plan shards, every shard, finish — each step a child process, against the local object store.
``benchmarks.scale.measure_size`` is exactly what ``make bench-scale`` runs per size."""

from __future__ import annotations

from benchmarks.scale import measure_size
from tests.helpers import FIXTURE_MODEL

CUSTOMERS, PARTS, SHARDS = 20_000, 4, 3


def test_a_multi_part_export_is_scored_once_per_customer_through_the_shuffle(tmp_path):
    run = measure_size(tmp_path, CUSTOMERS, PARTS, str(FIXTURE_MODEL), workers=2, shards=SHARDS)

    checks = run["invariants"]["checks"]
    assert run["invariants"]["ok"], checks
    assert set(checks) == {
        "status ok",
        "rows in = rows exported",
        "rows in = used + rejected",
        "rejected = planted bad rows",
        "every customer exactly once",
        "one as-of",
        "promotions <= customers",
    }
    # the shape the invariants are about: customers spread over parts, every part feeding every shard
    assert run["parts_per_customer"] > 2
    assert run["pieces"] == PARTS * SHARDS
    assert run["customers"] == run["invariants"]["customers_in_output"] == CUSTOMERS
    assert run["rows_in"] == run["events"] + run["rows_rejected"] and run["rows_rejected"] > 0
    assert 0 < run["customers_queued"] <= CUSTOMERS
    # what the benchmark reports was measured, per item
    assert run["phase1"]["count"] == PARTS and run["phase2"]["count"] == SHARDS
    assert all(
        i["peak_rss_mb"] > 0 and i["seconds"] > 0 for i in run["phase1"]["items"] + run["phase2"]["items"]
    )
