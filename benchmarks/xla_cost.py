"""What XLA says about a compiled step: FLOPs (cost analysis), kernels per step, GPU peaks.

Pure helpers of `benchmarks.step_time`: they read a lowered / compiled JAX program or its
optimized HLO text, and never time anything.
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

__all__ = [
    "COLLECTIVES",
    "PEAKS",
    "collectives",
    "compile_with_flops",
    "conv_batches",
    "count_kernels",
    "peak_for",
]

# Dense peak TFLOP/s by GPU: (bf16 tensor core, tf32 tensor core, fp32 non-tensor).
PEAKS = {
    "H100 SXM": (989.0, 494.0, 67.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "A100": (312.0, 156.0, 19.5),
}


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


def _flops_of(analysis: Any) -> float | None:
    """The 'flops' entry of a cost analysis (a dict, or a list of dicts in older JAX)."""
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    value = analysis.get("flops")
    return float(value) if value and value > 0 else None


# Instructions of optimized HLO that launch nothing: they name, slice or regroup buffers,
# or only wrap other computations (whose own instructions are counted instead).
_NOT_KERNELS = frozenset(
    {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
     "conditional", "copy-start", "copy-done", "opt-barrier", "after-all", "partition-id",
     "replica-id", "async-start", "async-update", "async-done"}
)  # fmt: skip
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?\S+ = .*?[\]}) ]([a-z][a-z0-9-]*)\(")
# Computations run in place of an instruction: a `call` (XLA:GPU wraps runs of kernels
# into command buffers this way) and an async wrapper. Other `to_apply=` (reduce, sort,
# scatter, ...) name a scalar function applied inside one kernel: never followed.
_CALLED = {"call": re.compile(r"\bto_apply=%?([\w.\-]+)"),
           "async-start": re.compile(r"\bcalls=%?([\w.\-]+)")}  # fmt: skip
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")


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


def _expand(comps: dict[str, list[str]], name: str, depth: int = 0) -> list[tuple[str, str]]:
    """(opcode, line) of a computation's instructions, with `call`ed computations inlined.

    A command buffer is one `call` in its caller but launches every kernel inside it.
    `depth` guards against a malformed (cyclic) text.
    """
    out: list[tuple[str, str]] = []
    for line in comps.get(name, []):
        m = _HLO_INSTRUCTION.match(line)
        if not m:
            continue
        op = m.group(1)
        out.append((op, line))
        called = _CALLED[op].search(line) if op in _CALLED else None
        if called and depth < 16:
            out += _expand(comps, called.group(1), depth + 1)
    return out


def _launches(ops: list[tuple[str, str]]) -> int:
    """How many of the instructions launch work (see `_NOT_KERNELS`)."""
    return sum(op not in _NOT_KERNELS for op, _ in ops)


def count_kernels(hlo_text: str) -> int | None:
    """Launches per training step in an optimized HLO module: fusions, library calls, ops.

    Counts the instructions of the computation that runs once per step, following
    `call`s into the computations they run (XLA:GPU's command buffers) and leaving out
    those that launch nothing (`_NOT_KERNELS`). That computation is the entry, or, for a
    scanned K-step program, its step loop's body: the loop whose body launches more
    than everything outside loops (small loops, such as XLA:CPU's random-bit
    generation, are neither the step nor followed). On a GPU each counted instruction is
    roughly one kernel, so at small shapes, where launches rather than FLOPs bound the
    step, the count explains a step-time gap between two programs of the same model.
    None if the text is not recognised.
    """
    comps = _computations(hlo_text)
    if "ENTRY" not in comps:
        return None
    ops = _expand(comps, "ENTRY")
    outside = _launches(ops)
    bodies = [m.group(1) for op, line in ops if op == "while" and (m := _BODY.search(line))]
    inside = max((_launches(_expand(comps, b)) for b in bodies), default=0)
    return inside if inside > outside else outside


COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "reduce-scatter", "all-to-all")
_SHAPE = re.compile(r"\b[a-z]+[0-9]*\[([0-9,]*)\]")


def _elements(shapes: str) -> int:
    """Total elements of the array shapes in an HLO result type (a tuple or one array)."""
    return sum(
        int(np.prod([int(d) for d in dims.split(",") if d])) for dims in _SHAPE.findall(shapes)
    )


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{collective opcode: {"count": instructions, "elements": values moved}} in a module.

    Counts every computation of the optimized (per-device) HLO, the async ``-start``
    forms included, so a collective inside a loop body counts once.
    """
    out = {op: {"count": 0, "elements": 0} for op in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?\S+ = (.*?) ([a-z-]+)\(", line)
        if m and m.group(2).removesuffix("-start") in out:
            entry = out[m.group(2).removesuffix("-start")]
            entry["count"] += 1
            entry["elements"] += _elements(m.group(1))
    return out


def conv_batches(hlo_text: str, window: str) -> list[int]:
    """The batch size of every convolution with this kernel window (e.g. ``"5x5"``).

    Forward and input-gradient convolutions use the layer's kernel as their window;
    their output's ``b`` dimension (``dim_labels=...->b01f``) is the number of images.
    (A kernel-gradient convolution's window is the activation instead: not counted.)
    """
    batches = []
    for line in hlo_text.splitlines():
        if " convolution(" not in line or f"window={{size={window}" not in line:
            continue
        shape = re.search(r"= [a-z]+[0-9]*\[([0-9,]+)\]", line)
        labels = re.search(r"dim_labels=\w+_\w+->(\w+)", line)
        if shape and labels:
            dims = [int(d) for d in shape.group(1).split(",")]
            batches.append(dims[labels.group(1).index("b")])
    return batches


def compile_with_flops(
    fn: Any, *args: Any
) -> tuple[float | None, str | None, float | None, int | None]:
    """AOT-compile `fn` for `args` (the jit cache reuses it); (flops, source, seconds, kernels).

    The compiled module's count is preferred; the pre-optimisation count is the fallback
    when a backend does not count its library calls (cuDNN/cuBLAS custom calls).
    ``kernels`` is `count_kernels` of the compiled module. A plain Python function (no
    ``.lower``) gives all None: it compiles on first call. XLA counts a loop body once,
    so for a K-step scan `flops` is about one step's, not K steps' (see `bench_steps`).
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
