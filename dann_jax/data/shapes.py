"""A toy own-data shift to try `experiments/adapt.py` on: shapes seen by two "instruments".

``python -m dann_jax.data.shapes OUT [--per-class N]`` writes, as image files:

* ``OUT/source/<class>/*.png``: a labelled source, 6 classes (circle, square, triangle,
  cross, ring, bar) at 64x64, drawn light on a dark, noisy background, sharp;
* ``OUT/target/*.png``: the same classes from a second instrument, unlabelled: dark on
  a light, textured background, blurred, another colour cast and scale;
* ``OUT/target_labelled/<class>/*.png``: the same target images with their classes, for
  reporting only (a run never trains on them).

The shift (contrast inverted, blur, background texture, colour) is one an unlabelled
second instrument might bring; the classes' shapes stay the same. Deterministic for a
given seed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

__all__ = ["CLASSES", "draw", "write_shapes"]

CLASSES = ("bar", "circle", "cross", "ring", "square", "triangle")
SIZE = 64


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """The outline of a filled shape."""
    corners = {"square": 4, "triangle": 3}[kind]
    return [
        (cx + r * math.cos(angle + 2 * math.pi * k / corners),
         cy + r * math.sin(angle + 2 * math.pi * k / corners))
        for k in range(corners)
    ]  # fmt: skip


def _shape(draw, kind: str, rng, fill, scale: float) -> None:
    """One shape of class `kind` at a random place, size and angle."""
    r = rng.uniform(12, 20) * scale
    cx, cy = rng.uniform(r + 2, SIZE - r - 2, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind in ("square", "triangle"):
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)
    elif kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=max(2, int(r / 3)))
    else:  # bar, cross: thick lines through the centre
        dx, dy = r * math.cos(angle), r * math.sin(angle)
        width = max(3, int(r / 2.5))
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=fill, width=width)
        if kind == "cross":
            draw.line((cx + dy, cy - dx, cx - dy, cy + dx), fill=fill, width=width)


def draw(kind: str, instrument: str, rng: np.random.Generator) -> np.ndarray:
    """One 64x64 RGB uint8 image of class `kind` from instrument ``"source"``/``"target"``."""
    from PIL import Image, ImageDraw, ImageFilter

    if instrument == "source":
        background = rng.normal(30, 12, (SIZE, SIZE, 3))
        fill = tuple(int(v) for v in rng.integers(150, 256, 3))
        scale, blur = 1.0, 0.0
    else:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        texture = 25 * np.sin(xx / rng.uniform(3, 6) + rng.uniform(0, 6)) * np.cos(yy / 5.0)
        background = 190 + texture[..., None] + rng.normal(0, 8, (SIZE, SIZE, 3))
        background *= np.asarray([1.0, 0.9, 0.75])  # a warmer colour cast
        fill = tuple(int(v) for v in rng.integers(20, 90, 3))
        scale, blur = 0.8, 1.2
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    _shape(ImageDraw.Draw(img), kind, rng, fill, scale)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img)


def write_shapes(root: str | Path, per_class: int = 100, seed: int = 0) -> Path:
    """Write the source, target and target_labelled folders under `root`; return it.

    Target files are numbered in a shuffled order (``img_00000.png``, ...), so a name
    says nothing of its class; ``target_labelled`` holds the same files by class.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / "source" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw(kind, "source", rng)).save(root / "source" / kind / f"{i:04d}.png")
    kinds = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
    (root / "target").mkdir(parents=True, exist_ok=True)
    for n, k in enumerate(kinds):
        image = Image.fromarray(draw(CLASSES[k], "target", rng))
        image.save(root / "target" / f"img_{n:05d}.png")
        (root / "target_labelled" / CLASSES[k]).mkdir(parents=True, exist_ok=True)
        image.save(root / "target_labelled" / CLASSES[k] / f"img_{n:05d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=100, help="images per class and domain")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_shapes(args.out, args.per_class, args.seed)
    print(f"wrote {args.out}/source, {args.out}/target, {args.out}/target_labelled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
