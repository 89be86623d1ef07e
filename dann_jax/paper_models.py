"""The DANN paper's digit models: its two CNN extractors and how to build them.

* ``mnist`` (MNIST, MNIST-M, USPS at 28x28): conv 5x5x32 -> max-pool 2 -> conv 5x5x48 ->
  max-pool 2 (768 features); label head 100-100-classes; domain head 100-1.
* ``svhn`` (SVHN, Syn digits at 32x32): conv 5x5x64 -> max-pool 3/2 -> conv 5x5x64 ->
  max-pool 3/2 -> conv 5x5x128 (8x8x128 = 8192 features); label head 3072-2048-classes;
  domain head 1024-1024-1.

`paper_model` puts one together with `dann_jax.models.DANN`, optionally with BatchNorm
(`dann_jax.models.DomainBatchNorm`, per domain or joint) and feature dropout.

References:
  Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016,
  Sec. 5.2.2 and Fig. 4 (architectures), https://arxiv.org/abs/1505.07818.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dann_jax import cpu_conv
from dann_jax.models import DANN, DomainBatchNorm

__all__ = ["ARCHITECTURES", "KERNELS", "FeatureExtractor", "max_pool", "paper_model"]

# name -> (conv layers as (features, kernel, padding, pool window, pool stride, pool padding),
#          label head widths, domain head widths, input side)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # DANN paper Fig. 4 (MNIST): "valid" convolutions, 28 -> 24 -> 12 -> 8 -> 4; 4*4*48 = 768.
    "mnist": {
        "convs": ((32, 5, "VALID", 2, 2, "VALID"), (48, 5, "VALID", 2, 2, "VALID")),
        "label_head": (100, 100),
        "domain_head": (100,),
        "input_size": 28,
    },
    # DANN paper Fig. 4 (SVHN, after Srivastava et al. 2014). "same" padding keeps the
    # 3/2 pools well-defined at 32x32: 32 -> 16 -> 8 -> 8x8x128 = 8192 features.
    "svhn": {
        "convs": (
            (64, 5, "SAME", 3, 2, "SAME"),
            (64, 5, "SAME", 3, 2, "SAME"),
            (128, 5, "SAME", None, None, None),
        ),
        "label_head": (3072, 2048),
        "domain_head": (1024, 1024),
        "input_size": 32,
    },
}

# How convolutions and pools are computed; `dann_jax.train.make_model` picks per backend.
# "cpu": convolutions with few input channels as patches + one matmul (`dann_jax.cpu_conv`)
# and non-overlapping max-pools as reshape + max (an elementwise-mask backward instead of
# select-and-scatter): both faster on XLA:CPU. "xla": the plain ops, for GPU and TPU.
KERNELS = ("xla", "cpu")


def _arch(name: str) -> dict[str, Any]:
    """Look up an architecture by name with a helpful error."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def max_pool(x: jax.Array, window: int, stride: int, padding: str, kernels: str) -> jax.Array:
    """Max pooling; on ``kernels="cpu"`` non-overlapping windows as a reshape + max.

    Same forward values either way; the reshape form's backward is an elementwise mask
    instead of XLA's select-and-scatter, which on CPU made the MNIST step about 30% slower.
    """
    n, h, w, c = x.shape
    if (
        kernels == "cpu"
        and window == stride
        and padding == "VALID"
        and h % window == 0
        and w % window == 0
    ):
        return x.reshape(n, h // window, window, w // window, window, c).max(axis=(2, 4))
    return nn.max_pool(x, (window, window), (stride, stride), padding=padding)


class FeatureExtractor(nn.Module):
    """Convolutional feature extractor G_f of the DANN paper.

    Attributes:
      arch: ``"mnist"`` or ``"svhn"`` (see `ARCHITECTURES`).
      batchnorm: add BatchNorm after each convolution (off = the paper).
      bn_groups: domains stacked in the batch that BatchNorm normalises separately
        (2 = per-domain statistics, 1 = statistics of the joint batch).
      axis_name: data-parallel axis for synchronised BatchNorm statistics.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      precision: ``lax.Precision`` of the convolutions (``HIGHEST``: full float32 on
        every backend; None: the backend's default, TF32 on recent NVIDIA GPUs).
      kernels: ``"xla"`` or ``"cpu"`` (see `KERNELS`); the same parameters and numbers.
    """

    arch: str = "mnist"
    batchnorm: bool = False
    bn_groups: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    precision: Any = None
    kernels: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Map images (N, H, W, C) to flat features (N, D)."""
        conv = cpu_conv.cpu_conv if self.kernels == "cpu" else lax.conv_general_dilated
        convs = _arch(self.arch)["convs"]
        for i, (features, kernel, padding, window, stride, pool_padding) in enumerate(convs):
            x = nn.Conv(
                features, (kernel, kernel), padding=padding, dtype=self.dtype,
                precision=self.precision, conv_general_dilated=conv, name=f"Conv_{i}",
            )(x)  # fmt: skip
            if self.batchnorm:
                x = DomainBatchNorm(
                    self.bn_groups, axis_name=self.axis_name, dtype=self.dtype,
                    name=f"BatchNorm_{i}",
                )(x, train)  # fmt: skip
            x = nn.relu(x)
            if window is not None:
                x = max_pool(x, window, stride, pool_padding, self.kernels)
        return x.reshape(x.shape[0], -1)


def paper_model(
    arch: str = "mnist",
    num_classes: int = 10,
    *,
    batchnorm: bool = False,
    bn_stats: str = "joint",
    dropout: float = 0.0,
    dtype: Any = jnp.float32,
    precision: Any = None,
    kernels: str = "xla",
) -> DANN:
    """The DANN paper's digit model ``arch`` (``"mnist"`` or ``"svhn"``), optionally with
    BatchNorm (``bn_stats``: ``"joint"`` or ``"per_domain"``) and feature dropout."""
    spec = _arch(arch)
    if bn_stats not in ("joint", "per_domain"):
        raise ValueError(f"bn_stats must be 'joint' or 'per_domain', got {bn_stats!r}")
    extractor = FeatureExtractor(
        arch, batchnorm, 2 if bn_stats == "per_domain" else 1, None, dtype, precision, kernels
    )
    return DANN(
        extractor, num_classes, spec["label_head"], spec["domain_head"], dropout,
        dtype=dtype, precision=precision,
    )  # fmt: skip
