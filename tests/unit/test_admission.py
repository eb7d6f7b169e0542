"""Admission of batch files by memory: row estimates from a head sample, the memory model, and the
model checked against measured peaks (committed benchmark results and one live run)."""

import gzip
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pandas as pd
import pytest

from churnguard.admission import (
    HEAD_SAMPLE_BYTES,
    MAX_PARTS,
    MemoryModel,
    TooLargeToSplitError,
    estimate_csv_rows,
)
from churnguard.datasets import generate_synthetic_events
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def csv_bytes() -> tuple[bytes, int]:
    events = generate_synthetic_events(2_000, seed=21, weeks=52)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return events.to_csv(index=False).encode(), len(events)


def test_a_csv_estimate_from_its_first_mebibyte_is_within_five_percent(csv_bytes):
    body, rows = csv_bytes
    assert len(body) > 4 * HEAD_SAMPLE_BYTES  # the sample really is a small part of it
    estimate = estimate_csv_rows(body[:HEAD_SAMPLE_BYTES], len(body), gzipped=False)
    assert not estimate.exact and abs(estimate.rows - rows) / rows < 0.05


def test_a_gzip_estimate_follows_the_files_own_compression_ratio(csv_bytes):
    body, rows = csv_bytes
    for level in (1, 9):  # the same rows at two compression ratios: two object sizes, one answer
        packed = gzip.compress(body, compresslevel=level)
        sample = packed[: HEAD_SAMPLE_BYTES // 8]
        estimate = estimate_csv_rows(sample, len(packed), gzipped=True)
        assert not estimate.exact and abs(estimate.rows - rows) / rows < 0.10, (level, estimate)


def test_a_sample_that_is_the_whole_object_counts_rows_exactly():
    body = b"user_id,timestamp\na,2024-01-01\nb,2024-01-02\nc,2024-01-03"  # no final newline
    assert estimate_csv_rows(body, len(body), gzipped=False).rows == 3
    packed = gzip.compress(body[:30]) + gzip.compress(body[30:])  # concatenated gzip members
    estimate = estimate_csv_rows(packed, len(packed), gzipped=True)
    assert estimate.exact and estimate.rows == 3


def test_a_gzip_bomb_is_estimated_huge_not_decompressed_whole():
    packer = zlib.compressobj(1, wbits=31)
    block = b"a,2024-01-01\n" * 1_000_000
    bomb = b"".join(packer.compress(block) for _ in range(40)) + packer.flush()  # 520 MB of rows in ~1 MB
    estimate = estimate_csv_rows(bomb[:HEAD_SAMPLE_BYTES], len(bomb), gzipped=True)
    assert estimate.rows > 35_000_000
    assert MemoryModel(budget_mb=3008).cannot_fit(estimate.rows)


@pytest.mark.parametrize("sample", [b"", b"\x00\xff garbage", b"\x1f\x8b\x08\x00garbage"])
def test_an_undecodable_sample_estimates_nothing_and_leaves_the_verdict_to_the_read(sample):
    assert estimate_csv_rows(sample, 10_000, gzipped=True).rows == 0


def test_rows_that_certainly_cannot_fit_are_those_past_the_cheapest_per_row_cost():
    memory = MemoryModel(budget_mb=3008)
    assert not memory.cannot_fit(memory.max_rows()) and memory.cannot_fit(memory.max_rows() + 1)
    assert memory.fits(0, 0, 0) and not memory.fits(memory.max_rows() + 1, 0, 0)


def test_split_parts_are_each_predicted_to_use_at_most_half_of_what_a_part_may_use():
    memory = MemoryModel(budget_mb=3008)
    events, customers = 60_000_000, 2_000_000
    parts = memory.parts_for(events, customers, 0)
    share = memory.predicted_peak_mb(events // parts, customers // parts, 0) - memory.base_mb
    assert share <= (memory.usable_mb - memory.base_mb) / 2
    assert memory.parts_for(events, customers, 0, scale=3.0) >= 3 * parts - 2


def test_a_split_needing_more_parts_than_one_pass_writes_is_refused():
    memory = MemoryModel(budget_mb=3008)
    with pytest.raises(TooLargeToSplitError, match="smaller files"):
        memory.parts_for_rows(memory.max_rows() * MAX_PARTS)
    with pytest.raises(TooLargeToSplitError, match="MemorySize"):
        MemoryModel(budget_mb=memory.base_mb).parts_for_rows(10)


def test_the_shipped_model_predicts_at_least_every_committed_measured_peak():
    results = json.loads((ROOT / "benchmarks" / "results" / "batch_memory.json").read_text())
    memory = MemoryModel(budget_mb=3008)
    for run in results["runs"]:
        predicted = memory.predicted_peak_mb(run["events"], run["customers"], run["rejected"])
        assert predicted >= run["peak_rss_mb"], run


def test_a_scoring_run_on_this_machine_stays_under_the_models_prediction(tmp_path):
    """Live check of the same claim: one file of one-event customers (the costliest shape per row),
    scored in a child process whose peak RSS is read from /proc."""
    events = generate_synthetic_events(40_000, seed=22, weeks=3, with_profile=False)
    events = events.drop_duplicates("user_id", ignore_index=True)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = tmp_path / "one-event-each.csv"
    pd.concat([events, events.assign(event_type="unknown")]).to_csv(path, index=False)  # half rejected
    model_dir = ROOT / "tests" / "fixtures" / "model"
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.batch_memory", "--child", str(model_dir), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    run = json.loads(out.stdout.splitlines()[-1])
    assert run["status"] == "ok" and run["rejected"] == len(events) == run["customers"]
    predicted = MemoryModel(budget_mb=3008).predicted_peak_mb(
        run["events"], run["customers"], run["rejected"]
    )
    assert run["peak_rss_mb"] <= predicted, (run, predicted)


def test_profile_values_are_the_latest_non_null_per_column_however_the_file_is_chunked():
    """Batch keeps one profile row per customer across chunks; the answer must not depend on the
    chunking or the row order (a customer's country known early, the channel only later)."""
    from churnguard.batch import score_file
    from churnguard.bundle import ModelBundle
    from churnguard.promotions import PromotionPolicy
    from churnguard.scoring import ReasonsFor

    events = generate_synthetic_events(300, seed=23, weeks=30)
    events["timestamp"] = events["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rng = np.random.default_rng(5)
    for column in ("country", "acquisition_channel"):
        events.loc[rng.random(len(events)) < 0.6, column] = None  # mostly unknown, per column
    shuffled = events.sample(frac=1.0, random_state=3).to_csv(index=False).encode()
    bundle = ModelBundle.from_directory(ROOT / "tests" / "fixtures" / "model")

    def scores(body: bytes, chunk_rows: int = 10**7) -> pd.Series:
        result = score_file(
            body,
            "profile.csv",
            bundle,
            as_of="2024-08-01",
            policy=PromotionPolicy(),
            publisher=None,
            source="test",
            reasons_for=ReasonsFor.NONE,
            chunk_rows=chunk_rows,
        )
        return result.scored.set_index("user_id")["churn_probability"].sort_index()

    one_chunk = scores(shuffled)
    pd.testing.assert_series_equal(scores(shuffled, chunk_rows=997), one_chunk)
    # and the profile matters to this model: without it the scores differ
    no_profile = events.drop(columns=["country", "acquisition_channel"]).to_csv(index=False).encode()
    assert not np.allclose(scores(no_profile), one_chunk)


@pytest.mark.parametrize("seed", range(20))
def test_the_line_length_limit_fails_exactly_when_a_line_is_too_long_and_passes_bytes_through(seed):
    import io

    from churnguard.batch import _LineLengthLimit
    from churnguard.events import EventLogError

    rng = np.random.default_rng(seed)
    lines = [b"x" * int(n) for n in rng.integers(0, 14, size=8)]
    data = b"\n".join(lines) + (b"\n" if seed % 2 else b"")
    limit = 12
    stream = io.BufferedReader(_LineLengthLimit(io.BytesIO(data), limit), buffer_size=int(rng.integers(1, 9)))
    if max(map(len, lines)) > limit:
        with pytest.raises(EventLogError, match="longer than"):
            stream.read()
    else:
        assert stream.read() == data
