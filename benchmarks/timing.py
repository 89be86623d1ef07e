"""Timing the prepared implementations of `benchmarks.rows`, and the rows they become.

A repeat runs K steps back to back and ends with one synchronisation; repeats are
interleaved across the implementations of a shape so that drifting machine load (shared
CPUs, GPU clocks) spreads over every row instead of biasing one.
"""

from __future__ import annotations

import statistics
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import rows as impls
from benchmarks.xla_cost import peak_for

__all__ = ["finish_rows", "format_table", "measure_shape", "warm_clocks"]


def warm_clocks(seconds: float) -> float:
    """Keep the accelerator busy for about `seconds` so it leaves its idle clocks; seconds run.

    An idle GPU sits at a low clock and ramps up under load, which would make the first
    rows timed look slower than the later ones. Nothing to do on a CPU (returns 0).
    """
    if seconds <= 0 or jax.default_backend() == "cpu":
        return 0.0
    # Random, not zeros: a GPU multiplies zeros faster, so they would heat it less.
    x = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.bfloat16)
    product = jax.jit(lambda a: a @ a)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        jax.block_until_ready(product(x))
    return time.perf_counter() - start


def warm_up(bench: impls.Bench) -> None:
    """Two calls before timing: compilation, and any recompilation for the layout of the
    step's own outputs (seen with pmap inputs placed on a differently named mesh)."""
    start = time.perf_counter()
    bench.sync(bench.call())
    if bench.compile_s is None:  # not compiled ahead of time: the first call compiled
        bench.compile_s = time.perf_counter() - start
    bench.sync(bench.call())


def time_repeat(bench: impls.Bench, steps: int) -> float:
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
        "label": impls.IMPLS[impl],
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


def _error(row: dict, e: Exception, verbose: bool) -> None:
    """Mark a row as failed with the first line of the exception."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    row.update(status="error", note=f"{type(e).__name__}: {first}"[:500])
    if verbose:
        traceback.print_exc()


def _prepare(shape: impls.Shape, rows: dict, tf32: bool, verbose: bool) -> dict:
    """{impl: warmed-up Bench} for the rows that can run; the others' rows say why not."""
    if any(impl.startswith("torch_compile") for impl in rows):
        impls.reset_torch_compiler()
    benches: dict[str, impls.Bench] = {}
    for impl, row in rows.items():
        if impl.startswith("torch") and (missing := impls.torch_missing()):
            row.update(status="not installed", note=f"{missing}; pip install -e .[bench]")
            continue
        try:
            benches[impl] = impls.build(impl, shape, tf32)
            warm_up(benches[impl])
        except impls.NotApplicable as e:
            row.update(status="n/a", note=str(e))
        except Exception as e:  # one failing implementation must not end the run
            benches.pop(impl, None)
            _error(row, e, verbose)
    return benches


def measure_shape(
    shape: impls.Shape, names: list[str], repeats: int, tf32: bool = True, verbose: bool = False
) -> list[dict]:
    """One row per implementation in `names` at one shape; failures go into their row.

    Each of `repeats` rounds times every implementation once, in turn, for ``shape.k``
    steps (see the module docstring for why they are interleaved).
    """
    rows = {impl: base_row(shape.arch, shape.batch_size, impl) for impl in names}
    benches = _prepare(shape, rows, tf32, verbose)
    times: dict[str, list[float]] = {impl: [] for impl in benches}
    for _ in range(repeats):
        for impl, bench in list(benches.items()):
            try:
                times[impl].append(time_repeat(bench, shape.k))
            except Exception as e:
                _error(rows[impl], e, verbose)
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
            steps_per_repeat=max(1, shape.k // bench.steps_per_call) * bench.steps_per_call,
            note=bench.note,
        )
    benches.clear()  # free device memory before the next shape
    return list(rows.values())


def _baseline(precision: str) -> str:
    """The PyTorch row a row's speedup is taken against: eager at the same precision."""
    return "torch_bf16" if precision == "bf16" else "torch_eager"


def finish_rows(rows: list[dict], device_kind: str, tf32: bool) -> None:
    """Fill the cross-row fields: speedup vs PyTorch eager, FLOPs of torch rows, FLOP/s, peak.

    The speedup of a float32 row is against PyTorch eager float32; of a bf16 row, against
    PyTorch eager under bf16 autocast (None without that row), so that each compares
    like with like.
    """
    by_key = {(r["arch"], r["batch_size"], r["impl"]): r for r in rows}
    for r in rows:
        if r["step_ms_median"] is None:
            continue
        shape = (r["arch"], r["batch_size"])
        eager = by_key.get((*shape, _baseline(r["precision"])))
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
