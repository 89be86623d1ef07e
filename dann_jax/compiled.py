"""The train step compiled: ``jax.jit`` on one device, a ``jax.shard_map`` over a device
mesh (data parallel, also across hosts), or ``jax.pmap``; K steps per call.

Over a mesh the program is written per device (`dann_jax.train` with ``axis_name``): each
device gathers its block of the global batch from the replicated pools and the step
averages gradients, BatchNorm statistics and metrics with ``lax.pmean``. Nothing is
left for the partitioner to guess: the compiled program works on 1/N of the batch per
device and communicates only through those all-reduces (no all-gather or
collective-permute; a test reads the compiled HLO).

`compile_train_step` compiles `dann_jax.train.train_step` (the caller feeds batches);
`compile_train_steps` compiles `dann_jax.train.train_steps` (batches drawn on the
device) and returns a `TrainSteps`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from dann_jax import train
from dann_jax.augment import ops_of
from dann_jax.models import DANN
from dann_jax.pools import Fed
from dann_jax.train import AXIS, Batch, Metrics, TrainState

__all__ = ["TrainSteps", "compile_train_step", "compile_train_steps"]


def _check_split(batch_size: int, mesh: jax.sharding.Mesh | None) -> None:
    """The global batch must split evenly over the mesh."""
    if mesh is not None and batch_size % mesh.size:
        raise ValueError(
            f"a batch of {batch_size} per domain does not split over {mesh.size} devices; "
            f"use a multiple of {mesh.size}"
        )


def _per_device(fn: Callable, mesh: jax.sharding.Mesh, in_specs) -> Callable:
    """`fn` (a per-device step) as a ``shard_map`` over the mesh; outputs replicated.

    ``check_vma=False``: the step is the same code as under ``pmap``, where each device
    holds its own copy of the parameters and the step averages the gradients itself
    (``lax.pmean``). With the check on, autodiff would also sum the gradients of the
    replicated parameters over the devices, and the two together would scale them by N.
    """
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)


def compile_train_step(
    model: DANN,
    tx: optax.GradientTransformation,
    *,
    lambda2_schedule: str = "dann",
    parallel: bool = False,
    diagnostics: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[TrainState, Batch, dict], tuple[TrainState, Metrics]]:
    """`train_step` compiled: ``jax.jit``, over a mesh, or ``jax.pmap``; state donated.

    With a ``mesh`` (`dann_jax.sharding.make_mesh`) state and hparams are replicated over
    it and the batch is split along its ``batch`` axis (``shard_map``: each device steps
    on its block). With ``parallel=True`` (the ``jax.pmap`` form) every argument carries
    a leading device axis: use `replicate` for state and hparams and `shard` for the
    batch; metrics come back replicated. Either way the result is one device's on the
    whole batch. ``diagnostics`` is passed to `train_step`.
    """
    if parallel and mesh is not None:
        raise ValueError("pass either parallel=True (pmap) or a mesh, not both")
    fn = functools.partial(
        train.train_step, model=model, tx=tx, lambda2_schedule=lambda2_schedule,
        axis_name=AXIS if parallel or mesh is not None else None, diagnostics=diagnostics,
    )  # fmt: skip
    if parallel:
        return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,))
    if mesh is not None:
        fn = _per_device(fn, mesh, (P(), P(AXIS), P()))
    return jax.jit(fn, donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class TrainSteps:
    """K training steps per call, as `compile_train_steps` builds them.

    Call as ``run(state, data, hparams) -> (state, metrics)``, metrics stacked along a
    leading step axis. One call dispatches ``program`` (a compiled function of
    ``steps_per_dispatch`` steps) ``num_steps / steps_per_dispatch`` times (host-fed
    ``data``, a `Fed` of ``num_steps`` steps, gives each dispatch its steps' batches);
    ``lower(state, data, hparams)`` lowers ``program`` (its FLOPs are those of
    ``steps_per_dispatch`` steps).
    """

    program: Any
    num_steps: int
    steps_per_dispatch: int

    @property
    def dispatches(self) -> int:
        return self.num_steps // self.steps_per_dispatch

    def __call__(self, state, data, hparams):
        chunks, k = [], self.steps_per_dispatch
        for d in range(self.dispatches):
            part = data.steps(d * k, (d + 1) * k) if isinstance(data, Fed) else data
            state, metrics = self.program(state, part, hparams)
            chunks.append(metrics)
        if len(chunks) == 1:
            return state, chunks[0]
        return state, jax.tree.map(lambda *xs: jnp.concatenate(xs), *chunks)

    def lower(self, state, data, hparams):
        return self.program.lower(state, data, hparams)


def compile_train_steps(
    model: DANN,
    tx: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
    lambda2_schedule: str = "dann",
    unroll: int | bool | None = None,
    vmap_seeds: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    augment: bool | tuple[str, ...] = False,
    stack: str = "vmap",
    split_models: str | None = None,
    host_fed: bool = False,
) -> TrainSteps:
    """`train_steps` compiled with ``jax.jit``, optionally over a device mesh.

    With a ``mesh``, put state, data and hparams on it with `dann_jax.sharding.
    put_replicated`; every step's global batch of ``batch_size`` per domain is split
    over its devices, and the result equals one device's on the whole batch.

    With ``vmap_seeds=True`` the state carries a leading seed axis (`stack_trees` of
    one state per seed) and one program trains every seed at once on the shared data
    and hparams; metrics are ``(num_steps, num_seeds)``. Each seed draws the batches its
    own ``rng`` gives, so a seed trains as it would alone. The paper models are too
    small to fill a GPU at 64 + 64 images, so S seeds cost far less than S runs.
    hparams with the seed axis first give each stacked model its own (the candidates
    of a label-free choice); ``stack="loop"`` computes the stacked models one after
    another inside the program (CPU: see `dann_jax.train.train_steps`).

    ``unroll=None`` picks, on CPU, K asynchronous dispatches of one compiled step, and a
    rolled ``lax.scan`` elsewhere. XLA:CPU runs convolutions inside a loop body about
    10x slower than outside one (jax-ml/jax#12868; measured here: 1.1 s versus 0.09 s
    per MNIST step) and a fully unrolled scan compiles in time proportional to K, while
    a CPU dispatch costs microseconds against a step of tens of milliseconds. On GPU/TPU
    the rolled loop is what removes the per-step dispatch. ``unroll=True`` or an int is
    passed to `train_steps` as is. ``augment``: the on-device augmentations
    (`dann_jax.augment.OPS`; True: crops and flips).

    ``split_models`` (with a ``mesh`` and ``vmap_seeds``): instead of splitting every
    model's batch over the devices, each device trains whole models: the stacked models
    are split along their axis (their count a multiple of the mesh size; put the state
    with `dann_jax.sharding.put_sharded` along axis 0) and each trains on its whole batch
    where it lives, so no gradient or BatchNorm statistic crosses devices. ``"shared"``:
    the hparams are replicated; ``"per_model"``: they carry the model axis and are split
    with the state. Metrics come back split along their model axis.

    ``host_fed``: the data are `dann_jax.pools.Fed` chunks (`dann_jax.feed`) rather than
    resident pools; only models split over the devices need to know (their batch
    positions are split with them).
    """
    _check_split(batch_size, None if split_models else mesh)
    per_dispatch = num_steps
    if unroll is None:
        per_dispatch, unroll = (1, True) if jax.default_backend() == "cpu" else (num_steps, 1)
    if split_models is not None and (mesh is None or not vmap_seeds):
        raise ValueError("split_models needs a mesh and stacked models (vmap_seeds=True)")
    program = _steps_program(
        model, tx, per_dispatch, batch_size, lambda2_schedule, unroll, vmap_seeds, mesh,
        ops_of(augment), stack, split_models, host_fed,
    )  # fmt: skip
    return TrainSteps(program, num_steps, per_dispatch)


# Cached on its (hashable) arguments: equal settings, e.g. the next seed or a chunk of
# another length on CPU (where every program is one step), reuse one compiled program
# instead of tracing and compiling a new ``jax.jit`` of a new partial.
@functools.lru_cache(maxsize=32)
def _steps_program(
    model, tx, num_steps, batch_size, lambda2_schedule, unroll, vmap_seeds, mesh, augment, stack,
    split_models, host_fed,
) -> Callable:  # fmt: skip
    """The compiled program of `compile_train_steps` (``num_steps`` per dispatch)."""
    split = split_models is not None
    fn = functools.partial(
        train.train_steps, model=model, tx=tx, num_steps=num_steps, batch_size=batch_size,
        lambda2_schedule=lambda2_schedule, axis_name=None if mesh is None or split else AXIS,
        unroll=unroll, vmap_seeds=vmap_seeds, augment=augment, stack=stack,
    )  # fmt: skip
    if split:
        # Whole models per device: the state (and per-model hparams) split along the
        # model axis, the pools whole everywhere; nothing to average across devices.
        hp = P(AXIS) if split_models == "per_model" else P()
        data = P()
        if host_fed:  # each model's batch positions go with it: (steps, models, batch)
            data = Fed(P(), P(None, AXIS), P(None, AXIS))
        fn = jax.shard_map(
            fn, mesh=mesh, in_specs=(P(AXIS), data, hp), out_specs=(P(AXIS), P(None, AXIS)),
            check_vma=False,
        )  # fmt: skip
    elif mesh is not None:
        fn = _per_device(fn, mesh, P())  # all replicated; each device gathers its block
    return jax.jit(fn, donate_argnums=(0,))
