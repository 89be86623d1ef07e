"""ResNet-18/34/50/101 feature extractors (Flax linen) that compute what torchvision's do.

`ResNet` is one of the four (`dann_jax.pretrained.resnet` builds it freshly initialised
or with weights read from a torchvision state dict, and maps torch keys to the variables
named below; ``resnet``, the state-dict functions and ``StateDictError`` lived here
before and moved there, beside the weights they read). The module maps NHWC images,
already normalised by the caller, to the globally average-pooled features, (N, 512) for
ResNet-18/34 and (N, 2048) for ResNet-50/101: everything of torchvision's model before
``fc``, which is left out (DANN puts its own heads on the features).

The layout follows torchvision's ``torchvision/models/resnet.py`` layer for layer, so that
its ImageNet weights compute the same numbers here (up to float rounding):

* explicit paddings as in torch (conv1 7x7/2 pad 3; max-pool 3x3/2 pad 1 with -inf; 3x3
  convs pad 1; 1x1 convs pad 0), not flax's ``"SAME"``, which pads stride-2 layers on the
  bottom/right only and would shift every feature map by one pixel against the weights;
* ResNet v1.5: a Bottleneck's stride sits in its 3x3 conv (He et al. put it in the first
  1x1 conv);
* projection shortcuts (1x1 conv with the block's stride + BatchNorm) only where the shape
  changes, identity shortcuts elsewhere (He et al.'s option B);
* convolutions without bias (each is followed by BatchNorm, which has its own);
* BatchNorm eps 1e-5 and torch momentum 0.1, i.e. running averages
  ``ra <- 0.9 * ra + 0.1 * batch`` (flax's convention, ``momentum=0.9``).

Every BatchNorm is `dann_jax.models.DomainBatchNorm`, so ``bn_groups=2`` normalises the
source and the target half of a DANN batch each with its own statistics and
`dann_jax.models.with_axis` synchronises them over a data-parallel axis.

Variables: submodules are named after torchvision's modules with ``_`` for ``.``
(``conv1``, ``bn1``, ``layer1_0/conv1``, ``layer1_0/downsample_0`` (the shortcut's conv),
``layer1_0/downsample_1`` (its BatchNorm), ...). torch -> flax: ``<conv>.weight`` (OIHW)
-> ``params/<conv>/kernel`` (HWIO); ``<bn>.weight`` -> ``params/<bn>/scale``,
``<bn>.bias`` -> ``params/<bn>/bias``, ``<bn>.running_mean`` -> ``batch_stats/<bn>/mean``,
``<bn>.running_var`` -> ``batch_stats/<bn>/var``; ``fc.*`` and ``num_batches_tracked``
are ignored.

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  https://arxiv.org/abs/1512.03385 (Table 1: the architectures; Fig. 5: the blocks;
  Sec. 3.3: projection shortcuts).
  torchvision ``resnet.py`` (https://github.com/pytorch/vision), the layout and
  initialisation followed here, including the v1.5 stride placement
  (https://catalog.ngc.nvidia.com/orgs/nvidia/resources/resnet_50_v1_5_for_pytorch).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dann_jax.models import DomainBatchNorm

__all__ = ["ARCHS", "BasicBlock", "Bottleneck", "ResNet"]

# name -> (block, blocks per stage); He et al. 2016, Table 1.
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), an untruncated normal
# of variance 2 / (out channels * kernel area); jax's "normal" is untruncated too.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# torch's BatchNorm2d defaults: eps 1e-5, momentum 0.1 (weight of the new batch).
_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9


def _spec(name: str) -> tuple[str, tuple[int, ...]]:
    """(block kind, blocks per stage) of `name`, with a helpful error."""
    if name not in ARCHS:
        raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[name]


def _conv(m: nn.Module, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """Bias-free conv with torch's symmetric padding ``kernel // 2`` (3, 1 or 0).

    `m` is the calling module (its ``dtype`` and ``precision`` are used).
    """
    pad = kernel // 2
    return nn.Conv(
        features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=False, dtype=m.dtype, precision=m.precision, kernel_init=_CONV_INIT,
        name=name,
    )  # fmt: skip


def _bn(m: nn.Module, name: str) -> DomainBatchNorm:
    """torchvision's BatchNorm2d as the project's per-domain, axis-synchronised one."""
    return DomainBatchNorm(
        m.bn_groups, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, axis_name=m.axis_name,
        dtype=m.dtype, name=name,
    )  # fmt: skip


class _Block(nn.Module):
    """Fields shared by the residual blocks (the ResNet passes its own down)."""

    planes: int = 64
    stride: int = 1
    bn_groups: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    precision: Any = None

    def shortcut(self, x: jax.Array, features: int, train: bool) -> jax.Array:
        """Identity, or a 1x1 projection + BN where the shape changes (He et al., option B).

        torchvision's condition: ``stride != 1 or inplanes != planes * expansion``.
        """
        if self.stride == 1 and x.shape[-1] == features:
            return x
        y = _conv(self, features, 1, self.stride, "downsample_0")(x)
        return _bn(self, "downsample_1")(y, train)


class BasicBlock(_Block):
    """Two 3x3 convs with a residual connection (He et al. 2016, Fig. 5 left)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = _conv(self, self.planes, 3, self.stride, "conv1")(x)
        y = nn.relu(_bn(self, "bn1")(y, train))
        y = _conv(self, self.planes, 3, 1, "conv2")(y)
        y = _bn(self, "bn2")(y, train)
        return nn.relu(y + self.shortcut(x, self.planes, train))


class Bottleneck(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual (He et al. 2016, Fig. 5 right).

    The stride is in the 3x3 conv, as in torchvision (ResNet v1.5), not in the first 1x1.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out = 4 * self.planes
        y = _conv(self, self.planes, 1, 1, "conv1")(x)
        y = nn.relu(_bn(self, "bn1")(y, train))
        y = _conv(self, self.planes, 3, self.stride, "conv2")(y)
        y = nn.relu(_bn(self, "bn2")(y, train))
        y = _conv(self, out, 1, 1, "conv3")(y)
        y = _bn(self, "bn3")(y, train)
        return nn.relu(y + self.shortcut(x, out, train))


class ResNet(nn.Module):
    """ResNet feature extractor: NHWC images -> average-pooled features (N, D).

    He et al. 2016, Table 1, in torchvision's layout (see the module docstring); D = 512
    for ResNet-18/34 and 2048 for ResNet-50/101.

    Attributes:
      arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
      bn_groups: domains stacked in the batch that BatchNorm normalises separately in
        training (2 = per-domain statistics, 1 = statistics of the joint batch).
      axis_name: data-parallel axis for synchronised BatchNorm statistics (`with_axis`).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      precision: ``lax.Precision`` of every convolution (None: the backend's default).
    """

    arch: str = "resnet50"
    bn_groups: int = 1
    axis_name: str | None = None
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Map images (N, H, W, C) to pooled features (N, D) in ``dtype``."""
        kind, stages = _spec(self.arch)
        block = BasicBlock if kind == "basic" else Bottleneck
        shared = dict(
            bn_groups=self.bn_groups, axis_name=self.axis_name, dtype=self.dtype,
            precision=self.precision,
        )  # fmt: skip
        x = _conv(self, 64, 7, 2, "conv1")(x)
        x = nn.relu(_bn(self, "bn1")(x, train))
        # torch's MaxPool2d(3, 2, padding=1) pads with -inf (flax's max-pool init value).
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for i, blocks in enumerate(stages):
            for j in range(blocks):
                # The first block of stages 2-4 halves the resolution (He et al., Sec. 3.3).
                stride = 2 if i > 0 and j == 0 else 1
                x = block(planes=64 * 2**i, stride=stride, name=f"layer{i + 1}_{j}", **shared)(
                    x, train
                )
        # AdaptiveAvgPool2d((1, 1)) + flatten; the mean in float32 whatever dtype is.
        return x.astype(jnp.float32).mean(axis=(1, 2)).astype(self.dtype)
