"""What `dann_jax.config.Config` makes of its fields: their declaration, flags and docstring.

Here too are the checks `Config.validate` runs and the `ConfigError` they raise: kept apart
so that config.py reads as the list of settings.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import textwrap
from typing import Any

__all__ = [
    "ConfigError",
    "attributes_doc",
    "check_config",
    "domain_head_widths",
    "flag",
    "parse_floats",
    "setting",
]


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and the allowed values."""


def flag(name: str) -> str:
    """The command-line flag of the `Config` field `name`: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose metadata holds its help text and (if any) its choices."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def attributes_doc(cls: type) -> str:
    """`cls`'s docstring followed by an ``Attributes:`` list of its fields' help texts."""
    items = [
        textwrap.fill(
            f"{f.name}: {f.metadata['help']}"
            + (f"; choices: {', '.join(f.metadata['choices'])}" if "choices" in f.metadata else ""),
            width=88,
            initial_indent="  ",
            subsequent_indent="    ",
        )
        for f in dataclasses.fields(cls)
    ]
    return inspect.cleandoc(cls.__doc__) + "\n\nAttributes:\n" + "\n".join(items)


def check_config(config: Any, resnets: tuple[str, ...]) -> None:
    """Raise `ConfigError` naming the first bad setting of `config` (a `Config`).

    Args:
      config: the settings; each field with ``choices`` in its metadata is checked
        against them, the numbers against their ranges, then the combinations.
      resnets: the architectures ``--pretrained`` applies to (`dann_jax.config.RESNETS`).
    """
    for field in dataclasses.fields(config):
        if "choices" in field.metadata:
            _choice(config, field.name, field.metadata["choices"])
    _number(config, "lambda2", low=0)
    _number(config, "lambda3", low=0)
    _number(config, "gamma", low=0)
    _number(config, "label_smoothing", low=0, high=1)
    if config.steps is not None:
        _number(config, "steps", low=1, integer=True)
    if config.image_size is not None:
        _number(config, "image_size", low=8, integer=True)
    _number(config, "batch_size", low=1, integer=True)
    _number(config, "lr", low=0, low_open=True)
    _number(config, "lr_alpha", low=0)
    _number(config, "lr_beta", low=0)
    _number(config, "momentum", low=0, high=1)
    _number(config, "weight_decay", low=0)
    _number(config, "backbone_lr_mult", low=0)
    _number(config, "discriminator_lr_mult", low=0)
    _number(config, "cdan_entropy", low=0, high=1)
    _number(config, "mcc", low=0)
    _number(config, "mcc_temperature", low=0, low_open=True)
    _number(config, "entropy_weight", low=0)
    if config.domain_head is not None:
        domain_head_widths(config.domain_head)
    parse_floats(config.choose_lambdas, "--choose-lambdas")
    _number(config, "choose_margin", low=0, high=1)
    _number(config, "bottleneck", low=0, integer=True)
    if config.pretrained is not None and config.arch not in resnets:
        raise ConfigError(
            f"--pretrained is for the ResNets; --arch {config.arch} has no pretrained "
            f"weights. Pick --arch from {list(resnets)}, or drop --pretrained."
        )
    _number(config, "dropout", low=0, high=0.99)
    _number(config, "seed", low=0, integer=True)
    _number(config, "seeds", low=1, integer=True)
    _number(config, "eval_every", low=1, integer=True)
    if config.steps_per_call is not None:
        _number(config, "steps_per_call", low=1, integer=True)
    _check_combinations(config)


def _check_combinations(config: Any) -> None:
    """The settings that are each valid alone but cannot go together."""
    if config.steps_per_call is not None and config.steps_per_call > config.eval_every:
        raise ConfigError(
            f"--steps-per-call {config.steps_per_call} is larger than --eval-every "
            f"{config.eval_every}: a run evaluates between dispatches only. Lower "
            "--steps-per-call or raise --eval-every."
        )
    if config.vmap_seeds and config.analyze:
        raise ConfigError(
            "--vmap-seeds cannot be combined with --analyze (the analysis follows one "
            "seed at a time); drop one of them."
        )


def _choice(config: Any, name: str, allowed: tuple[str, ...]) -> None:
    """`ConfigError` unless the setting `name` is one of `allowed`."""
    value = getattr(config, name)
    if value not in allowed:
        raise ConfigError(f"{flag(name)} {value!r} is not valid; choose one of {list(allowed)}.")


def _number(config: Any, name: str, low=None, high=None, integer=False, low_open=False) -> None:
    """`ConfigError` unless the setting `name` is a finite number (an int when `integer`)
    within [`low`, `high`] (above `low` when `low_open`; None: unbounded)."""
    value = getattr(config, name)
    what = flag(name)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{what} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value!r}.")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{what} must be {bound}, got {value!r}.")
    if high is not None and value > high:
        raise ConfigError(f"{what} must be <= {high}, got {value!r}.")


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.1,0.3,1"`` -> ``(0.1, 0.3, 1.0)``: finite and >= 0; `ConfigError` naming `what`."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(
            f"{what} {text!r} is not a list of numbers; give values >= 0 separated by "
            "commas, e.g. 0.1,0.3,1."
        )
    return values


def domain_head_widths(text: str) -> tuple[int, ...]:
    """``"1024,1024"`` -> ``(1024, 1024)``; `ConfigError` naming --domain-head otherwise."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(
            f"--domain-head {text!r} is not a list of widths; give positive integers "
            "separated by commas, e.g. --domain-head 1024,1024."
        )
    return widths
