"""DANN losses: label-smoothed source cross-entropy and the domain-adversarial loss.

The training objective (reference code's notation, Ganin et al. 2016, eq. 18)::

    loss = CE_smooth(G_y(f_s), y_s) + lambda3 * 0.5 * (BCE(D(GRL(f_s)), 0) + BCE(D(GRL(f_t)), 1))
           + mcc * MCC(G_y(f_t)) + entropy * H(G_y(f_t))

Source examples carry domain label 0 and target examples domain label 1. The last two
terms act on the unlabelled target's predictions only (weights 0: plain DANN):
`minimum_class_confusion` (Jin et al., ECCV 2020) and `entropy` minimisation (Grandvalet
& Bengio, NeurIPS 2004). `entropy_weights` gives CDAN+E's example weights (Long et al.,
NeurIPS 2018) for `domain_adversarial_loss`. All losses are computed in float32 whatever
the model's compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "accuracy",
    "classification_loss",
    "domain_accuracy",
    "domain_adversarial_loss",
    "entropy",
    "entropy_weights",
    "minimum_class_confusion",
]


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
    domain_logits_source: jax.Array,
    domain_logits_target: jax.Array,
    weights_source: jax.Array | None = None,
    weights_target: jax.Array | None = None,
) -> jax.Array:
    """``0.5 * (BCE(D_s, 0) + BCE(D_t, 1))``: source is domain 0, target is domain 1.

    Each domain's term is its own batch mean (weighted, when weights are given), so the
    two domains weigh equally whatever their batch sizes.

    Args:
      domain_logits_source: (N_s,) discriminator logits on source features.
      domain_logits_target: (N_t,) discriminator logits on target features.
      weights_source: (N_s,) example weights (e.g. `entropy_weights`), or None: each
        domain's term is then ``sum(w * BCE) / sum(w)``.
      weights_target: (N_t,) the same for the target.

    Returns:
      Scalar float32 loss.

    References:
      Ganin et al., JMLR 2016, eq. (18) (domain term L_d with d_i = 0 for source,
      1 for target); Long et al., NeurIPS 2018, eq. (9) (CDAN+E: each domain's examples
      weighted by ``w``, normalised within the domain).
    """
    ls = domain_logits_source.astype(jnp.float32)
    lt = domain_logits_target.astype(jnp.float32)
    bce_s = optax.sigmoid_binary_cross_entropy(ls, jnp.zeros_like(ls))
    bce_t = optax.sigmoid_binary_cross_entropy(lt, jnp.ones_like(lt))
    return 0.5 * (_weighted_mean(bce_s, weights_source) + _weighted_mean(bce_t, weights_target))


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """``mean(values)``, or ``sum(w * values) / sum(w)``.

    Written as ``mean(w * values) / mean(w)``: with every weight 1 that is ``mean(values)``
    to the last bit (CDAN+E's strength 0 trains exactly as plain DANN).
    """
    if weights is None:
        return values.mean()
    w = weights.astype(jnp.float32)
    return jnp.mean(w * values) / jnp.mean(w)


def _entropies(probs: jax.Array) -> jax.Array:
    """(N,) Shannon entropy of each row of probabilities (0 log 0 = 0)."""
    safe = jnp.where(probs > 0, probs, 1.0)
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(safe), 0.0), -1)


def entropy(logits: jax.Array) -> jax.Array:
    """Mean Shannon entropy (nats) of the softmax predictions: entropy minimisation.

    Args:
      logits: (N, K) class logits (unlabelled target examples).

    Returns:
      Scalar float32 ``mean_i H(softmax(z_i))``, in [0, log K].

    References:
      Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS
      2004, eq. (2); Long et al., NeurIPS 2016 (RTN) for its use on a target domain.
    """
    return jnp.mean(_entropies(jax.nn.softmax(logits.astype(jnp.float32), -1)))


def entropy_weights(logits: jax.Array, strength: float | jax.Array = 1.0) -> jax.Array:
    """CDAN+E's example weights ``1 + strength * exp(-H(softmax(z)))``, no gradient.

    Confident examples (low entropy) weigh up to twice as much in the domain loss as
    uncertain ones; ``strength`` 0 gives every example weight 1 (plain CDAN or DANN).

    Args:
      logits: (N, K) class logits.
      strength: 0 (off) to 1 (CDAN+E); may be traced.

    Returns:
      (N,) float32 weights (a constant for autodiff).

    References:
      Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018, Sec. 3.3:
      "w(H(g)) = 1 + e^{-H(g)}".
    """
    h = _entropies(jax.nn.softmax(logits.astype(jnp.float32), -1))
    w = 1.0 + jnp.asarray(strength, jnp.float32) * jnp.exp(-h)
    return jax.lax.stop_gradient(w)


def minimum_class_confusion(logits: jax.Array, temperature: float | jax.Array = 2.5) -> jax.Array:
    """Minimum Class Confusion loss of a batch of unlabelled target predictions.

    With ``Y = softmax(Z / T)`` (N x K), example weights ``W_i = N (1 + e^{-H(Y_i)}) /
    sum_j (1 + e^{-H(Y_j)})`` (no gradient), the class confusion ``C = Y^T diag(W) Y``
    (K x K) normalised per category, ``C~_jj' = C_jj' / sum_j'' C_j''j'``, the loss is
    ``(sum_jj' C~_jj' - trace C~) / K``: the confusion between different classes.

    Args:
      logits: (N, K) class logits on target examples.
      temperature: T of the temperature-scaled softmax (the paper's 2.5 by default).

    Returns:
      Scalar float32 in [0, 1): the normalised confusion between different classes.

    References:
      Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020,
      eqs. (1)-(7): temperature rescaling (1), uncertainty reweighting (3)-(4), class
      confusion (5), category normalisation (6) and the loss (7).
    """
    z = logits.astype(jnp.float32)
    n, k = z.shape
    y = jax.nn.softmax(z / jnp.asarray(temperature, jnp.float32), -1)  # eq. (1)
    w = jax.lax.stop_gradient(1.0 + jnp.exp(-_entropies(y)))  # eq. (3)
    w = n * w / jnp.sum(w)  # eq. (4)
    # eq. (5), as a sum of per-example outer products rather than a matmul: N * K * K
    # values are few, and elementwise float32 is exact on every backend (a TF32 or one-pass
    # bf16 matmul would round the confusion to about 3 digits).
    confusion = jnp.sum((y * w[:, None])[:, :, None] * y[:, None, :], axis=0)
    # eq. (6); a class no example gives any probability (underflow) adds 0, not 0/0.
    confusion = confusion / jnp.maximum(jnp.sum(confusion, axis=0, keepdims=True), 1e-30)
    return (jnp.sum(confusion) - jnp.trace(confusion)) / k  # eq. (7)


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
