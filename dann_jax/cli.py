"""Command-line flags built from `dann_jax.config.Config`, and the entry points' error handling.

Every `Config` field is a flag ``--field-name`` whose type, default, choices and help
come from the field itself, so the scripts in ``experiments/`` cannot drift from the
configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dann_jax.config import Config
from dann_jax.config_fields import ConfigError, flag

__all__ = [
    "HELP_GROUPS",
    "OWN_DATA",
    "RECIPES",
    "add_config_arguments",
    "config_from_args",
    "make_parser",
    "parse_config",
    "parse_pairs",
    "run_cli",
    "run_predict",
]


# The fields by theme, in --help's order (every field in exactly one group; a test checks).
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        "source", "target", "target_unlabelled", "data_dir", "tfds_dir", "bsds_dir",
        "image_size", "resize",
    ),
    "model": (
        "arch", "pretrained", "bottleneck", "batchnorm", "bn_stats", "bn_sync", "bn_eval",
        "dropout",
        "domain_head", "precision", "augment", "rotate", "color_jitter", "normalize",
    ),
    "optimisation": (
        "mode", "lambda2", "lambda3", "label_smoothing", "optimizer", "lr", "momentum",
        "nesterov", "weight_decay", "backbone_lr_mult", "discriminator_lr_mult", "batch_size",
    ),
    "adaptation": ("adversary", "cdan_entropy", "mcc", "mcc_temperature", "entropy_weight"),
    "choice without target labels": (
        "choose", "choose_lambdas", "choose_by", "choose_margin", "choose_checkpoint",
    ),
    "schedule": ("steps", "lambda2_schedule", "gamma", "lr_alpha", "lr_beta"),
    "run and output": (
        "seed", "seeds", "vmap_seeds", "eval_every", "steps_per_call", "input", "workdir",
        "restart", "tensorboard", "multihost",
    ),
    "analysis": ("analyze",),
}  # fmt: skip


# Named settings (``--recipe NAME``: its values become the defaults, so any flag still
# overrides a part of it). Each names its extractor settings in full, so that a recipe
# replaces whatever recipe a script defaults to (adapt.py's is the improved one) rather
# than adding to it: `--recipe paper` there is the paper's model, `--recipe office` has no
# dropout.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"batchnorm": False, "bn_stats": "joint", "dropout": 0.0},
    # Not the paper: BatchNorm in the extractor with per-domain batch statistics and
    # dropout 0.5 on the features; the paper's optimizer (SGD momentum 0.9, mu0 = 0.01
    # annealed), lambda ramp and length stay (docs/results.md).
    "improved": {"batchnorm": True, "bn_stats": "per_domain", "dropout": 0.5},
    # The standard recipe for real images (Office-31, Office-Home): an ImageNet ResNet-50,
    # a 256-wide bottleneck, the DANN paper's 1024-1024 domain head for Office, the
    # backbone at 0.1x the heads' learning rate, Nesterov SGD with weight decay, random
    # resized crops and flips at 224 x 224, ImageNet normalisation, 32 + 32 images a step;
    # the backbone's BatchNorm in training mode with per-domain statistics
    # (docs/real_images.md says why).
    "office": {
        "arch": "resnet50", "pretrained": "imagenet", "bottleneck": 256, "batchnorm": True,
        "bn_stats": "per_domain", "dropout": 0.0, "backbone_lr_mult": 0.1, "nesterov": True,
        "weight_decay": 1e-3, "augment": True, "normalize": "imagenet", "image_size": 224,
        "batch_size": 32, "steps": 20_000,
    },
}  # fmt: skip


# The defaults for data nobody tuned for (`experiments/adapt.py`, `dann_jax.fit`): the
# improved recipe's model with MCC on the target (Jin et al. 2020) beside the adversary,
# trained together with a source-only model in one program; the better of the two at
# the last evaluation by information maximisation is kept, and a candidate whose source
# accuracy fell by over 0.2 or whose target predictions collapsed is never kept
# (`dann_jax.candidates`). The suite's batch and evaluation interval; 2,000 steps (its
# 600 under-trained the toy shapes pair: docs/own_data.md). Chosen by the mean over the
# shift suite's 11 shifts without target labels (docs/results.md, "The shift suite").
OWN_DATA: dict[str, Any] = {
    **RECIPES["improved"], "mcc": 1.0, "choose": True, "choose_lambdas": "1",
    "choose_by": "information_maximization", "choose_margin": 0.2,
    "choose_checkpoint": "last", "batch_size": 32,
    "steps": 2000, "eval_every": 200,
}  # fmt: skip


def _value_type(hint: Any) -> type:
    """The type to parse a field's value with: ``int | None`` -> ``int``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [t for t in typing.get_args(hint) if t is not type(None)]
    return hint


def _argument(field: dataclasses.Field, hint: Any, default: Any) -> dict[str, Any]:
    """`ArgumentParser.add_argument` keywords of one `Config` field."""
    text = field.metadata["help"]
    if default is not None and "; unset: " in text:
        # A script that sets its own default: what "unset" would do never happens there.
        text = text.split("; unset: ")[0]
    # argparse expands %-formatting in help texts; a literal % must not break --help.
    kwargs: dict[str, Any] = {"default": default, "help": text.replace("%", "%%")}
    value_type = _value_type(hint)
    if value_type is bool:
        # Always --<name> and --no-<name>: a recipe or a script may turn either default
        # around, and the flag given must win both ways (and exist where help names it).
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = value_type
    if "choices" in field.metadata:
        kwargs["choices"] = field.metadata["choices"]
    return kwargs


def add_config_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> argparse.ArgumentParser:
    """Add a flag ``--field-name`` for `Config` fields to `parser`.

    Args:
      parser: the parser to extend.
      names: the fields to add, in this order (default: all of them, in `Config`'s).
      defaults: defaults that differ from `Config`'s, by field name (e.g. a longer
        run for a script that reproduces a table).

    Returns:
      `parser`, for chaining.
    """
    hints = typing.get_type_hints(Config)  # resolves the string annotations
    fields = {f.name: f for f in dataclasses.fields(Config)}
    wanted = list(fields) if names is None else list(names)
    defaults = dict(defaults or {})
    unknown = sorted((set(wanted) | set(defaults)) - set(fields))
    if unknown:
        raise ValueError(f"not Config fields: {unknown}")
    for title, group in HELP_GROUPS.items():
        mine = [n for n in group if n in wanted]
        if not mine:
            continue
        section = parser.add_argument_group(title)
        for name in mine:
            default = defaults.get(name, fields[name].default)
            section.add_argument(flag(name), **_argument(fields[name], hints[name], default))
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown with each flag; the description and the examples kept as written."""


def recipe_defaults(
    argv: list[str] | None, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A script's `defaults` with ``--recipe NAME``'s settings (`RECIPES`) on top.

    A recipe sets defaults, not values: any flag given explicitly still wins.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=list(RECIPES), default=None)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    return {**(defaults or {}), **(RECIPES[known.recipe] if known.recipe else {})}


def recipe_flags(name: str) -> list[str]:
    """``--recipe NAME`` written out as the flags it stands for (what its help shows)."""
    out: list[str] = []
    for key, value in RECIPES[name].items():
        if isinstance(value, bool):
            out.append(flag(key) if value else f"--no-{flag(key)[2:]}")
        else:
            out += [flag(key), str(value)]
    return out


def _recipe_help() -> str:
    parts = [f"{name}: {' '.join(recipe_flags(name)).replace(' --', ', --')}" for name in RECIPES]
    return "named settings, applied as defaults (a flag given still wins); " + "; ".join(parts)


def make_parser(
    description: str | None = None,
    examples: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> argparse.ArgumentParser:
    """A parser with one flag per `Config` field, grouped (`HELP_GROUPS`), and
    ``--recipe``; `--help` shows each default and ends with the `examples`."""
    parser = argparse.ArgumentParser(
        description=description, epilog=examples, formatter_class=HelpFormatter
    )
    parser.add_argument("--recipe", choices=list(RECIPES), default=None, help=_recipe_help())
    return add_config_arguments(parser, defaults=defaults)


def config_from_args(args: argparse.Namespace) -> Config:
    """The `Config` of parsed flags: every field the namespace has; others keep defaults.

    Not validated here: `run_cli` validates and turns a bad value into a clear message.
    """
    names = [f.name for f in dataclasses.fields(Config)]
    return Config(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def parse_config(argv: list[str] | None = None, description: str | None = None) -> Config:
    """Parse command-line flags (default ``sys.argv[1:]``) into a `Config`."""
    return config_from_args(make_parser(description).parse_args(argv))


def parse_pairs(text: str, flag: str = "--pairs") -> list[tuple[str, str]]:
    """``"mnist:usps,src/:tgt/"`` as (source, target) pairs, each domain a known one or a
    path that exists; `ValueError` naming the entry, and why, otherwise."""
    from pathlib import Path

    from dann_jax.data import KNOWN_DOMAINS

    split = (
        f"{flag} is split at each comma into pairs, and each pair at its first colon: a path "
        "with a comma, or a source path with a colon, cannot be given in it; link it under a "
        "name without them (ln -s 'my,data' my_data) and give that."
    )
    pairs = []
    for entry in text.split(","):
        source, colon, target = (part.strip() for part in entry.partition(":"))
        if not (colon and source and target):
            raise ValueError(
                f"{flag} {text!r}: {entry!r} is not a source:target pair (e.g. mnist:usps). "
                + split
            )
        for role, name in (("source", source), ("target", target)):
            if name not in KNOWN_DOMAINS and not Path(name).expanduser().exists():
                raise ValueError(
                    f"{flag} {text!r}: the {role} {name!r} of {entry!r} is not a known domain "
                    f"({', '.join(KNOWN_DOMAINS)}) or a path that exists. " + split
                )
        pairs.append((source, target))
    return pairs


def _fail(message: str) -> int:
    """Print one wrapped paragraph to stderr (no traceback) and return exit code 2."""
    from dann_jax.failures import fail

    return fail(message)


def run_cli(config: Config, *, runner: Callable[[Config], Any] | None = None) -> int:
    """Validate `config`, run it, and map known failures to a clear message.

    With ``config.multihost`` it calls ``jax.distributed.initialize()`` first (multi-host
    TPU slices, several processes).

    Args:
      config: the run's settings.
      runner: the function to run (default `dann_jax.experiment.run`).

    Returns:
      Process exit code: 0 on success, 2 on bad input or a failed run (see
      `dann_jax.failures.guarded`), 130 / 143 when stopped by SIGINT / SIGTERM.
    """
    try:
        config.validate()
    except ConfigError as e:
        return _fail(str(e))
    from dann_jax import failures

    problem = failures.platform_problem()
    if problem is not None:
        return _fail(problem)
    if config.multihost:
        import jax

        jax.distributed.initialize()
    from dann_jax import experiment

    return failures.guarded(config, runner or experiment.run)


def run_predict(workdir: str, folder: str, out: str | None = None) -> int:
    """``adapt.py --predict``: classify the images under `folder` with the run in `workdir`
    (`dann_jax.predicting.predict_folder`: ``<workdir>/predictions_<folder name>.csv``, or
    `out`). Returns the exit code: 0, 2 with one paragraph, 130 on Ctrl-C (nothing
    written then)."""
    from dann_jax import predicting
    from dann_jax.checkpoint import CheckpointError
    from dann_jax.data import DataError
    from dann_jax.io import NotWritable

    try:
        predicting.predict_folder(workdir, folder, out)
    except (DataError, CheckpointError, ValueError, NotWritable) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C: no predictions were written.", file=sys.stderr)
        return 130
    return 0
