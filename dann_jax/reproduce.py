"""The DANN paper's digits table: every pair x mode x seed, one Markdown + JSON table.

Each cell is an ordinary `dann_jax.experiment.run` (so it resumes, and writes its own
``results.json``) in ``OUT/<source>-<target>/<mode>[-<recipe>]``. Protocol: fixed step
count, last-step target accuracy, mean ± std over seeds, no model selection on target
labels. The paper's (and tllib's) numbers are printed beside ours.

Cells run mode by mode in the order the modes are given (then pair, then recipe), so
that a run cut short has finished the most wanted cells first (DANN before the
source-only and oracle controls when ``dann`` is listed first). Each pair's data are
loaded once per process and shared by the cells that train on them.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dann_jax.cli import RECIPES as CONFIG_RECIPES
from dann_jax.config import Config
from dann_jax.io import write_json, write_text

__all__ = [
    "PAPER",
    "RECIPES",
    "cell_order",
    "data_key",
    "enable_compilation_cache",
    "expected_seconds",
    "make_runner",
    "reproduce",
    "write_table",
]

# (source, target) -> {mode: reference accuracy}; DANN paper Table 2 (Ganin et al. 2016)
# and, where the paper has no number, tllib's digits benchmark (LeNet; tllib DANN).
PAPER: dict[tuple[str, str], dict[str, tuple[float, str]]] = {
    ("mnist", "mnist_m"): {
        "source_only": (0.5225, "paper"),
        "dann": (0.7666, "paper"),
        "target_only": (0.9596, "paper"),
    },
    ("mnist", "usps"): {"dann": (0.917, "tllib")},
    ("usps", "mnist"): {"dann": (0.952, "tllib")},
    ("svhn", "mnist"): {
        "source_only": (0.5490, "paper"),
        "dann": (0.7385, "paper"),
        "target_only": (0.9942, "paper"),
    },
}

# The table's recipes: the digits ones of `dann_jax.cli.RECIPES`.
RECIPES = {k: v for k, v in CONFIG_RECIPES.items() if k in ("paper", "improved")}

MODES = ("source_only", "dann", "target_only")


def _cell_config(base: Config, pair, mode: str, recipe: str, out: Path) -> Config:
    """The config of one table cell."""
    source, target = pair
    name = f"{source}-{target}".replace("/", "_")
    sub = mode if recipe == "paper" else f"{mode}-{recipe}"
    arch = "svhn" if "svhn" in (source, target) else base.arch
    return dataclasses.replace(
        base, source=source, target=target, mode=mode, arch=arch,
        workdir=str(out / name / sub), **RECIPES[recipe],
    ).validate()  # fmt: skip


def cell_order(
    pairs: Sequence[tuple[str, str]], modes: Sequence[str], recipes: Sequence[str]
) -> list[tuple[tuple[str, str], str, str]]:
    """(pair, recipe, mode) of every cell, mode by mode in the order given, then pair, recipe."""
    return [(tuple(p), r, m) for m in modes for p in pairs for r in recipes]


def data_key(config: Config) -> tuple:
    """What a cell's training data depend on (`dann_jax.experiment.load_data`).

    The recipe changes the model, never the data; source-only and DANN train on the
    same pair, while the oracle (target_only) swaps in the labelled target set.
    """
    return (
        config.source, config.target, config.mode == "target_only", config.arch,
        config.resize, config.data_dir, config.tfds_dir, config.bsds_dir,
    )  # fmt: skip


def make_runner(log: Callable[[str], None] = print) -> Callable[[Config], dict]:
    """A cell runner (`dann_jax.experiment.run`) that loads each `data_key` only once."""
    from dann_jax import experiment

    cache: dict[tuple, Any] = {}

    def run(config: Config) -> dict:
        key = data_key(config)
        if key not in cache:
            cache[key] = experiment.load_data(config, log)
        return experiment.run(config, log=log, data=cache[key])

    return run


# Rough costs used only to announce a table's duration (guesses, not measurements): a
# training step of one cell (all its seeds vmapped on an accelerator; per seed on a CPU,
# from the README's CPU runs), the fixed cost of a cell (tracing, compiling, the final
# evaluation, checkpoint and plot) and of loading a pair.
_COSTS = {
    "gpu": {"step": 0.7e-3, "per_seed": False, "cell": 5.0, "load": 5.0},
    "cpu": {"step": 0.1, "per_seed": True, "cell": 10.0, "load": 5.0},
}


def expected_seconds(base: Config, cells: list, backend: str) -> float:
    """A rough duration of `cells` (from `cell_order`) with `base`'s steps and seeds."""
    cost = _COSTS["cpu" if backend == "cpu" else "gpu"]
    steps = base.steps or 12_000
    step = cost["step"] * (base.seeds if cost["per_seed"] or not base.vmap_seeds else 1)
    loads = {(pair, mode == "target_only") for pair, _, mode in cells}
    return len(cells) * (cost["cell"] + steps * step) + len(loads) * cost["load"]


def _row(pair, mode: str, recipe: str, r: dict[str, Any]) -> dict[str, Any]:
    """One table row from a cell's results."""
    ref = PAPER.get(tuple(pair), {}).get(mode)
    return {
        "source": pair[0],
        "target": pair[1],
        "mode": mode,
        "recipe": recipe,
        "target_accuracy": r["target_accuracy"],
        "target_accuracy_std": r["target_accuracy_std"],
        "per_seed": [s["target_accuracy"] for s in r["seeds"]],
        "source_accuracy": r["source_accuracy"],
        "steps": r["config"]["steps"],
        "seeds": r["config"]["seeds"],
        "data_variant": r["dataset"]["variant"],
        "target_train_size": r["dataset"]["target"]["train_size"],
        "wall_seconds": r["wall_seconds"],
        "reference": ref[0] if ref else None,
        "reference_source": ref[1] if ref else None,
        "device": r["device"]["kind"],
        "vmap_seeds": r["config"].get("vmap_seeds", False),
    }


def _announce(base: Config, cells: list, log: Callable[[str], None]) -> None:
    """Say how many cells will run and roughly how long they will take."""
    import jax

    backend = jax.default_backend()
    seconds = expected_seconds(base, cells, backend)
    log(
        f"== {len(cells)} cells x {base.seeds} seed(s) x {base.steps or 'default'} steps on "
        f"{backend} "
        f"(seeds {'vmapped' if base.vmap_seeds else 'one after another'}): "
        f"expected ~{seconds:.0f} s (rough)"
    )


def reproduce(
    base: Config,
    pairs: Sequence[tuple[str, str]],
    modes: Sequence[str],
    recipes: Sequence[str],
    out: str | os.PathLike,
    run: Callable[[Config], dict] | None = None,
    log: Callable[[str], None] = print,
    compilation_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run every (pair, recipe, mode) cell with ``base.seeds`` seeds and tabulate.

    ``base.vmap_seeds`` trains each cell's seeds in one vmapped program (what makes
    the whole table fit a few minutes on one GPU). Cells run in `cell_order`.

    Args:
      base: shared settings (steps, seeds, data dir, batch size, ...).
      pairs: (source, target) domain names.
      modes: subset of ``source_only``, ``dann``, ``target_only``, most wanted first.
      recipes: names in `RECIPES` (``paper`` first).
      out: output folder; gets ``table.md`` and ``table.json``.
      run: the cell runner (default `make_runner`: `dann_jax.experiment.run`, each
        pair's data loaded once).
      log: progress output.
      compilation_cache: folder for JAX's persistent compilation cache; cells that
        share a program (source-only and DANN differ only in traced values) and
        resumed runs then skip compilation.

    Returns:
      The table as a dict (also written to ``table.json``).
    """
    run = run or make_runner(log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if compilation_cache is not None:
        enable_compilation_cache(compilation_cache)
    rows: list[dict[str, Any]] = []
    cells = cell_order(pairs, modes, recipes)
    table = {
        "date": datetime.date.today().isoformat(),
        "protocol": "last-step target test accuracy, mean ± population std over seeds; "
        "target labels used only to report; fixed number of steps",
        "base_config": dataclasses.asdict(base),
        "complete": False,
        "cells": len(cells),
        "rows": rows,
    }
    _announce(base, cells, log)
    start = time.perf_counter()
    for i, (pair, recipe, mode) in enumerate(cells, 1):
        config = _cell_config(base, pair, mode, recipe, out)
        log(f"== cell {i}/{len(cells)}: {pair[0]} -> {pair[1]}, {mode}, recipe {recipe}: "
            f"{config.workdir} (at {time.perf_counter() - start:.0f} s)")  # fmt: skip
        rows.append(_row(pair, mode, recipe, run(config)))
        # After every cell, so that a run cut short still leaves the cells it finished
        # (marked incomplete).
        table["complete"] = len(rows) == len(cells)
        write_table(out, table)
    return table


def enable_compilation_cache(path: str | os.PathLike) -> None:
    """Turn on JAX's persistent compilation cache in `path` for every program size."""
    import jax

    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(Path(path).absolute()))
    # The default threshold (1 s) would skip the small programs that make up most of a
    # table's compile time: the paper models compile in about a second each.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def write_table(out: Path, table: dict[str, Any]) -> None:
    """Write ``table.json`` and ``table.md`` (ours beside the paper / tllib), atomically.

    Both go through `dann_jax.io`: strict JSON (a NaN accuracy of a diverged cell is
    written as null and listed under ``"non_finite"``), and each file is replaced whole,
    so a reader never sees a half-written table.

    Args:
      out: an existing folder.
      table: the dict `reproduce` builds (``date``, ``protocol``, ``rows``, ...).
    """
    write_json(out / "table.json", table)
    lines = [
        "| pair | recipe | mode | ours (mean ± std) | per seed | reference | steps | data |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in table["rows"]:
        ref = f"{r['reference']:.4f} ({r['reference_source']})" if r["reference"] else "—"
        seeds = ", ".join(f"{a:.4f}" for a in r["per_seed"])
        lines.append(
            f"| {r['source']} → {r['target']} | {r['recipe']} | {r['mode']} | "
            f"{r['target_accuracy']:.4f} ± {r['target_accuracy_std']:.4f} | {seeds} | {ref} | "
            f"{r['steps']} | {r['data_variant']} ({r['target_train_size']} target train) |"
        )
    status = ""
    if not table.get("complete", True):
        status = f"INCOMPLETE: {len(table['rows'])} of {table['cells']} cells finished. "
    resize = table.get("base_config", {}).get("resize", "auto")
    preprocessing = f"Images reach the input size with resize={resize!r}" + (
        " (MNIST-M centre-cropped to 28, USPS into MNIST's 20-pixel box)."
        if resize == "auto"
        else "."
    )
    write_text(
        out / "table.md",
        f"{status}Digits, {table['date']}. Protocol: {table['protocol']}. {preprocessing}\n\n"
        + "\n".join(lines)
        + "\n",
    )
