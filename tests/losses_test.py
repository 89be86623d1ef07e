"""Losses against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dann_jax import losses


def test_classification_loss_hand_computed():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    lse0 = math.log(math.exp(2.0) + 1.0 + math.exp(-1.0))
    ce0 = lse0 - 2.0
    ce1 = math.log(3.0)
    assert float(losses.classification_loss(logits, labels)) == pytest.approx(
        (ce0 + ce1) / 2, rel=1e-6
    )
    # alpha = 0.3: target = 0.7 * onehot + 0.1 each.
    a = 0.3
    sm0 = (1 - a) * ce0 + (a / 3) * sum(lse0 - z for z in (2.0, 0.0, -1.0))
    sm1 = ce1  # uniform logits: every class has the same loss
    assert float(losses.classification_loss(logits, labels, a)) == pytest.approx(
        (sm0 + sm1) / 2, rel=1e-6
    )


def test_domain_adversarial_loss_hand_computed():
    ds = jnp.array([0.0, 2.0])  # source, domain label 0: BCE = log(1 + e^z)
    dt = jnp.array([-1.0, 3.0, 0.5])  # target, label 1: BCE = log(1 + e^-z)
    ls = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2
    lt = (
        math.log(1 + math.exp(1.0)) + math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(-0.5))
    ) / 3
    assert float(losses.domain_adversarial_loss(ds, dt)) == pytest.approx(0.5 * (ls + lt), rel=1e-6)


def test_domain_accuracy_and_accuracy():
    assert float(
        losses.domain_accuracy(jnp.array([-1.0, 1.0]), jnp.array([2.0, 3.0, -4.0, 1.0]))
    ) == (pytest.approx(0.5 * (0.5 + 0.75)))
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert float(losses.accuracy(logits, jnp.array([1, 1, 1]))) == pytest.approx(2 / 3)


def test_losses_are_float32_for_bfloat16_logits():
    logits = jnp.ones((2, 10), jnp.bfloat16)
    assert losses.classification_loss(logits, jnp.array([1, 2]), 0.1).dtype == jnp.float32
    d = jnp.zeros((2,), jnp.bfloat16)
    loss = losses.domain_adversarial_loss(d, d)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), math.log(2.0), rtol=1e-6)


# ---------------------------------------------------------------- adaptation losses
# Expected values from numpy in float64, written from the papers' equations.


def _softmax64(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _entropy64(p):
    return -(p * np.log(p)).sum(-1)


LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 1.5, 1.0], [0.0, 0.0, 0.0]])


def test_entropy_hand_computed_and_bounds():
    expected = _entropy64(_softmax64(LOGITS)).mean()
    assert float(losses.entropy(jnp.asarray(LOGITS))) == pytest.approx(expected, rel=1e-6)
    assert float(losses.entropy(jnp.zeros((5, 7)))) == pytest.approx(math.log(7), rel=1e-6)
    # A confident prediction: entropy near 0 (no NaN from 0 * log 0 after underflow).
    assert float(losses.entropy(jnp.array([[200.0, 0.0, 0.0]]))) == 0.0


def test_minimum_class_confusion_follows_the_paper():
    t = 2.5
    y = _softmax64(LOGITS / t)  # eq. (1)
    w = 1 + np.exp(-_entropy64(y))  # eq. (3)
    w = len(y) * w / w.sum()  # eq. (4)
    c = sum(w[i] * np.outer(y[i], y[i]) for i in range(len(y)))  # eq. (5)
    c = c / c.sum(axis=0, keepdims=True)  # eq. (6): each category's column sums to 1
    expected = (c.sum() - np.trace(c)) / 3  # eq. (7)
    got = losses.minimum_class_confusion(jnp.asarray(LOGITS), t)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    # Known values: uniform predictions confuse every pair, (K - 1) / K; confident,
    # distinct predictions confuse none.
    assert float(losses.minimum_class_confusion(jnp.zeros((6, 4)))) == pytest.approx(0.75)
    confident = jnp.asarray(np.eye(4) * 400.0)
    assert float(losses.minimum_class_confusion(confident)) == pytest.approx(0.0, abs=1e-6)


def test_minimum_class_confusion_weights_carry_no_gradient():
    # The paper's uncertainty weights are constants for the gradient: d/dz of the loss
    # equals that of the same loss with the weights fixed at their values.
    z = jnp.asarray(LOGITS)
    y = jax.nn.softmax(z / 2.5)
    h = -(y * jnp.log(y)).sum(-1)
    w_fixed = 4 * (1 + jnp.exp(-h)) / (1 + jnp.exp(-h)).sum()

    def fixed(z):
        y = jax.nn.softmax(z / 2.5)
        c = jnp.sum((y * w_fixed[:, None])[:, :, None] * y[:, None, :], axis=0)
        c = c / c.sum(0, keepdims=True)
        return (c.sum() - jnp.trace(c)) / 3

    np.testing.assert_allclose(
        jax.grad(losses.minimum_class_confusion)(z), jax.grad(fixed)(z), rtol=1e-5, atol=1e-7
    )


def test_entropy_weights_and_the_weighted_domain_loss():
    w = losses.entropy_weights(jnp.asarray(LOGITS), 1.0)
    np.testing.assert_allclose(w, 1 + np.exp(-_entropy64(_softmax64(LOGITS))), rtol=1e-6)
    np.testing.assert_array_equal(losses.entropy_weights(jnp.asarray(LOGITS), 0.0), np.ones(4))
    g = jax.grad(lambda z: losses.entropy_weights(z, 1.0).sum())(jnp.asarray(LOGITS))
    np.testing.assert_array_equal(g, np.zeros_like(LOGITS))  # a constant for autodiff
    # CDAN+E: each domain's BCE is a weighted mean within the domain (Long et al., eq. 9).
    ds, dt = np.array([0.0, 2.0]), np.array([-1.0, 3.0, 0.5])
    ws, wt = np.array([1.0, 3.0]), np.array([2.0, 1.0, 1.0])
    bce_s = np.log1p(np.exp(ds))  # label 0
    bce_t = np.log1p(np.exp(-dt))  # label 1
    expected = 0.5 * ((ws * bce_s).sum() / ws.sum() + (wt * bce_t).sum() / wt.sum())
    got = losses.domain_adversarial_loss(*(jnp.asarray(a) for a in (ds, dt, ws, wt)))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Equal weights are the unweighted loss.
    same = losses.domain_adversarial_loss(
        jnp.asarray(ds), jnp.asarray(dt), jnp.ones(2), jnp.ones(3)
    )
    plain = losses.domain_adversarial_loss(jnp.asarray(ds), jnp.asarray(dt))
    assert float(same) == pytest.approx(float(plain), rel=1e-7)
