"""Label-free validators on constructed cases whose right answer is known."""

import math

import numpy as np
import pytest

from dann_jax import analysis, validators
from tests.helpers import heavy_imports

C = 10
BIG = 50.0  # logit margin that makes a softmax one-hot to float64 precision


def one_hot_logits(classes, num_classes=C, margin=BIG):
    """Logits whose softmax is (numerically) one-hot at `classes`."""
    classes = np.asarray(classes)
    return margin * np.eye(num_classes)[classes]


def test_import_is_cheap():
    assert heavy_imports("dann_jax.validators") == []


def test_moved_functions_are_re_exported_by_analysis():
    for name in ("deep_embedded_validation", "dev_risk_from_weights", "selection_agreement"):
        assert getattr(analysis, name) is getattr(validators, name)
    assert analysis.DEV_C_GRID == validators.DEV_C_GRID


def test_registry_directions_and_preference():
    assert set(validators.VALIDATORS) == {
        "dev", "reverse_validation", "reverse_dann", "information_maximization",
        "mean_entropy", "snd", "bnm", "source_accuracy",
    }  # fmt: skip
    lower = {n for n, v in validators.VALIDATORS.items() if v.lower_is_better}
    assert lower == {"dev", "mean_entropy"}
    assert validators.preference("dev", 0.3) == -0.3
    assert validators.preference("snd", 0.3) == 0.3
    np.testing.assert_array_equal(validators.preference("mean_entropy", [1.0, 2.0]), [-1.0, -2.0])
    assert math.isnan(validators.preference("bnm", math.nan))


def test_softmax_is_stable_and_rejects_bad_input():
    p = validators.softmax([[1000.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError):
        validators.softmax(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        validators.softmax([[np.nan, 0.0]])


# ---------------------------------------------------------------------- entropy and IM


def test_mean_entropy_known_values():
    assert validators.mean_entropy(one_hot_logits(np.arange(20) % C)) == pytest.approx(0.0)
    assert validators.mean_entropy(np.zeros((7, C))) == pytest.approx(math.log(C))
    # Rows [1/2, 1/2, 0...] (entropy log 2) and one-hot (0): mean log(2) / 2.
    two = np.array([[0.0, 0.0] + [-BIG] * 8, [BIG] + [0.0] * 9])
    assert validators.mean_entropy(two) == pytest.approx(math.log(2) / 2)


def test_information_maximization_known_values():
    balanced = one_hot_logits(np.arange(100) % C)
    collapsed = one_hot_logits(np.zeros(100, int))
    uniform = np.zeros((100, C))
    assert validators.information_maximization(balanced) == pytest.approx(math.log(C))
    assert validators.information_maximization(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert validators.information_maximization(uniform) == pytest.approx(0.0, abs=1e-12)
    # Half the examples on class 0, half on class 1, all confident: log 2.
    half = one_hot_logits(np.arange(10) % 2)
    assert validators.information_maximization(half) == pytest.approx(math.log(2))
    # Entropy alone cannot tell collapse from a good model; IM can.
    assert validators.mean_entropy(collapsed) == pytest.approx(validators.mean_entropy(balanced))


# ----------------------------------------------------------------------------------- SND


def _snd_one_hot_clusters(n, m, tau):
    """SND of one-hot predictions in n / m clusters of m: the closed form."""
    # Row i: m - 1 neighbours at similarity 1, n - m at 0 (self excluded).
    w_same, w_other = math.exp(1.0 / tau), 1.0
    z = (m - 1) * w_same + (n - m) * w_other
    p_same, p_other = w_same / z, w_other / z
    return -((m - 1) * p_same * math.log(p_same) + (n - m) * p_other * math.log(p_other))


@pytest.mark.parametrize(("n", "m", "tau"), [(40, 4, 0.05), (40, 10, 0.05), (30, 10, 0.5)])
def test_snd_one_hot_clusters_closed_form(n, m, tau):
    logits = one_hot_logits(np.repeat(np.arange(n // m), m))
    out = validators.soft_neighborhood_density(logits, temperature=tau)
    assert out == pytest.approx(_snd_one_hot_clusters(n, m, tau), rel=1e-9)


def test_snd_prefers_dense_clusters_to_scattered_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, 300)
    clustered = one_hot_logits(labels, margin=8.0) + rng.normal(scale=0.3, size=(300, C))
    scattered = rng.normal(scale=3.0, size=(300, C))
    snd = validators.soft_neighborhood_density
    assert snd(clustered) > snd(scattered) + 0.5
    # Its known blind spot: one cluster of everything (collapse) is the densest of all,
    # log(N - 1), the maximum.
    collapsed = one_hot_logits(np.zeros(300, int))
    assert snd(collapsed) == pytest.approx(math.log(299))
    assert snd(collapsed) > snd(clustered)
    with pytest.raises(ValueError):
        snd(np.zeros((1, C)))


# ----------------------------------------------------------------------------------- BNM


def test_bnm_known_values():
    bnm = validators.batch_nuclear_norm
    assert bnm(one_hot_logits(np.arange(100) % C)) == pytest.approx(1.0)
    assert bnm(one_hot_logits(np.zeros(100, int))) == pytest.approx(1 / math.sqrt(C))
    assert bnm(np.zeros((100, C))) == pytest.approx(1 / C)
    # Fewer examples than classes: the bound is sqrt(N * N).
    assert bnm(one_hot_logits([0, 1, 2])) == pytest.approx(1.0)
    # Imbalanced but confident lies between collapsed and balanced.
    imbalanced = bnm(one_hot_logits(np.r_[np.zeros(91, int), np.arange(1, 10)]))
    assert 1 / math.sqrt(C) < imbalanced < 1.0


# ------------------------------------------------------------- source accuracy, reverse


def test_source_accuracy_hand_example():
    logits = one_hot_logits([0, 1, 2, 3])
    assert validators.source_accuracy(logits, [0, 1, 2, 0]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        validators.source_accuracy(logits, [0, 1])


def _blobs(rng, n, shift=0.0):
    """(features, labels): 3 well-separated Gaussian classes in 2-D, optionally shifted."""
    centres = np.array([[0.0, 6.0], [6.0, 0.0], [-6.0, -6.0]])
    y = rng.integers(0, 3, n)
    return centres[y] + rng.normal(size=(n, 2)) + shift, y


def test_reverse_validation_right_wrong_and_collapsed_pseudo_labels():
    rng = np.random.default_rng(0)
    xt, yt = _blobs(rng, 300)
    xv, yv = _blobs(rng, 200)
    right = validators.reverse_validation(xt, one_hot_logits(yt, 3), xv, yv)
    assert right["accuracy"] > 0.97 and right["pseudo_classes"] == 3
    assert right["risk"] == pytest.approx(1 - right["accuracy"])
    # Pseudo-labels permuted: the reverse classifier carries the wrong names back.
    wrong = validators.reverse_validation(xt, one_hot_logits((yt + 1) % 3, 3), xv, yv)
    assert wrong["accuracy"] < 0.03
    # A collapsed forward model: the reverse classifier predicts its one class.
    collapsed = validators.reverse_validation(xt, one_hot_logits(np.zeros(300, int), 3), xv, yv)
    assert collapsed["accuracy"] == pytest.approx(np.mean(yv == 0))
    assert collapsed["pseudo_classes"] == 1
    with pytest.raises(ValueError):
        validators.reverse_validation(xt, one_hot_logits(yt, 3), xv[:, :1], yv)


# ------------------------------------------------------------------ compute_validators


def _candidate(rng, adapted):
    """Outputs of a model that adapted (aligned, confident, right) or did not."""
    xs, _ = _blobs(rng, 400)
    xv, yv = _blobs(rng, 300)
    # Not adapted: target features shifted away from the source and unsure, scattered
    # predictions; adapted: target features like the source, confident right predictions.
    xt, yt = _blobs(rng, 400, shift=0.0 if adapted else 4.0)
    t_logits = one_hot_logits(yt, 3, 6.0) if adapted else rng.normal(scale=2.0, size=(400, 3))
    v_logits = one_hot_logits(yv, 3, 6.0)
    loss = -np.log(validators.softmax(v_logits)[np.arange(len(yv)), yv])
    source_val = {"features": xv, "class_logits": v_logits, "loss": loss, "labels": yv}
    target = {"features": xt, "class_logits": t_logits}
    return source_val, target, xs


def test_compute_validators_prefer_the_adapted_model():
    rng = np.random.default_rng(3)
    good = validators.compute_validators(*_candidate(rng, True), seed=0)
    bad = validators.compute_validators(*_candidate(rng, False), seed=0)
    names = set(validators.VALIDATORS) - {"reverse_dann"}
    assert set(good) == set(bad) == names
    assert all(math.isfinite(v) for v in (*good.values(), *bad.values()))
    pref = validators.preference
    for name in names - {"source_accuracy", "dev"}:  # these two see the same source outputs
        assert pref(name, good[name]) > pref(name, bad[name]), name
    assert good["source_accuracy"] == bad["source_accuracy"] == 1.0


def test_compute_validators_gives_nan_for_a_validator_that_rejects_its_input():
    rng = np.random.default_rng(4)
    source_val, target, xs = _candidate(rng, True)
    target = {k: v[:1] for k, v in target.items()}  # one target example: SND needs two
    out = validators.compute_validators(source_val, target, xs)
    assert math.isnan(out["snd"])
    assert math.isfinite(out["mean_entropy"])


# --------------------------------------------------------------------- the guard


def test_guard_fires_when_every_working_validator_prefers_source_only():
    is_so = [True, False, False]
    prefs = {"a": [0.9, 0.5, 0.4], "b": [3.0, 1.0, 2.0]}
    out = validators.negative_transfer_guard(prefs, is_so)
    assert out["harmful"] is True
    assert validators.HARMFUL_MESSAGE in out["message"]
    assert out["used"] == ["a", "b"] and out["broken"] == {}
    assert out["margin"] == {"a": pytest.approx(0.4), "b": pytest.approx(1.0)}


def test_guard_silent_when_one_working_validator_prefers_adapting():
    is_so = [True, False, False]
    prefs = {"a": [0.9, 0.5, 0.4], "b": [1.0, 3.0, 2.0]}
    out = validators.negative_transfer_guard(prefs, is_so)
    assert out["harmful"] is False and out["message"] is None
    assert out["prefers_source_only"] == {"a": True, "b": False}
    # Restricted to the validators that work, it fires.
    assert validators.negative_transfer_guard(prefs, is_so, use=["a"])["harmful"] is True


def test_guard_ignores_broken_validators_and_needs_both_kinds():
    is_so = [False, True, False]
    prefs = {
        "works": [0.1, 0.9, 0.2],
        "nan": [np.nan, 0.1, 0.9],
        "constant": [0.5, 0.5, 0.5],
    }
    out = validators.negative_transfer_guard(prefs, is_so)
    assert out["harmful"] is True and out["used"] == ["works"]
    assert set(out["broken"]) == {"nan", "constant"}
    nothing = validators.negative_transfer_guard({"constant": [1.0, 1.0, 1.0]}, is_so)
    assert nothing["harmful"] is False and nothing["used"] == []
    with pytest.raises(ValueError):
        validators.negative_transfer_guard(prefs, [False, False, False])


# ---------------------------------------------------------------- MixVal and EnsV


def _brightness_model(threshold):
    """Class 1 when an image's mean grey level is above `threshold`, else class 0."""
    return lambda x: np.stack([threshold - x.mean((1, 2, 3)), x.mean((1, 2, 3)) - threshold], 1)


def test_mixval_scores_consistency_on_mixed_pairs_by_hand():
    images = np.zeros((40, 4, 4, 3), np.uint8)
    images[20:] = 255  # 20 dark (class 0), 20 bright (class 1)
    # Threshold 128: a 0.55 / 0.45 mix keeps its larger part's class (115 and 140).
    out = validators.mixval(_brightness_model(128), images, seed=3)
    assert out == {"mixval": 1.0, "intra": 1.0, "inter": 1.0}
    # Threshold 100: dark-first mixes (115) now read as bright; bright-first ones (140)
    # still bright. Inter-cluster agreement = the share of bright-first mixed pairs.
    other = np.random.default_rng(3).permutation(40)
    first_bright = np.arange(40) >= 20
    inter = first_bright != first_bright[other]
    expected_inter = np.mean(first_bright[inter])
    out = validators.mixval(_brightness_model(100), images, seed=3)
    assert out["intra"] == 1.0 and out["inter"] == pytest.approx(expected_inter)
    assert out["mixval"] == pytest.approx((1.0 + expected_inter) / 2)
    # One pseudo-class only: no inter-cluster pair, the score is the intra part.
    one = validators.mixval(_brightness_model(300), images, seed=0)
    assert math.isnan(one["inter"]) and one["mixval"] == one["intra"] == 1.0
    with pytest.raises(ValueError, match="uint8"):
        validators.mixval(_brightness_model(0), images.astype(np.float32))


def test_ensemble_agreement_is_agreement_with_the_mean_prediction():
    a = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]))
    b = np.log(np.array([[0.7, 0.3], [0.3, 0.7], [0.4, 0.6]]))
    c = np.log(np.array([[0.2, 0.8], [0.45, 0.55], [0.45, 0.55]]))
    # Mean probabilities: [0.6, 0.4], [0.45, 0.55], [0.35, 0.65] -> classes 0, 1, 1.
    got = validators.ensemble_agreement([a, b, c])
    np.testing.assert_allclose(got, [2 / 3, 1.0, 2 / 3])
    with pytest.raises(ValueError, match="all alike"):
        validators.ensemble_agreement([a, a[:2]])
