"""All settings of a DANN run in one place, with their validation.

`Config` holds both what shapes the compiled program (architecture, batch size,
precision, steps per dispatch) and the numeric hyperparameters. The numeric ones
(`lambda2`, `lambda3`, `label_smoothing`, learning rate and schedule constants) reach the
train step as traced arrays through `hyperparams`, so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "ARCHS",
    "MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "RESIZES",
    "Config",
    "ConfigError",
    "hyperparams",
]

MODES = ("dann", "source_only", "target_only")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16")
ARCHS = ("mnist", "svhn")
RESIZES = ("auto", "bilinear", "crop_pad", "mnist_box")  # see dann_jax.data.resize_method
BN_STATS = ("joint", "per_domain")
LAMBDA2_SCHEDULES = ("dann", "constant")


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and the allowed values."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of one DANN run (defaults: the DANN paper's MNIST -> MNIST-M recipe).

    Attributes:
      source: source domain name or path to an .npz (see `dann_jax.data`).
      target: target domain name or path to an .npz.
      data_dir: folder with the raw upstream files (None: prepared data or download).
      tfds_dir: where prepared TFDS records live (None: TFDS default).
      bsds_dir: colour photos (e.g. BSDS500) for synthesising MNIST-M targets.
      arch: ``"mnist"`` (28x28 inputs) or ``"svhn"`` (32x32 inputs).
      resize: how images of another size reach the input size: ``"bilinear"``
        resampling, ``"crop_pad"`` (centre crop / zero padding), ``"mnist_box"``
        (scaled into MNIST's 20-pixel digit box, then padded), or ``"auto"``: crop
        MNIST-M (MNIST padded to 32, so its crop to 28 is MNIST's own digits), box
        USPS (its digits fill the frame), bilinear for the rest. See
        `dann_jax.data.resize_method`.
      mode: ``"dann"``; ``"source_only"`` (lambda2 = 0: the discriminator still trains on
        detached features as a probe, the extractor ignores it); ``"target_only"``
        (train on labelled target data: the oracle).
      lambda2: GRL coefficient (final value of the ramp, or the constant).
      lambda2_schedule: ``"dann"`` ramp 2/(1+exp(-gamma p))-1 or ``"constant"``.
      gamma: steepness of the lambda ramp (paper: 10).
      lambda3: weight of the adversarial loss.
      label_smoothing: label smoothing of the source classification loss.
      steps: total training steps (p = step / steps); None: the experiment's default
        for the data found (see `dann_jax.experiment.DEFAULT_STEPS`).
      batch_size: images per domain per step (global, split over devices).
      lr: initial learning rate mu0.
      lr_alpha: annealing alpha (paper: 10); 0 gives a constant learning rate.
      lr_beta: annealing beta (paper: 0.75).
      optimizer: ``"sgd"`` (momentum) or ``"adam"``.
      momentum: SGD momentum (paper: 0.9).
      batchnorm: BatchNorm in the extractor (off = paper).
      bn_stats: ``"joint"`` or ``"per_domain"`` BatchNorm statistics.
      dropout: dropout rate on the extractor output (0 = paper).
      precision: ``"fp32"`` or ``"bf16"`` compute (parameters stay float32).
      seed: first random seed.
      seeds: number of seeds to run (seed, seed+1, ...).
      vmap_seeds: train all seeds at once in one vmapped program (faster on GPU/TPU,
        where one paper-size model cannot fill the chip; slower on CPU, where the
        per-seed convolutions become grouped ones).
      eval_every: evaluate every this many steps (rounded to a multiple of
        steps_per_call).
      steps_per_call: training steps per device dispatch (``lax.scan``).
      workdir: output folder (results.json, metrics.jsonl, curves.png, checkpoints).
      analyze: also write the adaptation analysis (proxy A-distance, embeddings, ...).
    """

    source: str = "mnist"
    target: str = "mnist_m"
    data_dir: str | None = None
    tfds_dir: str | None = None
    bsds_dir: str | None = None
    arch: str = "mnist"
    resize: str = "auto"
    mode: str = "dann"
    lambda2: float = 1.0
    lambda2_schedule: str = "dann"
    gamma: float = 10.0
    lambda3: float = 1.0
    label_smoothing: float = 0.0
    steps: int | None = None
    batch_size: int = 64
    lr: float = 0.01
    lr_alpha: float = 10.0
    lr_beta: float = 0.75
    optimizer: str = "sgd"
    momentum: float = 0.9
    batchnorm: bool = False
    bn_stats: str = "joint"
    dropout: float = 0.0
    precision: str = "fp32"
    seed: int = 0
    seeds: int = 1
    vmap_seeds: bool = False
    eval_every: int = 500
    steps_per_call: int = 50
    workdir: str = "runs/digits"
    analyze: bool = False

    def replace(self, **changes) -> Config:
        """A copy with some fields changed, validated."""
        return dataclasses.replace(self, **changes).validate()

    def validate(self) -> Config:
        """Raise `ConfigError` naming the bad setting; return self when all is well."""

        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value!r} is not valid; choose one of {list(allowed)}.")

        def number(name, low=None, high=None, integer=False, low_open=False):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ConfigError(f"{flag} must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise ConfigError(f"{flag} must be finite, got {value!r}.")
            if low is not None and (value <= low if low_open else value < low):
                bound = f"> {low}" if low_open else f">= {low}"
                raise ConfigError(f"{flag} must be {bound}, got {value!r}.")
            if high is not None and value > high:
                raise ConfigError(f"{flag} must be <= {high}, got {value!r}.")

        choice("arch", ARCHS)
        choice("resize", RESIZES)
        choice("mode", MODES)
        choice("optimizer", OPTIMIZERS)
        choice("precision", PRECISIONS)
        choice("bn_stats", BN_STATS)
        choice("lambda2_schedule", LAMBDA2_SCHEDULES)
        number("lambda2", low=0)
        number("lambda3", low=0)
        number("gamma", low=0)
        number("label_smoothing", low=0, high=1)
        if self.steps is not None:
            number("steps", low=1, integer=True)
        number("batch_size", low=1, integer=True)
        number("lr", low=0, low_open=True)
        number("lr_alpha", low=0)
        number("lr_beta", low=0)
        number("momentum", low=0, high=1)
        number("dropout", low=0, high=0.99)
        number("seed", low=0, integer=True)
        number("seeds", low=1, integer=True)
        number("eval_every", low=1, integer=True)
        number("steps_per_call", low=1, integer=True)
        if self.vmap_seeds and self.analyze:
            raise ConfigError(
                "--vmap-seeds cannot be combined with --analyze (the analysis follows one "
                "seed at a time); drop one of them."
            )
        return self


def hyperparams(config: Config) -> dict:
    """The traced numeric hyperparameters of the train step (float32 scalars).

    Passed to the step as an argument, never closed over, so one compiled step serves
    every value (a lambda2 sweep, a different learning rate or length).
    """
    import jax.numpy as jnp  # local: keep `import dann_jax.config` free of JAX start-up

    # source_only: lambda2 = 0 makes the GRL pass zero gradient to the extractor, so the
    # extractor is trained on the label loss alone while the discriminator still learns
    # (a probe of how separable the domains are).
    if config.steps is None:
        raise ConfigError("steps is not set: the schedules need the total number of steps.")
    lambda2 = 0.0 if config.mode != "dann" else config.lambda2
    values = {
        "lambda2": lambda2,
        "lambda3": config.lambda3,
        "gamma": config.gamma,
        "label_smoothing": config.label_smoothing,
        "lr": config.lr,
        "lr_alpha": config.lr_alpha,
        "lr_beta": config.lr_beta,
        "total_steps": float(config.steps),
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
