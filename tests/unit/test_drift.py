"""churnguard.drift: PSI math, bins, the reference file, counts, and the bundle loading it."""

import datetime as dt
import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from churnguard.bundle import ModelBundle
from churnguard.drift import (
    EPSILON,
    MIN_CUSTOMERS,
    Binned,
    DriftCounts,
    DriftReference,
    DriftReferenceError,
    compute_psi,
    drift_summary,
    in_population,
    monitored_columns,
    monitored_values,
    psi,
)
from churnguard.features import EventArrays, build_raw_features
from churnguard.model_metadata import DRIFT_REFERENCE
from churnguard.reasons import SEQUENCE_GROUP
from churnguard.scorer import ModelLoadError
from tests.helpers import FIXTURE_MODEL, load_handler


def test_identical_distributions_have_zero_psi():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    assert psi(p, p) == 0.0
    assert psi(p, p * 1000) == 0.0  # counts or proportions alike
    values = np.random.default_rng(1).lognormal(size=5000)
    binned = Binned.fit(values)
    assert psi(binned.proportions, binned.counts(values)) == pytest.approx(0.0, abs=1e-12)


def test_psi_of_a_hand_computed_example():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.25 * math.log(3), abs=1e-12)
    assert psi(np.array([1, 1]), np.array([1, 3])) == pytest.approx(0.274653, abs=1e-6)


def test_an_empty_bin_counts_as_epsilon_and_bins_empty_on_both_sides_add_nothing():
    expected, actual = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.5, 0.4, 0.1, 0.0])
    by_hand = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - EPSILON) * math.log(0.1 / EPSILON)
    assert psi(expected, actual) == pytest.approx(by_hand, abs=1e-12)
    assert psi(expected, np.zeros(4)) > 0  # nothing counted: every bin at epsilon, finite
    with pytest.raises(ValueError, match="bins"):
        psi(np.ones(3), np.ones(4))


def test_bins_are_deciles_right_closed_with_a_missing_bin():
    values = np.arange(1, 101, dtype=float)
    binned = Binned.fit(values)
    assert len(binned.edges) == 9 and binned.n_bins == 11
    assert binned.proportions[:10] == pytest.approx([0.1] * 10) and binned.proportions[-1] == 0.0
    counts = binned.counts(np.array([binned.edges[0], binned.edges[0] + 1e-9, -1e9, 1e9, np.nan]))
    assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # an edge belongs to the bin below it
    # zero-inflated: the repeated edge is dropped, and every zero is one bin
    zeros = Binned.fit(np.r_[np.zeros(70), np.arange(1, 31)])
    assert zeros.proportions[0] == pytest.approx(0.7) and len(zeros.edges) == len(set(zeros.edges))


def test_missing_values_have_their_own_bin():
    rng = np.random.default_rng(2)
    reference_values = rng.normal(size=4000)
    reference_values[:400] = np.nan
    binned = Binned.fit(reference_values)
    assert binned.proportions[-1] == pytest.approx(0.1)
    same = rng.normal(size=4000)
    same[:400] = np.nan
    more_missing = same.copy()
    more_missing[:2000] = np.nan
    assert psi(binned.proportions, binned.counts(same)) < 0.02
    assert psi(binned.proportions, binned.counts(more_missing)) > 0.5
    assert Binned.fit(np.full(10, np.nan)).proportions.tolist() == [0.0, 1.0]  # never present


def columns_and_values(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    columns = (("a", "g1"), ("b", "g1"), ("c", "g2"))
    values = np.column_stack([rng.exponential(size=n), rng.normal(size=n), rng.integers(0, 4, n)])
    return columns, values.astype(float), rng.uniform(size=n)


def test_group_psi_is_the_largest_psi_of_its_features():
    columns, values, scores = columns_and_values()
    reference = DriftReference.build(scores, values, columns)
    shifted = values.copy()
    shifted[:, 1] += 1.0  # only b moves
    counts = reference.counts()
    counts.add(reference, scores, shifted)
    result = compute_psi(reference, counts)
    assert result.feature_psi["a"] == pytest.approx(0.0, abs=1e-12)
    assert result.group_psi == {"g1": result.feature_psi["b"], "g2": pytest.approx(0.0, abs=1e-12)}
    assert result.group_psi["g1"] > 0.5 and result.score_psi == pytest.approx(0.0, abs=1e-12)


def test_counts_added_by_chunk_and_merged_give_the_psi_of_the_whole():
    columns, values, scores = columns_and_values()
    reference = DriftReference.build(scores[:2000], values[:2000], columns)
    whole, chunked, other = reference.counts(), reference.counts(), reference.counts()
    whole.add(reference, scores[2000:], values[2000:])
    for start in range(2000, 2600, 250):
        stop = min(start + 250, 2600)
        chunked.add(reference, scores[start:stop], values[start:stop])
    other.add(reference, scores[2600:], values[2600:])
    merged = DriftCounts.from_dict(json.loads(json.dumps(chunked.merge(other).to_dict())))
    assert merged.customers == whole.customers == 1000
    assert compute_psi(reference, merged) == compute_psi(reference, whole)


def test_the_reference_survives_its_json_and_malformed_ones_are_refused():
    columns, values, scores = columns_and_values()
    values[:10, 0] = np.nan
    reference = DriftReference.build(scores, values, columns)
    again = DriftReference.from_json(reference.to_json())
    assert again.columns == columns and again.customers == len(scores) and again.groups == ("g1", "g2")
    for mine, theirs in zip(
        (reference.score, *[f.binned for f in reference.features]),
        (again.score, *[f.binned for f in again.features]),
        strict=True,
    ):
        assert np.array_equal(mine.edges, theirs.edges) and np.array_equal(
            mine.proportions, theirs.proportions
        )
    data = json.loads(reference.to_json())
    assert data["format"] == "churnguard-drift-reference" and data["epsilon"] == EPSILON
    broken = [
        b"not json",
        json.dumps({**data, "format": "other"}),
        json.dumps({**data, "format_version": 2}),
        json.dumps({**data, "score": {"edges": [0.5, 0.1], "proportions": [0.2, 0.3, 0.5, 0.0]}}),
        json.dumps({**data, "score": {"edges": [0.5], "proportions": [0.5, 0.4, 0.0]}}),
        json.dumps({**data, "score": {"edges": [0.5], "proportions": [0.5, 0.5]}}),
        json.dumps({**data, "features": [{"name": "a"}]}),
    ]
    for text in broken:
        with pytest.raises(DriftReferenceError):
            DriftReference.from_json(text)


def test_the_summary_is_null_without_a_reference_or_with_too_few_customers():
    columns, values, scores = columns_and_values()
    reference = DriftReference.build(scores, values, columns)
    assert drift_summary(None, None) == {
        "status": "no_reference",
        "reference": None,
        "customers": 0,
        "outside_population": 0,
        "min_customers": MIN_CUSTOMERS,
        "score_psi": None,
        "group_psi": {},
    }
    few = reference.counts()
    few.add(reference, scores[:50], values[:50])
    assert drift_summary(reference, few)["status"] == "too_few_customers"
    assert drift_summary(reference, few)["score_psi"] is None
    assert drift_summary(reference, few, min_customers=10)["status"] == "ok"
    enough = reference.counts()
    enough.add(reference, scores, values)
    summary = drift_summary(reference, enough)
    assert summary["status"] == "ok" and summary["reference"] == "model"
    assert summary["score_psi"] == 0.0 and set(summary["group_psi"]) == {"g1", "g2"}


@pytest.fixture(scope="module")
def bundle():
    return ModelBundle.from_directory(FIXTURE_MODEL)


def raw_features(bundle, n_buyers=5, n_browsers=2):
    """Customers 0..n_buyers-1 ordered, the others only viewed (not in the model's population)."""
    users, times, types, amounts = [], [], [], []
    for u in range(n_buyers + n_browsers):
        for week in range(1, 4 + u):
            users.append(u)
            times.append(dt.datetime(2024, 9, 1, tzinfo=dt.UTC).timestamp() - week * 7 * 86400)
            types.append("order" if u < n_buyers else "view")
            amounts.append(10.0 * (u + 1) if u < n_buyers else 0.0)
    arrays = EventArrays(
        user_index=np.array(users),
        n_users=n_buyers + n_browsers,
        timestamp_s=np.array(times),
        event_type=np.array(types, dtype=object),
        amount=np.array(amounts),
        quantity=np.ones(len(users)),
    )
    as_of = dt.datetime(2024, 9, 1, tzinfo=dt.UTC).timestamp()
    spec = bundle.spec
    return build_raw_features(arrays, as_of, event_types=spec.event_types, config=spec.config)


def test_monitored_features_are_the_model_inputs_by_group_and_the_weekly_summaries(bundle):
    spec = bundle.spec
    columns = monitored_columns(spec)
    assert [g for _, g in columns[: spec.n_static]] == list(spec.static_groups)
    assert columns[-2:] == (
        (f"{SEQUENCE_GROUP}:events", SEQUENCE_GROUP),
        (f"{SEQUENCE_GROUP}:active_weeks", SEQUENCE_GROUP),
    )
    raw = raw_features(bundle)
    values = monitored_values(spec, raw)
    assert values.shape == (7, len(columns))
    core = len(spec.static_names)
    np.testing.assert_array_equal(values[:, :core], raw.static)  # raw values, NaN kept
    assert np.isnan(values[5:, spec.static_names.index("recency_days")]).all()  # no order: undefined
    assert values[:, -2].tolist() == [3, 4, 5, 6, 7, 8, 9]  # events in the window
    assert values[:, -1].tolist() == [3, 4, 5, 6, 7, 8, 9]  # one per week
    assert in_population(spec, raw).tolist() == [True] * 5 + [False] * 2


def test_counts_leave_customers_without_orders_out(bundle):
    raw = raw_features(bundle)
    spec = bundle.spec
    columns = monitored_columns(spec)
    rng = np.random.default_rng(0)
    reference = DriftReference.build(rng.uniform(size=50), rng.normal(size=(50, len(columns))), columns)
    counts = reference.counts()
    counts.add_scored(reference, spec, raw, np.linspace(0, 1, 7))
    assert (counts.customers, counts.outside_population) == (5, 2)
    assert counts.score.sum() == 5 and all(c.sum() == 5 for c in counts.features)


def with_reference(tmp_path, bundle, reference_text=None):
    from training.drift_reference import add_to_model_directory

    target = tmp_path / "model"
    shutil.copytree(FIXTURE_MODEL, target)
    columns = monitored_columns(bundle.spec)
    rng = np.random.default_rng(0)
    add_to_model_directory(
        target, DriftReference.build(rng.uniform(size=300), rng.normal(size=(300, len(columns))), columns)
    )
    if reference_text is not None:
        (target / DRIFT_REFERENCE).write_text(reference_text)
        metadata = json.loads((target / "metadata.json").read_text())
        metadata["files"][DRIFT_REFERENCE]["sha256"] = hashlib.sha256(reference_text.encode()).hexdigest()
        (target / "metadata.json").write_text(json.dumps(metadata))
    return target


def test_a_model_without_a_reference_loads_and_one_with_it_is_verified(tmp_path, bundle):
    assert bundle.drift_reference is not None  # the fixture model has one (training writes it)
    older = tmp_path / "older"  # a model directory from before drift references
    shutil.copytree(FIXTURE_MODEL, older)
    (older / DRIFT_REFERENCE).unlink()
    metadata = json.loads((older / "metadata.json").read_text())
    del metadata["files"][DRIFT_REFERENCE]
    (older / "metadata.json").write_text(json.dumps(metadata))
    assert ModelBundle.from_directory(older).drift_reference is None
    target = with_reference(tmp_path, bundle)
    loaded = ModelBundle.from_directory(target)
    assert loaded.drift_reference is not None and loaded.drift_reference.columns == monitored_columns(
        bundle.spec
    )
    (target / DRIFT_REFERENCE).write_text((target / DRIFT_REFERENCE).read_text().replace("0", "1", 1))
    with pytest.raises(ModelLoadError, match=r"drift_reference\.json: sha256"):
        ModelBundle.from_directory(target)
    (target / DRIFT_REFERENCE).unlink()
    with pytest.raises(ModelLoadError, match=r"missing \['drift_reference.json'\]"):
        ModelBundle.from_directory(target)


def test_a_reference_of_other_features_is_refused(tmp_path, bundle):
    other = DriftReference.build(np.linspace(0, 1, 10), np.zeros((10, 1)), (("x", "g"),)).to_json()
    with pytest.raises(ModelLoadError, match=r"drift_reference\.json refused: describes features"):
        ModelBundle.from_directory(with_reference(tmp_path, bundle, other))


def test_training_lists_the_reference_in_metadata_files():
    from training.train import _files_section

    exports = type("E", (), {"float32": None, "dynamic_range": None})()
    reasons = type("R", (), {"model": None})()
    files = _files_section('{"spec": 1}', exports, reasons, drift_json='{"drift": 1}')
    assert files[DRIFT_REFERENCE] == {
        "sha256": hashlib.sha256(b'{"drift": 1}').hexdigest(),
        "bytes": len('{"drift": 1}'),
    }
    assert DRIFT_REFERENCE not in _files_section('{"spec": 1}', exports, reasons)


def test_an_alarm_state_change_names_the_retraining_job_after_its_time():
    handler = load_handler("retrain")
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    alarm = {
        "source": "aws.cloudwatch",
        "detail-type": "CloudWatch Alarm State Change",
        "time": "2026-11-29T01:02:03Z",
        "detail": {"alarmName": "ScoreDriftAlarm", "state": {"value": "ALARM"}},
    }
    assert handler.job_name_for(alarm, now) == "churnguard-20261129-010203"
    assert handler.job_name_for({"scheduled_time": "2026-11-29T05:00:00Z", **alarm}, now).endswith("050000")
    assert handler.job_name_for({}, now) == "churnguard-20300101-000000"


def test_the_batch_summary_carries_the_drift_and_none_when_nothing_was_scored():
    from churnguard.batch import BatchSummary

    summary = BatchSummary(source="s", drift={"status": "ok", "score_psi": 0.3})
    assert json.loads(summary.to_json())["drift"] == {"status": "ok", "score_psi": 0.3}
    assert json.loads(BatchSummary(source="s").to_json())["drift"] is None


def test_a_published_model_carries_its_reference_to_the_serving_functions(tmp_path, bundle):
    from churnguard.model_store import S3PointerModelProvider, publish
    from tests.unit.fakes import MemoryObjectStore, MemoryParameterStore

    store, parameters = MemoryObjectStore(), MemoryParameterStore()
    publish(
        with_reference(tmp_path, bundle), store=store, parameters=parameters, bucket="b", parameter_name="/p"
    )
    provider = S3PointerModelProvider(
        parameter_name="/p",
        store=store,
        get_parameter=lambda name, max_age: parameters.get(name),
        cache_dir=tmp_path / "cache",
    )
    served = provider.current()
    assert served.drift_reference is not None and served.drift_reference.columns == monitored_columns(
        bundle.spec
    )
