"""Convolutions with few input channels as one matmul over patches, for XLA:CPU.

XLA:CPU runs a 5x5 convolution whose input has 3 channels (the paper models' first
layer) about 4-5x slower than the same numbers computed as patches and one matmul:
its convolution kernel is built for many channels. Here such a convolution is written
as ``patches(x) @ w``, the patches made in two stages (five shifts along W, then five
along H; one stage of 25 slices is several times slower), and autodiff derives the
kernel gradient as ``patches(x)^T @ dy``, another single matmul. Layers with many
input channels keep `lax.conv_general_dilated`, which XLA:CPU runs best there.

Measured on the 2-core development machine, the MNIST model's first layer at 128 images
(`python -m benchmarks.conv_profile`): see benchmarks/README.md.

The numbers are those of `lax.conv_general_dilated` up to float rounding (a test checks
values and gradients). `dann_jax.train.make_model` uses it only on the CPU backend, so
the program on GPU and TPU is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["MAX_PATCH_CHANNELS", "cpu_conv", "patch_conv"]

MAX_PATCH_CHANNELS = 4  # input channels up to which the patch form is used
_DN = ("NHWC", "HWIO", "NHWC")


def _pads(padding, kh: int, kw: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit (low, high) padding of H and W for "VALID", "SAME" or explicit pairs."""
    if isinstance(padding, str):
        if padding == "VALID":
            return (0, 0), (0, 0)
        return ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)  # "SAME"
    (a, b), (c, d) = padding
    return (a, b), (c, d)


def patch_conv(x: jax.Array, w: jax.Array, padding="VALID") -> jax.Array:
    """Stride-1 NHWC/HWIO convolution as ``patches(x) @ w``.

    Args:
      x: input (N, H, W, C).
      w: kernel (kh, kw, C, O).
      padding: ``"VALID"``, ``"SAME"`` or ((top, bottom), (left, right)).

    Returns:
      (N, H', W', O), as `lax.conv_general_dilated` with the same arguments.
    """
    kh, kw, c, o = w.shape
    (pt, pb), (pl, pr) = _pads(padding, kh, kw)
    x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, h, width, _ = x.shape
    ho, wo = h - kh + 1, width - kw + 1
    # Two stages: (N, H, W', kw*C) in (j, c) order, then (N, H', W', kh*kw*C) in (i, j, c)
    # order, which is HWIO's flattening of the kernel.
    rows = jnp.concatenate([x[:, :, j : j + wo, :] for j in range(kw)], axis=-1)
    cols = jnp.concatenate([rows[:, i : i + ho] for i in range(kh)], axis=-1)
    y = jnp.dot(cols.reshape(-1, kh * kw * c), w.reshape(-1, o))
    return y.reshape(n, ho, wo, o)


def cpu_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.conv_general_dilated`'s signature: `patch_conv` where it is faster on CPU.

    That is a plain stride-1 NHWC/HWIO convolution with at most `MAX_PATCH_CHANNELS`
    input channels; everything else goes to `lax.conv_general_dilated` unchanged.
    """
    plain = (
        tuple(window_strides) == (1, 1)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DN)
        and rhs.shape[2] <= MAX_PATCH_CHANNELS
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    return patch_conv(lhs, rhs, padding)
