"""Deep Embedded Validation (You et al., ICML 2019): a label-free estimate of the target risk.

Moved here from `dann_jax.analysis` (which still re-exports it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dann_jax.validators.base import fit_quietly, flatten_features, standardised_logistic

__all__ = ["DEV_C_GRID", "deep_embedded_validation", "dev_risk_from_weights"]

# Inverse L2 strengths tried for the DEV discriminator (selected on held-out log-loss).
DEV_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Probabilities of the DEV discriminator are kept in [eps, 1 - eps]: an over-confident
# discriminator would otherwise give an infinite density ratio (or a zero one).
_DEV_PROB_EPS = 1e-7


def dev_risk_from_weights(weights: Any, losses: Any) -> dict:
    """DEV's control-variate estimate from density ratios and per-example losses.

    With ``L = w * l``: ``eta = -Cov(L, w) / Var(w)`` and
    ``DEV = mean(L) + eta * mean(w) - eta``. Because ``E[w] = 1`` under the source
    distribution, ``eta * (mean(w) - 1)`` has zero mean and cancels most of the variance
    the weights add to the importance-weighted risk ``mean(L)``.

    Args:
      weights: (N,) density ratios ``w(x) = p_target(x) / p_source(x)`` on source
        validation examples.
      losses: (N,) per-example losses on the same examples.

    Returns:
      dict with ``dev_risk``, ``iwcv_risk`` (``mean(L)``), ``eta`` and ``mean_weight``.
      ``eta`` is 0 when the weights are (numerically) constant or N < 2: the control
      variate then carries no information.

    References:
      You, Wang, Long, Wang, "Towards Accurate Model Selection in Deep Unsupervised Domain
      Adaptation", ICML 2019, Algorithm 1.
    """
    w = np.asarray(weights, np.float64).reshape(-1)
    loss = np.asarray(losses, np.float64).reshape(-1)
    if w.shape != loss.shape or w.size == 0:
        raise ValueError(f"weights {w.shape} and losses {loss.shape} must be equal, non-empty")
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(loss))):
        raise ValueError("weights and losses must be finite")
    weighted = w * loss
    eta = 0.0
    if w.size >= 2:
        # ddof=1 for both, as in the authors' code (the ratio does not depend on it).
        var_w = float(np.var(w, ddof=1))
        if var_w > 1e-12 * max(1.0, float(np.mean(w)) ** 2):
            eta = -float(np.cov(weighted, w, ddof=1)[0, 1]) / var_w
    mean_l, mean_w = float(np.mean(weighted)), float(np.mean(w))
    return {
        "dev_risk": mean_l + eta * mean_w - eta,
        "iwcv_risk": mean_l,
        "eta": eta,
        "mean_weight": mean_w,
    }


def _domain_logits(
    x_source: np.ndarray, x_target: np.ndarray, x_eval: np.ndarray, c: float
) -> np.ndarray:
    """Logit of p(target | x) on x_eval from a source-vs-target logistic regression."""
    x = np.concatenate([x_source, x_target])
    y = np.concatenate([np.zeros(len(x_source), np.int64), np.ones(len(x_target), np.int64)])
    return fit_quietly(standardised_logistic(c), x, y).decision_function(x_eval)


def _select_dev_c(
    x_source: np.ndarray, x_target: np.ndarray, c_grid: Sequence[float], seed: int
) -> float:
    """C of the discriminator with the lowest log-loss on a held-out 20% of each domain."""
    grid = sorted(c_grid)
    if len(grid) == 1:
        return float(grid[0])
    if min(len(x_source), len(x_target)) < 5:  # too few to hold any out: middle of the grid
        return float(grid[len(grid) // 2])
    rng = np.random.default_rng(seed)
    ps, pt = rng.permutation(len(x_source)), rng.permutation(len(x_target))
    hs, ht = max(1, round(0.2 * len(ps))), max(1, round(0.2 * len(pt)))
    y_hold = np.concatenate([np.zeros(hs), np.ones(ht)])
    best_c, best_loss = grid[0], math.inf
    for c in grid:
        logits = _domain_logits(
            x_source[ps[hs:]],
            x_target[pt[ht:]],
            np.concatenate([x_source[ps[:hs]], x_target[pt[:ht]]]),
            c,
        )
        # Log-loss (not accuracy, as in the authors' code) because DEV uses the
        # probabilities themselves: it rewards calibration, not just the decision.
        # log(1 + exp(-z)) for label 1, log(1 + exp(z)) for label 0.
        loss = float(np.mean(np.logaddexp(0.0, np.where(y_hold == 1, -logits, logits))))
        if loss < best_loss:  # strict: ties keep the smaller, more regularised C
            best_c, best_loss = c, loss
    return float(best_c)


def deep_embedded_validation(
    source_val_features: Any,
    source_val_losses: Any,
    target_features: Any,
    source_train_features: Any = None,
    *,
    seed: int = 0,
    c_grid: Sequence[float] = DEV_C_GRID,
    num_folds: int = 5,
) -> dict:
    """Deep Embedded Validation: a label-free estimate of the target risk (lower is better).

    A domain discriminator (standardised features, L2 logistic regression) is fit to tell
    source features (label 0) from target features (label 1); its inverse L2 strength is
    chosen from ``c_grid`` by log-loss on a held-out 20% of its training data (the
    authors' code likewise selects the discriminator's weight decay on a held-out split),
    since an over-fit discriminator gives extreme weights. On each source-validation
    example it gives the density ratio
    ``w(x) = (N_s / N_t) * p(target | x) / p(source | x)``, where ``N_s``, ``N_t`` are the
    discriminator's training-set sizes (the factor undoes the class prior). DEV then
    applies `dev_risk_from_weights` to ``w`` and the per-example source-validation losses.

    The discriminator is fit on ``source_train_features`` vs ``target_features``, as in
    the paper. Without source training features it is cross-fitted instead: the
    validation set is split into ``num_folds`` folds and each fold's weights come from a
    discriminator fit on the other folds (vs all target features), so no example is
    weighted by a model that saw it. Probabilities are kept in ``[1e-7, 1 - 1e-7]`` so the
    weights stay finite; they are not otherwise clipped (the paper does not clip).

    Args:
      source_val_features: (N_v, ...) features of held-out labelled source examples.
      source_val_losses: (N_v,) their per-example losses (e.g. cross-entropy).
      target_features: (N_t, ...) features of (unlabelled) target examples.
      source_train_features: optional (N_tr, ...) features of source training examples.
      seed: seed of the cross-fitting folds.
      c_grid: inverse L2 strengths tried for the discriminator; one value fixes it.
      num_folds: folds of the cross-fitting (used only without source_train_features).

    Returns:
      dict with ``dev_risk``, ``iwcv_risk`` (importance-weighted mean loss), ``eta``,
      ``mean_weight`` (about 1 for a calibrated discriminator; far from 1 means the
      weights are unreliable), ``max_weight`` and ``C`` (the selected constant).

    References:
      You, Wang, Long, Wang, "Towards Accurate Model Selection in Deep Unsupervised Domain
      Adaptation", ICML 2019, Algorithm 1. Sugiyama et al., "Covariate Shift Adaptation by
      Importance Weighted Cross Validation", JMLR 2007 (IWCV).
    """
    xv = flatten_features(source_val_features, "source_val_features")
    xt = flatten_features(target_features, "target_features")
    losses = np.asarray(source_val_losses, np.float64).reshape(-1)
    if losses.shape[0] != xv.shape[0]:
        raise ValueError(f"{losses.shape[0]} losses for {xv.shape[0]} validation features")
    if xv.shape[1] != xt.shape[1]:
        raise ValueError(f"feature sizes differ: source D={xv.shape[1]}, target D={xt.shape[1]}")

    # Logit-space clip == probability clip to [eps, 1 - eps], without 0/0 or overflow.
    max_logit = math.log((1.0 - _DEV_PROB_EPS) / _DEV_PROB_EPS)
    log_w = np.empty(len(xv))
    if source_train_features is not None:
        xtr = flatten_features(source_train_features, "source_train_features")
        if xtr.shape[1] != xv.shape[1]:
            raise ValueError("source_train_features and source_val_features differ in D")
        c = _select_dev_c(xtr, xt, c_grid, seed)
        logits = _domain_logits(xtr, xt, xv, c)
        log_w[:] = np.clip(logits, -max_logit, max_logit) + math.log(len(xtr) / len(xt))
    else:
        k = min(num_folds, len(xv))
        if k < 2:
            raise ValueError("cross-fitting needs at least 2 source validation examples")
        c = _select_dev_c(xv, xt, c_grid, seed)
        folds = np.array_split(np.random.default_rng(seed).permutation(len(xv)), k)
        for fold in folds:
            rest = np.setdiff1d(np.arange(len(xv)), fold)
            logits = _domain_logits(xv[rest], xt, xv[fold], c)
            log_w[fold] = np.clip(logits, -max_logit, max_logit) + math.log(len(rest) / len(xt))
    weights = np.exp(log_w)
    out = dev_risk_from_weights(weights, losses)
    out["max_weight"] = float(np.max(weights))
    out["C"] = c
    return out
