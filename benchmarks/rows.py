"""The implementations `benchmarks.step_time` times, each prepared as a `Bench`.

Every implementation trains the same model (same layers and parameter shapes) from the
same initial parameters on the same device-resident batch: dann_jax's step as the
library exposes it (jit, K steps per call, pmap, bf16), a minimal hand-written JAX/optax
step (`benchmarks.handwritten`) and PyTorch (`benchmarks.torch_dann`: eager, bf16
autocast, torch.compile with and without CUDA graphs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dann_jax as dj
from benchmarks import handwritten as hw
from benchmarks.xla_cost import compile_with_flops

__all__ = [
    "IMPLS",
    "RESNETS",
    "SIZES",
    "Bench",
    "NotApplicable",
    "Shape",
    "build",
    "make_shape",
    "torch_missing",
]

IMPLS = {
    "jit": "dann_jax jit",
    "jit_lean": "dann_jax jit, no diagnostics",
    "steps": "dann_jax K steps/call",
    "pmap": "dann_jax pmap, 1 device",
    "jit_bf16": "dann_jax jit bf16",
    "handwritten": "hand-written jit",
    "handwritten_bf16": "hand-written jit bf16",
    "torch_eager": "torch eager",
    "torch_bf16": "torch eager bf16",
    "torch_compile": "torch.compile",
    "torch_compile_cg": "torch.compile cudagraphs",
}
SIZES = {"mnist": 28, "svhn": 32, "resnet18": 224, "resnet50": 224}
RESNETS = ("resnet18", "resnet50")
# The ResNet rows train the office recipe's model: the backbone, a 256-wide bottleneck, a
# linear label head and a 1024-1024 domain head, joint BatchNorm (torchvision's BatchNorm
# has no per-domain form), SGD with Nesterov momentum, weight decay, the backbone at 0.1x.
RESNET_SETTINGS = {
    "bottleneck": 256, "bn_stats": "joint", "nesterov": True, "weight_decay": 1e-3,
    "backbone_lr_mult": 0.1,
}  # fmt: skip
TOTAL_STEPS = 10_000  # schedule length (p = step / total); only the schedule values depend on it
POOL = 1024  # images per domain in the device-resident pool the K-step variant draws from


@dataclasses.dataclass
class Bench:
    """One prepared implementation: `call()` runs `steps_per_call` steps, `sync` waits."""

    call: Callable[[], Any]
    sync: Callable[[Any], Any]
    steps_per_call: int
    precision: str  # "fp32" or "bf16" compute (whether fp32 is TF32: the report's "tf32")
    flops_per_step: float | None = None
    flops_source: str | None = None
    compile_s: float | None = None
    note: str = ""
    kernels: int | None = None


# -------------------------------------------------------------- data


def make_data(arch: str, batch_size: int, seed: int = 0, size: int | None = None) -> dj.TrainData:
    """Device-resident uint8 pools of both domains and their mean (for sample_batch)."""
    rng = np.random.default_rng(seed)
    size = size or SIZES[arch]
    n = max(POOL if arch not in RESNETS else 128, batch_size)
    images = lambda: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    xs, ys, xt = images(), rng.integers(0, 10, n), images()
    return jax.device_put(dj.make_train_data(xs, ys, xt, np.full((3,), 0.45, np.float32)))


def fixed_batch(data: dj.TrainData, batch_size: int) -> dict[str, jax.Array]:
    """One normalised float32 batch on the device, reused by every single-step variant."""
    return jax.block_until_ready(dj.sample_batch(jax.random.key(1), data, batch_size))


@dataclasses.dataclass
class Shape:
    """What every implementation at one (arch, batch size) shares: data and initial state."""

    arch: str
    batch_size: int
    k: int  # steps per call of the K-steps row, and steps per timed repeat
    data: dj.TrainData  # device-resident uint8 pools (for compile_train_steps)
    batch: dict  # one normalised device-resident batch (for the single-step rows)
    state: Any  # dann_jax TrainState at step 0; every implementation starts from its params


def _settings(arch: str) -> dict:
    """The Config settings of an architecture's rows beside its name."""
    return RESNET_SETTINGS if arch in RESNETS else {}


def make_shape(arch: str, batch_size: int, k: int, size: int | None = None) -> Shape:
    """Data, batch and one initial dann_jax state for a shape (`size`: the image side)."""
    size = size or SIZES[arch]
    data = make_data(arch, batch_size, size=size)
    config = dj.Config(
        arch=arch, batch_size=batch_size, steps=TOTAL_STEPS, **_settings(arch)
    ).validate()
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    # Jitted: op-by-op initialisation compiles every primitive and takes seconds on a CPU.
    init = jax.jit(lambda key: dj.create_train_state(key, model, tx, (size, size, 3)))
    state = jax.block_until_ready(init(jax.random.key(0)))
    return Shape(arch, batch_size, k, data, fixed_batch(data, batch_size), state)


# -------------------------------------------------------------- JAX implementations


def _dtype(precision: str) -> str:
    """A row's compute dtype: "bf16", or "fp32" for --precision fp32 and tf32 alike."""
    return "bf16" if precision == "bf16" else "fp32"


def _fresh(tree: Any) -> Any:
    """A private copy of a pytree of arrays (the steps donate, i.e. consume, their state)."""
    return jax.tree.map(jnp.copy, tree)


def _library(shape: Shape, precision: str = "fp32") -> tuple:
    """(model, optimizer, state, hparams) as a dann_jax user builds them."""
    config = dj.Config(
        arch=shape.arch, batch_size=shape.batch_size, precision=precision, steps=TOTAL_STEPS,
        **_settings(shape.arch),
    ).validate()  # fmt: skip
    # bf16 changes the compute dtype only: parameters and optimizer state keep their
    # float32 structure, so the shared initial state fits every precision.
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    return model, tx, _fresh(shape.state), dj.hyperparams(config)


def _stepper(fn: Callable, state: Any, *args: Any) -> Callable[[], Any]:
    """A call() that advances the (donated) state held in a closure and returns it."""
    holder = [state]

    def call():
        holder[0], _ = fn(holder[0], *args)
        return holder[0]

    return call


def _jitted(step: Callable, state: Any, args: tuple, precision: str, note: str = "") -> Bench:
    """A Bench of a jitted one-step function, compiled ahead of time (FLOPs, kernels)."""
    flops, source, seconds, kernels = compile_with_flops(step, state, *args)
    call = _stepper(step, state, *args)
    dtype = _dtype(precision)
    return Bench(call, jax.block_until_ready, 1, dtype, flops, source, seconds, note, kernels)


def bench_jit(shape: Shape, precision: str) -> Bench:
    """dann_jax's compile_train_step (jax.jit, state donated)."""
    model, tx, state, hp = _library(shape, precision)
    return _jitted(dj.compile_train_step(model, tx), state, (shape.batch, hp), precision)


def bench_jit_lean(shape: Shape, precision: str) -> Bench:
    """compile_train_step(diagnostics=False): the losses only, no accuracies / grad norm."""
    model, tx, state, hp = _library(shape, precision)
    step = dj.compile_train_step(model, tx, diagnostics=False)
    return _jitted(step, state, (shape.batch, hp), precision)


def bench_steps(shape: Shape, precision: str) -> Bench:
    """dann_jax's compile_train_steps: K steps per dispatch, batches drawn on the device.

    FLOPs and kernels per step come from the one-step program, never from the K-step
    program divided by K: XLA's cost analysis counts a loop body once, so that quotient
    would be K times too low (and the achieved FLOP/s with it).
    """
    model, tx, state, hp = _library(shape, precision)
    k = shape.k
    run = dj.compile_train_steps(model, tx, num_steps=k, batch_size=shape.batch_size)
    per = run.steps_per_dispatch
    if per > 1:  # a rolled scan: count one step's program instead
        one = dj.compile_train_steps(model, tx, num_steps=1, batch_size=shape.batch_size)
        flops, source, _, kernels = compile_with_flops(one, state, shape.data, hp)
        _, _, seconds, _ = compile_with_flops(run, state, shape.data, hp)
    else:
        flops, source, seconds, kernels = compile_with_flops(run, state, shape.data, hp)
    note = f"K={k}; includes on-device batch sampling"
    if run.dispatches > 1:
        note += f"; {run.dispatches} dispatches of a {per}-step program per call here"
    call = _stepper(run, state, shape.data, hp)
    dtype = _dtype(precision)
    return Bench(call, jax.block_until_ready, k, dtype, flops, source, seconds, note, kernels)


def bench_pmap(shape: Shape, precision: str) -> Bench:
    """dann_jax's compile_train_step(parallel=True) over the first local device only."""
    model, tx, state, hp = _library(shape, precision)
    devices = jax.local_devices()[:1]
    step = dj.compile_train_step(model, tx, parallel=True)
    state, hp = dj.replicate(state, devices=devices), dj.replicate(hp, devices=devices)
    batch = dj.shard(shape.batch, num_devices=1)
    return _jitted(step, state, (batch, hp), precision, "pmap over 1 of the local devices")


class NotApplicable(Exception):
    """An implementation that has no form for this architecture (e.g. hand-written ResNets)."""


def bench_handwritten(shape: Shape, precision: str) -> Bench:
    """The hand-written JAX/optax step (benchmarks/handwritten.py), same initial params."""
    if shape.arch in RESNETS:
        raise NotApplicable("the hand-written step has the paper's CNNs only")
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    tx = hw.make_optimizer(TOTAL_STEPS)
    state = hw.init_state(hw.from_flax(_fresh(shape.state.params)), tx)
    highest = jax.lax.Precision.HIGHEST if precision == "fp32" else None  # as dann_jax's
    step = hw.make_step(shape.arch, tx, TOTAL_STEPS, dtype=dtype, precision=highest)
    return _jitted(step, state, (shape.batch,), precision)


JAX_BENCHES = {
    "jit": (bench_jit, "fp32"),
    "jit_lean": (bench_jit_lean, "fp32"),
    "steps": (bench_steps, "fp32"),
    "pmap": (bench_pmap, "fp32"),
    "jit_bf16": (bench_jit, "bf16"),
    "handwritten": (bench_handwritten, "fp32"),
    "handwritten_bf16": (bench_handwritten, "bf16"),
}

# -------------------------------------------------------------- PyTorch

# impl -> (torch.compile mode or None for eager, bf16 autocast)
TORCH_BENCHES = {
    "torch_eager": (None, False),
    "torch_bf16": (None, True),
    "torch_compile": ("default", False),
    "torch_compile_cg": ("reduce-overhead", False),
}


def torch_missing() -> str | None:
    """Why the PyTorch rows cannot run (torch does not import), or None when they can."""
    try:
        from benchmarks import torch_dann  # noqa: F401
    except ImportError as e:
        return f"torch not installed ({e})"
    return None


def reset_torch_compiler() -> None:
    """Drop torch.compile's graphs before a new shape (each shape compiles for itself).

    Called once per shape, before its rows are built: resetting between two compiled
    rows of one shape would make the first recompile while it is being timed.
    """
    if torch_missing() is None:
        from benchmarks import torch_dann as td

        td.reset_compiler()


def bench_torch(shape: Shape, impl: str, tf32: bool) -> Bench:
    """A PyTorch row (benchmarks/torch_dann.py); ImportError without torch."""
    from benchmarks import torch_dann as td  # imports torch

    mode, bf16 = TORCH_BENCHES[impl]
    start = time.perf_counter()
    dev = td.device()
    if dev.type == "cpu" and jax.default_backend() != "cpu":
        raise RuntimeError(f"torch sees no GPU while JAX runs on {jax.default_backend()}")
    td.configure(tf32)
    xs, ys, xt = td.to_torch({k: np.asarray(v) for k, v in shape.batch.items()}, dev)
    step = td.make_step(shape.arch, TOTAL_STEPS, dev, compile_mode=mode, bf16=bf16)
    note = f"torch {td.torch.__version__} on {dev.type}"
    if shape.arch in RESNETS:
        note += ", torchvision's model, its own initialisation"
    else:
        params = jax.tree.map(np.asarray, hw.from_flax(shape.state.params))
        td.load_params(step.model, params, shape.arch)
    if dev.type == "cuda":
        note += ", TF32 " + ("on" if tf32 else "off") + ", cudnn.benchmark"
    if mode:
        note += f", mode={mode}, dynamic=False"
    if bf16:
        note += ", bf16 autocast"
    precision = "bf16" if bf16 else "fp32"
    bench = Bench(lambda: step(xs, ys, xt), lambda _: td.synchronize(dev), 1, precision, note=note)
    # torch.compile compiles on the first call: count that as compile time, like XLA's.
    bench.sync(bench.call())
    bench.compile_s = time.perf_counter() - start
    return bench


def build(impl: str, shape: Shape, tf32: bool) -> Bench:
    """Prepare one implementation at one shape (compiled; not yet warmed up).

    ``tf32`` applies to JAX and PyTorch alike: the float32 rows of both run their
    matmuls and convolutions as TF32 (JAX: ``--precision tf32``) or both in full float32.
    """
    if impl in JAX_BENCHES:
        fn, precision = JAX_BENCHES[impl]
        return fn(shape, "tf32" if precision == "fp32" and tf32 else precision)
    return bench_torch(shape, impl, tf32)
