"""Adaptation metrics: PAD, DEV, selection agreement, confusion matrix, embeddings, JSON."""

import json
import math

import numpy as np
import pytest

from dann_jax import analysis
from tests.helpers import heavy_imports


def test_import_is_cheap():
    assert heavy_imports("dann_jax.analysis") == []


# ---------------------------------------------------------------------------- PAD


def test_pad_separable_domains_near_two():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(600, 8))
    target = rng.normal(size=(600, 8)) + 6.0
    out = analysis.proxy_a_distance(source, target, seed=0)
    assert out["pad"] > 1.8
    assert out["error"] < 0.05
    assert out["n_train"] + out["n_test"] == 1200
    assert out["n_test"] == 600
    assert out["C"] in analysis.PAD_C_GRID
    assert "LinearSVC" in out["classifier"]


def test_pad_same_distribution_near_zero():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(1000, 8))
    target = rng.normal(size=(1000, 8))
    out = analysis.proxy_a_distance(source, target, seed=0)
    assert abs(out["pad"]) < 0.3
    assert out["pad"] == pytest.approx(2.0 * (1.0 - 2.0 * out["error"]))


def test_pad_balances_flattens_and_caps_samples():
    rng = np.random.default_rng(2)
    source = rng.normal(size=(500, 2, 3))  # flattened to D = 6
    target = rng.normal(size=(80, 6)) + 4.0
    out = analysis.proxy_a_distance(source, target, seed=3, max_samples=100)
    # 50 per domain (max_samples / 2 < 80), half of each held out.
    assert out["n_train"] + out["n_test"] == 100
    assert out["n_test"] == 50
    assert out["pad"] > 1.5
    # Deterministic in the seed.
    assert analysis.proxy_a_distance(source, target, seed=3, max_samples=100) == out


class _PartAwareClassifier:
    """A stand-in for the SVM: reads the domain label from feature 0 and gets a set share
    of a part wrong, by C and by the part's size (validation or test); records its fits."""

    def __init__(self, c, mistakes, log):
        self.c, self.mistakes, self.log = c, mistakes, log

    def fit(self, x, y):
        np.testing.assert_array_equal(x[:, 0], y)  # the labels are the domains
        self.log.append(("fit", self.c, set(x[:, 1])))
        return self

    def predict(self, x):
        self.log.append(("predict", self.c, set(x[:, 1])))
        guess = x[:, 0].astype(np.int64)
        wrong = round(self.mistakes[self.c][len(x)] * len(x))
        guess[:wrong] = 1 - guess[:wrong]
        return guess


@pytest.mark.parametrize(
    ("grid", "val_error_of_1", "chosen"), [((0.1, 1.0), 0.5, 0.1), ((1.0, 0.1), 0.0, 0.1)]
)
def test_pad_picks_c_on_the_validation_part_and_measures_eps_on_the_test_part(
    monkeypatch, grid, val_error_of_1, chosen
):
    # 40 examples per domain: a test part of 20 (test_fraction 0.5), a validation part
    # of 5 (a quarter of the other 20) and 15 to fit, per domain. C = 0.1 is right on the
    # validation part and wrong on a quarter of the test part; C = 1.0 is right on the
    # test part. The procedure of the docstring picks C on the validation part (a tie
    # goes to the smaller C), refits on the whole training part (fit + validation) and
    # reports the test error of that fit: eps = 0.25, PAD = 2 (1 - 2 eps) = 1.0. Picking
    # C on the test error would give eps = 0 and PAD = 2.
    log = []
    mistakes = {0.1: {10: 0.0, 40: 0.25}, 1.0: {10: val_error_of_1, 40: 0.0}}
    monkeypatch.setattr(analysis, "_linear_svm",
                        lambda c, seed: _PartAwareClassifier(c, mistakes, log))  # fmt: skip
    ids = np.arange(80, dtype=np.float64)
    source = np.stack([np.zeros(40), ids[:40]], 1)
    target = np.stack([np.ones(40), ids[40:]], 1)
    out = analysis.proxy_a_distance(source, target, seed=0, c_grid=grid)
    assert out["C"] == chosen
    assert out["error"] == 0.25 and out["pad"] == pytest.approx(1.0)
    assert (out["n_train"], out["n_test"]) == (40, 40)
    # The parts: every C fitted on the same 30 examples and scored on the 10 others of
    # the training part; the chosen C refitted on all 40 and scored on the 40 held out.
    fits = [(c, seen) for kind, c, seen in log if kind == "fit"]
    scored = [(c, seen) for kind, c, seen in log if kind == "predict"]
    assert [c for c, _ in fits] == [c for c, _ in scored] == [0.1, 1.0, chosen]
    fit_part, val_part = fits[0][1], scored[0][1]
    assert len(fit_part) == 30 and fits[1][1] == fit_part and scored[1][1] == val_part
    assert len(val_part) == 10 and not val_part & fit_part
    train_part, test_part = fits[2][1], scored[2][1]
    assert train_part == fit_part | val_part and len(test_part) == 40
    assert not test_part & train_part


def test_pad_rejects_mismatched_features():
    with pytest.raises(ValueError, match="feature sizes"):
        analysis.proxy_a_distance(np.zeros((10, 3)), np.zeros((10, 4)))


# ---------------------------------------------------------------------------- DEV


def test_dev_control_variate_hand_computed():
    w = np.array([0.5, 1.0, 1.5, 1.0])
    loss = np.array([1.0, 2.0, 2.0, 0.0])
    # L = w * l = [0.5, 2, 3, 0]; mean(L) = 1.375; mean(w) = 1.0.
    # Cov(L, w) (ddof=1) = sum((L - 1.375)(w - 1)) / 3 = (0.4375 + 0 + 0.8125 + 0) / 3.
    # Var(w) (ddof=1) = (0.25 + 0 + 0.25 + 0) / 3.  eta = -1.25 / 0.5 = -2.5.
    out = analysis.dev_risk_from_weights(w, loss)
    assert out["iwcv_risk"] == pytest.approx(1.375)
    assert out["mean_weight"] == pytest.approx(1.0)
    assert out["eta"] == pytest.approx(-2.5)
    # mean(w) == 1, so the control variate term vanishes.
    assert out["dev_risk"] == pytest.approx(1.375)

    w2 = np.array([1.0, 2.0, 3.0])
    l2 = np.array([1.0, 1.0, 1.0])
    # L = w, so Cov(L, w) = Var(w) and eta = -1: DEV = mean(w) - mean(w) + 1 = 1 (exact).
    out2 = analysis.dev_risk_from_weights(w2, l2)
    assert out2["eta"] == pytest.approx(-1.0)
    assert out2["iwcv_risk"] == pytest.approx(2.0)
    assert out2["dev_risk"] == pytest.approx(1.0)


def test_dev_constant_weights_no_nan():
    out = analysis.dev_risk_from_weights(np.ones(5), np.arange(5.0))
    assert out["eta"] == 0.0
    assert out["dev_risk"] == pytest.approx(2.0)
    single = analysis.dev_risk_from_weights([2.0], [3.0])
    assert single == {"dev_risk": 6.0, "iwcv_risk": 6.0, "eta": 0.0, "mean_weight": 2.0}


@pytest.mark.parametrize("with_train", [False, True])
def test_dev_same_distribution_weights_near_one(with_train):
    rng = np.random.default_rng(0)
    val = rng.normal(size=(1000, 5))
    target = rng.normal(size=(1000, 5))
    train = rng.normal(size=(1000, 5)) if with_train else None
    losses = rng.exponential(size=1000)
    out = analysis.deep_embedded_validation(val, losses, target, train, seed=0)
    assert all(math.isfinite(v) for v in out.values())
    assert out["mean_weight"] == pytest.approx(1.0, abs=0.05)
    assert out["max_weight"] < 2.0
    assert out["dev_risk"] == pytest.approx(losses.mean(), rel=0.05)
    assert out["iwcv_risk"] == pytest.approx(losses.mean(), rel=0.05)


def test_dev_shifted_target_upweights_target_like_examples():
    # Losses are high exactly where the target lies: DEV should see a larger risk than
    # the plain source mean loss.
    rng = np.random.default_rng(1)
    val = rng.normal(size=(800, 2))
    target = rng.normal(size=(800, 2)) + np.array([1.0, 0.0])
    losses = (val[:, 0] > 0.5).astype(np.float64)
    out = analysis.deep_embedded_validation(val, losses, target, seed=0)
    assert all(math.isfinite(v) for v in out.values())
    assert out["dev_risk"] > losses.mean() + 0.1


def test_dev_separable_domains_stay_finite():
    rng = np.random.default_rng(2)
    val = rng.normal(size=(100, 3))
    target = rng.normal(size=(100, 3)) + 50.0
    out = analysis.deep_embedded_validation(val, rng.uniform(size=100), target, seed=0)
    assert all(math.isfinite(v) for v in out.values())


# ---------------------------------------------------------------- selection agreement


def test_selection_agreement_hand_example():
    out = analysis.selection_agreement([3.0, 1.0, 2.0], [0.5, 0.9, 0.7], lower_is_better=True)
    assert out["spearman"] == pytest.approx(1.0)
    assert out["chosen_index"] == 1
    assert out["chosen_accuracy"] == pytest.approx(0.9)
    assert out["oracle_index"] == 1
    assert out["oracle_accuracy"] == pytest.approx(0.9)
    assert out["gap"] == pytest.approx(0.0)
    assert out["n_candidates"] == 3


def test_selection_agreement_higher_is_better_and_gap():
    out = analysis.selection_agreement([0.2, 0.8, 0.5, 0.1], [0.6, 0.7, 0.9, 0.5], False)
    assert out["chosen_index"] == 1
    assert out["oracle_index"] == 2
    assert out["gap"] == pytest.approx(0.2)
    from scipy.stats import spearmanr

    expected = spearmanr([0.2, 0.8, 0.5, 0.1], [0.6, 0.7, 0.9, 0.5]).statistic
    assert out["spearman"] == pytest.approx(expected)


def test_selection_agreement_degenerate_inputs():
    two = analysis.selection_agreement([1.0, 2.0], [0.3, 0.4])
    assert two["spearman"] is None
    assert two["chosen_index"] == 0 and two["gap"] == pytest.approx(0.1)
    const = analysis.selection_agreement([1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4])
    assert const["spearman"] is None
    assert const["chosen_index"] == 0  # ties: first candidate
    # A diverged candidate (NaN score) is dropped, not chosen.
    nan = analysis.selection_agreement([np.nan, 2.0, 1.0, 3.0], [0.99, 0.5, 0.6, 0.4])
    assert nan["n_candidates"] == 3
    assert nan["chosen_index"] == 2
    assert nan["spearman"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        analysis.selection_agreement([1.0], [0.5, 0.6])


# ---------------------------------------------------------------- confusion matrix


def test_confusion_matrix_hand_example():
    labels = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 2, 0, 2])
    m = analysis.confusion_matrix(labels, preds, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(m, expected)
    assert np.issubdtype(m.dtype, np.integer)
    assert analysis.confusion_matrix(labels, preds).shape == (10, 10)
    with pytest.raises(ValueError):
        analysis.confusion_matrix([0, 3], [0, 1], num_classes=3)


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embed_shape(method):
    x = np.random.default_rng(0).normal(size=(40, 6))
    xy = analysis.embed(x, method=method, seed=0)
    assert xy.shape == (40, 2)
    assert np.all(np.isfinite(xy))
    with pytest.raises(ValueError):
        analysis.embed(x, method="umap")


# ---------------------------------------------------------------- analysis.json


def test_write_analysis_json(tmp_path):
    payload = {
        "pad": {"source_only": np.float32(1.5), "dann": np.float64(0.25)},
        "confusion": np.array([[1, 2], [3, 4]], dtype=np.int64),
        "chosen_index": np.int64(3),
        "ok": np.bool_(True),
        "curve": [np.float32(0.5), 1.0],
        "nan": float("nan"),
        7: "int key",
    }
    path = analysis.write_analysis(tmp_path / "run", payload)
    assert path == str(tmp_path / "run" / "analysis.json")
    with open(path) as f:
        data = json.load(f)
    # The NaN is written as null and listed under "non_finite" (dann_jax.io.write_json).
    keys = {"pad", "confusion", "chosen_index", "ok", "curve", "nan", "7", "non_finite"}
    assert set(data) == keys
    assert data["non_finite"] == ["nan"]
    assert data["pad"]["source_only"] == pytest.approx(1.5)
    assert data["confusion"] == [[1, 2], [3, 4]]
    assert data["chosen_index"] == 3 and isinstance(data["chosen_index"], int)
    assert data["ok"] is True
    assert data["curve"] == [0.5, 1.0]
    assert data["nan"] is None
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["analysis.json"]
    # Overwrites in place.
    analysis.write_analysis(tmp_path / "run", {"a": 1})
    with open(path) as f:
        assert json.load(f) == {"a": 1}
