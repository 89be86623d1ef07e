"""Pretrained backbone weights for ``--pretrained``: torchvision's ImageNet files or yours.

``--pretrained imagenet`` fetches torchvision's IMAGENET1K_V1 weights of the ResNet
``--arch`` once into ``<--tfds-dir>/dann_weights/`` (the data sets' download machinery:
mirrors, a resumable ``.part`` file, and torchvision's own check, the file's SHA-256
starting with the 8 hex digits in its name). Offline, the message says to pass the file
itself: ``--pretrained FILE`` (a ``.pth`` state dict, read with torch, or a
``.safetensors`` file, read without it). What was loaded (file and SHA-256) goes into
``results.json``.

`resnet` builds a `dann_jax.backbones.ResNet` freshly initialised as torchvision does or
with a state dict's weights (torch keys and OIHW kernels mapped to the flax variables the
backbones module names); the expected keys and shapes are derived from the module itself.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dann_jax.backbones import ResNet, _spec
from dann_jax.data.domain import DataError

__all__ = [
    "IMAGENET", "StateDictError", "expected_state_dict_shapes", "load", "load_state_dict",
    "resnet", "variables_from_state_dict", "weights_file", "weights_sha256",
]  # fmt: skip

_BASE = "https://download.pytorch.org/models/"
# torchvision.models.ResNet*_Weights.IMAGENET1K_V1 (torchvision >= 0.13): file names.
IMAGENET = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
}


def weights_file(spec: str, arch: str, cache_dir: str | None) -> Path:
    """The weights file `spec` names: ``imagenet`` (downloaded once), or a path."""
    from dann_jax.data.download import Source, download_file
    from dann_jax.data.load import default_data_dir

    if spec != "imagenet":
        path = Path(spec).expanduser()
        if not path.is_file():
            what = "is a folder, not a weights file" if path.is_dir() else ": no such file"
            raise DataError(f"--pretrained {spec}{' ' * path.is_dir()}{what}. Give a .pth or "
                            ".safetensors state dict of the ResNet, or 'imagenet'.")  # fmt: skip
        return path
    name = IMAGENET[arch]
    prefix = name.rsplit("-", 1)[1].split(".")[0]
    folder = Path(cache_dir).expanduser() if cache_dir else default_data_dir()
    dest, errors = download_file(folder / "dann_weights", name, Source((_BASE + name,), prefix),
                                 group="weights")  # fmt: skip
    if errors:
        raise DataError(
            f"Could not download torchvision's ImageNet weights for {arch} ({name}): "
            + "; ".join(errors)
            + f". On a machine with network, fetch {_BASE + name} and pass it as "
            "--pretrained FILE (or put it in " + str(folder / "dann_weights") + ")."
        )
    return dest


def load(config, log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, str]]:
    """(the extractor's variables, what was loaded) for `config` (``pretrained`` set)."""
    path = weights_file(config.pretrained, config.arch, config.tfds_dir)
    try:
        state_dict = load_state_dict(path)
        variables = variables_from_state_dict(state_dict, config.arch)
    except (ImportError, ValueError, OSError) as e:
        raise DataError(
            f"--pretrained {path}: cannot use it as {config.arch} weights ({e})."
        ) from e
    info = {"file": str(path), "sha256": weights_sha256(path)}
    log(f"pretrained {config.arch} weights: {path} (sha256 {info['sha256'][:12]}...)")
    return variables, info


# ------------------------------------------- torchvision state dicts <-> flax variables


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
