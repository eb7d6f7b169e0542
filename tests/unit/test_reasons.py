"""Occlusion reasons: the group that moves the score is the one reported."""

import numpy as np

from churnguard.reasons import SEQUENCE_GROUP, OcclusionExplainer

GROUPS = ("recency", "recency", "frequency", "spend")


def transparent_model(sequence, static):
    """A logistic model we can reason about: weights 1 on every static input and the sequence sum."""
    z = static.sum(axis=1) + 0.1 * sequence.sum(axis=(1, 2))
    return 1 / (1 + np.exp(-z))


def explain(sequence, static):
    explainer = OcclusionExplainer(GROUPS, np.zeros(4), np.zeros(sequence.shape[1:]))
    seq, sta = explainer.occluded_inputs(sequence, static)
    assert seq.shape == ((len(explainer.groups) + 1) * len(sequence), *sequence.shape[1:])
    contributions = explainer.contributions(transparent_model(seq, sta), len(sequence))
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
