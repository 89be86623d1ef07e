"""Warnings a run gives about its own adaptation, from hand-made curves and predictions."""

import numpy as np

from dann_jax import diagnose


def _curves(accuracies):
    return [{"step": 100 * (i + 1), "train_domain_accuracy": a} for i, a in enumerate(accuracies)]


def test_a_discriminator_near_one_in_the_second_half_is_no_alignment():
    message = diagnose.alignment(_curves([0.7, 0.9, 0.99, 1.0, 0.999]), lambda2=1.0)
    assert "did not align" in message and "0.996" in message and "--lambda2" in message
    # Near 1 early, aligned later: fine. No adversary (lambda2 0): nothing to say.
    assert diagnose.alignment(_curves([1.0, 1.0, 0.8, 0.7, 0.6]), lambda2=1.0) is None
    assert diagnose.alignment(_curves([1.0] * 5), lambda2=0.0) is None
    assert diagnose.alignment([], lambda2=1.0) is None


def _logits(predicted, k):
    z = np.zeros((len(predicted), k))
    z[np.arange(len(predicted)), predicted] = 5.0
    return z


def test_target_predictions_crowding_one_class_are_a_collapse():
    names = ("a", "b", "c", "d", "e")
    source = np.arange(500) % 5  # balanced: the largest class is 20%
    crowded = np.concatenate([np.zeros(388, int), np.arange(112) % 5])
    message = diagnose.collapse(_logits(crowded, 5), source, names)
    assert "411 of 500" in message and "'a'" in message and "20%" in message
    assert diagnose.collapse(_logits(np.arange(500) % 5, 5), source, names) is None
    # Few classes predicted at all, though none takes over half.
    three = np.arange(500) % 2 + 1
    assert "3 of 5 classes are never predicted" in diagnose.collapse(
        _logits(three, 5), source, names
    )
    # A source that is itself mostly one class allows as much on the target.
    skewed = np.concatenate([np.zeros(400, int), np.arange(100) % 5])
    assert diagnose.collapse(_logits(crowded, 5), skewed, names) is None


def test_a_proxy_a_distance_that_did_not_fall_is_said():
    bad = {"proxy_a_distance": {"dann_features": 2.0, "source_only_features": 1.92}}
    assert "not below" in diagnose.pad_not_lower(bad, "dann")
    good = {"proxy_a_distance": {"dann_features": 1.2, "source_only_features": 1.9}}
    assert diagnose.pad_not_lower(good, "dann") is None
    assert diagnose.pad_not_lower(None, "dann") is None
    kinds = [
        w["kind"]
        for w in diagnose.diagnose(
            _curves([1.0] * 4),
            1.0,
            _logits(np.zeros(50, int), 5),
            np.arange(50) % 5,
            ("a", "b", "c", "d", "e"),
            bad,
        )
    ]
    assert kinds == ["no_alignment", "collapse", "pad_not_lower"]
