"""Reasons: the group that moves the score is the one reported (occlusion, for model directories
without a reasons model), and the Shapley explainer reads the reasons model's columns as documented.
The reasons model itself (efficiency, exactness, ignored groups, CDNOW) is proven in
tests/integration/test_reasons_model.py."""

import numpy as np
import pytest

from churnguard.reasons import SEQUENCE_GROUP, OcclusionExplainer, ShapleyExplainer

GROUPS = ("recency", "recency", "frequency", "spend")


def transparent_model(sequence, static):
    """A logistic model we can reason about: weights 1 on every static input and the sequence sum."""
    z = static.sum(axis=1) + 0.1 * sequence.sum(axis=(1, 2))
    return 1 / (1 + np.exp(-z))


class FunctionScorer:
    """A Scorer (churnguard.reasons.Scorer) around a numpy function of the model inputs."""

    def __init__(self, function, output_width=1):
        self.function, self.output_width, self.calls = function, output_width, []

    def predict_rows(self, sequence, static):
        self.calls.append(len(sequence))
        return np.asarray(self.function(sequence, static), np.float32).reshape(len(sequence), -1)

    def predict(self, sequence, static):
        return self.predict_rows(sequence, static).reshape(-1)


def explain(sequence, static):
    scorer = FunctionScorer(transparent_model)
    explainer = OcclusionExplainer(GROUPS, np.zeros(4), np.zeros(sequence.shape[1:]), scorer)
    probabilities, contributions = explainer.explain(sequence, static)
    assert scorer.calls == [(len(explainer.groups) + 1) * len(sequence)]  # one call for every variant
    np.testing.assert_array_equal(probabilities, transparent_model(sequence, static).astype(np.float32))
    return explainer, contributions


def test_only_the_deviating_group_is_a_reason_and_its_contribution_is_exact():
    sequence = np.zeros((2, 5, 3), np.float32)
    static = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]], np.float32)
    explainer, contributions = explain(sequence, static)
    reasons = explainer.top_reasons(contributions)
    assert [r.group for r in reasons[0]] == ["recency"]
    assert reasons[0][0].contribution == np.float32(transparent_model(sequence[:1], static[:1])[0] - 0.5)
    assert [r.group for r in reasons[1]] == ["spend"]


def test_sequence_group_and_ordering_by_contribution():
    sequence = np.ones((1, 5, 3), np.float32)  # sum 15 -> +1.5 on the logit
    static = np.array([[0.0, 0.0, 0.4, 0.0]], np.float32)
    explainer, contributions = explain(sequence, static)
    reasons = explainer.top_reasons(contributions, k=3)[0]
    assert [r.group for r in reasons] == [SEQUENCE_GROUP, "frequency"]
    assert reasons[0].contribution > reasons[1].contribution > 0


def test_groups_that_lower_the_risk_are_not_reasons():
    sequence = np.zeros((1, 5, 3), np.float32)
    static = np.array([[-1.0, 0.0, 0.0, 0.0]], np.float32)
    explainer, contributions = explain(sequence, static)
    assert explainer.top_reasons(contributions)[0] == []
    assert contributions[0, explainer.groups.index("recency")] < 0


def test_shapley_explainer_serves_column_0_and_explains_with_the_rest():
    rows = np.array([[0.8, 0.2, 0.0, 0.3], [0.1, -0.05, 0.0, -0.1]], np.float32)
    explainer = ShapleyExplainer(
        FunctionScorer(lambda q, s: rows, 4), ("recency", "spend", SEQUENCE_GROUP), 0.3
    )
    probabilities, contributions = explainer.explain(np.zeros((2, 5, 3)), np.zeros((2, 4)))
    np.testing.assert_array_equal(probabilities, rows[:, 0])
    np.testing.assert_array_equal(contributions, rows[:, 1:].astype(np.float64))
    reasons = explainer.top_reasons(contributions)
    assert [r.group for r in reasons[0]] == [SEQUENCE_GROUP, "recency"]  # the exact 0 is no reason
    assert reasons[1] == []


def test_shapley_explainer_serving_another_flavour_scores_with_it():
    rows = np.array([[0.8, 0.5]], np.float32)
    served = FunctionScorer(lambda q, s: np.array([0.79]))
    explainer = ShapleyExplainer(FunctionScorer(lambda q, s: rows, 2), (SEQUENCE_GROUP,), 0.3, served=served)
    probabilities, contributions = explainer.explain(np.zeros((1, 5, 3)), np.zeros((1, 4)))
    assert probabilities[0] == np.float32(0.79) and contributions[0, 0] == np.float32(0.5)


def test_a_reasons_model_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="outputs 3 columns for 3 groups"):
        ShapleyExplainer(FunctionScorer(lambda q, s: None, 3), ("recency", "spend", SEQUENCE_GROUP), 0.3)
