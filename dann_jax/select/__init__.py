"""Choosing without target labels: train a grid of candidates, score them, measure validators.

Behind ``experiments/selection.py``. For every source/target pair and seed, the candidates
are the checkpoints (every ``eval_every`` steps) of a few training runs ("arms"): for
each recipe of `dann_jax.cli.RECIPES` (``--recipes``), a source-only run and a DANN run per
``lambda2`` of a small grid. At every checkpoint a hook computes every label-free
validator of `dann_jax.validators` on fixed subsets, the same for every candidate of a
pair and seed:

* source validation: up to ``val_size`` labelled examples of the *source test* split;
* target: up to ``val_size`` target *training* images (their labels are never read);
* source training features (DEV's discriminator, as in You et al. 2019).

The target test accuracy of each candidate (from the training loop's evaluation on the
full target test set) is used only to report: for each validator, the Spearman
correlation between its preference and the target accuracy across the candidates and
its regret (best candidate's target accuracy minus the picked one's), beside the regret
of always taking the last step of the default run (DANN, first recipe, lambda2 1.0).
The negative-transfer guard (`dann_jax.validators.negative_transfer_guard`) says
"adaptation looks harmful here" where every working validator prefers a source-only
candidate.

Outputs in ``out``: ``selection.json`` and ``selection.md`` (`dann_jax.select.report`;
rewritten after every pair and seed, so a run cut short keeps what it finished) and the
runs themselves in ``out/<source>-<target>/seed_<k>/<recipe>/<arm>/`` (each resumes from
its checkpoints: rerun the same command to continue).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dann_jax import experiment, loop, validators
from dann_jax.cli import RECIPES
from dann_jax.config import Config
from dann_jax.data.pair import PairData
from dann_jax.outputs import LOGITS, predict_host, set_domains, validation_sets
from dann_jax.select.keep import PickKeeper, kept_pick
from dann_jax.select.report import write_outputs
from dann_jax.select.scoring import (
    DEFAULT_LAMBDA2,
    HARM_MARGIN,
    PROTOCOL,
    Arm,
    default_arm,
    grid,
    harmful_candidates,
    rescore,
    score_cell,
    summarize,
)

__all__ = [
    "DEFAULT_LAMBDA2",
    "HARM_MARGIN",
    "PROTOCOL",
    "Arm",
    "arm_config",
    "default_arm",
    "grid",
    "harmful_candidates",
    "make_hook",
    "rescore",
    "reverse_dann_accuracy",
    "score_cell",
    "select",
    "summarize",
    "train_cell",
    "validation_sets",
    "write_outputs",
]

_PREFIX = "v_"  # validator values in an evaluation record: v_<name>
_REVERSE_POOL = 10_000  # pseudo-labelled target images a reverse DANN trains on, at most


def _arm_settings(base: Config, recipe: str) -> dict:
    """The settings an arm's recipe fixes: the digit recipes' BatchNorm and dropout, or
    all of another recipe's (office) except what the selection itself sets."""
    settings = dict(RECIPES[recipe])
    if recipe in ("paper", "improved"):
        return settings
    # The selection's own length and batch, and the arch of the flags (or of the pair).
    return {k: v for k, v in settings.items() if k not in ("steps", "batch_size", "arch")}


def arm_config(base: Config, pair: tuple[str, str], seed: int, arm: Arm, workdir: Path) -> Config:
    """The config of one arm: one seed, the recipe's settings, no vmapping, no analysis."""
    arch = "svhn" if "svhn" in pair else base.arch
    lambda2 = arm.lambda2 if arm.mode == "dann" else base.lambda2  # unused by source-only
    return dataclasses.replace(
        base, source=pair[0], target=pair[1], arch=arch, mode=arm.mode, lambda2=lambda2,
        seed=seed, seeds=1, vmap_seeds=False, analyze=False, workdir=str(workdir),
        choose=False, **_arm_settings(base, arm.recipe),
    ).validate()  # fmt: skip


# ----------------------------------------------------------------------------------------
# Validators at every checkpoint
# ----------------------------------------------------------------------------------------


def make_hook(config: Config, data: PairData, sets: dict, reverse_steps: int, workdir: Path, log):
    """An ``on_eval`` hook for `dann_jax.loop.train_and_evaluate`: validators at each checkpoint.

    It runs the model over the three `validation_sets` (one compiled predict per model)
    and stores `dann_jax.validators.compute_validators` (plus ``reverse_dann`` when
    ``reverse_steps > 0``) in the record as ``v_<name>``, so the values are saved with
    the checkpoint's curves and come back when a finished run is resumed.
    """
    from dann_jax.train import make_model

    model = make_model(config, num_classes=data.num_classes)
    mean = np.asarray(data.mean, np.float32)
    domains = set_domains(config)

    def hook(state, record):
        out = {
            k: predict_host(model, state, x, mean, y, domain=domains[k])
            for k, (x, y) in sets.items()
        }
        out["source_val"]["labels"] = sets["source_val"][1]
        values = validators.compute_validators(
            out["source_val"], out["target"], out["source_train"]["features"], seed=config.seed
        )
        if reverse_steps > 0:
            values["reverse_dann"] = reverse_dann_accuracy(
                config, data, state, model, sets, reverse_steps,
                workdir / "reverse" / f"step_{record['step']}", log,
            )  # fmt: skip
        for name, value in values.items():
            # Checkpoints keep the records as JSON: a failed validator is stored as null.
            record[_PREFIX + name] = value if math.isfinite(value) else None

    return hook


def reverse_dann_accuracy(
    config: Config, data: PairData, state, model, sets: dict, steps: int, workdir: Path, log
) -> float:
    """Reverse validation as in the paper: a reverse DANN's source validation accuracy.

    The forward model (``state``) labels up to 10,000 target training images; a fresh
    DANN with the forward config is trained for ``steps`` steps from those pseudo-labelled
    target images (as its source) to the unlabelled source training images (as its
    target), and its accuracy on the labelled source validation subset is returned. The
    run resumes from its checkpoints in ``workdir``. Costs a training run per candidate.

    References:
      Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016,
      Sec. 5.1.2 (reverse validation, after Zhong et al., ECML PKDD 2010).
    """
    idx = np.random.default_rng(config.seed).permutation(len(data.target_train))[:_REVERSE_POOL]
    images = data.target_train[np.sort(idx)]
    mean = np.asarray(data.mean, np.float32)
    logits = predict_host(
        model, state, images, mean, domain=config.bn_domain("target"), keep=LOGITS
    )
    pseudo = np.argmax(logits["class_logits"], axis=1).astype(np.int32)
    source_val_images, source_val_labels = sets["source_val"]
    reverse = PairData(
        source_train=images, source_labels=pseudo, target_train=data.source_train,
        source_test=images[:1000], source_test_labels=pseudo[:1000],
        target_test=source_val_images, target_test_labels=source_val_labels,
        mean=data.mean, info={"variant": "reverse"}, class_names=data.class_names,
    )  # fmt: skip
    reverse_config = config.replace(
        mode="dann", steps=steps, eval_every=steps, steps_per_call=min(config.call_steps, steps)
    )
    (result,) = loop.train_and_evaluate(
        reverse_config, reverse, workdir, (config.seed,), log=lambda _: None
    )
    accuracy = float(result["target_accuracy"])
    log(f"  reverse DANN ({steps} steps): source validation accuracy {accuracy:.4f}")
    return accuracy


# ----------------------------------------------------------------------------------------
# One pair and seed: train the arms, score the candidates
# ----------------------------------------------------------------------------------------


def train_cell(
    base: Config,
    data: PairData,
    pair: tuple[str, str],
    seed: int,
    arms: Sequence[Arm],
    out: Path,
    *,
    val_size: int,
    reverse_steps: int,
    log: Callable[[str], None],
    picker: str = "reverse_validation",
) -> list[dict]:
    """Train every arm of one pair and seed; return its candidates, one per checkpoint.

    The picker's best candidate is kept as a loadable workdir (`dann_jax.select.keep`).

    Args:
      base: shared settings (`arm_config` applies the arm's).
      data: the pair, loaded once for every arm and seed.
      pair: (source, target) names, for the run folders.
      seed: the training seed (and the seed of the validation subsets).
      arms: the grid (`grid`).
      out: output folder; the runs go to ``out/<source>-<target>/seed_<k>/...``.
      val_size: examples per validation subset (`validation_sets`).
      reverse_steps: > 0 adds ``reverse_dann`` at every checkpoint.
      log: progress output.

    Returns:
      Candidates: ``id`` (``recipe/arm@step``), ``recipe``, ``mode``, ``lambda2``,
      ``step``, ``last_step``, ``target_accuracy`` and ``source_accuracy`` (full test
      sets; reported only) and ``scores`` (validator -> raw value, NaN if it failed).
    """
    sets = validation_sets(data, seed, val_size)
    cell_dir = out / f"{pair[0]}-{pair[1]}".replace("/", "_") / f"seed_{seed}"
    keeper = PickKeeper(cell_dir / "picked", picker)
    candidates = []
    for arm in arms:
        workdir = cell_dir / arm.recipe / arm.name
        config = arm_config(base, pair, seed, arm, workdir)
        experiment.check_workdir(config, workdir, log, data)
        log(f"== {pair[0]} -> {pair[1]}, seed {seed}, {arm.recipe}/{arm.name}: {workdir}")
        scores = make_hook(config, data, sets, reverse_steps, workdir, log)

        def hook(state, record, scores=scores, config=config, arm=arm):
            scores(state, record)
            keeper.offer(config, data, state, record, f"{arm.recipe}/{arm.name}@{record['step']}")

        (result,) = loop.train_and_evaluate(config, data, workdir, (seed,), log, on_eval=hook)
        for record in result["curves"]:
            scores = {k[len(_PREFIX) :]: v for k, v in record.items() if k.startswith(_PREFIX)}
            candidates.append(
                {
                    "id": f"{arm.recipe}/{arm.name}@{record['step']}",
                    "recipe": arm.recipe,
                    "mode": arm.mode,
                    "lambda2": arm.lambda2,
                    "step": record["step"],
                    "last_step": record["step"] == config.steps,
                    "target_accuracy": record["target_accuracy"],
                    "source_accuracy": record["source_accuracy"],
                    "scores": {k: math.nan if v is None else v for k, v in scores.items()},
                }
            )
    return candidates


def select(
    base: Config,
    pairs: Sequence[tuple[str, str]],
    recipes: Sequence[str],
    lambda2_grid: Sequence[float],
    out: str | Path,
    *,
    picker: str = "reverse_validation",
    val_size: int = 1000,
    reverse_steps: int = 0,
    guard_use: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and score the grid for every pair and seed; write the table.

    Args:
      base: shared settings (steps, eval_every, batch size, data dir, ``seed`` and
        ``seeds``: the seeds are ``seed, ..., seed + seeds - 1``).
      pairs: (source, target) domain names.
      recipes: names in `dann_jax.cli.RECIPES`; the first is the default's.
      lambda2_grid: the DANN arms' lambda2 values.
      out: output folder.
      picker: the validator whose choice is reported as "the pick".
      val_size: examples per validation subset (source validation, target, source train).
      reverse_steps: > 0 adds ``reverse_dann`` (a reverse DANN of this many steps per
        checkpoint: the paper's reverse validation, costly).
      guard_use: validators the negative-transfer guard consults (None: all computed).
      log: progress output.

    Returns:
      The result (also in ``selection.json``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = grid(recipes, lambda2_grid)
    seeds = list(range(base.seed, base.seed + base.seeds))
    result = {
        "date": datetime.date.today().isoformat(),
        "protocol": PROTOCOL,
        "base_config": dataclasses.asdict(base),
        "grid": {"recipes": list(recipes), "lambda2": list(lambda2_grid), "seeds": seeds},
        "picker": picker,
        "guard_use": None if guard_use is None else list(guard_use),
        "val_size": val_size,
        "reverse_steps": reverse_steps,
        "validators": {n: dataclasses.asdict(v) for n, v in validators.VALIDATORS.items()},
        "device": experiment.device_info(),
        "complete": False,
        "cells": [],
        "rows": [],
    }
    for pair in pairs:
        first = arm_config(base, pair, seeds[0], arms[0], out)
        data = experiment.load_data(first, log)
        result["data_variant"] = data.info["variant"]
        for seed in seeds:
            start = time.perf_counter()
            candidates = train_cell(
                base, data, pair, seed, arms, out,
                val_size=val_size, reverse_steps=reverse_steps, log=log, picker=picker,
            )  # fmt: skip
            score = score_cell(candidates, arms, picker, guard_use)
            result["cells"].append(
                {"pair": f"{pair[0]}→{pair[1]}", "seed": seed, "candidates": candidates,
                 "score": score, "wall_seconds": time.perf_counter() - start}
            )  # fmt: skip
            cell_dir = out / f"{pair[0]}-{pair[1]}".replace("/", "_") / f"seed_{seed}"
            _log_cell(log, pair, seed, score, cell_dir / "picked")
            result["rows"] = summarize(result["cells"])
            result["complete"] = len(result["cells"]) == len(pairs) * len(seeds)
            write_outputs(out, result)
    return result


def _log_cell(log, pair, seed, score: dict, picked_dir: Path) -> None:
    """What was picked (and where its checkpoint is), and the guard's verdict."""
    pick, best = score["picked"], score["oracle"]
    what = "nothing" if pick is None else f"{pick['id']} by {pick['validator']}"
    if pick is not None and pick["target_accuracy"] is not None:
        what += f" (target accuracy, reported only: {pick['target_accuracy']:.4f})"
    tail = (
        "the target has no labels to measure it against"
        if best is None
        else f"best candidate {best['id']} ({best['target_accuracy']:.4f})"
    )
    log(f"{pair[0]} -> {pair[1]} seed {seed}: picked {what}; {tail}")
    if pick is not None:
        kept = kept_pick(picked_dir, pick["id"])
        log(
            f"  its checkpoint: {kept} (predict: python experiments/adapt.py --workdir {kept} "
            "--predict DIR, or dann_jax.load_run)"
            if kept
            else f"  its checkpoint was not kept in {picked_dir} (the grid was resumed after "
            "it was evaluated); rerun this selection in a new --out to keep it"
        )
    if score["guard"]["harmful"]:
        log(score["guard"]["message"])
