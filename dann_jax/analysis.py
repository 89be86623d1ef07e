"""Adaptation metrics: domain divergence (proxy A-distance), confusion, embeddings.

Pure numpy / scikit-learn / scipy functions over arrays that a training run has already
produced (features, labels, predictions, per-example losses); nothing here trains, calls
a DANN model or draws (the figures are in `dann_jax.plots`). The experiment runner
collects the arrays and writes the results with `write_analysis`.

* `proxy_a_distance`: the proxy A-distance between source and target features (Ganin et
  al. 2016, Sec. 5.1.5; Ben-David et al. 2007/2010).
* `confusion_matrix`; `embed` (t-SNE/PCA coordinates, for DANN Fig. 5).
* `write_analysis`: ``analysis.json`` through `dann_jax.io.write_json` (strict, atomic).

The label-free validators (DEV, `selection_agreement`, ...) live in `dann_jax.validators`;
`deep_embedded_validation`, `dev_risk_from_weights`, `selection_agreement`, `DEV_C_GRID`
and `flatten_features` are re-exported here for existing callers.

scikit-learn and scipy are imported inside the functions that need them, and matplotlib
never, so ``import dann_jax.analysis`` costs no more than numpy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dann_jax.io import write_json

# Moved to dann_jax.validators (label-free model selection); re-exported here so that
# code written against this module keeps working.
from dann_jax.validators import (
    DEV_C_GRID,
    deep_embedded_validation,
    dev_risk_from_weights,
    fit_quietly,
    flatten_features,
    selection_agreement,
)

__all__ = [
    "DEV_C_GRID",
    "PAD_C_GRID",
    "confusion_matrix",
    "deep_embedded_validation",
    "dev_risk_from_weights",
    "embed",
    "flatten_features",
    "proxy_a_distance",
    "selection_agreement",
    "write_analysis",
]

# C grid of the DANN reference code's proxy A-distance (linear SVM).
PAD_C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


# ----------------------------------------------------------------------------------------
# Proxy A-distance
# ----------------------------------------------------------------------------------------


def _linear_svm(c: float, seed: int):
    """Standardise-then-LinearSVC pipeline."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # Standardising puts every feature on the same scale, so one C grid suits raw pixels
    # and deep features alike; dual="auto" picks the primal solver when N > D.
    return make_pipeline(
        StandardScaler(), LinearSVC(C=c, dual="auto", max_iter=5000, random_state=seed)
    )


def proxy_a_distance(
    source: Any,
    target: Any,
    *,
    seed: int = 0,
    max_samples: int = 4000,
    test_fraction: float = 0.5,
    c_grid: Sequence[float] = PAD_C_GRID,
    val_fraction: float = 0.25,
) -> dict:
    """Proxy A-distance ``PAD = 2 (1 - 2 eps)`` between source and target features.

    A linear SVM learns to tell source (label 0) from target (label 1) examples; ``eps`` is
    its error on held-out examples. PAD is near 2 for domains a linear classifier separates
    perfectly and near 0 for indistinguishable ones (it may be slightly negative by chance).

    Procedure: each domain is subsampled (seeded, without replacement) to the same size
    ``n = min(N_s, N_t, max_samples // 2)``, so the classes are balanced and the test error
    is the balanced error. Each domain's sample is split into a training part and a test
    part (``test_fraction``). ``C`` is chosen from ``c_grid`` by the error on a validation
    part (``val_fraction``) of the training part, the SVM is refit on the whole training
    part with that ``C``, and ``eps`` is its error on the test part. (The reference code
    instead reports the smallest *test* error over the grid, which is optimistic.)

    Args:
      source: (N_s, ...) source features (or raw inputs); flattened to (N_s, D).
      target: (N_t, ...) target features with the same D.
      seed: seed of the subsampling, the splits and the SVM solver.
      max_samples: total number of examples used at most (half per domain).
      test_fraction: fraction of each domain's sample held out to measure ``eps``.
      c_grid: SVM regularisation constants tried (smallest wins ties).
      val_fraction: fraction of the training part used to select ``C``.

    Returns:
      dict with ``pad`` (float), ``error`` (held-out error eps), ``n_train`` and ``n_test``
      (examples, both domains together; ``n_train`` includes the validation part),
      ``C`` (the selected constant) and ``classifier`` (a description).

    References:
      Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016,
      Sec. 5.1.5. Ben-David et al., "Analysis of Representations for Domain Adaptation",
      NIPS 2007; Ben-David et al., "A theory of learning from different domains", Machine
      Learning 2010.
    """
    xs, xt = flatten_features(source, "source"), flatten_features(target, "target")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"feature sizes differ: source D={xs.shape[1]}, target D={xt.shape[1]}")
    if not 0.0 < test_fraction < 1.0 or not 0.0 < val_fraction < 1.0:
        raise ValueError("test_fraction and val_fraction must lie in (0, 1)")
    if not c_grid:
        raise ValueError("c_grid is empty")
    n = min(len(xs), len(xt), max_samples // 2)
    if n < 4:
        raise ValueError(f"need at least 4 examples per domain (and max_samples >= 8), got {n}")
    # Per-domain sizes of the three parts; every part keeps at least one example per domain.
    n_test = min(max(round(n * test_fraction), 1), n - 2)
    n_val = min(max(round((n - n_test) * val_fraction), 1), n - n_test - 1)
    n_fit = n - n_test - n_val

    rng = np.random.default_rng(seed)
    xs = xs[rng.choice(len(xs), n, replace=False)]
    xt = xt[rng.choice(len(xt), n, replace=False)]

    def part(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([xs[lo:hi], xt[lo:hi]])
        y = np.concatenate([np.zeros(hi - lo, np.int64), np.ones(hi - lo, np.int64)])
        return x, y

    x_fit, y_fit = part(0, n_fit)
    x_val, y_val = part(n_fit, n_fit + n_val)
    x_train, y_train = part(0, n_fit + n_val)
    x_test, y_test = part(n_fit + n_val, n)

    best_c, best_val_err = None, math.inf
    for c in sorted(c_grid):
        model = fit_quietly(_linear_svm(c, seed), x_fit, y_fit)
        val_err = float(np.mean(model.predict(x_val) != y_val))
        if val_err < best_val_err:  # strict: ties keep the smaller, more regularised C
            best_c, best_val_err = c, val_err
    model = fit_quietly(_linear_svm(best_c, seed), x_train, y_train)
    error = float(np.mean(model.predict(x_test) != y_test))
    return {
        "pad": 2.0 * (1.0 - 2.0 * error),
        "error": error,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "C": float(best_c),
        "classifier": f"LinearSVC(C={best_c:g}) on standardised features",
    }


# ----------------------------------------------------------------------------------------
# Confusion matrix, embeddings
# ----------------------------------------------------------------------------------------


def confusion_matrix(labels: Any, predictions: Any, num_classes: int = 10) -> np.ndarray:
    """Confusion counts: ``matrix[i, j]`` = examples of true class i predicted as j.

    Args:
      labels: (N,) integer true labels in [0, num_classes).
      predictions: (N,) integer predicted labels in [0, num_classes).
      num_classes: K.

    Returns:
      (K, K) int64 counts; rows are true classes, columns predictions; sums to N.
    """
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(predictions).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels for {p.size} predictions")
    for name, v in (("labels", y), ("predictions", p)):
        if v.size == 0:
            continue
        # Integer-valued floats are accepted (e.g. labels stored as float32).
        if not np.issubdtype(v.dtype, np.integer) and not np.all(np.mod(v, 1) == 0):
            raise ValueError(f"{name} must be integers")
        if v.min() < 0 or v.max() >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{v.min()}, {v.max()}]")
    flat = y.astype(np.int64) * num_classes + p.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def embed(features: Any, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D embedding of features by t-SNE or PCA.

    Args:
      features: (N, ...) array, flattened to (N, D); N >= 2.
      method: "tsne" (sklearn TSNE, PCA initialisation, perplexity
        ``min(30, (N - 1) / 3)`` so that small N stays valid) or "pca".
      seed: random state.

    Returns:
      (N, 2) float64 coordinates.

    References:
      van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008.
    """
    x = flatten_features(features, "features")
    if len(x) < 2:
        raise ValueError("embed needs at least 2 points")
    if x.shape[1] < 2:  # PCA/t-SNE need two input dimensions for two output ones
        x = np.concatenate([x, np.zeros((len(x), 2 - x.shape[1]))], axis=1)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, (len(x) - 1) / 3.0)
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            random_state=seed,
        )
        return tsne.fit_transform(x).astype(np.float64)
    raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}")


# ----------------------------------------------------------------------------------------
# analysis.json
# ----------------------------------------------------------------------------------------


def write_analysis(workdir: str | os.PathLike, analysis: Mapping[str, Any]) -> str:
    """Write ``analysis`` to ``<workdir>/analysis.json`` atomically, as strict JSON.

    Same as ``dann_jax.io.write_json(<workdir>/analysis.json, analysis, sort_keys=True,
    make_parents=True)``: numpy scalars and arrays (and JAX arrays) become JSON numbers
    and lists; NaN/inf become null and are listed under the top-level ``"non_finite"``
    key; a reader never sees a partial file.

    Args:
      workdir: run directory (created if missing).
      analysis: mapping of results (nested dicts/lists allowed).

    Returns:
      The path of ``analysis.json``.
    """
    path = os.path.join(os.fspath(workdir), "analysis.json")
    return write_json(path, analysis, sort_keys=True, make_parents=True)
