"""A source/target pair from host arrays (`dann_jax.fit`), with the checks the command
line applies to files."""

from __future__ import annotations

import numpy as np

from dann_jax.data import checks
from dann_jax.data.domain import DataError, Domain
from dann_jax.data.image_list import MAX_LABEL
from dann_jax.data.pair import PairData, _split
from dann_jax.data.preprocess import channel_mean

__all__ = ["labels", "names_of_classes", "pair_from_arrays", "rgb"]


def rgb(images, what: str) -> np.ndarray:
    """uint8 (N, H, W[, C]) images as (N, H, W, 3): grey repeated, RGB kept."""
    from dann_jax.data.preprocess import _as_nhwc

    x = _as_nhwc(images, f"the {what} images")
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else np.ascontiguousarray(x)


def labels(values, n: int, what: str) -> np.ndarray:
    """`values` as int32 class indices, one per image (`n`), or a `DataError` saying
    what they are instead and how to pass them."""
    y = np.asarray(values)
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:
        raise DataError(
            f"{what} are {y.shape}: one-hot rows or scores, it seems. Pass one class index "
            f"per image, shape ({n},): {what}.argmax(1)."
        )
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what} must be one class index per image, shape ({n},); got {y.shape}.")
    if y.dtype.kind not in "iu":
        whole = y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y))))
        fix = f": they are whole numbers, pass {what}.astype(int)" if whole else ""
        raise DataError(f"{what} must be integer class indices 0..K-1, got dtype {y.dtype}{fix}.")
    if n and (y.min() < 0 or y.max() >= MAX_LABEL):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise DataError(f"{what} must be class indices 0..K-1 (K < {MAX_LABEL:,}); found {bad}.")
    return y.astype(np.int32)


def names_of_classes(class_names) -> tuple[str, ...] | None:
    """`class_names` as a tuple of distinct strings (None stays None)."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise DataError(f"class_names must be a sequence of names, got the string {class_names!r}.")
    names = tuple(str(n) for n in class_names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"class_names must be distinct; {', '.join(twice[:5])} appear twice.")
    return names


def pair_from_arrays(
    source_images: np.ndarray,
    source_labels: np.ndarray,
    target_images: np.ndarray,
    target_labels: np.ndarray | None = None,
    class_names: tuple[str, ...] | None = None,
    arch: str | None = None,
) -> PairData:
    """A pair from host arrays (uint8 images of one size, grey or RGB; integer labels),
    checked as the command line checks files (`dann_jax.data.checks`; ``arch``: the
    architecture the images must fit, None for your own extractor).

    The folders' protocol: the source is split 90/10 (stratified, a fixed seed) into
    training images and a source validation set; the target is used whole, in training
    (unlabelled) and as its test set. ``target_labels`` are used only to report.
    """
    x = {r: rgb(v, r) for r, v in (("source", source_images), ("target", target_images))}
    if x["source"].shape[1:] != x["target"].shape[1:]:
        raise DataError(f"source images are {x['source'].shape[1:]}, target images "
                        f"{x['target'].shape[1:]}: resize them to one size first.")  # fmt: skip
    ys = labels(source_labels, len(x["source"]), "source_labels")
    yt = None if target_labels is None else labels(target_labels, len(x["target"]), "target_labels")
    source = Domain("source_images", "arrays", x["source"], ys, x["source"], ys, "arrays",
                    class_names=names_of_classes(class_names))  # fmt: skip
    target = Domain("target_images", "arrays", x["target"], yt, x["target"], yt, "arrays")
    checks.check_sizes(source, target)
    names = checks.class_names(source)
    checks.target_labels(target, names, source)
    if arch is not None:
        h, w = x["source"].shape[1:3]
        checks.check_input_side(arch, min(h, w), f"The images are {w}x{h}")
    held = _split(ys)
    mean = channel_mean(x["source"][~held], x["target"])
    info = {"variant": "arrays", "classes": list(names), "input_shape": list(x["source"].shape[1:]),
            "mean": [float(m) for m in mean]}  # fmt: skip
    return PairData(
        x["source"][~held], ys[~held], x["target"], x["source"][held], ys[held], x["target"],
        yt, mean, info, names,
    )  # fmt: skip
