"""Validators that probe a model or compare candidates: MixVal and EnsV.

* `mixval`: Mixed samples as probes (Hu et al., NeurIPS 2023). Target images are mixed in
  pairs, ``x = a x_i + (1 - a) x_j`` with ``a = 0.55``, and the model should give each mix
  the pseudo-label of its larger part. The score is the mean of that agreement over pairs
  whose pseudo-labels are equal (intra-cluster) and over pairs whose are not
  (inter-cluster): a model whose classes are well separated *and* whose decision
  boundaries sit between the target's clusters scores high. It needs the model (to
  predict the mixes), not only its outputs.
* `ensemble_agreement`: EnsV (Hu et al., NeurIPS 2024). The candidates' mean predicted
  probabilities are a role model; each candidate scores its agreement with the
  ensemble's argmax on the target. The ensemble is at least as good as most of its
  members on average, so the pick is never among the worst (the paper's guarantee), at
  the price of leaning toward what most candidates predict.

Both are "higher is better" and read no target labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dann_jax.validators.base import flatten_features, softmax

__all__ = ["MIXVAL_ALPHA", "ensemble_agreement", "mixval"]

MIXVAL_ALPHA = 0.55  # Hu et al., NeurIPS 2023: a mix's larger part decides its label


def mixval(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    *,
    seed: int = 0,
    alpha: float = MIXVAL_ALPHA,
    logits: np.ndarray | None = None,
) -> dict[str, float]:
    """MixVal's interpolation consistency on unlabelled target images.

    Args:
      predict: uint8 images (N, H, W, C) -> class logits (N, K), the model under test.
      images: unlabelled target images, uint8 (N, H, W, C).
      seed: seed of the pairing (a permutation of the images).
      alpha: the weight of the first image of each pair (> 0.5: its pseudo-label is
        the mix's).
      logits: the model's logits on `images` when already computed (saves a pass).

    Returns:
      ``mixval`` (the mean of the two parts that exist; NaN when neither does),
      ``intra`` and ``inter`` (NaN when no pair of that kind exists).

    References:
      Hu, Liang, Liew, Xue, Bai, Wang, "Mixed Samples as Probes for Unsupervised Model
      Selection in Domain Adaptation", NeurIPS 2023, Sec. 3 (ICE scores).
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.dtype != np.uint8 or len(x) < 2:
        raise ValueError(
            f"mixval needs at least 2 uint8 images (N, H, W, C), got {x.dtype}{x.shape}"
        )
    pseudo = np.argmax(predict(x) if logits is None else np.asarray(logits), axis=1)
    other = np.random.default_rng(seed).permutation(len(x))
    mixed = alpha * x.astype(np.float32) + (1 - alpha) * x[other].astype(np.float32)
    # Back to uint8 (the model's input type), rounded: at most half a grey level off.
    mixed = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    label = pseudo if alpha >= 0.5 else pseudo[other]
    agree = np.argmax(predict(mixed), axis=1) == label
    same = pseudo == pseudo[other]
    intra = float(agree[same].mean()) if same.any() else float("nan")
    inter = float(agree[~same].mean()) if (~same).any() else float("nan")
    parts = [v for v in (intra, inter) if not np.isnan(v)]
    return {"mixval": float(np.mean(parts)) if parts else float("nan"), "intra": intra,
            "inter": inter}  # fmt: skip


def ensemble_agreement(candidate_logits: Sequence[Any]) -> np.ndarray:
    """EnsV: each candidate's agreement with the candidates' mean prediction.

    Args:
      candidate_logits: one (N, K) array of target logits per candidate, on the same
        target images in the same order.

    Returns:
      (candidates,) float64: the fraction of target images on which each candidate's
      argmax equals the argmax of the mean of all candidates' softmax probabilities.

    References:
      Hu, Liang, Liew, Xue, Bai, Wang, "Towards Reliable Model Selection for Unsupervised
      Domain Adaptation: An Empirical Study and A Certified Baseline", NeurIPS 2024
      Datasets and Benchmarks (EnsV).
    """
    probs = [softmax(flatten_features(z, "candidate logits")) for z in candidate_logits]
    if not probs or len({p.shape for p in probs}) != 1:
        raise ValueError("ensemble_agreement needs one (N, K) array per candidate, all alike")
    role = np.argmax(np.mean(probs, axis=0), axis=1)
    return np.asarray([np.mean(np.argmax(p, axis=1) == role) for p in probs], np.float64)
