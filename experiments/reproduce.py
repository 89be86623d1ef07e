"""The DANN paper's digits table: ``python experiments/reproduce.py --data-dir DIR``.

Runs every pair x mode (source_only, dann, target_only) x seed with the paper recipe
(and, with ``--recipes paper,improved``, a labelled improved recipe) and writes
``OUT/table.md`` and ``OUT/table.json`` with the paper's / tllib's numbers beside ours.
Without --data-dir it runs the embedded default pair only (a smoke run, not the paper).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dann_jax.config import Config

DEFAULT_PAIRS = "mnist:mnist_m,mnist:usps,usps:mnist"


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--data-dir", default=None, help="raw upstream files (mnist/, mnist_m/, usps/, svhn/)")
    a("--tfds-dir", default=None, help="prepared TFDS records (default ~/tensorflow_datasets)")
    a(
        "--pairs",
        default=None,
        help=f"source:target list (default with --data-dir: {DEFAULT_PAIRS})",
    )
    a("--modes", default="source_only,dann,target_only")
    a("--recipes", default="paper", help="comma list of: paper, improved")
    a("--steps", type=int, default=12_000)
    a("--seeds", type=int, default=3)
    a("--batch-size", type=int, default=64)
    a("--steps-per-call", type=int, default=100)
    a("--eval-every", type=int, default=2000)
    a(
        "--vmap-seeds",
        default="auto",
        choices=("auto", "on", "off"),
        help="train a cell's seeds in one vmapped program (auto: on unless on CPU)",
    )
    a(
        "--compilation-cache",
        default=None,
        help="JAX persistent compilation cache folder (default OUT/jax_cache; 'none' = off)",
    )
    a("--out", default="runs/reproduce")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Parse flags and run the table; errors become one paragraph and exit code 2."""
    args = parse_args(argv)
    pairs = args.pairs or (DEFAULT_PAIRS if args.data_dir else "mnist:mnist_m")
    pairs = [tuple(p.split(":", 1)) for p in pairs.split(",")]
    base = Config(
        data_dir=args.data_dir,
        tfds_dir=args.tfds_dir,
        steps=args.steps,
        seeds=args.seeds,
        batch_size=args.batch_size,
        steps_per_call=args.steps_per_call,
        eval_every=args.eval_every,
        vmap_seeds=args.vmap_seeds == "on",
    )
    from dann_jax import reproduce
    from dann_jax.cli import run_cli

    bad = [p for p in pairs if len(p) != 2]
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in reproduce.RECIPES]
    if bad or unknown:
        print(f"error: bad --pairs {bad} or unknown --recipes {unknown}", file=sys.stderr)
        return 2

    cache = args.compilation_cache or os.path.join(args.out, "jax_cache")

    def runner(config):
        if args.vmap_seeds == "auto":
            import jax

            config = config.replace(vmap_seeds=jax.default_backend() != "cpu")
        table = reproduce.reproduce(
            config, pairs, args.modes.split(","), recipes, args.out,
            compilation_cache=None if cache == "none" else cache,
        )  # fmt: skip
        print(open(os.path.join(args.out, "table.md")).read())
        return table

    return run_cli(base, runner=runner)


if __name__ == "__main__":
    sys.exit(main())
