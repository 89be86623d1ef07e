"""DANN on digit domains: ``python experiments/digits.py --lambda2 1.0``.

Trains a domain-adversarial network from a labelled source digit domain to an
unlabelled target domain and reports the target test accuracy at the last step.
Without --data-dir and without network it runs MNIST -> MNIST-M on the embedded
default (small, real MNIST digits and an MNIST-M-style target synthesised from them)
and says so. See `dann_jax.experiment` for what is written to --workdir.

Every flag is a field of `dann_jax.config.Config` (``--help`` lists them with their
defaults). Multi-host TPU slices: run the same command on every host with --multihost
(it calls ``jax.distributed.initialize()``); one program over a mesh of every device of
the slice splits each step's batch over them and averages the gradients.
"""

from __future__ import annotations

import argparse
import sys

from dann_jax.cli import config_from_args, make_parser, recipe_defaults, run_cli

EXAMPLES = """examples:
  python experiments/digits.py --lambda2 1.0                     # MNIST -> MNIST-M, the paper
  python experiments/digits.py --data-dir DIR --batchnorm --bn-stats per_domain --dropout 0.5
  python experiments/digits.py --source usps --target mnist --data-dir DIR --seeds 3
Your own images: experiments/adapt.py. More: docs/running.md."""


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command-line flags: one per `dann_jax.config.Config` field, in groups, and
    ``--recipe`` (whose settings become the defaults; `argv` is looked at for it)."""
    return make_parser(__doc__.split("\n\n")[0], EXAMPLES, recipe_defaults(argv))


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run; known errors become one paragraph and exit code 2."""
    return run_cli(config_from_args(parser(argv).parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
