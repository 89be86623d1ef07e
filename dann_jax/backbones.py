"""ResNet-18/34/50/101 feature extractors (Flax linen) that compute what torchvision's do.

`resnet` builds one of the four, freshly initialised or with weights read from a
torchvision state dict (``.pth``/``.pt``, read with torch) or a ``.safetensors`` file
(read without torch; timm's ResNets use the same key names). The module maps NHWC images,
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

import functools
import hashlib
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dann_jax.models import DomainBatchNorm

__all__ = [
    "ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "StateDictError",
    "expected_state_dict_shapes",
    "load_state_dict",
    "resnet",
    "variables_from_state_dict",
    "weights_sha256",
]

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


class StateDictError(ValueError):
    """A state dict whose keys or shapes do not match the architecture."""


def _ignored(key: str) -> bool:
    """Keys with no counterpart in the backbone: the classifier and BN's step counters."""
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


@functools.cache
def _layout(name: str) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (flax variable path, torch shape), in torchvision's state-dict order.

    Derived from the module itself (shapes only, nothing computed), so the expected keys
    cannot drift from the architecture. The paths are read inside the trace, where the
    variables are still in creation order (= torch's); pytrees come out sorted by key.
    """
    module = ResNet(arch=name)
    paths: list[tuple[str, ...]] = []

    def params_in_order(rng: jax.Array, x: jax.Array) -> list[jax.Array]:
        flat = traverse_util.flatten_dict(module.init(rng, x, train=False)["params"])
        paths.extend(flat)
        return list(flat.values())

    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(params_in_order, jax.random.key(0), x)
    layout = {}
    for path, leaf in zip(paths, shapes, strict=True):
        torch_module = ".".join(p.replace("_", ".") for p in path[:-1])
        if path[-1] == "kernel":  # HWIO here, OIHW in torch
            h, w, i, o = leaf.shape
            layout[f"{torch_module}.weight"] = (("params", *path), (o, i, h, w))
        elif path[-1] == "scale":
            layout[f"{torch_module}.weight"] = (("params", *path), leaf.shape)
        else:  # a BatchNorm's bias, the last of its parameters: its running stats follow
            layout[f"{torch_module}.bias"] = (("params", *path), leaf.shape)
            for stat, torch_stat in (("mean", "running_mean"), ("var", "running_var")):
                flax_path = ("batch_stats", *path[:-1], stat)
                layout[f"{torch_module}.{torch_stat}"] = (flax_path, leaf.shape)
    return layout


def expected_state_dict_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The torchvision state-dict keys `name` reads and their shapes, in torch's order.

    ``fc.*`` and ``num_batches_tracked``, which are ignored, are not listed.
    """
    _spec(name)
    return {key: shape for key, (_, shape) in _layout(name).items()}


def _first(items: list[str], n: int = 5) -> str:
    """The first `n` of `items`, comma-separated, with a count of the rest."""
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _check(state_dict: Mapping[str, Any], name: str) -> None:
    """Raise StateDictError naming the first missing, unexpected and wrongly shaped keys."""
    layout = _layout(name)
    given = [k for k in state_dict if not _ignored(k)]
    missing = [k for k in layout if k not in state_dict]
    unexpected = [k for k in given if k not in layout]
    wrong = [
        f"{k} {tuple(np.shape(state_dict[k]))} (want {layout[k][1]})"
        for k in layout
        if k in state_dict and tuple(np.shape(state_dict[k])) != layout[k][1]
    ]
    problems = [
        f"{len(keys)} {what}: {_first(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if keys
    ]
    if problems:
        raise StateDictError(f"state dict does not match {name}: " + "; ".join(problems))


def variables_from_state_dict(state_dict: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` of `name` from a torchvision state dict.

    `state_dict` maps torchvision's keys to arrays (numpy, or anything ``np.asarray``
    takes); conv kernels go from OIHW to HWIO, everything becomes float32; ``fc.*`` and
    ``num_batches_tracked`` are ignored. Raises StateDictError when keys or shapes do not
    match (e.g. ResNet-18 weights for a ResNet-50).
    """
    _spec(name)
    _check(state_dict, name)
    flat = {}
    for key, (path, _) in _layout(name).items():
        value = np.asarray(state_dict[key], dtype=np.float32)
        if path[-1] == "kernel":
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        flat[path] = jnp.asarray(value)
    return traverse_util.unflatten_dict(flat)


def _fresh_variables(name: str, rng: jax.Array) -> dict[str, Any]:
    """torchvision's initialisation of `name`, drawn from one normal vector.

    The same distributions as ``ResNet.init`` (kaiming-normal fan-out convs, BatchNorm
    scale 1, bias 0, running mean 0, var 1), but one sampler for all kernels: XLA:CPU
    took about 20 s to compile ``init``'s 53 per-kernel samplers for ResNet-50.
    """
    layout = _layout(name).values()
    kernels = [(path, shape) for path, shape in layout if path[-1] == "kernel"]
    total = sum(math.prod(shape) for _, shape in kernels)
    normal = np.asarray(jax.random.normal(rng, (total,), jnp.float32))
    flat, start = {}, 0
    for path, (o, i, h, w) in kernels:
        std = math.sqrt(2.0 / (o * h * w))  # fan_out = out channels * kernel area
        flat[path] = normal[start : start + o * i * h * w].reshape(h, w, i, o) * std
        start += o * i * h * w
    for path, shape in layout:
        if path[-1] != "kernel":
            flat[path] = np.full(shape, 1.0 if path[-1] in ("scale", "var") else 0.0, np.float32)
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


def _torch_load(path: str) -> dict[str, np.ndarray]:
    """A torch-pickled state dict as numpy arrays (floating tensors as float32)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} (a torch pickle) needs torch: pip install torch, or convert the "
            "weights to a .safetensors file, which is read without torch"
        ) from e
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: noise here
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own text advises weights_only=False: never shown
        raise StateDictError(_unreadable_pth(path, e)) from None
    if not isinstance(state, Mapping):
        raise StateDictError(f"{path} holds a {type(state).__name__}, not a state dict")
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise StateDictError(
                f"{path}: {key!r} holds a {type(value).__name__}, not a tensor; pass the "
                "state dict itself (e.g. checkpoint['state_dict'] saved on its own)"
            )
        value = value.detach()
        arrays[key] = (value.float() if value.is_floating_point() else value).numpy()
    return arrays


def _unreadable_pth(path: str, error: Exception) -> str:
    """Why torch could not read `path` safely, in words of our own: torch's message for a
    file holding other objects than tensors advises ``weights_only=False``, which would
    run whatever code the file holds."""
    size = os.path.getsize(path)
    if size == 0:
        what = "the file is empty"
    elif isinstance(error, EOFError) or "zip" in str(error).lower():
        what = f"it ends early or is not a complete torch archive ({size:,} bytes; cut short?)"
    else:
        what = "it is damaged, or holds Python objects other than tensors"
    return (
        f"{path} is not a PyTorch state dict that can be read safely: {what}. Objects other "
        "than tensors are never unpickled here (that could run code in the file). Get the "
        "file again, or save the state dict (or convert it to .safetensors) from where it "
        "came."
    )


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict: ``.safetensors`` without torch, ``.pth``/``.pt``/``.bin`` with it."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError as e:
            raise ImportError(f"reading {path} needs safetensors: pip install safetensors") from e
        try:
            return load_file(path)
        except Exception as e:  # SafetensorError (not an OSError) on a damaged file
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise StateDictError(
                f"{path} is not a readable .safetensors file ({why}): it is damaged or cut "
                "short, or not a safetensors file. Get the file again."
            ) from None
    if suffix in (".pth", ".pt", ".bin"):
        return _torch_load(path)
    raise ValueError(f"{path}: unknown weights format {suffix!r}; use .safetensors or .pth/.pt")


def weights_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a weights file, read in chunks (to record which file was loaded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resnet(
    name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    dtype: Any = jnp.float32,
    precision: Any = None,
    bn_groups: int = 1,
    rng: jax.Array | None = None,
) -> tuple[ResNet, dict[str, Any]]:
    """``(module, variables)`` of the ResNet `name` (one of `ARCHS`).

    ``pretrained=None``: fresh variables initialised as torchvision does (kaiming-normal
    fan-out convs, BatchNorm scale 1 and bias 0, running mean 0 and var 1) from `rng`
    (default ``jax.random.key(0)``). Otherwise a path to a torchvision/timm state dict
    (``.safetensors``, or ``.pth``/``.pt`` when torch is installed); record which file with
    `weights_sha256`. Use as ``module.apply(variables, images_nhwc, train=False)``.
    """
    _spec(name)
    module = ResNet(
        arch=name, bn_groups=bn_groups, dtype=dtype, precision=precision, axis_name=None
    )
    if pretrained is not None:
        return module, variables_from_state_dict(load_state_dict(pretrained), name)
    return module, _fresh_variables(name, jax.random.key(0) if rng is None else rng)
