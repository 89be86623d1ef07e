"""The pure part of `dann_jax.select`: the grid, scoring a cell, and the summary rows.

`grid` lists the arms (training runs) of a pair and seed; `score_cell` measures every
validator against the report-only target accuracy over one cell's candidates (Spearman,
regret, the pick, the negative-transfer guard); `summarize` averages cells into rows;
``selection.json`` and ``selection.md`` are written by `dann_jax.select.report`. Nothing
here trains a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dann_jax import validators

__all__ = [
    "DEFAULT_LAMBDA2",
    "HARM_MARGIN",
    "PROTOCOL",
    "Arm",
    "default_arm",
    "grid",
    "harmful_candidates",
    "rescore",
    "score_cell",
    "summarize",
]

DEFAULT_LAMBDA2 = 1.0  # the paper's (and Config's) lambda2: the "default" run's value
# A candidate this far (3 points) below its recipe's source-only last step is negative
# transfer: picking it is worse than not adapting at all.
HARM_MARGIN = 0.03

PROTOCOL = (
    "Candidates: every checkpoint of every arm (per recipe: source-only, and DANN per "
    "lambda2). Per pair and seed, each validator's Spearman ρ between its preference and "
    "the target test accuracy across the candidates, and its regret = best candidate's "
    "target accuracy − picked candidate's; then mean ± std over seeds. Baselines: the last "
    "step of the default run (DANN, first recipe, lambda2 1.0) and of source-only. A "
    "harmful pick is a candidate >= 3 points below its recipe's source-only last step. "
    "Target labels are used only to report, never to pick."
)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One training run of the grid: a recipe, a mode and (for DANN) lambda2."""

    recipe: str
    mode: str
    lambda2: float

    @property
    def name(self) -> str:
        """``source_only``, or ``dann_l<lambda2>``."""
        return "source_only" if self.mode == "source_only" else f"dann_l{self.lambda2:g}"


def grid(recipes: Sequence[str], lambda2_grid: Sequence[float]) -> list[Arm]:
    """Per recipe: a source-only arm, then one DANN arm per lambda2."""
    return [
        arm
        for r in recipes
        for arm in (Arm(r, "source_only", 0.0), *(Arm(r, "dann", float(x)) for x in lambda2_grid))
    ]


def default_arm(arms: Sequence[Arm]) -> Arm:
    """What one would run without selection: DANN, first recipe, lambda2 nearest 1."""
    first = [a for a in arms if a.mode == "dann" and a.recipe == arms[0].recipe]
    return min(first, key=lambda a: abs(a.lambda2 - DEFAULT_LAMBDA2))


def _last_step_id(candidates: list[dict], arm: Arm) -> str:
    """The id of an arm's last-step candidate."""
    mine = [c for c in candidates if c["id"].startswith(f"{arm.recipe}/{arm.name}@")]
    return max(mine, key=lambda c: c["step"])["id"]


def harmful_candidates(candidates: list[dict], margin: float = HARM_MARGIN) -> list[str]:
    """Ids of the adapted candidates that are negative transfer (reported only).

    A candidate is harmful when its target accuracy is at least ``margin`` below the last
    step of its own recipe's source-only arm: choosing it is worse than not adapting.
    Judged per candidate, not per run, so an early checkpoint of a run that ends badly
    may still be a fine pick, and an undertrained checkpoint of a good run may not be.

    References:
      Wang, Dai, Poczos, Carbonell, "Characterizing and Avoiding Negative Transfer",
      CVPR 2019, Sec. 3 (negative transfer: target performance below the source-only
      model's).
    """
    floor = {
        c["recipe"]: c["target_accuracy"]
        for c in sorted(candidates, key=lambda c: c["step"])
        if c["mode"] == "source_only"
    }  # the last (highest) step of each recipe's source-only arm wins
    return [
        c["id"]
        for c in candidates
        if c["mode"] != "source_only"
        and c["recipe"] in floor
        and c["target_accuracy"] <= floor[c["recipe"]] - margin
    ]


def score_cell(
    candidates: list[dict], arms: Sequence[Arm], picker: str, guard_use: Sequence[str] | None
) -> dict:
    """Every validator's agreement with the target accuracy, the pick and the guard.

    Args:
      candidates: from `train_cell` (each with ``scores`` and ``target_accuracy``).
      arms: the grid (its first recipe's source-only and default arms are baselines).
      picker: the validator whose choice is "the pick".
      guard_use: validators the guard consults (None: every one computed; names not
        computed are left out).

    Ties go to the first candidate in grid order (`selection_agreement`), and the guard
    needs a source-only candidate strictly ahead.

    Returns:
      dict with ``validators`` (name -> `dann_jax.validators.selection_agreement` plus
      ``picked_id``, ``regret`` and ``harmful_pick``), ``baselines`` (the default arm's
      and the source-only arm's last step, with regret and ``harmful_pick``), ``picked``
      (the picker's candidate), ``guard``, ``harmful`` (`harmful_candidates`) and
      ``oracle`` (best target accuracy, reported only).
    """
    if any(c["target_accuracy"] is None for c in candidates):
        return _score_unlabelled(candidates, arms, picker, guard_use)
    accs = np.array([c["target_accuracy"] for c in candidates], np.float64)
    harmful = harmful_candidates(candidates)
    # A validator missing for some candidates (e.g. reverse_dann, added on a rerun) is
    # NaN there, and so counts as broken for the guard.
    names = [n for n in validators.VALIDATORS if any(n in c["scores"] for c in candidates)]
    per_validator, prefs = {}, {}
    for name in names:
        raw = np.array([c["scores"].get(name, math.nan) for c in candidates], np.float64)
        prefs[name] = validators.preference(name, raw)
        if not np.isfinite(raw).any():
            per_validator[name] = None
            continue
        agree = validators.selection_agreement(prefs[name], accs, lower_is_better=False)
        agree["picked_id"] = candidates[agree["chosen_index"]]["id"]
        agree["tied_ids"] = _tied(prefs[name], candidates)
        agree["regret"] = agree.pop("gap")  # oracle accuracy minus the picked one's
        agree["harmful_pick"] = agree["picked_id"] in harmful
        per_validator[name] = agree
    oracle = float(accs.max())
    by_id = {c["id"]: c for c in candidates}
    baselines = {}
    for label, arm in (
        ("default_last_step", default_arm(arms)),
        ("source_only_last_step", arms[0]),
    ):
        c = by_id[_last_step_id(candidates, arm)]
        baselines[label] = {
            "id": c["id"],
            "regret": oracle - c["target_accuracy"],
            "harmful_pick": c["id"] in harmful,
        }
    is_so = [c["mode"] == "source_only" for c in candidates]
    use = None if guard_use is None else [n for n in guard_use if n in prefs]
    guard = validators.negative_transfer_guard(prefs, is_so, use=use)
    pick = per_validator.get(picker)
    return {
        "validators": per_validator,
        "baselines": baselines,
        "picked": None if pick is None else {"validator": picker, **by_id[pick["picked_id"]]},
        "guard": guard,
        "harmful": harmful,
        "oracle": {"target_accuracy": oracle, "id": candidates[int(np.argmax(accs))]["id"]},
    }


def _tied(preference: np.ndarray, candidates: list[dict]) -> list[str]:
    """The ids of every candidate whose preference equals the best one (the first of them
    in grid order is the pick); one id when there is no tie."""
    best = np.nanmax(preference)
    return [c["id"] for c, v in zip(candidates, preference, strict=True) if v == best]


def _score_unlabelled(candidates: list[dict], arms, picker: str, guard_use) -> dict:
    """`score_cell` for a target without labels: each validator's pick and the guard only.

    Without labels there is nothing to measure a validator against (no Spearman, no
    regret, no oracle); the picks and the guard's verdict are label-free all the same.
    """
    names = [n for n in validators.VALIDATORS if any(n in c["scores"] for c in candidates)]
    per_validator, prefs = {}, {}
    for name in names:
        raw = np.array([c["scores"].get(name, math.nan) for c in candidates], np.float64)
        prefs[name] = validators.preference(name, raw)
        if not np.isfinite(prefs[name]).any():
            per_validator[name] = None
            continue
        best = int(np.nanargmax(prefs[name]))  # ties: the first in grid order
        per_validator[name] = {"chosen_index": best, "picked_id": candidates[best]["id"],
                               "tied_ids": _tied(prefs[name], candidates),
                               "spearman": None, "regret": None, "harmful_pick": None}  # fmt: skip
    by_id = {c["id"]: c for c in candidates}
    ends = (("default_last_step", default_arm(arms)), ("source_only_last_step", arms[0]))
    baselines = {
        label: {"id": _last_step_id(candidates, arm), "regret": None, "harmful_pick": None}
        for label, arm in ends
    }
    is_so = [c["mode"] == "source_only" for c in candidates]
    use = None if guard_use is None else [n for n in guard_use if n in prefs]
    pick = per_validator.get(picker)
    return {
        "validators": per_validator,
        "baselines": baselines,
        "picked": None if pick is None else {"validator": picker, **by_id[pick["picked_id"]]},
        "guard": validators.negative_transfer_guard(prefs, is_so, use=use),
        "harmful": [],
        "oracle": None,
    }


def _mean_std(values: list[float]) -> dict[str, Any]:
    """Mean, population std and count of the finite values (None when there are none)."""
    a = np.array([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if a.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(a.mean()), "std": float(a.std()), "n": int(a.size)}


def summarize(cells: list[dict]) -> list[dict]:
    """One row per validator (then the baselines): Spearman, regret and harmful picks.

    Spearman and regret are first computed within a cell (one pair and seed, over its
    candidates), then averaged over the seeds of a pair and over all cells. ``harmful``
    counts the cells whose pick was harmful (`harmful_candidates`) out of the cells that
    had a harmful candidate at all.
    """
    pairs = list(dict.fromkeys(c["pair"] for c in cells))
    names = list(dict.fromkeys(n for c in cells for n in c["score"]["validators"]))
    rows = []

    def row(label, direction, get):
        entry = {"validator": label, "better": direction, "pairs": {}}
        for p in [*pairs, "all"]:
            mine = [c for c in cells if p in ("all", c["pair"])]
            got = [get(c) for c in mine]
            at_risk = [g[2] for c, g in zip(mine, got, strict=True) if c["score"].get("harmful")]
            entry["pairs"][p] = {
                "spearman": _mean_std([g[0] for g in got]),
                "regret": _mean_std([g[1] for g in got]),
                "harmful": {"picks": sum(bool(h) for h in at_risk), "cells": len(at_risk)},
            }
        rows.append(entry)

    def of_validator(name):
        def get(cell):
            v = cell["score"]["validators"].get(name)
            if v is None:
                return (None, None, None)
            return (v["spearman"], v["regret"], v.get("harmful_pick"))

        return get

    def of_baseline(label):
        def get(cell):
            b = cell["score"]["baselines"][label]
            return (None, b["regret"], b.get("harmful_pick"))

        return get

    for name in names:
        better = "lower" if validators.VALIDATORS[name].lower_is_better else "higher"
        row(name, better, of_validator(name))
    for label in ("default_last_step", "source_only_last_step"):
        row(label, "-", of_baseline(label))
    return rows


def rescore(result: dict, picker: str, guard_use: Sequence[str] | None) -> dict:
    """A finished (or partial) result scored again with another picker or guard.

    Training is the costly part of a selection and the candidates in ``selection.json``
    keep every validator's raw value, so choosing another validator needs no retraining.

    Args:
      result: the content of a ``selection.json``.
      picker: the validator whose choice is "the pick".
      guard_use: validators the guard consults (None: every one computed).

    Returns:
      A new result: every cell's ``score`` and the ``rows`` recomputed, ``picker`` and
      ``guard_use`` set; candidates, settings and timings as they were.
    """
    arms = grid(result["grid"]["recipes"], result["grid"]["lambda2"])
    cells = [
        {**cell, "score": score_cell(cell["candidates"], arms, picker, guard_use)}
        for cell in result["cells"]
    ]
    guard = None if guard_use is None else list(guard_use)
    return {**result, "picker": picker, "guard_use": guard, "cells": cells,
            "rows": summarize(cells)}  # fmt: skip
