"""DANN on your own images: ``python experiments/adapt.py --source S --target T``.

S is labelled (an image folder with one subfolder per class, an image-list file with
labels, or an .npz with y_train/y_test); T is the domain to adapt to, labels optional (a
flat folder of images, a list without labels, an .npz without y_*). The same settings,
training loop, checkpoints, resume and error handling as ``experiments/digits.py``, with
the defaults for data nobody tuned for (`dann_jax.cli.OWN_DATA`: the improved recipe's
model with MCC beside the adversary, trained together with a source-only model, the
better kept without target labels; native image size). Every target image is used
unlabelled in training and predicted: ``WORKDIR/predictions.csv`` (path, prediction,
probability). A source folder is split 90/10 for a source validation set.

With a finished run, ``--predict DIR`` classifies the images under DIR (recursively)
into ``WORKDIR/predictions_<DIR name>.csv`` (or ``--predict-out FILE``). See
docs/own_data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dann_jax.cli import (
    OWN_DATA,
    config_from_args,
    make_parser,
    recipe_defaults,
    run_cli,
    run_predict,
)
from dann_jax.config import Config
from dann_jax.config_fields import flag
from dann_jax.failures import fail

# The defaults of this script where they differ from `dann_jax.config.Config`'s.
ADAPT_DEFAULTS = {
    "source": None,
    "target": None,
    **OWN_DATA,
    "workdir": "runs/adapt",
}
EXAMPLES = """examples:
  python experiments/adapt.py --source labelled_folder --target unlabelled_folder
  python experiments/adapt.py --source src.txt --target tgt.txt --image-size 64 --steps 6000
  python experiments/adapt.py --workdir runs/adapt --predict new_images/
More: docs/own_data.md."""


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command-line flags: every `dann_jax.config.Config` field, --recipe and --predict."""
    p = make_parser(__doc__.split("\n\n")[0], EXAMPLES, recipe_defaults(argv, ADAPT_DEFAULTS))
    p.add_argument(
        "--predict",
        metavar="DIR",
        default=None,
        help="predict the images under DIR with the finished run in --workdir (no training)",
    )
    p.add_argument(
        "--predict-out",
        metavar="FILE",
        default=None,
        help="with --predict: write the predictions here (default: "
        "WORKDIR/predictions_<DIR name>.csv, another name when that holds another folder's)",
    )
    return p


def unused_with_predict(p: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """Why the flags given cannot go together: training flags with --predict (which uses
    the run's own settings: they would be ignored silently), --predict-out without it."""
    if args.predict is None:
        return "--predict-out needs --predict DIR." if args.predict_out is not None else None
    names = [f.name for f in dataclasses.fields(Config) if f.name != "workdir"]
    given = [flag(n) for n in names if getattr(args, n) != p.get_default(n)]
    if not given:
        return None
    return (
        f"--predict classifies with the run in --workdir as it was trained, so "
        f"{', '.join(given)} would not be used. Drop {'it' if len(given) == 1 else 'them'}: "
        "the run's own settings (image size, classes, model) apply."
    )


def main(argv: list[str] | None = None) -> int:
    """Train (or, with --predict, predict); errors become one paragraph and exit code 2."""
    p = parser(argv)
    args = p.parse_args(argv)
    problem = unused_with_predict(p, args)
    if problem:
        return fail(problem)
    if args.predict is not None:
        return run_predict(args.workdir, args.predict, args.predict_out)
    if args.source is None or args.target is None:
        p.error("--source and --target are required (or --predict with --workdir)")
    return run_cli(config_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
