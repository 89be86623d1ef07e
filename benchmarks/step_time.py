"""Time one DANN training step: dann_jax (jit, K steps per call, pmap, bf16) against a
hand-written JAX/optax step and PyTorch (eager, bf16 autocast, torch.compile with and
without CUDA graphs).

A step is the whole update: forward on both domains, gradient reversal, label and domain
losses, backward, SGD momentum update with the annealed learning rate. Every
implementation trains the same model (same layers and parameter shapes) on the same
device-resident batch; warm-up (compilation) is excluded; each repeat times
`--steps-per-call` consecutive steps and ends with a device synchronisation; the table
reports the median and minimum per-step time over the repeats. The implementations are
in `benchmarks.rows`, the timing in `benchmarks.timing`, FLOPs and kernel counts in
`benchmarks.xla_cost`.

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
import time
from typing import Any

import jax

import benchmarks
from benchmarks.rows import IMPLS, RESNETS, SIZES, TORCH_BENCHES, make_shape
from benchmarks.timing import finish_rows, format_table, measure_shape, warm_clocks
from dann_jax import io as dj_io

# Rough seconds per row and shape to compile and warm up, and per timed step, used only
# to say what a run will take before it starts (guesses, not measurements).
_EXPECT = {
    "gpu": {"jax": 3.0, "torch": 3.0, "torch_compile": 15.0, "step": 0.002},
    "cpu": {"jax": 8.0, "torch": 2.0, "torch_compile": 60.0, "step": 0.1},
}


def expected_seconds(args: argparse.Namespace, backend: str) -> float:
    """A rough duration of the run `args` describe on `backend` ("cpu" or anything else)."""
    cost = _EXPECT["cpu" if backend == "cpu" else "gpu"]
    per_shape = 0.0
    for impl in args.impls:
        kind = "jax" if impl not in TORCH_BENCHES else "torch"
        if impl.startswith("torch_compile"):
            kind = "torch_compile"
        per_shape += cost[kind] + (args.repeats + 2) * args.steps_per_call * cost["step"]
    return args.warm_up_s + per_shape * len(args.archs) * len(args.batch_sizes)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Device, versions, date and command line for the JSON report, plus the settings."""
    return {
        **benchmarks.environment("step_time"),
        "complete": False,  # True once every requested shape was measured
        "tf32": args.tf32,
        "settings": {
            "archs": args.archs,
            "batch_sizes": args.batch_sizes,
            "impls": args.impls,
            "repeats": args.repeats,
            "steps_per_call": args.steps_per_call,
            "warm_up_s": args.warm_up_s,
            "quick": args.quick,
        },
    }


def write_json(path: str, env: dict, rows: list[dict]) -> None:
    """Write the report (environment + rows) as strict JSON, atomically (`dann_jax.io`)."""
    dj_io.write_json(path, {**env, "rows": rows}, make_parents=True)  # --out into a new folder


def _parser() -> argparse.ArgumentParser:
    """The flags; None defaults are filled in by `parse_args`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--quick", action="store_true", help="small run (MNIST at 64, 3 repeats, K=5)")
    a("--archs", nargs="+", choices=sorted(SIZES), default=None)
    a(
        "--batch-sizes",
        nargs="+",
        type=int,
        default=None,
        help="images per domain (default 64 256 1024), measured in this order",
    )
    a(
        "--impls",
        nargs="+",
        choices=list(IMPLS),
        default=None,
        help="implementations to time (default all)",
    )
    a("--repeats", type=int, default=None, help="timed repeats (default 10)")
    a("--resnet-size", type=int, default=None, help="image side of the ResNet rows (default 224)")
    a(
        "--steps-per-call",
        type=int,
        default=None,
        help="K of the K-steps-per-dispatch row, also the steps per timed repeat of every "
        "row (default 50 on an accelerator, 10 on CPU)",
    )
    a(
        "--warm-up-s",
        type=float,
        default=None,
        help="seconds of matrix products before the first shape, so that a GPU leaves its "
        "idle clocks (default 5 on an accelerator, 0 on CPU)",
    )
    a(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the float32 rows of JAX (--precision tf32) and PyTorch (allow_tf32) run their "
        "matmuls/convs as TF32 on GPU; --no-tf32: full float32 in both",
    )
    a(
        "--require-idle",
        action="store_true",
        help="exit with status 2 instead of timing when the 1-minute load average is above "
        "the usable cores (otherwise such a run is flagged BUSY in its output)",
    )
    a("--out", help="write all rows and the environment as JSON here")
    a("--verbose", action="store_true", help="print tracebacks of failing rows")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; --quick fills in whatever was not given explicitly."""
    p = _parser()
    args = p.parse_args(argv)
    on_cpu = jax.default_backend() == "cpu"
    quick = {"archs": ["mnist"], "batch_sizes": [64], "repeats": 3, "steps_per_call": 5}
    full = {
        "archs": ["mnist", "svhn"],
        "batch_sizes": [64, 256, 1024],
        "repeats": 10,
        # K steps per repeat: enough on a GPU that one synchronisation is negligible.
        "steps_per_call": 10 if on_cpu else 50,
    }
    for name, value in {**full, **(quick if args.quick else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warm_up_s is None:
        args.warm_up_s = 0.0 if on_cpu else 5.0
    args.impls = args.impls or list(IMPLS)
    if args.repeats < 1 or args.steps_per_call < 1 or min(args.batch_sizes) < 1:
        p.error("--repeats, --steps-per-call and --batch-sizes must be positive")
    return args


def _measure_all(args: argparse.Namespace, env: dict, rows: list[dict]) -> None:
    """Measure shape by shape into `rows`, printing each row and saving after each shape."""
    for arch in args.archs:
        for batch_size in args.batch_sizes:
            size = args.resnet_size if arch in RESNETS else None
            shape = make_shape(arch, batch_size, args.steps_per_call, size)
            measured = measure_shape(shape, args.impls, args.repeats, args.tf32, args.verbose)
            for row in measured:
                rows.append(row)
                ms = row["step_ms_median"]
                shown = f"{ms:.3f} ms/step" if ms is not None else f"{row['status']} {row['note']}"
                print(f"# {arch} B={batch_size} {row['label']}: {shown}", flush=True)
            del shape
            finish_rows(rows, env["device_kind"], args.tf32)
            if args.out:  # after every shape, so a run cut short keeps what it measured
                write_json(args.out, env, rows)


def run(args: argparse.Namespace) -> list[dict]:
    """Every requested (arch, batch size, implementation) row, printed shape by shape.

    An interrupt (Ctrl-C, or the SIGINT of the device script's deadline) ends the
    measuring, not the report: the rows so far are written with ``complete`` false.
    """
    env = environment(args)
    print(
        f"# device: {env['device_kind']} ({env['platform']}), jax {env['jax_version']}", flush=True
    )
    print(f"# before: {benchmarks.describe_load(env)}", flush=True)
    print(f"# expected: ~{expected_seconds(args, env['platform']):.0f} s (rough)", flush=True)
    start = time.perf_counter()
    env["warm_up_s_run"] = warm_clocks(args.warm_up_s)
    rows: list[dict] = []
    try:
        _measure_all(args, env, rows)
        env["complete"] = True
    except KeyboardInterrupt:
        env["stopped"] = f"interrupted after {len(rows)} rows"
        print(f"# {env['stopped']}; the rows so far follow", flush=True)
    env["wall_s"] = time.perf_counter() - start
    # The load over the last minute includes the benchmark's own threads; with the load
    # before the run it shows whether anything else was running.
    env["after"] = benchmarks.machine_load()
    print(f"# after: {benchmarks.describe_load(env['after'])}", flush=True)
    if args.out:
        write_json(args.out, env, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0, 2 (busy machine with --require-idle) or 130 (interrupted)."""
    args = parse_args(argv)
    if args.out:  # checked before timing anything: never measure for minutes, then lose it
        from dann_jax import io as dj_io

        try:
            dj_io.check_writable(args.out, "--out", is_file=True)
        except dj_io.NotWritable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    load = benchmarks.machine_load()
    if args.require_idle and load["busy"]:
        print(f"error: {benchmarks.describe_load(load)}.", file=sys.stderr)
        return 2
    rows = run(args)
    print(format_table(rows))
    if args.out:
        print(f"# wrote {args.out}")
    requested = len(args.archs) * len(args.batch_sizes) * len(args.impls)
    return 0 if len(rows) == requested else 130


if __name__ == "__main__":
    sys.exit(main())
