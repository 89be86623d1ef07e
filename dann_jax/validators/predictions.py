"""Validators computed from a model's predictions (and features) on unlabelled target data.

Each is a pure function of arrays the model has already produced; see
`dann_jax.validators` for the list with directions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dann_jax.validators.base import (
    fit_quietly,
    flatten_features,
    softmax,
    standardised_logistic,
)

__all__ = [
    "SND_TEMPERATURE",
    "batch_nuclear_norm",
    "information_maximization",
    "mean_entropy",
    "reverse_validation",
    "soft_neighborhood_density",
    "source_accuracy",
]

# Saito et al. 2021 use tau = 0.05 on every data set (paper and code).
SND_TEMPERATURE = 0.05


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of `p`, with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return -np.sum(p * np.log(safe), axis=-1)


def mean_entropy(target_logits: Any) -> float:
    """Mean entropy of the target predictions, ``mean_i H(p_i)`` in nats (lower is better).

    0 when every prediction is one-hot, ``log C`` when every one is uniform. Confident
    target predictions are taken as a sign of adaptation; they are also what a collapsed
    model gives, which `information_maximization` penalises and this does not.

    References:
      Morerio, Cavazza, Murino, "Minimal-Entropy Correlation Alignment for Unsupervised
      Deep Domain Adaptation", ICLR 2018 (target entropy as the validation criterion
      of the alignment weight).
    """
    # Morerio et al. 2018: the entropy of the target predictions, averaged.
    return float(np.mean(_entropy(softmax(target_logits))))


def information_maximization(target_logits: Any) -> float:
    """``H(mean_i p_i) - mean_i H(p_i)`` on the target, in nats (higher is better).

    The mutual information between an input and its predicted class under the empirical
    target distribution: high when each prediction is confident (second term small) *and*
    the classes are used evenly (first term large). ``log C`` for confident predictions
    spread evenly over C classes; 0 for uniform predictions and for a model that gives
    every input the same prediction (collapse).

    References:
      Shi & Sha, "Information-Theoretical Learning of Discriminative Clusters for
      Unsupervised Domain Adaptation", ICML 2012; Liang, Hu, Feng, "Do We Really Need to
      Access the Source Data? Source Hypothesis Transfer for Unsupervised Domain
      Adaptation" (SHOT), ICML 2020 (the IM loss).
    """
    p = softmax(target_logits)
    # Shi & Sha 2012; SHOT's IM loss negated: diversity H(mean p) minus mean H(p).
    return float(_entropy(p.mean(axis=0)) - np.mean(_entropy(p)))


def soft_neighborhood_density(target_logits: Any, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of the target predictions (higher is better).

    Each target softmax output is L2-normalised; the cosine similarities of an example to
    all *other* examples, divided by ``temperature``, go through a softmax to give its soft
    neighbourhood distribution, and SND is the mean entropy of these distributions. It is
    high when predictions form dense clusters (many neighbours about equally close): for
    one-hot predictions in clusters of m, about ``log(m - 1)``. The self-similarity is
    excluded exactly (the authors' code fills it with ``-1 / tau``, which makes its weight
    about ``exp(-2 / tau)`` of a neighbour's, i.e. negligible). Cost O(N^2) memory: the
    caller bounds N. Blind spot: a collapsed model (every prediction alike) is one dense
    cluster and gets the maximum, ``log(N - 1)``; `information_maximization` and
    `batch_nuclear_norm` penalise exactly that.

    Args:
      target_logits: (N, C) class logits of N >= 2 target examples.
      temperature: tau (the paper's 0.05).

    References:
      Saito, Kim, Teterwak, Sclaroff, Darrell, Saenko, "Tune it the Right Way:
      Unsupervised Validation of Domain Adaptation via Soft Neighborhood Density", ICCV
      2021.
    """
    p = softmax(target_logits)
    if len(p) < 2:
        raise ValueError("soft_neighborhood_density needs at least 2 examples")
    f = p / np.linalg.norm(p, axis=1, keepdims=True)
    sim = (f @ f.T) / temperature  # Saito et al.: cosine similarity over tau
    np.fill_diagonal(sim, -np.inf)  # Saito et al.: the neighbours j != i of example i
    sim -= sim.max(axis=1, keepdims=True)
    q = np.exp(sim)
    q /= q.sum(axis=1, keepdims=True)
    return float(np.mean(_entropy(q)))  # Saito et al.: mean neighbourhood entropy


def batch_nuclear_norm(target_logits: Any) -> float:
    """Nuclear norm of the (N, C) target prediction matrix, normalised to [0, 1] (higher better).

    ``||P||_* / sqrt(N min(N, C))``. Since ``||P||_* <= sqrt(rank P) ||P||_F`` and
    ``||P||_F <= sqrt(N)`` for rows on the simplex, the maximum 1 is reached exactly by
    one-hot predictions spread evenly over ``min(N, C)`` classes: both discriminable
    (confident) and diverse (every class used). Collapsed one-hot predictions give
    ``1 / sqrt(min(N, C))``, uniform ones ``1 / sqrt(C min(N, C))``. Cui et al. maximise
    ``||P||_* / N``; the constant factor differs, the ranking of candidates evaluated on
    the same N examples does not.

    References:
      Cui, Wang, Zhuo, Li, Huang, Tian, "Towards Discriminability and Diversity: Batch
      Nuclear-norm Maximization under Label Insufficient Situations", CVPR 2020.
    """
    p = softmax(target_logits)
    n, c = p.shape
    # Cui et al. 2020: ||P||_* (sum of singular values), here over the bound sqrt(N D).
    return float(np.linalg.svd(p, compute_uv=False).sum() / math.sqrt(n * min(n, c)))


def source_accuracy(source_val_logits: Any, source_val_labels: Any) -> float:
    """Accuracy on held-out labelled source data (higher is better): the no-shift baseline.

    What one would select by with no domain shift; under shift it ignores the target.
    """
    logits = flatten_features(source_val_logits, "source_val_logits")
    labels = np.asarray(source_val_labels).reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {logits.shape[0]} logits")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def reverse_validation(
    target_features: Any,
    target_logits: Any,
    source_val_features: Any,
    source_val_labels: Any,
    *,
    c: float = 1.0,
    classifier: str = "logistic",
) -> dict:
    """Reverse validation on frozen features: the cheap form (higher accuracy is better).

    The forward model labels the unlabelled target (pseudo-labels ``argmax p``); a
    *reverse* classifier is trained on the target features with those pseudo-labels and
    evaluated on the labelled source validation set. If the forward model's target labels
    are right and its features align the domains, the reverse classifier carries them back
    to the source and scores high; wrong pseudo-labels or unaligned features score low.

    Ganin et al. train the reverse classifier with DANN itself (target -> source) on fresh
    parameters; here it is a multinomial logistic regression (standardised features, L2
    with inverse strength ``c``) on the forward model's *frozen* features: much cheaper,
    but it inherits the forward extractor instead of learning its own. The faithful form
    (a reverse DANN per candidate) is `dann_jax.select.reverse_dann_accuracy`.

    Args:
      target_features: (N_t, ...) features of unlabelled target examples.
      target_logits: (N_t, C) the forward model's class logits on them.
      source_val_features: (N_v, ...) features of held-out labelled source examples.
      source_val_labels: (N_v,) their labels.
      c: inverse L2 strength of the reverse classifier.
      classifier: ``"logistic"`` (multinomial logistic regression) or ``"ridge"``
        (least squares to the one-hot pseudo-labels, L2 strength ``1 / c``: one linear
        solve, ~100x faster, for scoring many candidates at every evaluation).

    Returns:
      dict with ``accuracy`` (the reverse classifier on the source validation set),
      ``risk`` (``1 - accuracy``) and ``pseudo_classes`` (distinct pseudo-labels).

    References:
      Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016,
      Sec. 5.1.2; Zhong, Fan, Yang, Verscheure, Ren, "Cross Validation Framework to Choose
      amongst Models and Datasets for Transfer Learning", ECML PKDD 2010.
    """
    xt = flatten_features(target_features, "target_features")
    xv = flatten_features(source_val_features, "source_val_features")
    pseudo = np.argmax(flatten_features(target_logits, "target_logits"), axis=1)
    labels = np.asarray(source_val_labels).reshape(-1)
    if len(pseudo) != len(xt) or len(labels) != len(xv) or xt.shape[1] != xv.shape[1]:
        raise ValueError("reverse_validation: mismatched example counts or feature sizes")
    classes = np.unique(pseudo)
    # Ganin et al. Sec. 5.1.2: the reverse classifier learns from the self-labelled target
    # and is evaluated on the labelled source validation set.
    if len(classes) == 1:  # a collapsed forward model: the reverse one can only say that
        predicted = np.full(len(xv), classes[0])
    else:
        model = standardised_logistic(c, max_iter=300) if classifier == "logistic" else None
        if classifier == "ridge":
            from sklearn.linear_model import RidgeClassifier
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0 / c))
        if model is None:
            raise ValueError(f"classifier must be 'logistic' or 'ridge', got {classifier!r}")
        predicted = fit_quietly(model, xt, pseudo).predict(xv)
    accuracy = float(np.mean(predicted == labels))
    return {"accuracy": accuracy, "risk": 1.0 - accuracy, "pseudo_classes": len(classes)}
