"""The DANN train step: one pure function of ``(state, batch, hparams)``.

Compiled by `dann_jax.compiled` (``jit`` on one device, ``jit`` of a ``shard_map`` over a
device mesh, or ``pmap``).

State is a plain pytree (`TrainState`); `train_step` maps ``(state, batch, hparams)`` to
``(state, metrics)``. Everything numeric that a schedule or a sweep changes (lambda2,
lambda3, label smoothing, learning rate, total steps) lives in ``hparams`` (traced
float32 scalars, see `dann_jax.config.hyperparams`), so one compiled program serves
every value. Progress ``p = state.step / total_steps`` comes from the global step, so
schedules survive a resume and agree across data-parallel devices.

Device-resident training: `train_steps` draws K batches on the device from
device-resident uint8 pools (`TrainData`: one flat row per image) and runs K steps in
one ``lax.scan``; the host only dispatches and reads the metrics.

Data parallelism: with an ``axis_name`` both functions are the *per-device* step of a
``shard_map`` (or ``pmap``) over that axis. Each device draws the same global batch
indices, gathers only its own block of rows, and averages gradients, BatchNorm
statistics and metrics over the axis (``lax.pmean``), so N devices compute what one
device computes on the whole batch with one all-reduce of the gradients per step.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dann_jax import losses, schedules, sharding
from dann_jax.config import RESNETS, Config, domain_head_widths
from dann_jax.models import DANN, paper_model, with_axis
from dann_jax.pools import Batch, TrainData, make_train_data, sample_batch

__all__ = [
    "AXIS",
    "LOSS_TERMS",
    "NonFiniteLossError",
    "TrainData",
    "TrainState",
    "check_finite",
    "create_train_state",
    "make_model",
    "make_optimizer",
    "make_train_data",
    "sample_batch",
    "stack_trees",
    "train_step",
    "train_steps",
    "tree_index",
]

AXIS = sharding.BATCH_AXIS  # the data-parallel axis (mesh axis and pmap axis name)
# The components first: a NaN in either makes the total NaN too, and the message should
# name where it started.
LOSS_TERMS = ("label_loss", "domain_loss", "mcc_loss", "entropy_loss", "loss")

Metrics = dict[str, jax.Array]


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


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the term."""


def make_model(config: Config, backend: str | None = None, num_classes: int = 10) -> DANN:
    """The DANN module described by `config` (architecture, BatchNorm, dropout, precision).

    The one place that picks code per backend: on CPU, convolutions with few input
    channels and non-overlapping max-pools are written out for XLA:CPU
    (`dann_jax.models.KERNELS`: same parameters and numbers, faster there); on GPU and TPU
    the model is plain ``lax.conv_general_dilated`` and ``reduce_window``.

    ``config.precision``: ``fp32`` is float32 with full-precision convolutions and
    matmuls (``lax.Precision.HIGHEST``) on every backend; ``tf32`` is float32 at the
    backend's default precision (TF32 on NVIDIA Ampere and later, one bfloat16 pass on
    TPU, float32 on CPU); ``bf16`` computes in bfloat16. Parameters are float32 always.
    ``num_classes`` comes from the data (`dann_jax.data.PairData.num_classes`).
    """
    backend = backend or jax.default_backend()
    dtype = jnp.bfloat16 if config.precision == "bf16" else jnp.float32
    precision = PRECISION[config.precision]
    groups = 2 if config.bn_stats == "per_domain" else 1
    if config.arch in RESNETS:
        from dann_jax.backbones import ResNet

        # A pretrained backbone's heads: a linear label classifier on the (bottleneck)
        # features and the DANN paper's 1024-1024 domain classifier of its Office setting.
        extractor = ResNet(config.arch, groups, None, dtype, precision)
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
    return _heads(model.clone(bottleneck=config.bottleneck, bn_groups=groups), config)


def _heads(model: DANN, config: Config) -> DANN:
    """`model` with the discriminator `config` asks for (its input and widths)."""
    changes: dict[str, Any] = {"adversary": config.adversary}
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
        pretrained weights from `dann_jax.backbones.resnet`) in place of fresh ones.

    Returns:
      A `TrainState` at step 0.
    """
    state = _init_state(rng, model=model, tx=tx, image_shape=tuple(image_shape))
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


# Compiled (op-by-op initialisation of the paper models takes seconds on CPU) once per
# model, optimizer and shape, not once per call.
@functools.partial(jax.jit, static_argnames=("model", "tx", "image_shape"))
def _init_state(rng: jax.Array, model: DANN, tx, image_shape: tuple[int, ...]) -> TrainState:
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


def _step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(data key, dropout key) of one step: the same on every data-parallel device."""
    data_key, dropout_key = jax.random.split(jax.random.fold_in(rng, step))
    return data_key, dropout_key


def _global_norm(tree: Any) -> jax.Array:
    """L2 norm of all leaves together (float32)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _objective(
    out: dict[str, jax.Array], labels: jax.Array, hparams: dict[str, jax.Array], diagnostics: bool
) -> tuple[jax.Array, Metrics]:
    """The training loss of one forward pass, and its parts.

    ``CE_smooth(source) + lambda3 * domain_loss + mcc * MCC(target) + entropy_weight *
    H(target)``: Ganin et al., JMLR 2016, eq. 18 (see `dann_jax.losses`; the GRL inside
    the model turns its gradient into eqs. 13-15), with CDAN+E's example weights in the
    domain loss (``cdan_entropy``) and the target terms of MCC and entropy minimisation.
    Every weight is a traced value: 0 switches a term off without a new program.
    """
    zero = jnp.zeros((), jnp.float32)
    get = lambda name: hparams.get(name, zero)  # hparams of older callers lack the new terms
    target_logits = out["class_logits_target"]
    label_loss = losses.classification_loss(out["class_logits"], labels, hparams["label_smoothing"])
    strength = get("cdan_entropy")
    domain_loss = losses.domain_adversarial_loss(
        out["domain_logits_source"], out["domain_logits_target"],
        losses.entropy_weights(out["class_logits"], strength),
        losses.entropy_weights(target_logits, strength),
    )  # fmt: skip
    mcc_loss = losses.minimum_class_confusion(target_logits, hparams.get("mcc_temperature", 2.5))
    entropy_loss = losses.entropy(target_logits)
    aux = {
        "label_loss": label_loss,
        "domain_loss": domain_loss,
        "mcc_loss": mcc_loss,
        "entropy_loss": entropy_loss,
    }
    if diagnostics:
        aux["domain_accuracy"] = losses.domain_accuracy(
            out["domain_logits_source"], out["domain_logits_target"]
        )
        aux["source_accuracy"] = losses.accuracy(out["class_logits"], labels)
    total = (
        label_loss + hparams["lambda3"] * domain_loss + get("mcc") * mcc_loss
        + get("entropy_weight") * entropy_loss
    )  # fmt: skip
    return total, aux


# The parameter groups (top-level keys of a `DANN`'s params) whose learning rate is a
# traced multiple of the rest's, and the hparams entry that holds each multiple.
LR_MULTS = {"extractor": "backbone_lr_mult", "discriminator": "discriminator_lr_mult"}


def scale_updates(updates: Any, hparams: dict[str, jax.Array]) -> Any:
    """Each part's optimizer updates times its learning-rate multiple (`LR_MULTS`).

    SGD's (with momentum, Nesterov, weight decay) and Adam's updates are linear in the
    learning rate, so scaling a part's updates is training that part at that multiple of
    the learning rate (tllib trains pretrained backbones at 0.1x the heads). A traced
    multiple: sweeping it never recompiles.
    """
    out = dict(updates)
    for part, name in LR_MULTS.items():
        if part in out and name in hparams:
            m = hparams[name]
            out[part] = jax.tree.map(lambda u, m=m: u * m.astype(u.dtype), out[part])
    return out


def _with_lr(opt_state: Any, lr: jax.Array) -> Any:
    """The annealed lr in the inject_hyperparams slot (`make_optimizer`); a new dict."""
    old = jnp.asarray(opt_state.hyperparams["learning_rate"])
    return opt_state._replace(
        hyperparams={**opt_state.hyperparams, "learning_rate": lr.astype(old.dtype)}
    )


def train_step(
    state: TrainState,
    batch: Batch,
    hparams: dict[str, jax.Array],
    *,
    model: DANN,
    tx: optax.GradientTransformation,
    lambda2_schedule: str = "dann",
    axis_name: str | None = None,
    diagnostics: bool = True,
) -> tuple[TrainState, Metrics]:
    """One DANN update on a source batch (with labels) and a target batch (without).

    ``loss = CE_smooth(source) + lambda3 * 0.5 * (BCE(D(GRL(f_s)), 0) + BCE(D(GRL(f_t)), 1))``
    with the GRL coefficient ``lambda_p`` from the schedule. One backward pass gives the
    label classifier and discriminator their ordinary gradients and the extractor the
    label gradient minus ``lambda_p`` times the domain gradient (Ganin et al. 2016,
    eqs. 13-15).

    Args:
      state: current `TrainState`.
      batch: ``source_images``, ``source_labels``, ``target_images`` (float, normalised).
      hparams: traced scalars ``lambda2, lambda3, gamma, label_smoothing, lr, lr_alpha,
        lr_beta, total_steps`` and the adaptation terms' weights and learning-rate
        multiples (``mcc, mcc_temperature, entropy_weight, cdan_entropy,
        backbone_lr_mult, discriminator_lr_mult``; absent ones are off) (see
        `dann_jax.config.hyperparams`).
      model: the `DANN` module.
      tx: optimizer from `make_optimizer` (an ``inject_hyperparams`` transformation).
      lambda2_schedule: ``"dann"`` ramp or ``"constant"`` (selects code, so static).
      axis_name: the data-parallel axis when this is the per-device step of a
        ``shard_map`` or ``pmap`` (``batch`` is then this device's share of the global
        batch); gradients, BatchNorm statistics and metrics are averaged over it. None
        on a single device.
      diagnostics: also return ``domain_accuracy``, ``source_accuracy`` and
        ``grad_norm`` (static; False leaves out their reductions, a few small kernels
        per step, for the leanest program). The update is the same either way.

    Returns:
      ``(new_state, metrics)`` with metrics ``loss, label_loss, domain_loss, mcc_loss,
      entropy_loss, lambda2, learning_rate`` and, with ``diagnostics``,
      ``domain_accuracy, source_accuracy, grad_norm``.

    References:
      Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016,
      Algorithm 1 and Sec. 5.2.2 (schedules).
    """
    model = with_axis(model, axis_name)  # synchronised BatchNorm, global dropout masks
    p = schedules.progress(state.step, hparams["total_steps"])
    lam = schedules.grl_lambda(lambda2_schedule, p, hparams["lambda2"], hparams["gamma"])
    lr = schedules.annealed_learning_rate(p, hparams["lr"], hparams["lr_alpha"], hparams["lr_beta"])
    _, dropout_key = _step_keys(state.rng, state.step)
    use_bn = bool(state.batch_stats)

    def loss_fn(params):
        variables = {"params": params}
        if use_bn:
            variables["batch_stats"] = state.batch_stats
        out, updates = model.apply(
            variables,
            batch["source_images"],
            batch["target_images"],
            lam,
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"] if use_bn else [],
        )
        loss, aux = _objective(out, batch["source_labels"], hparams, diagnostics)
        return loss, (aux, updates.get("batch_stats", state.batch_stats))

    (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, **aux}
    if axis_name is not None:
        # Every device saw an equal share of the batch, so the mean of the per-device
        # mean gradients is the whole-batch gradient. One pmean of both trees: one
        # all-reduce per step.
        grads, metrics = jax.lax.pmean((grads, metrics), axis_name)
    updates, opt_state = tx.update(grads, _with_lr(state.opt_state, lr), state.params)
    params = optax.apply_updates(state.params, scale_updates(updates, hparams))
    metrics.update(lambda2=lam, learning_rate=lr)
    if diagnostics:
        metrics["grad_norm"] = _global_norm(grads)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def train_steps(
    state: TrainState,
    data: TrainData,
    hparams: dict[str, jax.Array],
    *,
    model: DANN,
    tx: optax.GradientTransformation,
    num_steps: int,
    batch_size: int,
    lambda2_schedule: str = "dann",
    axis_name: str | None = None,
    unroll: int | bool = 1,
    vmap_seeds: bool = False,
    augment: bool | tuple[str, ...] = False,
    stack: str = "vmap",
) -> tuple[TrainState, Metrics]:
    """`num_steps` train steps in one ``lax.scan``, batches drawn on the device.

    Step ``s`` uses the batch ``sample_batch(data key of fold_in(state.rng, s), data,
    batch_size)``, so K scanned steps equal K single steps fed the same batches, and a
    resumed run continues the same batch sequence.

    Args:
      state: current `TrainState` (with ``vmap_seeds``, one per seed stacked on axis 0).
      data: device-resident pools, see `TrainData`.
      hparams: traced hyperparameters, see `train_step`. With ``vmap_seeds`` they are
        shared by every seed when their values are scalars, or each seed's own when they
        carry the seed axis first (`stack_trees` of one dict per seed: the candidates of
        a label-free choice, e.g. source-only and DANN at several lambda2, in one program).
      model: the `DANN` module.
      tx: the optimizer.
      num_steps: steps per call (static: the scan length).
      batch_size: images per domain in the global batch (static: a shape).
      lambda2_schedule: ``"dann"`` or ``"constant"``.
      axis_name: the data-parallel axis (this is then the per-device program: each
        device gathers its share of every global batch), or None.
      unroll: ``lax.scan`` unrolling (``True``: fully unrolled).
      vmap_seeds: train every seed of the stacked state in this one program; the seeds
        share ``data``.
      augment: the on-device augmentations of every drawn image (`dann_jax.augment.OPS`;
        True: random resized crops and flips).
      stack: how the stacked seeds are computed: ``"vmap"`` (batched: what fills a GPU or
        TPU) or ``"loop"`` (one after another inside the program: on CPU, where a vmapped
        convolution becomes a grouped one, several times slower per seed).

    Returns:
      ``(new_state, metrics)``, every metric stacked to shape (num_steps,), or
      (num_steps, num_seeds) with ``vmap_seeds``: the step axis always comes first.
    """

    def one(state, hparams):
        data_key, _ = _step_keys(state.rng, state.step)
        batch = sample_batch(data_key, data, batch_size, axis_name, augment)
        return train_step(
            state, batch, hparams, model=model, tx=tx,
            lambda2_schedule=lambda2_schedule, axis_name=axis_name,
        )  # fmt: skip

    step = functools.partial(one, hparams=hparams)
    if vmap_seeds:
        step = _stacked(one, hparams, stack)
    if unroll is True or (not isinstance(unroll, bool) and unroll >= num_steps):
        # Fully unrolled: a Python loop, so that no XLA while-loop is left at all (a
        # length-1 scan still emits one).
        stacked = []
        for _ in range(num_steps):
            state, metrics = step(state)
            stacked.append(metrics)
        return state, stack_trees(stacked)
    return jax.lax.scan(lambda s, _: step(s), state, None, length=num_steps, unroll=unroll)


def _stacked(one, hparams: dict[str, jax.Array], stack: str):
    """``one(state, hparams)`` over a stacked state (and stacked or shared hparams)."""
    per_seed = jnp.ndim(next(iter(hparams.values()))) > 0
    if stack == "vmap":
        return lambda state: jax.vmap(one, (0, 0 if per_seed else None))(state, hparams)
    if stack != "loop":
        raise ValueError(f"stack must be 'vmap' or 'loop', got {stack!r}")

    def looped(state):
        n = jax.tree.leaves(state.step)[0].shape[0]
        outs = [
            one(tree_index(state, i), tree_index(hparams, i) if per_seed else hparams)
            for i in range(n)
        ]
        return stack_trees([o[0] for o in outs]), stack_trees([o[1] for o in outs])

    return looped


_TERM_NAMES = {
    "label_loss": "the label classifier's source cross-entropy",
    "domain_loss": "the domain discriminator's cross-entropy",
    "mcc_loss": "the minimum class confusion of the target predictions",
    "entropy_loss": "the entropy of the target predictions",
    "loss": "the total",
}


def check_finite(metrics: dict[str, Any], first_step: int) -> None:
    """Raise `NonFiniteLossError` if any loss term in (host) metrics is NaN or infinite.

    The message names the first step that went wrong and every term that is non-finite
    there, the components (label loss, domain loss) before the total.

    Args:
      metrics: scalars, or arrays of shape (K,) for K scanned steps.
      first_step: global step of the first entry (the step count before the call).
    """
    values = {t: np.atleast_1d(np.asarray(metrics[t])) for t in LOSS_TERMS if t in metrics}
    bad = np.zeros(len(values["loss"]), bool)
    for v in values.values():
        bad |= ~np.isfinite(v)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    terms = [
        f"{t} ({values[t][i]}; {_TERM_NAMES[t]})" for t in values if not np.isfinite(values[t][i])
    ]
    raise NonFiniteLossError(
        f"non-finite {', '.join(terms)} at step {first_step + i + 1}. The run stopped before "
        "saving this state. Try a lower --lr, a smaller --lambda3 or --lambda2, or check the "
        "input data for NaNs; add --restart to rerun in the same --workdir with new settings."
    )


def stack_trees(trees: list[Any]) -> Any:
    """Stack equally shaped pytrees (e.g. one `TrainState` per seed) along a new axis 0."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def tree_index(tree: Any, i: int) -> Any:
    """Entry ``i`` along axis 0 of every leaf: the inverse of `stack_trees`."""
    return jax.tree.map(lambda x: x[i], tree)
