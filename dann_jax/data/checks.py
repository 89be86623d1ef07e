"""The checks a source/target pair must pass before a model is built on it: sizes,
classes, and target labels that name source classes. Each failure is a `DataError`
whose message names the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dann_jax.data import image_list
from dann_jax.data.domain import DIGIT_CLASSES, DataError, Domain
from dann_jax.data.load import KNOWN_DOMAINS

__all__ = [
    "MIN_IMAGE_SIDE",
    "MIN_TRAIN_IMAGES",
    "check_input_side",
    "check_sizes",
    "class_names",
    "min_input_side",
    "target_labels",
]


# Domains smaller than this are refused: a model trained on them means nothing.
MIN_TRAIN_IMAGES = 10
MIN_IMAGE_SIDE = 8


def check_sizes(source: Domain, target: Domain) -> None:
    """Refuse domains too small to train on (a handful of images, or tiny images)."""
    for role, d in (("source", source), ("target", target)):
        h, w = d.image_shape[:2]
        if len(d.x_train) < MIN_TRAIN_IMAGES or len(d.x_test) < 1 or min(h, w) < MIN_IMAGE_SIDE:
            raise DataError(
                f"The {role} domain {d.name} is too small to train on: {len(d.x_train)} "
                f"training and {len(d.x_test)} test images of {h}x{w} pixels. A domain needs "
                f"at least {MIN_TRAIN_IMAGES} training images, 1 test image, and images of at "
                f"least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels."
            )


def min_input_side(arch: str) -> int:
    """The smallest image side `arch` takes: the paper's CNNs from their layers (the MNIST
    one's two 5x5 convolutions without padding and two 2x2 pools need 16), at least
    `MIN_IMAGE_SIDE` (the ResNets pad every layer: any size from there)."""
    from dann_jax.paper_models import ARCHITECTURES  # flax: only when a pair is checked

    spec = ARCHITECTURES.get(arch)
    if spec is None:
        return MIN_IMAGE_SIDE
    for side in range(MIN_IMAGE_SIDE, 4096):
        n = side
        for _features, kernel, padding, window, stride, pool_padding in spec["convs"]:
            n = n - kernel + 1 if padding == "VALID" else n
            if window is not None and n >= 1:
                n = (n - window) // stride + 1 if pool_padding == "VALID" else -(-n // stride)
        if n >= 1:
            return side
    raise ValueError(f"--arch {arch} takes no image size up to 4096")


def check_input_side(arch: str, side: int, what: str) -> None:
    """Refuse images (`what`: which, and their size) smaller than `arch` can take."""
    need = min_input_side(arch)
    if side < need:
        raise DataError(
            f"{what}, but --arch {arch} needs images of at least {need}x{need}: its "
            f"convolutions and pools leave nothing of smaller ones. Pass --image-size {need} "
            "(or larger; images are then upscaled), or use --arch svhn, which takes images "
            f"from {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}."
        )


def _labels(d: Domain) -> np.ndarray:
    """Every label of a domain, training and test splits."""
    return d.y_train if d.y_test is None else np.concatenate([d.y_train, d.y_test])


def _where(d: Domain, labels) -> str:
    """' (lines 3, 17 of LIST)' naming the lines of an image-list domain with `labels`."""
    if d.variant != "images" or not Path(d.name).is_file():
        return ""
    lines = image_list.lines_with_labels(d.name, labels)
    more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
    return f" (line{'s' * (len(lines) > 1)} {', '.join(map(str, lines[:5]))}{more} of {d.name})"


def _listed(names, limit: int = 5) -> str:
    """'a, b, c' with '... and N more' past `limit`."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(str, names[:limit])) + more


def _check_every_class(source: Domain, names: tuple[str, ...]) -> None:
    """Refuse a source with a class index that has no images (1-based labels, a typo)."""
    labels = _labels(source)
    present = np.unique(labels)
    if int(present[-1]) >= len(names):
        raise DataError(
            f"The source {source.name} has labels up to {int(present[-1])}"
            f"{_where(source, [present[-1]])}, but {len(names)} class names: every label "
            "needs a name. Give a name for each class index, or fix the labels."
        )
    empty = np.setdiff1d(np.arange(len(names)), present)
    if not empty.size:
        return
    if empty.tolist() == [0]:
        raise DataError(
            f"The source {source.name} has no images of class 0: its labels run from 1 to "
            f"{int(present[-1])}. Labels are class indices from 0: if yours count from 1, "
            "subtract 1 from every label."
        )
    top = int(present[-1])
    raise DataError(
        f"The source {source.name} has no images of class{'es' * (empty.size > 1)} "
        f"{_listed([names[i] for i in empty])}; its labels run to {top}{_where(source, [top])}. "
        "Every class of the source needs images (labels are class indices 0..K-1): fix "
        "the labels, or drop the classes without images."
    )


def class_names(source: Domain) -> tuple[str, ...]:
    """The source's classes: its names, the digits, or the label numbers 0..K-1."""
    if source.y_train is None:
        raise DataError(
            f"The source domain {source.name} has no labels, but DANN learns the labels from "
            "the source: give it class subfolders (an image folder), labels in its image "
            "list, or y_train and y_test (an .npz). Only the target may be unlabelled."
        )
    if source.class_names is not None:
        names = source.class_names
    elif source.name in KNOWN_DOMAINS or source.variant == "embedded":
        names = DIGIT_CLASSES
    else:
        names = tuple(str(i) for i in range(int(source.y_train.max()) + 1))
    if names is not DIGIT_CLASSES:  # the digits have ten classes, whatever a file holds
        _check_every_class(source, names)
    present = np.unique(source.y_train)
    if len(present) < 2:
        raise DataError(
            f"The source domain {source.name} has one class only ({names[present[0]]!r}): a "
            "classifier needs at least two. Add the other classes' images."
        )
    return names


def target_labels(target: Domain, names: tuple[str, ...], source: Domain):
    """(train, test) target labels as indices into the source's classes, or (None, None)."""
    if not target.labelled:
        return None, None
    if target.class_names is not None and source.class_names is not None:
        index = {n: i for i, n in enumerate(names)}
        present = set(np.unique(_labels(target)).tolist())  # a list names 0..max: some empty
        missing = [n for i, n in enumerate(target.class_names) if n not in index and i in present]
        if missing:
            raise DataError(_foreign_classes(target, source, missing))
        remap = np.asarray([index[n] for n in target.class_names], np.int32)
        return remap[target.y_train], remap[target.y_test]
    top = int(max(target.y_train.max(initial=0), target.y_test.max(initial=0)))
    if top >= len(names):
        beyond = np.unique(_labels(target)[_labels(target) >= len(names)])
        raise DataError(
            f"The target {target.name} has label{'s' * (beyond.size > 1)} {_listed(beyond)}"
            f"{_where(target, beyond)}, but the source {source.name} has {len(names)} classes "
            f"(0..{len(names) - 1}): target labels must be source classes."
        )
    return target.y_train, target.y_test


def _foreign_classes(target: Domain, source: Domain, missing: list[str]) -> str:
    """The message for target classes the source lacks, in the target's own terms."""
    head = f"The target {target.name} has classes the source {source.name} has not: "
    if target.variant == "images" and Path(target.name).is_file():  # a list: its lines
        where = _where(target, [target.class_names.index(n) for n in missing])
        return (
            f"{head}{_listed(missing)}{where}. Target labels (used only to report) must be a "
            "subset of the source's classes: fix or remove those lines, or add "
            "--target-unlabelled to read the target without its labels."
        )
    return (
        f"{head}{_listed(missing)} (its subfolders are taken as classes). If they are not "
        "classes (an unlabelled target kept in subfolders, by date say), add "
        "--target-unlabelled: every image under the folder is then read, without labels. "
        "If they are, target labels (used only to report) must be source classes: rename "
        "or remove those class folders."
    )
