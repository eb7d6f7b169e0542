"""The quality benchmark's parts: the protocol it reads, what each method is fed, the aggregation over
split draws, and the results file's keys. No training: the TFLite route uses the fixture model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import quality
from benchmarks.quality import OURS, DatasetRun, SplitOutcome
from churnguard.bundle import ModelBundle
from churnguard.datasets import generate_synthetic_events
from churnguard.events import EventLogError, validate_events
from churnguard.scoring import ReasonsFor, score_customers
from churnguard.tabular import customer_events, to_epoch_seconds
from infra.model_fixtures import FIXTURE_MODEL
from training import baselines
from training.baselines import PairedDraw, paired_bootstrap_auc_diff
from training.data import EventSource, PreparedData, Protocol, feature_config_for, prepare

AS_OF = "2024-09-30"


@pytest.fixture(scope="module")
def synthetic_source() -> EventSource:
    """Synthetic events like the fixture model's training data (with the two profile columns)."""
    validated = validate_events(generate_synthetic_events(600, seed=21, weeks=78))
    return EventSource(
        name="synthetic",
        events=validated.events,
        profile_columns=validated.profile_columns,
        data_sha256="0" * 64,
        rows_in=validated.rows_in,
        rows_rejected=0,
    )


@pytest.fixture(scope="module")
def prepared(synthetic_source: EventSource) -> PreparedData:
    return prepare(synthetic_source, Protocol(as_of=AS_OF, horizon_weeks=13), config=feature_config_for(39))


# ---- what each method sees -------------------------------------------------------------------


def test_bgnbd_horizon_is_the_protocols(prepared: PreparedData) -> None:
    model = baselines.fit_bgnbd(prepared)
    inputs = baselines._bgnbd_inputs(prepared, prepared.test)
    by_horizon = {}
    for weeks in (4, 39):
        data = replace(prepared, protocol=replace(prepared.protocol, horizon_weeks=weeks))
        p_none = baselines.bgnbd(data)["bgnbd_p_no_purchase"][1]
        np.testing.assert_allclose(p_none, baselines.bgnbd_p_no_purchase(model, *inputs, 7 * weeks))
        by_horizon[weeks] = p_none
    # A longer horizon leaves less room for silence: P(no purchase) falls, never rises.
    assert np.all(by_horizon[4] >= by_horizon[39] - 1e-12)
    assert np.mean(by_horizon[4] - by_horizon[39]) > 0.01


def test_tflite_route_scores_with_the_profile_columns(prepared: PreparedData) -> None:
    bundle = ModelBundle.from_directory(FIXTURE_MODEL)
    assert bundle.spec.profile_categorical, "the fixture model must be trained with profile columns"
    _, test = quality.churnguard_tflite(prepared, FIXTURE_MODEL)

    def serving(profile_columns: tuple[str, ...]) -> np.ndarray:
        customers = customer_events(
            prepared.source.events, profile_columns=profile_columns, user_ids=prepared.test.user_ids
        )
        scored = score_customers(
            bundle,
            list(customers.user_ids),
            customers.arrays,
            to_epoch_seconds(AS_OF),
            profile=customers.profile,
            reasons_for=ReasonsFor.NONE,
        )
        return np.asarray(scored.churn_probability, dtype=np.float64)

    np.testing.assert_array_equal(test, serving(("country", "acquisition_channel")))
    assert np.max(np.abs(test - serving(()))) > 1e-3  # without them the model scores differently


def test_learned_baselines_get_the_profile_encoding(prepared: PreparedData) -> None:
    profile = baselines._profile_inputs(prepared, prepared.test)
    n_profile = len(prepared.spec.model_static_names) - len(prepared.spec.static_names)
    assert profile.shape == (len(prepared.test.labels), n_profile) and n_profile > 0
    p_val, p_test = baselines.logistic_rfm(prepared)
    assert p_val.shape == prepared.validation.labels.shape and p_test.shape == prepared.test.labels.shape


# ---- the paired bootstrap ----------------------------------------------------------------------


def test_weighted_auc_is_the_auc_of_the_resample() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounded: many ties
    auc = baselines._WeightedAuc(labels, scores)
    for _ in range(5):
        idx = rng.integers(0, 300, 300)
        counts = np.bincount(idx, minlength=300).astype(float)
        assert auc(counts) == pytest.approx(roc_auc_score(labels[idx], scores[idx]), abs=1e-12)


def _reference_bootstrap(y: np.ndarray, ours: np.ndarray, theirs: np.ndarray, n: int) -> list[float]:
    """The single-split benchmark's bootstrap (before K splits), to show one draw reproduces it."""
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(roc_auc_score(y[idx], ours[idx]) - roc_auc_score(y[idx], theirs[idx]))
    return [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975)), float(np.mean(diffs))]


def test_one_draw_is_the_plain_paired_bootstrap() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 250)
    ours, theirs = rng.random(250) + 0.5 * y, rng.random(250) + 0.3 * y
    ids = np.array([f"u{i}" for i in range(250)], dtype=object)
    got = paired_bootstrap_auc_diff([PairedDraw(ids, y, ours, theirs)], n=200)
    low, high, mean = _reference_bootstrap(y, ours, theirs, 200)
    assert got["ci95"] == pytest.approx([low, high], abs=1e-12)
    assert got["mean"] == pytest.approx(mean, abs=1e-12)
    assert got["estimate"] == pytest.approx(roc_auc_score(y, ours) - roc_auc_score(y, theirs))


def test_bootstrap_known_answers_per_draw_and_pooled() -> None:
    y = np.array([0, 1] * 20)
    ids = np.array([f"u{i}" for i in range(40)], dtype=object)
    perfect, inverted = y + 0.01 * np.arange(40), -y.astype(float)
    same = PairedDraw(ids, y, perfect, perfect)
    better = PairedDraw(ids[::-1].copy(), y[::-1].copy(), perfect[::-1].copy(), inverted[::-1].copy())
    assert paired_bootstrap_auc_diff([same], n=100)["ci95"] == [0.0, 0.0]
    one = paired_bootstrap_auc_diff([better], n=100)
    assert one["ci95"] == [1.0, 1.0] and one["p_ours_not_better"] == 0.0
    # Two draws over the same customers: every resample averages 0 and 1.
    pooled = paired_bootstrap_auc_diff([same, better], n=100)
    assert pooled["ci95"] == [0.5, 0.5] and pooled["estimate"] == 0.5 and pooled["splits"] == 2


# ---- aggregation and the results file ---------------------------------------------------------


def _outcome(seed: int, aucs: dict[str, float], ece: float, rng: np.random.Generator) -> SplitOutcome:
    """A split draw with given test AUCs per method (other metrics derived) and random test scores."""
    n = 120
    labels = rng.integers(0, 2, n)
    scores = {name: np.clip(rng.random(n) + (auc - 0.5) * labels, 0, 1) for name, auc in aucs.items()}
    methods = {
        name: {m: auc if m == "roc_auc" else (ece if m == "ece" else 0.5) for m in baselines.METRICS}
        for name, auc in aucs.items()
    }
    outcome = SplitOutcome(
        seed=seed,
        user_ids=np.array([f"u{(i + seed) % 150}" for i in range(n)], dtype=object),
        labels=labels,
        test_scores=scores,
        methods=methods,
        best_baseline="logistic_rfm",
        auc_diff={
            "baseline": "logistic_rfm",
            "estimate": 0.0,
            "ci95": [-0.01, 0.01],
            "significantly_worse": False,
        },
        model={"model_version": f"v{seed}", "epochs_trained": 3},
        lightgbm_params={"num_leaves": 4},
    )
    return outcome


def _splits(k: int) -> list[SplitOutcome]:
    rng = np.random.default_rng(3)
    table = [(0.78, 0.77, 0.70, 0.01), (0.80, 0.79, 0.72, 0.03), (0.82, 0.78, 0.71, 0.02)]
    return [
        _outcome(42 + i, {OURS: o, "logistic_rfm": lr, "recency_rule": rr}, ece, rng)
        for i, (o, lr, rr, ece) in enumerate(table[:k])
    ]


def test_mean_sd_and_worst_draw_over_splits() -> None:
    summary = quality.summarize_methods(_splits(3))
    ours = summary[OURS]
    assert ours["roc_auc_mean"] == pytest.approx(0.80)
    assert ours["roc_auc_sd"] == pytest.approx(0.02)  # sample sd of 0.78, 0.80, 0.82
    assert ours["ece_max"] == 0.03 and ours["ece_mean"] == pytest.approx(0.02)
    assert ours["roc_auc_min"] == 0.78 and ours["per_split"]["roc_auc"] == [0.78, 0.80, 0.82]
    assert quality.summarize_methods(_splits(1))[OURS]["roc_auc_sd"] is None  # one draw: no spread


def _protocol_block(seeds: list[int]) -> dict:
    return {
        **Protocol(as_of="1997-10-01", horizon_weeks=39).to_dict(),
        "weeks": 39,
        "split_seeds": seeds,
        "holdout_period": "1997-10-01..1998-06-30",
        "churn_rate": 0.7,
        "customers": {"train": 1, "validation": 1, "test": 1},
        "profile_columns": [],
    }


def test_results_file_keys_and_markdown() -> None:
    cdnow = quality.dataset_result(_protocol_block([42, 43, 44]), _splits(3), 1.0)
    tafeng = quality.dataset_result(_protocol_block([42, 43]), _splits(2), 1.0)
    result = json.loads(json.dumps(quality.build_result({"cdnow": cdnow, "tafeng": tafeng}, 2.0)))
    # The single-split keys: CDNOW's first draw, the protocol's own split.
    assert set(result["methods"][OURS]) >= {"roc_auc", "log_loss", "ece"}
    assert result["methods"][OURS]["roc_auc"] == 0.78 and result["top_level_from"]["split_seed"] == 42
    assert {"protocol", "best_baseline", "auc_diff_vs_best_baseline", "model", "lightgbm_params"} <= set(
        result
    )
    for name in ("cdnow", "tafeng"):
        entry = result["datasets"][name]["methods"][OURS]
        assert {"roc_auc_mean", "roc_auc_sd", "log_loss_mean", "ece_max"} <= set(entry)
        assert set(entry["auc_diff_vs_best_baseline_pooled"]) >= {"estimate", "ci95"}
    comparison = result["datasets"]["cdnow"]["auc_diff_vs_best_baseline"]
    assert comparison["baseline"] == "logistic_rfm" and comparison["pooled"]["splits"] == 3
    assert [s["seed"] for s in comparison["per_split"]] == [42, 43, 44]
    markdown = quality.render_markdown(result)
    assert "## cdnow" in markdown and "## tafeng" in markdown
    assert f"| {OURS} | 0.8000 ± 0.0200 |" in markdown
    # Without CDNOW the single-split keys would describe another dataset: they are left out.
    assert "methods" not in quality.build_result({"tafeng": tafeng}, 1.0)


# ---- datasets, protocols, split draws -------------------------------------------------------------


def _channel(tmp_path: Path, source: EventSource) -> Path:
    directory = tmp_path / "shop"
    directory.mkdir()
    source.events.to_csv(directory / "events.csv", index=False)
    return directory


def test_a_directory_gets_train_pys_defaults_and_overrides(
    tmp_path: Path, synthetic_source: EventSource
) -> None:
    directory = _channel(tmp_path, synthetic_source)
    run = quality.resolve_dataset(str(directory), None, None, None)
    assert run.key == "dir:shop" and run.train_args == ("--train", str(directory)) and run.weeks == 39
    assert quality.default_out([run]) == Path("artifacts/quality")  # never the published table
    last = pd.Timestamp(synthetic_source.events["timestamp"].max()).normalize() + pd.Timedelta(days=1)
    assert pd.Timestamp(run.protocol.as_of) == last - pd.Timedelta(weeks=39)
    run = quality.resolve_dataset(str(directory), AS_OF, "8", "13")
    assert (run.protocol.as_of, run.protocol.horizon_weeks, run.weeks) == (AS_OF, 8, 13)
    with pytest.raises(EventLogError, match="does not fit"):
        quality.resolve_dataset(str(directory), "2025-06-01", "8", None)


def test_training_refuses_a_label_horizon_that_runs_past_the_data(tmp_path: Path, synthetic_source) -> None:
    """Customers would be labelled churned for lack of data: train.py refuses, as the benchmark does."""
    from training import train

    directory = _channel(tmp_path, synthetic_source)
    last = pd.Timestamp(synthetic_source.events["timestamp"].max()).normalize()
    too_late = (last - pd.Timedelta(weeks=2)).date().isoformat()
    args = train.parse_args(["--train", str(directory), "--as-of", too_late, "--horizon-weeks", "4"])
    with pytest.raises(EventLogError, match="does not fit"):
        train.load_training_data(args)


def test_split_draws_seeds_model_dirs_and_train_arguments(synthetic_source: EventSource) -> None:
    run = DatasetRun("tafeng", ("--dataset", "tafeng"), synthetic_source, Protocol("2001-02-01", 4), 13)
    assert quality.split_seeds(42, 3) == [42, 43, 44]
    base = Path("m")
    assert quality.model_dir_for(base, run, 42, single=True) == base
    assert quality.model_dir_for(base, run, 43, single=False) == base / "tafeng-seed43"
    argv = quality.train_args_for(run, replace(run.protocol, seed=43), base, "--epochs 5")
    assert argv[:2] == ["--dataset", "tafeng"] and argv[-3:] == ["--no-baselines", "--epochs", "5"]
    pairs = dict(zip(argv[2:-3:2], argv[3:-3:2], strict=True))
    assert pairs["--seed"] == "43" and pairs["--horizon-weeks"] == "4" and pairs["--weeks"] == "13"
    assert pairs["--as-of"] == "2001-02-01"


def test_per_dataset_overrides() -> None:
    assert quality._per_dataset(None, 2, "--as-of") == [None, None]
    assert quality._per_dataset("8", 2, "--horizon-weeks") == ["8", "8"]
    assert quality._per_dataset(",2001-01-15", 2, "--as-of") == [None, "2001-01-15"]
    with pytest.raises(SystemExit):
        quality._per_dataset("1,2,3", 2, "--weeks")
