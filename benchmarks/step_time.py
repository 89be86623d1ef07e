"""Time one DANN training step: dann_jax (jit, K steps per call, pmap, bf16) against a
hand-written JAX/optax step and PyTorch (eager and torch.compile).

A step is the whole update: forward on both domains, gradient reversal, label and domain
losses, backward, SGD momentum update with the annealed learning rate. Every
implementation trains the same model (same layers and parameter shapes) on the same
device-resident batch; warm-up (compilation) is excluded; each repeat times
`--steps-per-call` consecutive steps and ends with a device synchronisation; the table
reports the median and minimum per-step time over the repeats.

Run from the repository root (``benchmarks`` is not part of the installed package)::

    python -m benchmarks.step_time --quick
    python -m benchmarks.step_time --archs mnist svhn --batch-sizes 64 256 1024 --out step.json

PyTorch rows need torch (``pip install -e .[bench]``); without it they say "not installed".
"""

from __future__ import annotations

import os
import sys

# JAX takes 75% of GPU memory up front by default; leave room for the PyTorch rows.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import argparse
import dataclasses
import re
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import benchmarks
import dann_jax as dj
from benchmarks import handwritten as hw
from dann_jax import io as dj_io

IMPLS = {
    "jit": "dann_jax jit",
    "jit_lean": "dann_jax jit, no diagnostics",
    "steps": "dann_jax K steps/call",
    "pmap": "dann_jax pmap, 1 device",
    "jit_bf16": "dann_jax jit bf16",
    "handwritten": "hand-written jit",
    "handwritten_bf16": "hand-written jit bf16",
    "torch_eager": "torch eager",
    "torch_compile": "torch.compile",
}
SIZES = {"mnist": 28, "svhn": 32}
TOTAL_STEPS = 10_000  # schedule length (p = step / total); only the schedule values depend on it
POOL = 1024  # images per domain in the device-resident pool the K-step variant draws from

# Dense peak TFLOP/s by GPU: (bf16 tensor core, tf32 tensor core, fp32 non-tensor).
PEAKS = {
    "H100 SXM": (989.0, 494.0, 67.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "A100": (312.0, 156.0, 19.5),
}


@dataclasses.dataclass
class Bench:
    """One prepared implementation: `call()` runs `steps_per_call` steps, `sync` waits."""

    call: Callable[[], Any]
    sync: Callable[[Any], Any]
    steps_per_call: int
    precision: str  # "fp32" or "bf16" compute
    flops_per_step: float | None = None
    flops_source: str | None = None
    compile_s: float | None = None
    note: str = ""
    kernels: int | None = None


# -------------------------------------------------------------- device peak and FLOPs


def peak_for(device_kind: str, precision: str, tf32: bool) -> tuple[float | None, str | None]:
    """(peak FLOP/s, its name) of a known GPU for a compute precision; (None, None) otherwise."""
    kind = device_kind.upper()
    if "H200" in kind:
        # H200 has the H100 SXM's compute (more and faster memory only).
        name, peaks = "H200 (= H100 SXM compute)", PEAKS["H100 SXM"]
    elif "H100" in kind and "PCIE" in kind:
        name, peaks = "H100 PCIe", PEAKS["H100 PCIe"]
    elif "H100" in kind and "NVL" not in kind:
        name, peaks = "H100 SXM", PEAKS["H100 SXM"]
    elif "A100" in kind:
        name, peaks = "A100", PEAKS["A100"]
    else:
        return None, None
    bf16, tf32_peak, fp32 = peaks
    if precision == "bf16":
        return bf16 * 1e12, f"{name} dense bf16 {bf16:g} TFLOP/s"
    if tf32:
        return tf32_peak * 1e12, f"{name} dense TF32 {tf32_peak:g} TFLOP/s"
    return fp32 * 1e12, f"{name} fp32 (non-tensor) {fp32:g} TFLOP/s"


def jax_uses_tf32() -> bool:
    """Whether XLA may run float32 matmuls/convs as TF32 (its default precision on GPUs)."""
    setting = str(getattr(jax.config, "jax_default_matmul_precision", None) or "default")
    setting = setting.lower()
    return setting not in ("highest", "float32", "f32")


def _flops_of(analysis: Any) -> float | None:
    """The 'flops' entry of a cost analysis (a dict, or a list of dicts in older JAX)."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    value = analysis.get("flops")
    return float(value) if value and value > 0 else None


# Instructions of optimized HLO that launch nothing: they name, slice or regroup buffers.
_NOT_KERNELS = frozenset(
    {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
     "conditional", "copy-start", "copy-done", "opt-barrier", "after-all", "partition-id",
     "replica-id"}
)  # fmt: skip
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?\S+ = .*?[\]}) ]([a-z][a-z0-9-]*)\(")


def _computations(hlo_text: str) -> dict[str, list[str]]:
    """Optimized HLO text -> {computation name ("ENTRY" for the entry): instruction lines}."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            head = line.split()
            current = "ENTRY" if head[0] == "ENTRY" else head[0].lstrip("%")
            comps[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps


def count_kernels(hlo_text: str) -> int | None:
    """Launches per training step in an optimized HLO module: fusions, library calls, ops.

    Counts the top-level instructions of the computation that runs once per step (the
    entry; for a scanned K-step program, its loop body), leaving out those that launch
    nothing (`_NOT_KERNELS`). On a GPU each counted instruction is roughly one kernel, so
    at small shapes, where launches rather than FLOPs bound the step, the count explains
    a step-time gap between two programs of the same model. None if the text is not
    recognised.
    """
    comps = _computations(hlo_text)
    if "ENTRY" not in comps:
        return None
    lines = comps["ENTRY"]
    bodies = [m.group(1) for line in lines if (m := re.search(r"\bbody=%?([\w.\-]+)", line))]
    if bodies:
        lines = max((comps.get(b, []) for b in bodies), key=len)
    ops = [m.group(1) for line in lines if (m := _HLO_INSTRUCTION.match(line))]
    return sum(op not in _NOT_KERNELS for op in ops)


def compile_with_flops(
    fn: Any, *args: Any
) -> tuple[float | None, str | None, float | None, int | None]:
    """AOT-compile `fn` for `args` (the jit cache reuses it); (flops, source, seconds, kernels).

    The compiled module's count is preferred; the pre-optimisation count is the fallback
    when a backend does not count its library calls (cuDNN/cuBLAS custom calls).
    ``kernels`` is `count_kernels` of the compiled module. A plain Python function (no
    ``.lower``) gives all None: it compiles on first call.
    """
    if not hasattr(fn, "lower"):
        return None, None, None, None
    lowered = fn.lower(*args)
    try:
        lowered_flops = _flops_of(lowered.cost_analysis())
    except Exception:  # not every backend/transform implements it
        lowered_flops = None
    start = time.perf_counter()
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    try:
        compiled_flops = _flops_of(compiled.cost_analysis())
    except Exception:
        compiled_flops = None
    try:
        kernels = count_kernels(compiled.as_text())
    except Exception:  # as_text is best effort on some backends
        kernels = None
    if compiled_flops and (not lowered_flops or compiled_flops >= 0.5 * lowered_flops):
        return compiled_flops, "XLA cost analysis (compiled)", seconds, kernels
    if lowered_flops:
        return lowered_flops, "XLA cost analysis (lowered HLO)", seconds, kernels
    return None, None, seconds, kernels


# -------------------------------------------------------------- data


def make_data(arch: str, batch_size: int, seed: int = 0) -> dict[str, jax.Array]:
    """Device-resident uint8 pools of both domains and their mean (for sample_batch)."""
    rng = np.random.default_rng(seed)
    size = SIZES[arch]
    n = max(POOL, batch_size)
    return {
        "source_images": jnp.asarray(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)),
        "source_labels": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
        "target_images": jnp.asarray(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)),
        "mean": jnp.full((3,), 0.45, jnp.float32),
    }


def fixed_batch(data: dict[str, jax.Array], batch_size: int) -> dict[str, jax.Array]:
    """One normalised float32 batch on the device, reused by every single-step variant."""
    return jax.block_until_ready(dj.sample_batch(jax.random.key(1), data, batch_size))


# -------------------------------------------------------------- implementations


@dataclasses.dataclass
class Shape:
    """What every implementation at one (arch, batch size) shares: data and initial state."""

    arch: str
    batch_size: int
    k: int  # steps per call of the K-steps row, and steps per timed repeat
    data: dict  # device-resident uint8 pools (for compile_train_steps)
    batch: dict  # one normalised device-resident batch (for the single-step rows)
    state: Any  # dann_jax TrainState at step 0; every implementation starts from its params


def make_shape(arch: str, batch_size: int, k: int) -> Shape:
    """Data, batch and one initial dann_jax state for a shape."""
    data = make_data(arch, batch_size)
    config = dj.Config(arch=arch, batch_size=batch_size, steps=TOTAL_STEPS).validate()
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    size = SIZES[arch]
    # Jitted: op-by-op initialisation compiles every primitive and takes seconds on a CPU.
    init = jax.jit(lambda key: dj.create_train_state(key, model, tx, (size, size, 3)))
    state = jax.block_until_ready(init(jax.random.key(0)))
    return Shape(arch, batch_size, k, data, fixed_batch(data, batch_size), state)


def _fresh(tree: Any) -> Any:
    """A private copy of a pytree of arrays (the steps donate, i.e. consume, their state)."""
    return jax.tree.map(jnp.copy, tree)


def _library(shape: Shape, precision: str = "fp32") -> tuple:
    """(model, optimizer, state, hparams) as a dann_jax user builds them."""
    config = dj.Config(
        arch=shape.arch, batch_size=shape.batch_size, precision=precision, steps=TOTAL_STEPS
    ).validate()
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


def bench_jit(shape: Shape, precision: str) -> Bench:
    """dann_jax's compile_train_step (jax.jit, state donated)."""
    model, tx, state, hp = _library(shape, precision)
    step = dj.compile_train_step(model, tx)
    flops, source, seconds, kernels = compile_with_flops(step, state, shape.batch, hp)
    call = _stepper(step, state, shape.batch, hp)
    return Bench(call, jax.block_until_ready, 1, precision, flops, source, seconds, kernels=kernels)


def bench_jit_lean(shape: Shape, precision: str) -> Bench:
    """compile_train_step(diagnostics=False): the losses only, no accuracies / grad norm."""
    model, tx, state, hp = _library(shape, precision)
    step = dj.compile_train_step(model, tx, diagnostics=False)
    flops, source, seconds, kernels = compile_with_flops(step, state, shape.batch, hp)
    call = _stepper(step, state, shape.batch, hp)
    return Bench(call, jax.block_until_ready, 1, precision, flops, source, seconds, kernels=kernels)


def bench_steps(shape: Shape, precision: str) -> Bench:
    """dann_jax's compile_train_steps: K steps per dispatch, batches drawn on the device.

    FLOPs and kernels come from the program one dispatch runs, divided by the steps it
    takes: XLA's cost analysis counts a loop body once, so a K-step scan's own count
    would be K times too low per step.
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
    return Bench(call, jax.block_until_ready, k, precision, flops, source, seconds, note, kernels)


def bench_pmap(shape: Shape, precision: str) -> Bench:
    """dann_jax's compile_train_step(parallel=True) over the first local device only."""
    model, tx, state, hp = _library(shape, precision)
    devices = jax.local_devices()[:1]
    step = dj.compile_train_step(model, tx, parallel=True)
    state, hp = dj.replicate(state, devices=devices), dj.replicate(hp, devices=devices)
    batch = dj.shard(shape.batch, num_devices=1)
    flops, source, seconds, kernels = compile_with_flops(step, state, batch, hp)
    note = "pmap over 1 of the local devices"
    call = _stepper(step, state, batch, hp)
    return Bench(call, jax.block_until_ready, 1, precision, flops, source, seconds, note, kernels)


def bench_handwritten(shape: Shape, precision: str) -> Bench:
    """The hand-written JAX/optax step (benchmarks/handwritten.py), same initial params."""
    dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
    tx = hw.make_optimizer(TOTAL_STEPS)
    state = hw.init_state(hw.from_flax(_fresh(shape.state.params)), tx)
    step = hw.make_step(shape.arch, tx, TOTAL_STEPS, dtype=dtype)
    flops, source, seconds, kernels = compile_with_flops(step, state, shape.batch)
    call = _stepper(step, state, shape.batch)
    return Bench(call, jax.block_until_ready, 1, precision, flops, source, seconds, kernels=kernels)


def torch_missing() -> str | None:
    """Why the PyTorch rows cannot run (torch does not import), or None when they can."""
    try:
        from benchmarks import torch_dann  # noqa: F401
    except ImportError as e:
        return f"torch not installed ({e})"
    return None


def bench_torch(shape: Shape, compiled: bool, tf32: bool) -> Bench:
    """PyTorch eager or torch.compile (benchmarks/torch_dann.py); ImportError without torch."""
    from benchmarks import torch_dann as td  # imports torch

    start = time.perf_counter()
    dev = td.device()
    td.set_tf32(tf32)
    xs, ys, xt = td.to_torch({k: np.asarray(v) for k, v in shape.batch.items()}, dev)
    step = td.make_step(shape.arch, TOTAL_STEPS, dev, compile_model=compiled)
    params = jax.tree.map(np.asarray, hw.from_flax(shape.state.params))
    td.load_params(step.model, params, shape.arch)
    note = f"torch {td.torch.__version__} on {dev.type}"
    if dev.type == "cuda":
        note += ", TF32 " + ("on" if tf32 else "off")
    bench = Bench(lambda: step(xs, ys, xt), lambda _: td.synchronize(dev), 1, "fp32", note=note)
    # torch.compile compiles on the first call: count that as compile time, like XLA's.
    bench.sync(bench.call())
    bench.compile_s = time.perf_counter() - start
    return bench


JAX_BENCHES = {
    "jit": (bench_jit, "fp32"),
    "jit_lean": (bench_jit_lean, "fp32"),
    "steps": (bench_steps, "fp32"),
    "pmap": (bench_pmap, "fp32"),
    "jit_bf16": (bench_jit, "bf16"),
    "handwritten": (bench_handwritten, "fp32"),
    "handwritten_bf16": (bench_handwritten, "bf16"),
}


# -------------------------------------------------------------- timing and rows


def warm_up(bench: Bench) -> None:
    """Two calls before timing: compilation, and any recompilation for the layout of the
    step's own outputs (seen with pmap inputs placed on a differently named mesh)."""
    start = time.perf_counter()
    bench.sync(bench.call())
    if bench.compile_s is None:  # not compiled ahead of time: the first call compiled
        bench.compile_s = time.perf_counter() - start
    bench.sync(bench.call())


def time_repeat(bench: Bench, steps: int) -> float:
    """Per-step seconds of one repeat: `steps` steps back to back, then one synchronisation."""
    calls = max(1, steps // bench.steps_per_call)
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = bench.call()
    bench.sync(out)
    return (time.perf_counter() - start) / (calls * bench.steps_per_call)


def base_row(arch: str, batch_size: int, impl: str) -> dict[str, Any]:
    """The identifying fields of a row, every measurement None."""
    return {
        "arch": arch,
        "batch_size": batch_size,
        "impl": impl,
        "label": IMPLS[impl],
        "status": "ok",
        "precision": "bf16" if impl.endswith("bf16") else "fp32",
        "step_ms_median": None,
        "step_ms_min": None,
        "images_per_s": None,
        "speedup_vs_torch_eager": None,
        "flops_per_step": None,
        "flops_source": None,
        "achieved_tflops": None,
        "peak_tflops": None,
        "peak_name": None,
        "fraction_of_peak": None,
        "compile_s": None,
        "kernels_per_step": None,
        "repeats": None,
        "steps_per_repeat": None,
        "note": "",
    }


def build(impl: str, shape: Shape, args: argparse.Namespace) -> Bench:
    """Prepare and warm up one implementation at one shape."""
    if impl in JAX_BENCHES:
        fn, precision = JAX_BENCHES[impl]
        bench = fn(shape, precision)
    else:
        bench = bench_torch(shape, impl == "torch_compile", args.torch_tf32)
    warm_up(bench)
    return bench


def _error(row: dict, e: Exception, verbose: bool) -> None:
    """Mark a row as failed with the first line of the exception."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    row.update(status="error", note=f"{type(e).__name__}: {first}"[:500])
    if verbose:
        traceback.print_exc()


def measure_shape(shape: Shape, args: argparse.Namespace) -> list[dict]:
    """One row per implementation at one shape; failures go into their row.

    Repeats are interleaved (implementation 1, 2, ..., then again), so that a drift in
    machine load (shared CPUs, GPU clocks) spreads over all rows instead of biasing one.
    """
    rows = {impl: base_row(shape.arch, shape.batch_size, impl) for impl in args.impls}
    benches: dict[str, Bench] = {}
    for impl, row in rows.items():
        if impl.startswith("torch") and (missing := torch_missing()):
            row.update(status="not installed", note=f"{missing}; pip install -e .[bench]")
            continue
        try:
            benches[impl] = build(impl, shape, args)
        except Exception as e:  # one failing implementation must not end the run
            _error(row, e, args.verbose)
    times: dict[str, list[float]] = {impl: [] for impl in benches}
    for _ in range(args.repeats):
        for impl, bench in list(benches.items()):
            try:
                times[impl].append(time_repeat(bench, args.steps_per_call))
            except Exception as e:
                _error(rows[impl], e, args.verbose)
                del benches[impl]
    for impl, bench in benches.items():
        median = statistics.median(times[impl])
        rows[impl].update(
            precision=bench.precision,
            step_ms_median=median * 1e3,
            step_ms_min=min(times[impl]) * 1e3,
            images_per_s=2 * shape.batch_size / median,
            flops_per_step=bench.flops_per_step,
            flops_source=bench.flops_source,
            compile_s=bench.compile_s,
            kernels_per_step=bench.kernels,
            repeats=len(times[impl]),
            steps_per_repeat=max(1, args.steps_per_call // bench.steps_per_call)
            * bench.steps_per_call,
            note=bench.note,
        )
    benches.clear()  # free device memory before the next shape
    return list(rows.values())


def finish_rows(rows: list[dict], device_kind: str, torch_tf32: bool) -> None:
    """Fill the cross-row fields: speedup vs torch eager, FLOPs of torch rows, FLOP/s, peak."""
    by_key = {(r["arch"], r["batch_size"], r["impl"]): r for r in rows}
    for r in rows:
        if r["step_ms_median"] is None:
            continue
        shape = (r["arch"], r["batch_size"])
        eager = by_key.get((*shape, "torch_eager"))
        if eager and eager["step_ms_median"]:
            r["speedup_vs_torch_eager"] = eager["step_ms_median"] / r["step_ms_median"]
        if r["flops_per_step"] is None:
            # PyTorch has no cost model: use the model FLOPs XLA counted for this shape.
            ref = by_key.get((*shape, "jit")) or by_key.get((*shape, "handwritten"))
            if ref and ref["flops_per_step"]:
                r["flops_per_step"] = ref["flops_per_step"]
                r["flops_source"] = f"{ref['flops_source']} of the {ref['label']} row"
        if r["flops_per_step"]:
            achieved = r["flops_per_step"] / (r["step_ms_median"] / 1e3)
            r["achieved_tflops"] = achieved / 1e12
            tf32 = torch_tf32 if r["impl"].startswith("torch") else jax_uses_tf32()
            peak, name = peak_for(device_kind, r["precision"], tf32)
            if peak:
                r["peak_tflops"], r["peak_name"] = peak / 1e12, name
                r["fraction_of_peak"] = achieved / peak


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """Format a number, or '-' for None."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table (notes in the last column)."""
    header = (
        f"{'arch':6} {'B/dom':>5}  {'implementation':24} {'median ms':>10} {'min ms':>9} "
        f"{'images/s':>10} {'vs torch':>8} {'GFLOP':>7} {'TFLOP/s':>8} {'peak':>6} "
        f"{'kernels':>7}  note"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["step_ms_median"] is None:
            ident = f"{r['arch']:6} {r['batch_size']:>5}  {r['label']:24}"
            lines.append(f"{ident} {r['status']:>10}  {r['note']}")
            continue
        peak = "-" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
        gflop = None if r["flops_per_step"] is None else r["flops_per_step"] / 1e9
        lines.append(
            f"{r['arch']:6} {r['batch_size']:>5}  {r['label']:24} "
            f"{_fmt(r['step_ms_median'], '.3f'):>10} {_fmt(r['step_ms_min'], '.3f'):>9} "
            f"{_fmt(r['images_per_s'], ',.0f'):>10} "
            f"{_fmt(r['speedup_vs_torch_eager'], '.2f', 'x'):>8} {_fmt(gflop, '.2f'):>7} "
            f"{_fmt(r['achieved_tflops'], '.3f'):>8} {peak:>6} "
            f"{_fmt(r['kernels_per_step'], 'd'):>7}  {r['note']}"
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Device, versions, date and command line for the JSON report, plus the settings."""
    return {
        **benchmarks.environment("step_time"),
        "jax_default_matmul_precision": getattr(jax.config, "jax_default_matmul_precision", None),
        "torch_tf32": args.torch_tf32,
        "settings": {
            "archs": args.archs,
            "batch_sizes": args.batch_sizes,
            "impls": args.impls,
            "repeats": args.repeats,
            "steps_per_call": args.steps_per_call,
            "quick": args.quick,
        },
    }


def write_json(path: str, env: dict, rows: list[dict]) -> None:
    """Write the report (environment + rows) as strict JSON, atomically (`dann_jax.io`)."""
    dj_io.write_json(path, {**env, "rows": rows})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; --quick fills in whatever was not given explicitly."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="small run (MNIST at 64, 3 repeats, K=5): minutes on a CPU",
    )
    p.add_argument("--archs", nargs="+", choices=sorted(SIZES), default=None)
    p.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=None,
        help="images per domain (default 64 256 1024)",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        choices=list(IMPLS),
        default=None,
        help="implementations to time (default all)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 10)")
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=None,
        help="K of the K-steps-per-dispatch row, also the steps per timed repeat "
        "of every row (default 10)",
    )
    p.add_argument(
        "--torch-tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let PyTorch use TF32 for float32 matmuls/convs on GPU, as XLA does by "
        "default (default on)",
    )
    p.add_argument(
        "--require-idle",
        action="store_true",
        help="exit with status 2 instead of timing when the 1-minute load average is above "
        "the usable cores (otherwise such a run is flagged BUSY in its output)",
    )
    p.add_argument("--out", help="write all rows and the environment as JSON here")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failing rows")
    args = p.parse_args(argv)
    quick = {"archs": ["mnist"], "batch_sizes": [64], "repeats": 3, "steps_per_call": 5}
    full = {
        "archs": ["mnist", "svhn"],
        "batch_sizes": [64, 256, 1024],
        "repeats": 10,
        "steps_per_call": 10,
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.impls = args.impls or list(IMPLS)
    if args.repeats < 1 or args.steps_per_call < 1 or min(args.batch_sizes) < 1:
        p.error("--repeats, --steps-per-call and --batch-sizes must be positive")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Every requested (arch, batch size, implementation) row, printed shape by shape."""
    env = environment(args)
    print(
        f"# device: {env['device_kind']} ({env['platform']}), jax {env['jax_version']}", flush=True
    )
    print(f"# before: {benchmarks.describe_load(env)}", flush=True)
    rows: list[dict] = []
    for arch in args.archs:
        for batch_size in args.batch_sizes:
            shape = make_shape(arch, batch_size, args.steps_per_call)
            for row in measure_shape(shape, args):
                rows.append(row)
                ms = row["step_ms_median"]
                shown = f"{ms:.3f} ms/step" if ms is not None else f"{row['status']} {row['note']}"
                print(f"# {arch} B={batch_size} {row['label']}: {shown}", flush=True)
            del shape
            finish_rows(rows, env["device_kind"], args.torch_tf32)
            if args.out:  # after every shape, so a run cut short keeps what it measured
                write_json(args.out, env, rows)
    # The load over the last minute includes the benchmark's own threads; with the load
    # before the run it shows whether anything else was running.
    env["after"] = benchmarks.machine_load()
    print(f"# after: {benchmarks.describe_load(env['after'])}", flush=True)
    if args.out:
        write_json(args.out, env, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = benchmarks.machine_load()
    if args.require_idle and load["busy"]:
        print(f"error: {benchmarks.describe_load(load)}.", file=sys.stderr)
        return 2
    rows = run(args)
    print(format_table(rows))
    if args.out:
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
