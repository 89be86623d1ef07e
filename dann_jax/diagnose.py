"""What a run can tell about its own adaptation without target labels, in plain words.

A user with an unlabelled target cannot check the target accuracy, but the run itself
shows three signs that adaptation did not happen or went wrong:

* the discriminator told the domains apart all along (its training accuracy stayed near
  1 in the second half of the run): the features were not aligned;
* the target predictions collapsed onto few classes (far more of one class than the
  source has, or many classes never predicted);
* with ``--analyze``, the proxy A-distance of the adapted features is no lower than that
  of a source-only model's.

Each becomes a warning (``kind``, ``message`` naming what to try) for the log and
``results.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ALIGNED_BELOW", "alignment", "collapse", "diagnose", "pad_not_lower"]

ALIGNED_BELOW = 0.95  # discriminator accuracy in the second half at or above: no alignment
PAD_MARGIN = 0.05  # the adapted features' proxy A-distance must be this much lower


def alignment(curves: Sequence[dict[str, Any]], lambda2: float) -> str | None:
    """A warning when the discriminator separated the domains through the second half of
    training (mean training accuracy at the evaluations there >= `ALIGNED_BELOW`)."""
    if lambda2 <= 0 or not curves:
        return None
    last = curves[-1]["step"]
    late = [
        r["train_domain_accuracy"]
        for r in curves
        if r["step"] * 2 >= last and isinstance(r.get("train_domain_accuracy"), (int, float))
    ]
    if not late or np.mean(late) < ALIGNED_BELOW:
        return None
    return (
        f"the discriminator told the domains apart through the second half of training "
        f"(accuracy {np.mean(late):.3f} on the training batches, 0.5 would mean aligned): "
        "the features did not align, so adaptation cannot have helped much. Try a smaller "
        "--lambda2 (0.3 or 0.1), --mcc 1, a slower discriminator (--discriminator-lr-mult "
        "0.1) or more --steps, and compare with --mode source_only."
    )


def collapse(target_logits: np.ndarray, source_labels: np.ndarray, class_names) -> str | None:
    """A warning when the target predictions crowd onto few classes: the most predicted
    class takes over half of them and over twice the source's largest class share (0.95
    at most), or under half of the classes are ever predicted (4 classes or more)."""
    k = len(class_names)
    predicted = np.bincount(np.argmax(target_logits, axis=1), minlength=k)
    n = int(predicted.sum())
    source_share = np.bincount(np.asarray(source_labels), minlength=k).max() / max(
        1, len(source_labels)
    )
    top = int(np.argmax(predicted))
    share = predicted[top] / max(1, n)
    unused = int((predicted == 0).sum())
    crowded = share > min(0.95, max(0.5, 2 * source_share))
    if not crowded and not (k >= 4 and unused > k / 2):
        return None
    return (
        f"the target predictions collapsed: {predicted[top]} of {n} target images are "
        f"predicted as {class_names[top]!r} (the source's largest class is "
        f"{source_share:.0%} of it) and {unused} of {k} classes are never predicted. Such a "
        "model is likely wrong on the target; compare with --mode source_only, and try a "
        "smaller --lambda2 or --mcc 1 (it penalises confusing the classes)."
    )


def pad_not_lower(analysis: dict[str, Any] | None, mode: str) -> str | None:
    """A warning when ``--analyze`` found the adapted features no closer across domains
    (proxy A-distance) than a source-only model's."""
    pad = (analysis or {}).get("proxy_a_distance") or {}
    mine, reference = pad.get(f"{mode}_features"), pad.get("source_only_features")
    if mode == "source_only" or mine is None or reference is None:
        return None
    if mine < reference - PAD_MARGIN:
        return None
    return (
        f"the proxy A-distance of the adapted features ({mine:.2f}) is not below a "
        f"source-only model's ({reference:.2f}): the domains are as separable as without "
        "adaptation. See the other warnings for what to try."
    )


def diagnose(
    curves: Sequence[dict[str, Any]],
    lambda2: float,
    target_logits: np.ndarray | None,
    source_labels: np.ndarray,
    class_names,
    analysis: dict[str, Any] | None = None,
    mode: str = "dann",
) -> list[dict[str, str]]:
    """Every warning of one model's run (`alignment`, `collapse`, `pad_not_lower`)."""
    found = {
        "no_alignment": alignment(curves, lambda2 if mode == "dann" else 0.0),
        "collapse": None
        if target_logits is None
        else collapse(target_logits, source_labels, class_names),
        "pad_not_lower": pad_not_lower(analysis, mode),
    }
    return [{"kind": k, "message": m} for k, m in found.items() if m is not None]


def run_warnings(config, data, per_seed, analysis=None) -> list[dict[str, Any]]:
    """`diagnose` for every seed of a finished run (`dann_jax.experiment`): each seed's
    final model predicts the target once more for the collapse check."""
    from dann_jax.outputs import LOGITS, predict_host

    out = []
    for r in per_seed:
        logits = predict_host(
            r["model"], r["state"], data.target_test, data.mean,
            domain=config.bn_domain("target"), keep=LOGITS,
        )["class_logits"]  # fmt: skip
        found = diagnose(
            r["curves"], config.lambda2, logits, data.source_labels, data.class_names,
            analysis if r is per_seed[0] else None, config.mode,
        )  # fmt: skip
        out += [{"seed": r["seed"], **w} for w in found]
    return out
