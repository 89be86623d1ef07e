"""Losses against hand-computed values."""

import math

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
