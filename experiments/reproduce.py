"""The DANN paper's digits table: ``python experiments/reproduce.py --data-dir DIR``.

Runs every pair x mode (dann, source_only, target_only) x seed with the paper recipe
(and, with ``--recipes paper,improved``, a labelled improved recipe) and writes
``OUT/table.md`` and ``OUT/table.json`` with the paper's / tllib's numbers beside ours.
Cells run mode by mode in the order of ``--modes`` (the paper's column order by default;
the device run puts DANN first, so a run cut short has the most wanted ones); each pair's
data are loaded once. Without --data-dir it
runs the embedded default pair only (a smoke run, not the paper).

On an accelerator, seeds are vmapped (``--vmap-seeds auto``), and ``--eval-every`` equal
to ``--steps`` evaluates and checkpoints each cell once, at its last step (the table
needs nothing else)::

    python experiments/reproduce.py --data-dir DIR --recipes paper,improved \
        --eval-every 12000 --steps-per-call 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from dann_jax import reproduce
from dann_jax.cli import add_config_arguments, config_from_args, parse_pairs, run_cli
from dann_jax.failures import fail

DEFAULT_PAIRS = "mnist:mnist_m,mnist:usps,usps:mnist"
MODES = ",".join(reproduce.MODES)  # the paper's column order; the cells run in this order

# The `dann_jax.config.Config` flags of this script (their help comes from the fields),
# with the table's defaults: the paper's length, three seeds, fewer dispatches.
CONFIG_FLAGS = (
    "data_dir",
    "tfds_dir",
    "steps",
    "seeds",
    "batch_size",
    "steps_per_call",
    "eval_every",
)
TABLE_DEFAULTS = {"steps": 12_000, "seeds": 3, "steps_per_call": 100, "eval_every": 2000}


def parser() -> argparse.ArgumentParser:
    """Command-line flags: some `Config` fields plus the table's own."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(p, CONFIG_FLAGS, TABLE_DEFAULTS)
    a = p.add_argument
    a(
        "--pairs",
        default=None,
        help=f"source:target list (default with --data-dir: {DEFAULT_PAIRS})",
    )
    a("--modes", default=MODES, help="comma list of modes, run in this order")
    a("--recipes", default="paper", help=f"comma list of: {', '.join(reproduce.RECIPES)}")
    # Not Config's boolean: "auto" picks by backend, so it gets its own dest.
    a(
        "--vmap-seeds",
        dest="vmap_seeds_choice",
        default="auto",
        choices=("auto", "on", "off"),
        help="train a cell's seeds in one vmapped program (auto: on unless on CPU)",
    )
    a(
        "--compilation-cache",
        default=None,
        help="JAX persistent compilation cache folder (default OUT/jax_cache; 'none' = off)",
    )
    a("--out", default="runs/reproduce", help="output folder (table.md, table.json, cells)")
    return p


def _check(modes, recipes, out, cache) -> str | None:
    """What is wrong with the table's own flags (the one named), or None."""
    from dann_jax import io

    unknown = [m for m in modes if m not in reproduce.MODES]
    if unknown:
        return f"--modes has {unknown}; choose from {list(reproduce.MODES)}."
    unknown = [r for r in recipes if r not in reproduce.RECIPES]
    if unknown:
        return f"--recipes has {unknown}; choose from {list(reproduce.RECIPES)}."
    try:
        io.check_writable(out, "--out")
        if cache != "none":
            io.check_writable(cache, "--compilation-cache")
    except io.NotWritable as e:
        return str(e)
    return None


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the table; errors become one paragraph and exit code 2."""
    args = parser().parse_args(argv)
    try:
        pairs = parse_pairs(args.pairs or (DEFAULT_PAIRS if args.data_dir else "mnist:mnist_m"))
    except ValueError as e:
        return fail(str(e))
    base = dataclasses.replace(config_from_args(args), vmap_seeds=args.vmap_seeds_choice == "on")
    recipes, modes = args.recipes.split(","), args.modes.split(",")
    cache = args.compilation_cache or os.path.join(args.out, "jax_cache")
    problem = _check(modes, recipes, args.out, cache)
    if problem:  # every argument checked before the first step of the first cell
        return fail(problem)

    def runner(config):
        if args.vmap_seeds_choice == "auto":
            import jax

            config = config.replace(vmap_seeds=jax.default_backend() != "cpu")
        table = reproduce.reproduce(
            config, pairs, modes, recipes, args.out,
            compilation_cache=None if cache == "none" else cache,
        )  # fmt: skip
        print(open(os.path.join(args.out, "table.md")).read())
        return table

    return run_cli(base, runner=runner)


if __name__ == "__main__":
    sys.exit(main())
