"""Pretrained backbone weights for ``--pretrained``: torchvision's ImageNet files or yours.

``--pretrained imagenet`` fetches torchvision's IMAGENET1K_V1 weights of the ResNet
``--arch`` once into ``<--tfds-dir>/dann_weights/`` (the data sets' download machinery:
mirrors, a resumable ``.part`` file, and torchvision's own check, the file's SHA-256
starting with the 8 hex digits in its name). Offline, the message says to pass the file
itself: ``--pretrained FILE`` (a ``.pth`` state dict, read with torch, or a
``.safetensors`` file, read without it). What was loaded (file and SHA-256) goes into
``results.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dann_jax.data.domain import DataError

__all__ = ["IMAGENET", "load", "weights_file"]

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
    from dann_jax import backbones

    path = weights_file(config.pretrained, config.arch, config.tfds_dir)
    try:
        state_dict = backbones.load_state_dict(path)
        variables = backbones.variables_from_state_dict(state_dict, config.arch)
    except (ImportError, ValueError, OSError) as e:
        raise DataError(
            f"--pretrained {path}: cannot use it as {config.arch} weights ({e})."
        ) from e
    info = {"file": str(path), "sha256": backbones.weights_sha256(path)}
    log(f"pretrained {config.arch} weights: {path} (sha256 {info['sha256'][:12]}...)")
    return variables, info
