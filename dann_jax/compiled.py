"""The train step compiled: ``jax.jit`` on one device, ``jax.jit`` over a device mesh
(data parallel, also across hosts), or ``jax.pmap``; K steps per call.

`compile_train_step` compiles `dann_jax.train.train_step` (the caller feeds batches);
`compile_train_steps` compiles `dann_jax.train.train_steps` (batches drawn on the
device) and always returns a `TrainSteps`, whatever the backend does underneath.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dann_jax import sharding, train
from dann_jax.models import DANN
from dann_jax.train import AXIS, Batch, Metrics, TrainState

__all__ = ["TrainSteps", "compile_train_step", "compile_train_steps"]


def _compile(fn: Callable, *, parallel: bool, mesh, batch_arg: bool) -> Callable:
    """``jax.pmap``, ``jax.jit`` over a mesh, or plain ``jax.jit``; state donated."""
    if parallel and mesh is not None:
        raise ValueError("pass either parallel=True (pmap) or a mesh, not both")
    if parallel:
        return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,))
    if mesh is None:
        return jax.jit(fn, donate_argnums=(0,))
    repl = sharding.replicated(mesh)
    second = sharding.batch_sharding(mesh) if batch_arg else repl
    return jax.jit(
        fn, in_shardings=(repl, second, repl), out_shardings=(repl, repl), donate_argnums=(0,)
    )


def compile_train_step(
    model: DANN,
    tx: optax.GradientTransformation,
    *,
    lambda2_schedule: str = "dann",
    parallel: bool = False,
    diagnostics: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[TrainState, Batch, dict], tuple[TrainState, Metrics]]:
    """`train_step` compiled: ``jax.jit``, ``jax.jit`` over a mesh, or ``jax.pmap``.

    The state argument is donated, so the update happens in place. With a ``mesh``
    (`dann_jax.sharding.make_mesh`) state and hparams are replicated over it and the
    batch is split along its ``batch`` axis. With ``parallel=True`` every argument
    carries a leading device axis: use `replicate` for state and hparams and `shard` for
    the batch; metrics come back replicated. ``diagnostics`` is passed to `train_step`.
    """
    fn = functools.partial(
        train.train_step, model=model, tx=tx, lambda2_schedule=lambda2_schedule,
        axis_name=AXIS if parallel else None, diagnostics=diagnostics,
    )  # fmt: skip
    return _compile(fn, parallel=parallel, mesh=mesh, batch_arg=True)


@dataclasses.dataclass(frozen=True)
class TrainSteps:
    """K training steps per call, as `compile_train_steps` builds them.

    Call as ``run(state, data, hparams) -> (state, metrics)``. One call dispatches
    ``program`` (a compiled function of ``steps_per_dispatch`` steps) ``dispatches``
    times; ``lower(state, data, hparams)`` lowers ``program`` (for cost analysis: its
    FLOPs are those of ``steps_per_dispatch`` steps).
    """

    program: Any
    num_steps: int
    steps_per_dispatch: int
    step_axis: int  # axis of the metrics that counts steps (after device / seed axes)

    @property
    def dispatches(self) -> int:
        return self.num_steps // self.steps_per_dispatch

    def __call__(self, state, data, hparams):
        if self.dispatches == 1:
            return self.program(state, data, hparams)
        chunks = []
        for _ in range(self.dispatches):
            state, metrics = self.program(state, data, hparams)
            chunks.append(metrics)
        return state, jax.tree.map(lambda *xs: jnp.concatenate(xs, self.step_axis), *chunks)

    def lower(self, state, data, hparams):
        return self.program.lower(state, data, hparams)


def compile_train_steps(
    model: DANN,
    tx: optax.GradientTransformation,
    *,
    num_steps: int,
    batch_size: int,
    lambda2_schedule: str = "dann",
    parallel: bool = False,
    unroll: int | bool | None = None,
    vmap_seeds: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> TrainSteps:
    """`train_steps` compiled with ``jax.jit`` (optionally over a mesh) or ``jax.pmap``.

    With a ``mesh`` state, data and hparams are replicated over it (`dann_jax.sharding.
    put_replicated`) and every step's global batch of ``batch_size`` per domain is split
    along it: the result equals one device's on the whole batch. Under ``pmap``
    (``parallel=True``) pass ``batch_size`` per device, and `replicate` state, data and
    hparams once; each replica draws its own batches from its copy of the data.

    With ``vmap_seeds=True`` the state carries a leading seed axis (`stack_trees` of
    one state per seed) and one program trains every seed at once on the shared data
    and hparams; metrics gain the same axis, ``(num_seeds, num_steps)`` (after the
    device axis under ``pmap``). Each seed draws the batches its own ``rng`` gives, so
    a seed trains as it would alone. The paper models are too small to fill a GPU at
    64 + 64 images, so S seeds cost far less than S times one seed.

    ``unroll=None`` picks, on CPU, K asynchronous dispatches of one compiled step
    (metrics stacked on the device), and a rolled ``lax.scan`` elsewhere. XLA:CPU runs
    convolutions inside a loop body about 10x slower than outside one
    (jax-ml/jax#12868; measured here: 1.1 s versus 0.09 s per MNIST step) and a fully
    unrolled scan compiles in time proportional to K, while a CPU dispatch costs
    microseconds against a step of tens of milliseconds. On GPU/TPU the rolled loop is
    what removes the per-step dispatch. ``unroll=True`` or an int is passed to
    `train_steps` as is.
    """
    on_cpu = jax.default_backend() == "cpu"
    per_dispatch = num_steps
    if unroll is None:
        per_dispatch, unroll = (1, True) if on_cpu else (num_steps, 1)
    program = _steps_program(
        model, tx, per_dispatch, batch_size, lambda2_schedule, parallel, unroll, vmap_seeds, mesh
    )
    return TrainSteps(program, num_steps, per_dispatch, int(parallel) + int(vmap_seeds))


# Cached on its (hashable) arguments: equal settings, e.g. the next seed or a chunk of
# another length on CPU (where every program is one step), reuse one compiled program
# instead of tracing and compiling a new ``jax.jit`` of a new partial.
@functools.lru_cache(maxsize=32)
def _steps_program(
    model, tx, num_steps, batch_size, lambda2_schedule, parallel, unroll, vmap_seeds, mesh
) -> Callable:
    """The compiled program of `compile_train_steps` (``num_steps`` per dispatch)."""
    fn = functools.partial(
        train.train_steps, model=model, tx=tx, num_steps=num_steps, batch_size=batch_size,
        lambda2_schedule=lambda2_schedule, axis_name=AXIS if parallel else None,
        unroll=unroll, mesh=mesh,
    )  # fmt: skip
    if vmap_seeds:
        fn = jax.vmap(fn, in_axes=(0, None, None))  # data and hparams shared by the seeds
    return _compile(fn, parallel=parallel, mesh=mesh, batch_arg=False)
