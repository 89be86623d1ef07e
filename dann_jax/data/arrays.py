"""A source/target pair from host arrays (`dann_jax.fit`), with the checks the command
line applies to files."""

from __future__ import annotations

import numpy as np

from dann_jax.data import checks
from dann_jax.data.domain import DataError, Domain
from dann_jax.data.pair import PairData, _split
from dann_jax.data.preprocess import channel_mean

__all__ = ["pair_from_arrays", "rgb"]


def rgb(images, what: str) -> np.ndarray:
    """uint8 (N, H, W[, C]) images as (N, H, W, 3): grey repeated, RGB kept."""
    from dann_jax.data.preprocess import _as_nhwc

    x = _as_nhwc(images, f"the {what} images")
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else np.ascontiguousarray(x)


def pair_from_arrays(
    source_images: np.ndarray,
    source_labels: np.ndarray,
    target_images: np.ndarray,
    target_labels: np.ndarray | None = None,
    class_names: tuple[str, ...] | None = None,
) -> PairData:
    """A pair from host arrays (uint8 images of one size, grey or RGB; integer labels).

    The folders' protocol: the source is split 90/10 (stratified, a fixed seed) into
    training images and a source validation set; the target is used whole, in training
    (unlabelled) and as its test set. ``target_labels`` are used only to report.
    """
    x = {r: rgb(v, r) for r, v in (("source", source_images), ("target", target_images))}
    if x["source"].shape[1:] != x["target"].shape[1:]:
        raise DataError(f"source images are {x['source'].shape[1:]}, target images "
                        f"{x['target'].shape[1:]}: resize them to one size first.")  # fmt: skip
    ys = np.asarray(source_labels, np.int32)
    if len(ys) != len(x["source"]):
        raise DataError(f"{len(ys)} source labels for {len(x['source'])} source images.")
    source = Domain("source", "arrays", x["source"], ys, x["source"], ys, "arrays",
                    class_names=class_names)  # fmt: skip
    names = checks.class_names(source)
    held = _split(ys)
    yt = None if target_labels is None else np.asarray(target_labels, np.int32)
    mean = channel_mean(np.concatenate([x["source"][~held], x["target"]]))
    info = {"variant": "arrays", "classes": list(names), "input_shape": list(x["source"].shape[1:]),
            "mean": [float(m) for m in mean]}  # fmt: skip
    return PairData(
        x["source"][~held], ys[~held], x["target"], x["source"][held], ys[held], x["target"],
        yt, mean, info, names,
    )  # fmt: skip
