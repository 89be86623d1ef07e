"""What the validators share: input checks, a quiet scikit-learn fit, softmax.

Only numpy is imported at module level; scikit-learn inside the functions that use it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["fit_quietly", "flatten_features", "softmax", "standardised_logistic"]


def flatten_features(x: Any, name: str) -> np.ndarray:
    """(N, ...) array-like -> float64 (N, D); rejects empty and non-finite input.

    Args:
      x: features (or raw inputs) of N examples, any trailing shape.
      name: what `x` is, for the error message.

    Returns:
      float64 (N, D) array, D the product of the trailing dimensions.

    Raises:
      ValueError: `x` is a scalar, has no rows, or holds NaN/inf.
    """
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, ...) array, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1).astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def fit_quietly(model, x: np.ndarray, y: np.ndarray):
    """Fit, silencing convergence warnings (large C on separable data hits max_iter)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


def standardised_logistic(c: float, max_iter: int = 1000):
    """Standardise-then-L2-logistic-regression pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax of (N, C) logits in float64; rejects empty and non-finite input."""
    z = flatten_features(logits, "logits")
    z = z - z.max(axis=1, keepdims=True)  # exp of at most 0: no overflow
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
