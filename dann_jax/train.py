"""The DANN train step: one pure function of ``(state, batch, hparams)``.

Compiled by `dann_jax.compiled` (``jit`` on one device, ``jit`` of a ``shard_map`` over a
device mesh, or ``pmap``).

State is a plain pytree (`TrainState`); `train_step` maps ``(state, batch, hparams)`` to
``(state, metrics)``. Everything numeric that a schedule or a sweep changes (lambda2,
lambda3, label smoothing, learning rate, total steps) lives in ``hparams`` (traced
float32 scalars, see `dann_jax.build.hyperparams`), so one compiled program serves
every value. Progress ``p = state.step / total_steps`` comes from the global step, so
schedules survive a resume and agree across data-parallel devices.

Device-resident training: `train_steps` draws K batches on the device from
device-resident uint8 pools (`TrainData`: one flat row per image) and runs K steps in
one ``lax.scan``; the host only dispatches and reads the metrics.

Data parallelism: with an ``axis_name`` both functions are the *per-device* step of a
``shard_map`` (or ``pmap``) over that axis. Each device draws the same global batch
indices, gathers only its own block of rows, and averages gradients, BatchNorm
statistics and metrics over the axis (``lax.pmean``), so N devices compute what one
device computes on the whole batch. Per step that is one all-reduce of the gradients
(and metrics), plus, with synchronised BatchNorm, one per BatchNorm layer forward and
one backward (ResNet-18: 37 in all; ``--no-bn-sync``: 1, each device normalising its own
share). Stacked models whose count is a multiple of the device count are instead split
over the devices whole (`dann_jax.compiled.compile_train_steps`'s ``split_models``): no
all-reduce at all.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dann_jax import losses, schedules, sharding
from dann_jax.build import (
    PRECISION,
    TrainState,
    create_train_state,
    make_model,
    make_optimizer,
)
from dann_jax.models import DANN, with_axis
from dann_jax.pools import Batch, Fed, TrainData, make_train_data, sample_batch

# `TrainState`, `make_model`, `make_optimizer` and `create_train_state` live in
# `dann_jax.build` (what a config builds); named here too, where the step's users look.
__all__ = [
    "AXIS",
    "LOSS_TERMS",
    "PRECISION",
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


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the step and the term."""


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
        `dann_jax.build.hyperparams`).
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
        # all-reduce (BatchNorm's synchronised statistics add their own).
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
      data: device-resident pools, see `TrainData`, or the host-fed batches of these
        ``num_steps`` steps (`Fed`: each step's drawn rows, the same batches).
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

    pool, xs = data, None  # xs: each step's batch positions in a host-fed chunk
    if isinstance(data, Fed):
        pool, xs = data.pool, (data.source_index, data.target_index)

    def one(state, hparams, indices):
        data_key, _ = _step_keys(state.rng, state.step)
        batch = sample_batch(data_key, pool, batch_size, axis_name, augment, indices)
        return train_step(
            state, batch, hparams, model=model, tx=tx,
            lambda2_schedule=lambda2_schedule, axis_name=axis_name,
        )  # fmt: skip

    step = lambda state, indices: one(state, hparams, indices)
    if vmap_seeds:
        step = _stacked(one, hparams, stack)
    if unroll is True or (not isinstance(unroll, bool) and unroll >= num_steps):
        # Fully unrolled: a Python loop, so that no XLA while-loop is left at all (a
        # length-1 scan still emits one).
        stacked = []
        for k in range(num_steps):
            state, metrics = step(state, None if xs is None else tree_index(xs, k))
            stacked.append(metrics)
        return state, stack_trees(stacked)
    return jax.lax.scan(step, state, xs, length=num_steps, unroll=unroll)


def _stacked(one, hparams: dict[str, jax.Array], stack: str):
    """``one(state, hparams, indices)`` over a stacked state (and stacked or shared
    hparams; host-fed indices carry the seed axis first)."""
    per_seed = jnp.ndim(next(iter(hparams.values()))) > 0
    if stack == "vmap":
        return lambda state, indices: jax.vmap(
            one, (0, 0 if per_seed else None, None if indices is None else 0)
        )(state, hparams, indices)
    if stack != "loop":
        raise ValueError(f"stack must be 'vmap' or 'loop', got {stack!r}")

    def looped(state, indices):
        n = jax.tree.leaves(state.step)[0].shape[0]
        outs = [
            one(
                tree_index(state, i), tree_index(hparams, i) if per_seed else hparams,
                None if indices is None else tree_index(indices, i),
            )
            for i in range(n)
        ]  # fmt: skip
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
