"""Choose without target labels: ``python experiments/selection.py --data-dir DIR``.

Trains, per pair and seed, a grid of candidates (per recipe: source-only, and DANN per
lambda2; every checkpoint is a candidate), scores each with every label-free validator
of `dann_jax.validators`, reports what the chosen validator (--select) picks, and writes
``OUT/selection.md`` and ``OUT/selection.json``: per validator, the Spearman correlation
with the target accuracy across candidates and the regret, beside always taking the
last step of the default run. Where every working validator prefers source-only it says
"adaptation looks harmful here". Target labels are used only to report. ``--rescore``
scores a finished selection again (another --select or --guard-validators) without
training. Without
--data-dir it runs the embedded default pair only (a smoke run). See `dann_jax.select`.

(Not ``experiments/select.py``: a script of that name would shadow the standard
library's ``select`` module, which JAX and subprocess import.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dann_jax import reproduce, validators
from dann_jax.cli import (
    RECIPES,
    add_config_arguments,
    config_from_args,
    parse_pairs,
    recipe_defaults,
    run_cli,
)
from dann_jax.failures import fail

DEFAULT_PAIRS = "mnist:mnist_m,mnist:usps,usps:mnist"

# The `dann_jax.config.Config` flags of this script (help from the fields), with defaults
# for a grid: short runs, three seeds, a checkpoint every 500 steps.
CONFIG_FLAGS = (
    "data_dir",
    "tfds_dir",
    "steps",
    "eval_every",
    "seed",
    "seeds",
    "batch_size",
    "steps_per_call",
    "image_size",  # own image folders: the size every image is brought to
    "target_unlabelled",
    # What adapt.py takes about the model and its inputs (the arms set the recipe's
    # BatchNorm and dropout): --recipe NAME sets these as defaults, as there.
    "arch",
    "pretrained",
    "bottleneck",
    "resize",
    "normalize",
    "augment",
    "rotate",
    "color_jitter",
    "precision",
)
SELECT_DEFAULTS = {"steps": 2000, "eval_every": 500, "seeds": 3, "steps_per_call": 50}


def _floats(text: str) -> list[float]:
    """``"0.1,0.3,1"`` -> [0.1, 0.3, 1.0]."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Command-line flags: some `Config` fields, --recipe, and the selection's own."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help="named settings applied as defaults, as in adapt.py (a flag given "
                   "still wins)")  # fmt: skip
    # The grid's short runs win over a recipe's length (--recipe office: 20,000 steps).
    defaults = {**recipe_defaults(argv), **SELECT_DEFAULTS}
    add_config_arguments(p, CONFIG_FLAGS, {k: v for k, v in defaults.items() if k in CONFIG_FLAGS})
    names = list(validators.VALIDATORS)
    a = p.add_argument
    a("--pairs", default=None, help=f"source:target list (with --data-dir: {DEFAULT_PAIRS})")
    a("--lambda2-grid", type=_floats, default="0.1,0.3,1", help="DANN arms' lambda2 list")
    a("--recipes", default="paper,improved", help=f"the grid's recipes, comma list of: "
      f"{', '.join(RECIPES)} (each arm takes its BatchNorm and dropout)")  # fmt: skip
    a(
        "--select",
        default="reverse_validation",
        choices=names,
        help="validator that picks (the default had the lowest regret in the README's table)",
    )
    a(
        "--guard-validators",
        default=None,
        help="comma list of validators the negative-transfer guard consults; unset: all "
        "(fewer gave a false alarm in the README's table)",
    )
    a("--val-size", type=int, default=1000, help="examples per validation subset")
    a(
        "--reverse-steps",
        type=int,
        default=0,
        help="> 0: also the paper's reverse validation, a reverse DANN of this many steps "
        "per checkpoint (costly)",
    )
    a(
        "--compilation-cache",
        default=None,
        help="JAX persistent compilation cache folder (default OUT/jax_cache; 'none' = off)",
    )
    a("--out", default="runs/select", help="output folder (selection.md, selection.json, runs)")
    a(
        "--rescore",
        action="store_true",
        help="no training: score OUT/selection.json again with --select and --guard-validators",
    )
    return p


def _check(args, recipes: list[str], guard: list[str] | None) -> str | None:
    """A message for a bad flag, or None."""
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        return f"unknown --recipes {unknown}; choose from {list(RECIPES)}"
    bad = [g for g in guard or [] if g not in validators.VALIDATORS]
    if bad:
        return f"unknown --guard-validators {bad}; choose from {list(validators.VALIDATORS)}"
    if not args.lambda2_grid or any(x <= 0 for x in args.lambda2_grid):
        return "--lambda2-grid needs at least one value, each > 0"
    if args.val_size < 10 or args.reverse_steps < 0:
        return "--val-size must be >= 10 and --reverse-steps >= 0"
    if args.select == "reverse_dann" and args.reverse_steps == 0:
        return "--select reverse_dann needs --reverse-steps > 0"
    return None


def _rescore(out: str, picker: str, guard: list[str] | None) -> int:
    """Score a finished (or partial) selection again; rewrite its selection.md and .json."""
    from pathlib import Path

    from dann_jax import select

    path = Path(out) / "selection.json"
    try:
        result = json.loads(path.read_text())
        computed = {n for c in result["cells"] for x in c["candidates"] for n in x["scores"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: --rescore needs a selection.json from a selection run in --out ({e})",
              file=sys.stderr)  # fmt: skip
        return 2
    if picker not in computed:
        print(f"error: {picker} was not computed in {path}; choose from {sorted(computed)}",
              file=sys.stderr)  # fmt: skip
        return 2
    select.write_outputs(Path(out), select.rescore(result, picker, guard))
    print((Path(out) / "selection.md").read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the selection; errors become one paragraph and exit code 2."""
    args = parser(argv).parse_args(argv)
    recipes = args.recipes.split(",")
    guard = args.guard_validators.split(",") if args.guard_validators else None
    try:
        pairs = parse_pairs(args.pairs or (DEFAULT_PAIRS if args.data_dir else "mnist:mnist_m"))
    except ValueError as e:
        return fail(str(e))
    problem = _check(args, recipes, guard)
    if problem:
        return fail(problem)
    if args.rescore:
        return _rescore(args.out, args.select, guard)
    cache = args.compilation_cache or os.path.join(args.out, "jax_cache")
    from dann_jax import io

    try:  # before any training: a run never computes for hours and then loses its table
        io.check_writable(args.out, "--out")
        if cache != "none":
            io.check_writable(cache, "--compilation-cache")
    except io.NotWritable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def runner(config):
        from dann_jax import select

        if cache != "none":
            reproduce.enable_compilation_cache(cache)
        result = select.select(
            config, pairs, recipes, args.lambda2_grid, args.out,
            picker=args.select, val_size=args.val_size, reverse_steps=args.reverse_steps,
            guard_use=guard,
        )  # fmt: skip
        print(open(os.path.join(args.out, "selection.md")).read())
        return result

    return run_cli(config_from_args(args), runner=runner)


if __name__ == "__main__":
    sys.exit(main())
