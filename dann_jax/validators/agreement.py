"""How well a validator's ranking of candidates agrees with the (report-only) target accuracy.

`selection_agreement` (moved here from `dann_jax.analysis`, which still re-exports it)
scores one validator over one set of candidates; `negative_transfer_guard` asks whether
the validators that work all prefer not adapting at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["HARMFUL_MESSAGE", "negative_transfer_guard", "selection_agreement"]


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


HARMFUL_MESSAGE = "adaptation looks harmful here"


def _broken_reason(scores: np.ndarray) -> str | None:
    """Why a validator's scores over the candidates cannot rank them (None if they can)."""
    if not np.all(np.isfinite(scores)):
        return "NaN or inf for some candidate"
    if np.ptp(scores) <= 1e-12 * max(1.0, float(np.max(np.abs(scores)))):
        return "the same score for every candidate"
    return None


def negative_transfer_guard(
    preferences: Mapping[str, Any],
    is_source_only: Sequence[bool],
    use: Sequence[str] | None = None,
) -> dict:
    """Whether every working validator prefers not adapting: a guard against negative transfer.

    For each validator, the best source-only candidate is compared with the best adapted
    one. If *every* validator that is not obviously broken ranks a source-only candidate
    first, adaptation looks harmful for this pair, and the caller should say so rather
    than pick an adapted model. "Obviously broken" needs no target labels: a NaN/inf
    score for some candidate (a validator that failed), or the same score for all of them
    (it ranks nothing). Requiring all of them to agree makes the guard conservative: one
    working validator that prefers adaptation silences it.

    Args:
      preferences: validator name -> (M,) "higher is better" scores of the M candidates
        (`dann_jax.validators.preference` of the raw values).
      is_source_only: (M,) True where the candidate is a source-only model.
      use: the validators to consult (default: all of `preferences`), e.g. those that a
        measurement found to track the target accuracy.

    Returns:
      dict with ``harmful`` (bool), ``message`` (``HARMFUL_MESSAGE`` and the validators'
      names, or None), ``used`` (names consulted), ``broken`` (name -> reason),
      ``prefers_source_only`` (name -> bool) and ``margin`` (name -> best source-only
      score minus best adapted score; > 0 where source-only is preferred).

    References:
      Pan & Yang, "A Survey on Transfer Learning", IEEE TKDE 2010 (negative transfer);
      Wang, Dai, Poczos, Carbonell, "Characterizing and Avoiding Negative Transfer",
      CVPR 2019.
    """
    mask = np.asarray(is_source_only, bool).reshape(-1)
    if mask.all() or not mask.any():
        raise ValueError("the guard needs source-only and adapted candidates")
    names = list(preferences) if use is None else list(use)
    broken, prefers, margin = {}, {}, {}
    for name in names:
        scores = np.asarray(preferences[name], np.float64).reshape(-1)
        if scores.shape != mask.shape:
            raise ValueError(f"{name}: {scores.size} scores for {mask.size} candidates")
        reason = _broken_reason(scores)
        if reason is not None:
            broken[name] = reason
            continue
        margin[name] = float(scores[mask].max() - scores[~mask].max())
        prefers[name] = margin[name] > 0.0
    harmful = bool(prefers) and all(prefers.values())
    message = None
    if harmful:
        message = (
            f"{HARMFUL_MESSAGE}: every working validator ({', '.join(prefers)}) ranks a "
            "source-only model above every adapted one"
        )
    return {
        "harmful": harmful,
        "message": message,
        "used": list(prefers),
        "broken": broken,
        "prefers_source_only": prefers,
        "margin": margin,
    }
