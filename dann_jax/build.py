"""What a config builds: the model, the optimizer and the initial train state.

`make_model` is the one place that picks code per backend and puts a DANN together from
``config`` (the paper's CNNs, a ResNet, or your own extractor with the heads, bottleneck
and BatchNorm groups the config asks for); `make_optimizer` is optax's SGD or Adam with
the learning rate injected (the step sets it); `create_train_state` initialises
parameters, BatchNorm statistics and optimizer state (`TrainState`, a plain pytree).
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dann_jax.config import RESNETS, Config, resolved_precision
from dann_jax.config_fields import ConfigError, domain_head_widths
from dann_jax.models import DANN
from dann_jax.paper_models import paper_model

__all__ = [
    "PRECISION",
    "TrainState",
    "create_train_state",
    "hyperparams",
    "make_model",
    "make_optimizer",
]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
      step: global step (int32 scalar); drives the lambda and learning-rate schedules.
      params: model parameters.
      batch_stats: BatchNorm running statistics (empty dict without BatchNorm).
      opt_state: optax state (an ``inject_hyperparams`` state holding the current lr).
      rng: PRNG key; per-step keys are ``fold_in(rng, step)``, so a resumed run draws
        the same batches as an uninterrupted one.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def make_model(
    config: Config, backend: str | None = None, num_classes: int = 10, extractor=None
) -> DANN:
    """The DANN module described by `config` (architecture, BatchNorm, dropout, precision).

    ``extractor``: your own linen module (or an NNX one through
    `dann_jax.extractors.from_nnx`) in place of ``config.arch``'s; everything else stays
    what ``config`` says: the heads of ``config.arch``, the bottleneck, per-domain
    BatchNorm in the bottleneck, dropout, the adversary and the discriminator's widths.

    The one place that picks code per backend: on CPU, convolutions with few input
    channels and non-overlapping max-pools are written out for XLA:CPU
    (`dann_jax.paper_models.KERNELS`: same parameters and numbers, faster there); on GPU and TPU
    the model is plain ``lax.conv_general_dilated`` and ``reduce_window``.

    ``config.precision``: ``auto`` is ``fp32`` on CPU and ``tf32`` on GPUs and TPUs
    (`dann_jax.config.resolved_precision`); ``fp32`` is float32 with full-precision convolutions and
    matmuls (``lax.Precision.HIGHEST``) on every backend; ``tf32`` is float32 at the
    backend's default precision (TF32 on NVIDIA Ampere and later, one bfloat16 pass on
    TPU, float32 on CPU); ``bf16`` computes in bfloat16. Parameters are float32 always.
    ``num_classes`` comes from the data (`dann_jax.data.PairData.num_classes`).
    """
    backend = backend or jax.default_backend()
    used = resolved_precision(config.precision, backend)
    dtype = jnp.bfloat16 if used == "bf16" else jnp.float32
    precision = PRECISION[used]
    groups = 2 if config.bn_stats == "per_domain" else 1
    if config.arch in RESNETS:
        from dann_jax.backbones import ResNet

        # A pretrained backbone's heads: a linear label classifier on the (bottleneck)
        # features and the DANN paper's 1024-1024 domain classifier of its Office setting.
        extractor = extractor or ResNet(config.arch, groups, None, dtype, precision)
        model = DANN(
            extractor, num_classes, (), (1024, 1024), config.dropout, config.bottleneck,
            groups, dtype=dtype, precision=precision,
        )  # fmt: skip
        return _heads(model, config)
    model = paper_model(
        config.arch,
        num_classes,
        batchnorm=config.batchnorm,
        bn_stats=config.bn_stats,
        dropout=config.dropout,
        dtype=dtype,
        precision=precision,
        kernels="cpu" if backend == "cpu" else "xla",
    )
    model = model.clone(bottleneck=config.bottleneck, bn_groups=groups)
    return _heads(model if extractor is None else model.clone(extractor=extractor), config)


def _heads(model: DANN, config: Config) -> DANN:
    """`model` with the discriminator `config` asks for (its input and widths) and its
    BatchNorm synchronisation over devices."""
    changes: dict[str, Any] = {"adversary": config.adversary, "sync_bn": config.bn_sync}
    if config.domain_head is not None:
        changes["domain_head"] = domain_head_widths(config.domain_head)
    return model.clone(**changes)


# `Config.precision` -> the `lax.Precision` of every convolution and matmul of the model.
PRECISION = {"fp32": jax.lax.Precision.HIGHEST, "tf32": None, "bf16": None}


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """SGD with momentum (optionally Nesterov) or Adam, weight decay, a slower backbone.

    ``optax.inject_hyperparams`` keeps the learning rate in the optimizer state. The
    value given here (``config.lr``) only initialises that slot: `train_step`
    overwrites it at every step with the annealed rate computed from ``hparams`` (lr0 =
    ``hparams["lr"]``), so neither lr0 nor the schedule is baked into the compiled step,
    and the optimizer state always holds the rate of the last step taken.

    ``config.weight_decay`` adds ``wd * params`` to the gradients (L2, as torch's SGD
    does). The per-part learning rates (``backbone_lr_mult``, ``discriminator_lr_mult``)
    are not part of the optimizer: `train_step` scales each part's updates by its traced
    multiple (`scale_updates`).
    """
    return _optimizer(
        config.optimizer, config.lr, config.momentum, config.nesterov, config.weight_decay
    )


# Equal settings give the same transformation object, so the compiled programs keyed on
# it (`dann_jax.compiled`, `create_train_state`) are reused across seeds and runs.
@functools.lru_cache(maxsize=32)
def _optimizer(
    name: str, lr: float, momentum: float, nesterov: bool, wd: float
) -> optax.GradientTransformation:
    """`make_optimizer` from its settings."""
    if name not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {name!r}")

    def build(learning_rate):
        if name == "sgd":
            step = optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
        else:
            step = optax.adam(learning_rate)
        return optax.chain(optax.add_decayed_weights(wd), step) if wd else step

    return optax.inject_hyperparams(build)(learning_rate=lr)


def create_train_state(
    rng: jax.Array,
    model: DANN,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
    extractor: dict | None = None,
) -> TrainState:
    """Initialise parameters, BatchNorm statistics and optimizer state.

    Args:
      rng: PRNG key.
      model: a `DANN` module.
      tx: an optax transformation from `make_optimizer`.
      image_shape: (H, W, C) of one input image.
      extractor: the extractor's own variables (``params`` and ``batch_stats``, e.g.
        pretrained weights from `dann_jax.pretrained.resnet`) in place of fresh ones.

    Returns:
      A `TrainState` at step 0.
    """
    # Inside a caller's jit the program is the caller's, compiled with its options (a jit
    # with options of its own may not be nested): any array made now is then a tracer.
    nested = isinstance(jnp.zeros(()), jax.core.Tracer)
    init = _init_state_cpu if jax.default_backend() == "cpu" and not nested else _init_state
    state = init(rng, model=model, tx=tx, image_shape=tuple(image_shape))
    if extractor is None:
        return state
    params = {**state.params, "extractor": extractor["params"]}
    stats = dict(state.batch_stats)
    if extractor.get("batch_stats"):
        # Per-domain BatchNorm keeps (groups, C) averages: each domain starts from the
        # pretrained (C,) ones.
        stats["extractor"] = jax.tree.map(
            lambda new, fresh: jnp.broadcast_to(new, fresh.shape),
            extractor["batch_stats"], state.batch_stats["extractor"],
        )  # fmt: skip
    fresh = jax.tree.map(jnp.shape, state.params["extractor"])
    if jax.tree.map(jnp.shape, extractor["params"]) != fresh:
        raise ValueError("the extractor variables do not fit the model's extractor")
    return state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))


# XLA compile options for programs that are mostly threefry hashing (the initialisation:
# a key and a draw per parameter; the host path's index draws) when they run on CPU.
# LLVM's -O2 spends about half of their compile time there, for the same bits as -O1
# (the paper model's initialisation compiles in 0.8 s instead of 1.8 s, a ResNet-50's in
# 8 s instead of 11 s; tests/build_test.py checks the bits). -O0 gives other bits.
# Accelerators keep XLA's defaults.
O1_ON_CPU = {"xla_backend_optimization_level": 1}


def _init(rng: jax.Array, model: DANN, tx, image_shape: tuple[int, ...]) -> TrainState:
    """`create_train_state`'s work, compiled."""
    init_rng, state_rng = jax.random.split(rng)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init({"params": init_rng, "dropout": init_rng}, x, x, 0.0, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=state_rng,
    )


# Compiled (op-by-op initialisation of the paper models takes seconds on CPU) once per
# model, optimizer and shape, not once per call.
_init_state = jax.jit(_init, static_argnames=("model", "tx", "image_shape"))
_init_state_cpu = jax.jit(
    _init, static_argnames=("model", "tx", "image_shape"), compiler_options=O1_ON_CPU
)


def hyperparams(config: Config) -> dict:
    """The traced numeric hyperparameters of the train step (float32 scalars).

    Passed to the step as an argument, never closed over, so one compiled step serves
    every value (a lambda2 sweep, a different learning rate or length).
    """
    # source_only: lambda2 = 0 makes the GRL pass zero gradient to the extractor, so the
    # extractor is trained on the label loss alone while the discriminator still learns
    # (a probe of how separable the domains are).
    if config.steps is None:
        raise ConfigError("steps is not set: the schedules need the total number of steps.")
    # The target terms (MCC, entropy) are adaptation too: off outside dann mode.
    adapt = config.mode == "dann"
    values = {
        "lambda2": config.lambda2 if adapt else 0.0,
        "lambda3": config.lambda3,
        "gamma": config.gamma,
        "label_smoothing": config.label_smoothing,
        "lr": config.lr,
        "lr_alpha": config.lr_alpha,
        "lr_beta": config.lr_beta,
        "total_steps": float(config.steps),
        "mcc": config.mcc if adapt else 0.0,
        "mcc_temperature": config.mcc_temperature,
        "entropy_weight": config.entropy_weight if adapt else 0.0,
        "cdan_entropy": config.cdan_entropy,
        "backbone_lr_mult": config.backbone_lr_mult,
        "discriminator_lr_mult": config.discriminator_lr_mult,
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
