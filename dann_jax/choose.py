"""Choosing among candidate models without target labels, inside a run.

A run of ``adapt.py`` (or `dann_jax.fit`) trains a few candidates together (source-only
and the default method at several lambda2: `dann_jax.suite`'s stacking) and, at every
evaluation, scores each with label-free validators (`candidate_scores`); the choice
(`choose`) then keeps one candidate's checkpoint and says why, or falls back to
source-only when adaptation looks harmful.

This module holds the scoring; what it measures on the shift suite is in
docs/results.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dann_jax import validators
from dann_jax.outputs import LOGITS, predict_host
from dann_jax.validators.probes import mixval

__all__ = ["REVERSE_SOURCE_IMAGES", "candidate_scores", "prediction_stats"]

# Reverse validation's source images: the validation split and up to this many source
# training images (the reverse classifier never saw either; 50 validation images of a
# 500-image folder resolve only 2 points).
REVERSE_SOURCE_IMAGES = 1000
PROBE_IMAGES = 1000  # target images for MixVal's mixes and reverse validation


def prediction_stats(logits: np.ndarray, num_classes: int) -> dict[str, float]:
    """How target predictions spread over the classes: the share of the most predicted
    class and the number of classes predicted at all (a collapse shows in both)."""
    counts = np.bincount(np.argmax(logits, axis=1), minlength=num_classes)
    return {
        "top_class_share": float(counts.max() / max(1, counts.sum())),
        "classes_predicted": int((counts > 0).sum()),
    }


def _subset(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def candidate_scores(model, state, data, domains: dict[str, int | None], seed: int = 0):
    """Every label-free score of one model, and its logits on the whole target.

    Args:
      model: the `DANN` module.
      state: its host `TrainState` (or anything with ``params`` and ``batch_stats``).
      data: the `dann_jax.data.PairData`; its target labels are never read here.
      domains: the BatchNorm domain of ``"source"`` and ``"target"`` images
        (`dann_jax.Config.bn_domain`).
      seed: the draw of the probe subsets (the same for every candidate).

    Returns:
      ``(scores, target_logits)``: validator name -> value (each in its own direction,
      `dann_jax.validators.VALIDATORS`; NaN where one failed), plus `prediction_stats`;
      and the (N_target, K) logits on ``data.target_test``.
    """
    mean = data.mean
    logits = predict_host(
        model, state, data.target_test, mean, domain=domains["target"], keep=LOGITS
    )["class_logits"]  # the whole target's features would be N x D floats: the probe's only
    probe = _subset(len(logits), PROBE_IMAGES, seed + 1)
    probe_features = predict_host(
        model, state, data.target_test[probe], mean, domain=domains["target"]
    )["features"]
    tr = _subset(len(data.source_train), REVERSE_SOURCE_IMAGES, seed)
    src_images = np.concatenate([data.source_test, data.source_train[tr]])
    src_labels = np.concatenate([data.source_test_labels, data.source_labels[tr]])
    source = predict_host(model, state, src_images, mean, src_labels, domain=domains["source"])
    n_val = len(data.source_test)
    predict = lambda x: predict_host(model, state, x, mean, domain=domains["target"])[
        "class_logits"
    ]
    jobs = {
        "information_maximization": lambda: validators.information_maximization(logits),
        "mean_entropy": lambda: validators.mean_entropy(logits),
        "bnm": lambda: validators.batch_nuclear_norm(logits),
        "snd": lambda: validators.soft_neighborhood_density(logits[probe]),
        "source_accuracy": lambda: validators.source_accuracy(
            source["class_logits"][:n_val], src_labels[:n_val]
        ),
        "reverse_validation": lambda: validators.reverse_validation(
            probe_features, logits[probe], source["features"], src_labels,
            classifier="ridge",
        )["accuracy"],
        "mixval": lambda: mixval(
            predict, data.target_test[probe], seed=seed, logits=logits[probe]
        )["mixval"],
    }  # fmt: skip
    scores: dict[str, Any] = {}
    for name, job in jobs.items():
        try:
            scores[name] = float(job())
        except ValueError:
            scores[name] = float("nan")
    scores.update(prediction_stats(logits, data.num_classes))
    return scores, logits


# ------------------------------------------------------------------------- the choice

SOURCE_ONLY = "source_only"


def with_ensemble(scores: list[dict[str, Any]], logits: list[np.ndarray]) -> list[dict]:
    """`scores` of the candidates of one evaluation, each with its EnsV agreement."""
    agreement = validators.ensemble_agreement(logits)
    return [{**s, "ensv": float(a)} for s, a in zip(scores, agreement, strict=True)]


def harmful(scores: dict[str, Any], reference: dict[str, Any], margin: float) -> str | None:
    """Why a candidate looks harmful next to source-only (`reference`), or None.

    Two signs that need no target label: its source validation accuracy fell more than
    `margin` below source-only's (it gave up the labelled task to fool the
    discriminator), or its target predictions collapsed (one class takes over half and
    over twice source-only's largest share).
    """
    drop = reference["source_accuracy"] - scores["source_accuracy"]
    if drop > margin:
        return f"source accuracy {scores['source_accuracy']:.3f}, {drop:.3f} below source-only's"
    share, ref_share = scores["top_class_share"], reference["top_class_share"]
    if share > max(0.5, 2 * ref_share):
        return f"target predictions collapsed ({share:.0%} one class; source-only {ref_share:.0%})"
    return None


def preferences(
    names: list[str], scores: list[dict[str, Any]], validator: str, margin: float
) -> list[tuple[float, str | None]]:
    """Each candidate's (preference, why it is excluded) at one evaluation.

    The preference is `validator`'s value (higher is better); a candidate that looks
    `harmful` next to source-only gets ``-inf`` and the reason, so source-only (always
    eligible) is what remains when every adapted candidate looks harmful.
    """
    reference = scores[names.index(SOURCE_ONLY)]
    out = []
    for name, s in zip(names, scores, strict=True):
        why = None if name == SOURCE_ONLY else harmful(s, reference, margin)
        value = s.get(validator, float("nan"))
        ok = why is None and value == value  # NaN: the validator failed on it
        out.append((float(value) if ok else float("-inf"), why))
    return out
