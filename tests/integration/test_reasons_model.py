"""The reasons model (training/reasons_model.py) on a model fitted to real CDNOW customers: its
contributions are the exact group Shapley values of model.tflite's probability relative to the
reference customer, they add up, an ignored group gets exactly 0, and lapsed customers are explained
by their lapse."""

import math

import keras
import numpy as np
import pytest

from churnguard.reasons import EFFICIENCY_TOLERANCE, SEQUENCE_GROUP, reason_groups
from churnguard.scorer import TFLiteScorer
from training.export import ExportError
from training.model import encoder_and_head
from training.reasons_model import choose_reference, export_reasons_model


def reference_for(data, float_model):
    x_train = data.inputs(data.train)
    p_train = TFLiteScorer(float_model.content).predict(*x_train)
    return choose_reference(
        *x_train, data.train.labels, p_train, data.train.raw.static, data.train.raw.static_names
    )


@pytest.fixture(scope="module")
def reasons(trained):
    data, model, float_model, _ = trained
    reference = reference_for(data, float_model)
    exported = export_reasons_model(
        model, data.spec.static_groups, reference, float_model.content, *data.inputs(data.test)
    )
    return data, model, float_model, reference, exported


def brute_force_shapley(scorer, groups, static_groups, sequence, static, reference):
    """Textbook Shapley over all coalitions, each coalition's inputs scored by model.tflite."""
    n_groups = len(groups)
    column_group = np.array([groups.index(g) for g in static_groups])
    values = {}
    for k in range(1 << n_groups):
        present = [(k >> g) & 1 == 1 for g in range(n_groups)]
        seq = (
            sequence
            if present[groups.index(SEQUENCE_GROUP)]
            else np.broadcast_to(reference.sequence, sequence.shape)
        )
        sta = np.where(np.array(present)[column_group][None, :], static, reference.static[None, :])
        values[k] = scorer.predict(np.ascontiguousarray(seq), sta.astype(np.float32)).astype(np.float64)
    phi = np.zeros((len(sequence), n_groups))
    for g in range(n_groups):
        for k in range(1 << n_groups):
            if (k >> g) & 1:
                continue
            size = bin(k).count("1")
            weight = math.factorial(size) * math.factorial(n_groups - size - 1) / math.factorial(n_groups)
            phi[:, g] += weight * (values[k | (1 << g)] - values[k])
    return phi


def test_contributions_are_the_exact_group_shapley_values_of_the_served_model(reasons):
    data, _, float_model, reference, exported = reasons
    sequence, static = (x[:40] for x in data.inputs(data.test))
    rows = TFLiteScorer(exported.model.content).predict_rows(sequence, static)
    expected = brute_force_shapley(
        TFLiteScorer(float_model.content),
        exported.groups,
        data.spec.static_groups,
        sequence,
        static,
        reference,
    )
    np.testing.assert_allclose(rows[:, 1:], expected, atol=1e-6)
    assert np.abs(expected).max() > 0.05  # real contributions, not all ~0


def test_contributions_add_up_to_the_probability_minus_the_reference_on_every_test_customer(reasons):
    data, _, float_model, reference, exported = reasons
    x_test = data.inputs(data.test)
    rows = TFLiteScorer(exported.model.content).predict_rows(*x_test)
    served = TFLiteScorer(float_model.content).predict(*x_test)
    np.testing.assert_array_equal(rows[:, 0], served)  # the same layers: the same number
    gap = np.abs(rows[:, 1:].astype(np.float64).sum(axis=1) - (served - reference.probability))
    assert gap.max() <= EFFICIENCY_TOLERANCE == 1e-5  # the issue asks for 1e-4
    assert exported.efficiency_max_abs_error == pytest.approx(gap.max(), abs=1e-7)


def test_the_reference_is_a_retained_training_customer_low_in_the_retained_risk_range(reasons):
    data, _, float_model, reference, _ = reasons
    x_train = data.inputs(data.train)
    matches = np.flatnonzero((x_train[1] == reference.static).all(axis=1))
    assert len(matches) >= 1 and (data.train.labels[matches] == 0).all()
    p_retained = TFLiteScorer(float_model.content).predict(*x_train)[data.train.labels == 0]
    assert np.quantile(p_retained, 0.19) <= reference.probability <= np.quantile(p_retained, 0.31)


def test_a_group_the_model_ignores_gets_exactly_zero(trained):
    data, model, _, _ = trained
    ignored = "tenure"
    blind = keras.models.clone_model(model)
    blind.set_weights(model.get_weights())
    kernel, bias = blind.get_layer("static_dense").get_weights()
    kernel[np.asarray(data.spec.static_groups) == ignored] = 0.0  # the tenure inputs reach nothing
    blind.get_layer("static_dense").set_weights([kernel, bias])
    from training.export import export_all

    float_model = export_all(blind, *data.inputs(data.test)).float32
    exported = export_reasons_model(
        blind,
        data.spec.static_groups,
        reference_for(data, float_model),
        float_model.content,
        *data.inputs(data.test),
    )
    rows = TFLiteScorer(exported.model.content).predict_rows(*data.inputs(data.test))
    g = exported.groups.index(ignored)
    assert (rows[:, 1 + g] == 0.0).all()
    others = np.delete(rows[:, 1:], g, axis=1)
    assert (np.abs(others).max(axis=0) > 1e-3).all()


def test_on_the_published_cdnow_model_lapsed_high_risk_customers_are_explained_by_their_lapse():
    """The model `make train` / the demo serve (trained here only when the code changed since), on
    its own CDNOW test split: every high-risk customer whose only order day is half a year or more
    before the cutoff has recency or the weekly activity pattern as the top reason."""
    from churnguard.bundle import ModelBundle
    from infra.local_stack import ensure_model
    from training.data import Protocol, load_cdnow_source, prepare

    bundle = ModelBundle.from_directory(ensure_model()[0])
    protocol = bundle.metadata.protocol
    data = prepare(
        load_cdnow_source(),
        Protocol(
            protocol.as_of,
            horizon_weeks=protocol.horizon_weeks,
            test_fraction=protocol.test_fraction,
            validation_fraction=protocol.validation_fraction,
            seed=protocol.seed,
        ),
        config=bundle.spec.config,
    )
    probabilities, contributions = bundle.explainer.explain(*data.inputs(data.test))
    names, raw = list(data.test.raw.static_names), data.test.raw.static
    lapsed = (
        (probabilities >= bundle.thresholds.high)
        & (raw[:, names.index("n_order_days")] == 1)
        & (raw[:, names.index("recency_days")] >= 182)
    )
    assert lapsed.sum() >= 1000  # 2,842 of the 4,714 test customers
    top = np.asarray(bundle.explainer.groups)[np.argmax(contributions[lapsed], axis=1)]
    assert set(top) <= {"recency", SEQUENCE_GROUP}, dict(
        zip(*np.unique(top, return_counts=True), strict=True)
    )
    gap = contributions.sum(axis=1) - (probabilities - bundle.metadata.reason_reference.probability)
    assert np.abs(gap).max() <= EFFICIENCY_TOLERANCE


def test_the_encoder_and_head_split_is_the_serving_model(trained):
    data, model, _, _ = trained
    sequence, static = (x[:64] for x in data.inputs(data.test))
    encode, head = encoder_and_head(model)
    np.testing.assert_allclose(
        np.asarray(head(encode(sequence), static)).ravel(),
        np.asarray(model([sequence, static], training=False)).ravel(),
        atol=1e-6,
    )


def test_an_export_whose_contributions_do_not_add_up_is_refused(reasons):
    data, model, float_model, reference, _ = reasons
    # a reference probability that is not the reference's: p - p_reference cannot be met
    shifted = type(reference)(**{**reference.__dict__, "probability": reference.probability + 1e-3})
    with pytest.raises(ExportError, match="contributions miss p - p_reference"):
        export_reasons_model(
            model, data.spec.static_groups, shifted, float_model.content, *data.inputs(data.test)
        )


def test_reason_groups_are_the_static_groups_in_first_use_order_then_the_sequence(trained):
    data = trained[0]
    groups = reason_groups(data.spec.static_groups)
    assert groups[-1] == SEQUENCE_GROUP and len(groups) == len(set(groups))
    assert list(groups[:-1]) == list(dict.fromkeys(data.spec.static_groups))
