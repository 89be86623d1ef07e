"""Adaptation metrics: domain divergence, label-free model selection, confusion, embeddings.

Pure numpy / scikit-learn / scipy functions over arrays that a training run has already
produced (features, labels, predictions, per-example losses); nothing here trains, calls
a DANN model or draws (the figures are in `dann_jax.plots`). The experiment runner
collects the arrays and writes the results with `write_analysis`.

* `proxy_a_distance`: the proxy A-distance between source and target features (Ganin et
  al. 2016, Sec. 5.1.5; Ben-David et al. 2007/2010).
* `deep_embedded_validation` / `dev_risk_from_weights`: DEV, a label-free estimate of the
  target risk for model selection (You et al., ICML 2019).
* `selection_agreement`: how well a label-free validator picks the candidate with the best
  (report-only) target accuracy.
* `confusion_matrix`; `embed` (t-SNE/PCA coordinates, for DANN Fig. 5);
  `flatten_features` (the input check the others share).
* `write_analysis`: ``analysis.json`` through `dann_jax.io.write_json` (strict, atomic).

scikit-learn and scipy are imported inside the functions that need them, and matplotlib
never, so ``import dann_jax.analysis`` costs no more than numpy.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dann_jax.io import write_json

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
# Inverse L2 strengths tried for the DEV discriminator (selected on held-out log-loss).
DEV_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Probabilities of the DEV discriminator are kept in [eps, 1 - eps]: an over-confident
# discriminator would otherwise give an infinite density ratio (or a zero one).
_DEV_PROB_EPS = 1e-7


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


def _fit_quietly(model, x: np.ndarray, y: np.ndarray):
    """Fit, silencing convergence warnings (large C on separable data hits max_iter)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y)


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
        model = _fit_quietly(_linear_svm(c, seed), x_fit, y_fit)
        val_err = float(np.mean(model.predict(x_val) != y_val))
        if val_err < best_val_err:  # strict: ties keep the smaller, more regularised C
            best_c, best_val_err = c, val_err
    model = _fit_quietly(_linear_svm(best_c, seed), x_train, y_train)
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
# Deep Embedded Validation
# ----------------------------------------------------------------------------------------


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
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([x_source, x_target])
    y = np.concatenate([np.zeros(len(x_source), np.int64), np.ones(len(x_target), np.int64)])
    model = _fit_quietly(
        make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)), x, y
    )
    return model.decision_function(x_eval)


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


# ----------------------------------------------------------------------------------------
# Label-free model selection
# ----------------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rho (average ranks for ties); None if n < 3 or either input is constant."""
    from scipy.stats import rankdata

    if len(a) < 3:
        return None
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rb, rb)))
    if denom == 0.0:
        return None
    return float(np.clip(np.dot(ra, rb) / denom, -1.0, 1.0))


def selection_agreement(
    validator_scores: Any, target_accuracies: Any, lower_is_better: bool = True
) -> dict:
    """How well a label-free validator's choice agrees with the target accuracy.

    Each candidate (a checkpoint, an evaluation step, a run) has a validator score (e.g.
    DEV risk, source validation error, PAD) and a target accuracy that is used only for
    reporting. The validator chooses its best candidate; the oracle chooses the one with
    the best target accuracy. Candidates whose score or accuracy is NaN/inf are dropped.

    Args:
      validator_scores: (M,) validator scores.
      target_accuracies: (M,) target accuracies of the same candidates.
      lower_is_better: True for risks/errors (DEV), False for accuracies.

    Returns:
      dict with ``spearman`` (rank correlation between the validator's preference, i.e.
      ``-score`` when lower is better, and the target accuracy; 1.0 means it orders the
      candidates exactly as the target accuracy does; None for fewer than 3 candidates or
      constant inputs), ``chosen_index`` (into the original arrays; first on ties),
      ``chosen_accuracy``, ``oracle_index``, ``oracle_accuracy``, ``gap``
      (``oracle_accuracy - chosen_accuracy`` >= 0) and ``n_candidates`` (after dropping).

    References:
      You et al., ICML 2019, Sec. 5 (model-selection evaluation of validators).
    """
    scores = np.asarray(validator_scores, np.float64).reshape(-1)
    accs = np.asarray(target_accuracies, np.float64).reshape(-1)
    if scores.shape != accs.shape:
        raise ValueError(f"{scores.size} scores for {accs.size} accuracies")
    keep = np.flatnonzero(np.isfinite(scores) & np.isfinite(accs))
    if keep.size == 0:
        raise ValueError("no candidate has a finite score and accuracy")
    preference = -scores[keep] if lower_is_better else scores[keep]
    kept_accs = accs[keep]
    chosen = int(keep[np.argmax(preference)])
    oracle = int(keep[np.argmax(kept_accs)])
    return {
        "spearman": _spearman(preference, kept_accs),
        "chosen_index": chosen,
        "chosen_accuracy": float(accs[chosen]),
        "oracle_index": oracle,
        "oracle_accuracy": float(accs[oracle]),
        "gap": float(accs[oracle] - accs[chosen]),
        "n_candidates": int(keep.size),
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
