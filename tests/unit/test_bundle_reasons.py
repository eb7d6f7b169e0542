"""A model directory's reasons as the bundle loads them: the reasons model when metadata.json names
one (verified like the served model), occlusion for directories written before it, and what
``GET /v1/model`` says about them."""

import json

import numpy as np
import pytest

from churnguard.api import model_summary
from churnguard.bundle import ModelBundle
from churnguard.champion import validate_challenger
from churnguard.features import build_raw_features
from churnguard.model_metadata import REASONS_MODEL
from churnguard.reasons import EFFICIENCY_TOLERANCE, OcclusionExplainer, ShapleyExplainer
from churnguard.scorer import ModelLoadError
from churnguard.scoring import ReasonsFor, score_customers
from churnguard.tabular import customer_events
from tests.helpers import FIXTURE_MODEL


def fixture_files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in FIXTURE_MODEL.iterdir() if p.is_file()}


def with_metadata(files: dict[str, bytes], change) -> dict[str, bytes]:
    metadata = json.loads(files["metadata.json"])
    change(metadata)
    return {**files, "metadata.json": json.dumps(metadata).encode()}


@pytest.fixture(scope="module")
def scored():
    from churnguard.datasets import generate_synthetic_events

    bundle = ModelBundle.from_files(fixture_files())
    events = generate_synthetic_events(300, seed=8, weeks=60)
    customers = customer_events(events)
    as_of = events["timestamp"].max().timestamp() + 86_400
    result = score_customers(bundle, customers.user_ids, customers.arrays, as_of, reasons_for=ReasonsFor.ALL)
    return bundle, customers, as_of, result


def test_a_directory_with_a_reasons_model_explains_with_exact_shapley_values(scored):
    bundle, customers, as_of, result = scored
    assert isinstance(bundle.explainer, ShapleyExplainer)
    sequence, static = bundle.spec.transform(
        build_raw_features(
            customers.arrays, as_of, event_types=bundle.spec.event_types, config=bundle.spec.config
        )
    )
    probabilities, contributions = bundle.explainer.explain(sequence, static)
    reference = bundle.metadata.reason_reference
    gap = contributions.sum(axis=1) - (probabilities - reference.probability)
    assert np.abs(gap).max() <= EFFICIENCY_TOLERANCE
    # with reasons or without, a customer gets the same probability
    np.testing.assert_array_equal(result.churn_probability, bundle.scorer.predict(sequence, static))
    above = probabilities > reference.probability + 1e-3
    assert above.any() and all(result.reasons[i] for i in np.flatnonzero(above))  # always a positive reason


def test_model_summary_names_the_method_and_the_reference(scored):
    bundle = scored[0]
    reasons = model_summary(bundle)["reasons"]
    assert reasons["method"] == "exact_group_shapley" and reasons["adds_up"] is True
    assert reasons["groups"] == list(bundle.explainer.groups)
    assert reasons["reference"]["probability"] == bundle.metadata.reason_reference.probability
    assert "retained training customer" in reasons["reference"]["description"]


def test_a_directory_from_before_the_reasons_model_still_loads_with_occlusion_reasons():
    files = with_metadata(fixture_files(), lambda m: m.pop("reason_reference"))
    files.pop(REASONS_MODEL)
    bundle = ModelBundle.from_files(files)
    assert isinstance(bundle.explainer, OcclusionExplainer)
    summary = model_summary(bundle)["reasons"]
    assert summary["method"] == "occlusion_median" and summary["adds_up"] is False


def test_a_named_reasons_model_that_is_missing_is_refused():
    files = fixture_files()
    files.pop(REASONS_MODEL)
    with pytest.raises(ModelLoadError, match=r"missing \['model_reasons.tflite'\]"):
        ModelBundle.from_files(files)


def test_a_tampered_reasons_model_is_refused_by_its_hash():
    files = fixture_files()
    files[REASONS_MODEL] = files[REASONS_MODEL][:-8] + b"\0" * 8
    with pytest.raises(ModelLoadError, match=r"model_reasons\.tflite: sha256"):
        ModelBundle.from_files(files)


def test_reason_groups_that_are_not_the_feature_specs_are_refused():
    files = with_metadata(fixture_files(), lambda m: m["reason_reference"]["groups"].reverse())
    with pytest.raises(ModelLoadError, match=r"reason_reference\.groups"):
        ModelBundle.from_files(files)


def test_the_gate_refuses_a_challenger_whose_reasons_do_not_add_up():
    def miss(metadata):
        metadata["reason_reference"]["efficiency_max_abs_error"] = 1e-3

    with pytest.raises(ModelLoadError, match="reasons miss p - p_reference"):
        validate_challenger(with_metadata(fixture_files(), miss))
    assert validate_challenger(fixture_files()).explainer.method == "exact_group_shapley"
