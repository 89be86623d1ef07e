"""Where a CPU step's time goes: each convolution of the MNIST model, forward and
forward + the gradients a step needs, in XLA (as autodiff derives them), as patches +
one matmul (`dann_jax.cpu_conv.patch_conv`), and in PyTorch, side by side in one run.

    python -m benchmarks.conv_profile            # 128 images (64 + 64), 20 calls each

Prints the median milliseconds of each piece and the machine's load before and after.
The first layer's input gradient is not part of a training step (the input is data).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

import benchmarks
from dann_jax.cpu_conv import patch_conv

DN = ("NHWC", "HWIO", "NHWC")
LAYERS = {"conv1": ((28, 28, 3), (5, 5, 3, 32)), "conv2": ((12, 12, 32), (5, 5, 32, 48))}


def _median_ms(fn, calls: int) -> float:
    """Median wall milliseconds of `fn()` (after two warm-up calls)."""
    fn(), fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _conv_xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)


def _step_grads(conv, first: bool):
    """Forward and the gradients a training step needs: the kernel's, and the input's
    too except for the first layer (whose input is data)."""
    argnums = (1,) if first else (0, 1)

    def f(x, w, dy):
        return jax.grad(lambda x, w: jnp.vdot(conv(x, w), dy), argnums)(x, w)

    return jax.jit(f)


def jax_pieces(n: int, calls: int) -> dict[str, float]:
    """Each layer's forward, and forward + the gradients of a step: XLA vs patch form."""
    out = {}
    key = jax.random.key(0)
    for i, (name, (xs, ws)) in enumerate(LAYERS.items()):
        x, w = jax.random.normal(key, (n, *xs)), jax.random.normal(key, ws)
        for form, conv in (("xla", _conv_xla), ("patch", patch_conv)):
            dy = jnp.ones_like(conv(x, w))
            fwd, grads = jax.jit(conv), _step_grads(conv, first=i == 0)
            out[f"{name} forward ({form})"] = _median_ms(
                lambda fwd=fwd, x=x, w=w: jax.block_until_ready(fwd(x, w)), calls
            )
            out[f"{name} forward+grads ({form})"] = _median_ms(
                lambda g=grads, x=x, w=w, dy=dy: jax.block_until_ready(g(x, w, dy)), calls
            )
    return out


def torch_pieces(n: int, calls: int) -> dict[str, float]:
    """The same pieces in PyTorch (NCHW, default threads); {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    out = {}
    for i, (name, (xs, ws)) in enumerate(LAYERS.items()):
        x = torch.randn(n, xs[2], xs[0], xs[1], requires_grad=i > 0)
        w = torch.randn(ws[3], ws[2], ws[0], ws[1], requires_grad=True)

        def forward(x=x, w=w):
            with torch.no_grad():
                return torch.nn.functional.conv2d(x, w)

        def step(x=x, w=w):
            torch.nn.functional.conv2d(x, w).sum().backward()

        out[f"{name} forward (torch)"] = _median_ms(forward, calls)
        out[f"{name} forward+grads (torch)"] = _median_ms(step, calls)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=128, help="images through the extractor")
    p.add_argument("--calls", type=int, default=20, help="timed calls per piece")
    args = p.parse_args(argv)
    print(f"# {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"# before: {benchmarks.describe_load(benchmarks.machine_load())}")
    rows = {**jax_pieces(args.images, args.calls), **torch_pieces(args.images, args.calls)}
    for name, ms in sorted(rows.items()):
        print(f"{name:32} {ms:8.2f} ms")
    print(f"# after: {benchmarks.describe_load(benchmarks.machine_load())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
