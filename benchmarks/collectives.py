"""What the data-parallel program does per device: ``python -m benchmarks.collectives``.

Compiles one training step of the accelerator model (``make_model(config,
backend="gpu")``: plain XLA convolutions and pools) over a mesh of every device, and
reads the optimized per-device HLO: collectives per step and the values they move, the
largest convolution batch, and the FLOPs per device against one device running the
whole batch. On a CPU, ask for 8 virtual devices first::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.collectives

The tests (`tests/hlo_test.py`) assert on the same report.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any

import jax
import numpy as np

import dann_jax as dj
from benchmarks.xla_cost import COLLECTIVES, collectives, conv_batches
from dann_jax.reproduce import RECIPES  # the digits recipes

__all__ = ["Report", "compile_step", "report"]


@dataclasses.dataclass
class Report:
    """One compiled step over the mesh, as read from its per-device HLO."""

    recipe: str
    seeds: int
    devices: int
    batch_size: int  # per domain, global
    collectives: dict[str, dict[str, int]]
    conv_batch: int  # largest forward / input-gradient convolution batch per device
    flops: float  # per device
    flops_one_device: float  # the same step on one device, whole batch
    params: int  # parameters per seed (what the gradient all-reduce must move)


def _pools(n: int = 256) -> dj.TrainData:
    """Random 28x28 RGB pools (the MNIST model's input)."""
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
    return dj.make_train_data(xs, rng.integers(0, 10, n), xs)


def compile_step(
    recipe: str,
    seeds: int,
    batch_size: int,
    mesh,
    backend: str = "gpu",
    compiler_options: dict[str, Any] | None = None,
) -> Any:
    """The compiled one-step program (``mesh=None``: one device) and its parameter count.

    `compiler_options` go to XLA (``Lowered.compile``), e.g. a lower backend optimisation
    level where only the optimized HLO is read (it is fixed before code generation).
    """
    config = dj.Config(steps=100, batch_size=batch_size, **RECIPES[recipe]).validate()
    model, tx = dj.make_model(config, backend=backend), dj.make_optimizer(config)
    states = [
        dj.create_train_state(jax.random.key(s), model, tx, (28, 28, 3)) for s in range(seeds)
    ]
    state = dj.stack_trees(states) if seeds > 1 else states[0]
    run = dj.compile_train_steps(
        model, tx, num_steps=1, batch_size=batch_size, vmap_seeds=seeds > 1, mesh=mesh, unroll=True
    )
    args = (state, _pools(), dj.hyperparams(config))
    if mesh is not None:
        args = tuple(dj.put_replicated(a, mesh) for a in args)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(states[0].params))
    return run.lower(*args).compile(compiler_options), params


def _flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])


def report(
    recipe: str,
    seeds: int,
    batch_size: int = 64,
    backend: str = "gpu",
    one_device: bool = True,
    compiler_options: dict[str, Any] | None = None,
) -> Report:
    """Compile the step over all devices (and, with `one_device`, on one), and read them
    (`compiler_options`: see `compile_step`)."""
    mesh = dj.make_mesh()
    program, params = compile_step(recipe, seeds, batch_size, mesh, backend, compiler_options)
    flops_one = math.nan
    if one_device:
        one = compile_step(recipe, seeds, batch_size, None, backend, compiler_options)[0]
        flops_one = _flops(one)
    text = program.as_text()
    return Report(
        recipe, seeds, mesh.size, batch_size, collectives(text),
        max(conv_batches(text, "5x5")), _flops(program), flops_one, params,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=64, help="images per domain, global")
    p.add_argument("--seeds", default="1,4", help="comma list of seed counts (vmapped)")
    args = p.parse_args(argv)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")  # fmt: skip
    head = " | ".join(f"{op}s" for op in COLLECTIVES)
    tail = "largest conv batch per device (global images) | FLOPs per device / one device"
    print(f"| recipe | seeds | {head} | all-reduced values / (params x seeds) | {tail} |")
    print("|" + " --- |" * (len(COLLECTIVES) + 5))
    for recipe in RECIPES:
        for seeds in map(int, args.seeds.split(",")):
            r = report(recipe, seeds, args.batch_size)
            counts = " | ".join(str(r.collectives[op]["count"]) for op in COLLECTIVES)
            moved = r.collectives["all-reduce"]["elements"] / (r.params * seeds)
            print(f"| {recipe} | {seeds} | {counts} | {moved:.4f} | {r.conv_batch} "
                  f"({2 * r.batch_size}) | {r.flops / r.flops_one_device:.4f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
