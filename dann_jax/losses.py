"""DANN losses: label-smoothed source cross-entropy and the domain-adversarial loss.

The training objective (reference code's notation, Ganin et al. 2016, eq. 18)::

    loss = CE_smooth(G_y(f_s), y_s) + lambda3 * 0.5 * (BCE(D(GRL(f_s)), 0) + BCE(D(GRL(f_t)), 1))

Source examples carry domain label 0 and target examples domain label 1. All losses are
computed in float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["accuracy", "classification_loss", "domain_accuracy", "domain_adversarial_loss"]


def classification_loss(
    logits: jax.Array, labels: jax.Array, label_smoothing: float | jax.Array = 0.0
) -> jax.Array:
    """Mean softmax cross-entropy against label-smoothed one-hot targets.

    Args:
      logits: (N, K) class logits.
      labels: (N,) integer labels in [0, K).
      label_smoothing: alpha in ``(1 - alpha) * onehot + alpha / K`` (may be traced).

    Returns:
      Scalar float32 loss.

    References:
      Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016, Sec. 7
      (label-smoothing regularisation).
    """
    logits = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    targets = optax.smooth_labels(onehot, jnp.asarray(label_smoothing, jnp.float32))
    return optax.softmax_cross_entropy(logits, targets).mean()


def domain_adversarial_loss(
    domain_logits_source: jax.Array, domain_logits_target: jax.Array
) -> jax.Array:
    """``0.5 * (BCE(D_s, 0) + BCE(D_t, 1))``: source is domain 0, target is domain 1.

    Each domain's term is its own batch mean, so the two domains weigh equally whatever
    their batch sizes.

    Args:
      domain_logits_source: (N_s,) discriminator logits on source features.
      domain_logits_target: (N_t,) discriminator logits on target features.

    Returns:
      Scalar float32 loss.

    References:
      Ganin et al., JMLR 2016, eq. (18) (domain term L_d with d_i = 0 for source,
      1 for target).
    """
    ls = domain_logits_source.astype(jnp.float32)
    lt = domain_logits_target.astype(jnp.float32)
    loss_s = optax.sigmoid_binary_cross_entropy(ls, jnp.zeros_like(ls)).mean()
    loss_t = optax.sigmoid_binary_cross_entropy(lt, jnp.ones_like(lt)).mean()
    return 0.5 * (loss_s + loss_t)


def domain_accuracy(domain_logits_source: jax.Array, domain_logits_target: jax.Array) -> jax.Array:
    """Balanced discriminator accuracy: 0.5 means the domains are indistinguishable.

    Args:
      domain_logits_source: (N_s,) logits; correct when < 0 (predicts source).
      domain_logits_target: (N_t,) logits; correct when > 0 (predicts target).

    Returns:
      Scalar float32 in [0, 1].
    """
    acc_s = jnp.mean((domain_logits_source < 0).astype(jnp.float32))
    acc_t = jnp.mean((domain_logits_target > 0).astype(jnp.float32))
    return 0.5 * (acc_s + acc_t)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of argmax predictions equal to the labels (float32)."""
    return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
