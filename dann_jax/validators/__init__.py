"""Label-free validators: rank trained models without target labels.

Unsupervised domain adaptation has no target labels to choose a checkpoint, a
hyperparameter or a recipe with. Each validator turns what a model outputs on unlabelled
target data (and on labelled *source* validation data) into one number. All are pure
numpy / scikit-learn functions over arrays a model has already produced;
`dann_jax.select` runs the models and measures each validator against the report-only
target accuracy.

* ``dev``: `deep_embedded_validation` (You et al., ICML 2019); lower is better.
* ``reverse_validation``: `reverse_validation`, the paper's own criterion (Ganin et al.,
  JMLR 2016, Sec. 5.1.2) in a cheap form on frozen features; ``reverse_dann`` is the
  faithful form (`dann_jax.select.reverse_dann_accuracy`, a reverse DANN per candidate).
* ``information_maximization``: `information_maximization` (Shi & Sha, ICML 2012).
* ``mean_entropy``: `mean_entropy` (Morerio et al., ICLR 2018); lower is better.
* ``snd``: `soft_neighborhood_density` (Saito et al., ICCV 2021).
* ``bnm``: `batch_nuclear_norm` (Cui et al., CVPR 2020).
* ``source_accuracy``: `source_accuracy` (no target signal at all: the baseline).

Two more score candidates with the model or with each other (higher is better; module
`probes`): `mixval` (Hu et al., NeurIPS 2023: the model on mixed target pairs) and
`ensemble_agreement` (EnsV, Hu et al., NeurIPS 2024: agreement with the candidates'
ensemble). `dann_jax.choose` uses them inside a run.

`VALIDATORS` holds each one's direction; `preference` maps values to a common "higher
is better" score; `compute_validators` computes them all for one checkpoint;
`selection_agreement` measures a validator's ranking against the target accuracy and
`negative_transfer_guard` asks whether the validators all prefer not adapting.

Modules: `base` (input checks, softmax), `predictions` (the validators on predictions and
features), `dev` (Deep Embedded Validation), `agreement` (ranking against the target
accuracy, the guard). scikit-learn and scipy are imported inside the functions that
need them, so importing this package costs no more than numpy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dann_jax.validators.agreement import (
    HARMFUL_MESSAGE,
    negative_transfer_guard,
    selection_agreement,
)
from dann_jax.validators.base import fit_quietly, flatten_features, softmax
from dann_jax.validators.dev import DEV_C_GRID, deep_embedded_validation, dev_risk_from_weights
from dann_jax.validators.predictions import (
    SND_TEMPERATURE,
    batch_nuclear_norm,
    information_maximization,
    mean_entropy,
    reverse_validation,
    soft_neighborhood_density,
    source_accuracy,
)
from dann_jax.validators.probes import MIXVAL_ALPHA, ensemble_agreement, mixval

__all__ = [
    "DEV_C_GRID",
    "HARMFUL_MESSAGE",
    "MIXVAL_ALPHA",
    "SND_TEMPERATURE",
    "VALIDATORS",
    "Validator",
    "batch_nuclear_norm",
    "compute_validators",
    "deep_embedded_validation",
    "dev_risk_from_weights",
    "ensemble_agreement",
    "fit_quietly",
    "flatten_features",
    "information_maximization",
    "mean_entropy",
    "mixval",
    "negative_transfer_guard",
    "preference",
    "reverse_validation",
    "selection_agreement",
    "soft_neighborhood_density",
    "softmax",
    "source_accuracy",
]


@dataclasses.dataclass(frozen=True)
class Validator:
    """What a validator's number means: its name, direction and source."""

    name: str
    lower_is_better: bool
    what: str
    reference: str


VALIDATORS: dict[str, Validator] = {
    v.name: v
    for v in (
        Validator("dev", True, "Deep Embedded Validation risk", "You et al., ICML 2019"),
        Validator(
            "reverse_validation",
            False,
            "source validation accuracy of a logistic regression trained on the "
            "pseudo-labelled target features (frozen)",
            "Ganin et al., JMLR 2016, Sec. 5.1.2; Zhong et al., ECML PKDD 2010",
        ),
        Validator(
            "reverse_dann",
            False,
            "source validation accuracy of a reverse DANN trained on the pseudo-labelled "
            "target (only with --reverse-steps)",
            "Ganin et al., JMLR 2016, Sec. 5.1.2",
        ),
        Validator(
            "information_maximization",
            False,
            "H(mean prediction) - mean H(prediction) on the target",
            "Shi & Sha, ICML 2012; Liang et al., ICML 2020",
        ),
        Validator(
            "mean_entropy", True, "mean target prediction entropy", "Morerio et al., ICLR 2018"
        ),
        Validator("snd", False, "soft neighbourhood density", "Saito et al., ICCV 2021"),
        Validator("bnm", False, "normalised batch nuclear norm", "Cui et al., CVPR 2020"),
        Validator("source_accuracy", False, "source validation accuracy", "-"),
    )
}


def preference(name: str, value: Any) -> np.ndarray | float:
    """A validator's value(s) as a "higher is better" score: negated when lower is better.

    Args:
      name: a key of `VALIDATORS`.
      value: a value or an array of values in the validator's own direction.

    Returns:
      A float for a scalar, else a float64 array; NaN stays NaN.
    """
    v = np.asarray(value, np.float64)
    out = -v if VALIDATORS[name].lower_is_better else v
    return float(out) if out.ndim == 0 else out


def compute_validators(
    source_val: Mapping[str, Any],
    target: Mapping[str, Any],
    source_train_features: Any = None,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Every validator that needs no training, for one model, from its outputs.

    Args:
      source_val: held-out labelled source examples: ``features``, ``class_logits``,
        ``loss`` (per-example cross-entropy) and ``labels``, as `dann_jax.evaluate.predict`
        returns them (plus the labels).
      target: unlabelled target examples: ``features`` and ``class_logits``.
      source_train_features: features of source training examples for DEV's
        discriminator, as in the paper (None: DEV cross-fits on the validation set).
      seed: seed of DEV's discriminator selection.

    Returns:
      name -> raw value, in each validator's own direction (`preference` makes it
      "higher is better"), for every name of `VALIDATORS` but ``reverse_dann``. A
      validator that rejects its input (ValueError, e.g. a degenerate checkpoint) gives
      NaN rather than losing the others; `negative_transfer_guard` then counts it broken.
    """
    t_logits, s_features = target["class_logits"], source_val["features"]
    jobs = {
        "dev": lambda: deep_embedded_validation(
            s_features, source_val["loss"], target["features"], source_train_features,
            seed=seed,
        )["dev_risk"],
        "reverse_validation": lambda: reverse_validation(
            target["features"], t_logits, s_features, source_val["labels"]
        )["accuracy"],
        "information_maximization": lambda: information_maximization(t_logits),
        "mean_entropy": lambda: mean_entropy(t_logits),
        "snd": lambda: soft_neighborhood_density(t_logits),
        "bnm": lambda: batch_nuclear_norm(t_logits),
        "source_accuracy": lambda: source_accuracy(
            source_val["class_logits"], source_val["labels"]
        ),
    }  # fmt: skip
    out = {}
    for name, job in jobs.items():
        try:
            out[name] = float(job())
        except ValueError:
            out[name] = math.nan
    return out
