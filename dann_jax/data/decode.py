"""One image file to RGB uint8 pixels, and every way that changes the data said.

What a decode can do to an image, each recorded as a note that the domain's log line
counts (nothing is changed without a word):

* 16-bit images (microscopes, scientific cameras: PNG or TIFF) are scaled to 8 bits
  (``round(value / 257)``, so 65535 is 255), not clipped to white; 16-bit colour PNGs
  are reduced by Pillow the same way. Floating-point and 32-bit integer pixels have no
  one scaling (their range is the instrument's): such files are refused by name;
* an EXIF orientation (photos from phones and cameras) is applied, so the pixels are
  the image as viewers show it;
* transparency is dropped (the colour under a transparent pixel is kept, as
  torchvision's ``convert("RGB")`` does);
* of an animated or multi-page file, the first frame is used;
* with an image size, the shorter side is resized to it and a non-square image is
  centre-cropped (the ends of its longer side are cut).
"""

from __future__ import annotations

import io
import os

import numpy as np

__all__ = ["NOTES", "Unsupported", "decode", "describe_notes", "printable", "report"]

# Each note a decode can make, as the log says it (after a count: "12 images ...").
NOTES = {
    "16bit": "16-bit, scaled to 8 bits (value / 257)",
    "exif": "turned upright by their EXIF orientation",
    "alpha": "with transparent pixels: the transparency dropped (colours kept)",
    "frames": "with several frames or pages: the first one used",
    "resized": "resized (shorter side to {size})",
    "cropped": "not square: centre-cropped to {size}x{size} (the ends of the longer side cut)",
}
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


class Unsupported(Exception):
    """A file Pillow reads whose pixels have no faithful 8-bit form (the message says)."""


def printable(path: str) -> str:
    """A path as text any output can hold: bytes that are not UTF-8 (a name the OS gave
    in another encoding) as ``\\xNN`` escapes instead of lone surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _bits(img) -> int | None:
    """The bits per sample of a 32-bit integer ("I") image's file, when it says."""
    if img.format == "PNG":
        return 16  # PNG has no 32-bit samples: an "I" PNG is a 16-bit one
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    return int(bits[0] if isinstance(bits, tuple) else bits) if bits else None


def _may_be_transparent(img) -> bool:
    """Whether `img` has an alpha channel or a transparent palette entry."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _to_rgb(img, notes: set[str]):
    """An RGB Pillow image of `img`, scaling 16-bit data and noting dropped transparency."""
    from PIL import Image

    if img.mode in _SIXTEEN or (img.mode == "I" and _bits(img) == 16):
        notes.add("16bit")
        grey = np.round(np.asarray(img, np.float64) / 257.0).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("I", "F"):
        what = "floating-point" if img.mode == "F" else f"{_bits(img) or 32}-bit integer"
        raise Unsupported(f"{what} pixels")
    if _may_be_transparent(img) and img.convert("RGBA").getchannel("A").getextrema()[0] < 255:
        notes.add("alpha")
    return img.convert("RGB")


def decode(data: bytes, image_size: int | None) -> tuple[np.ndarray, frozenset[str]]:
    """(RGB uint8 (H, W, 3), the notes of `NOTES` that apply) of one file's bytes.

    ``image_size``: the shorter side resized to it, then a centre crop to a square.
    Raises `Unsupported` for pixels without a faithful 8-bit form, and whatever Pillow
    raises for a file it cannot decode.
    """
    from PIL import Image, ImageOps

    notes: set[str] = set()
    with Image.open(io.BytesIO(data)) as img:
        if getattr(img, "n_frames", 1) > 1:
            notes.add("frames")
        if img.getexif().get(0x0112, 1) not in (1, None):
            notes.add("exif")
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img, notes)
    if image_size is not None:
        w, h = img.size
        if (w, h) != (image_size, image_size):
            notes.add("resized")
        if w != h:
            notes.add("cropped")
        scale = image_size / min(w, h)
        size = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
        img = img.resize(size, Image.BILINEAR)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, np.uint8), frozenset(notes)


def describe_notes(counts: dict[str, int], image_size: int | None) -> list[str]:
    """``["12 images 16-bit, scaled ...", ...]``: one phrase per note that applied."""
    return [
        f"{n} image{'s' if n != 1 else ''} {NOTES[key].format(size=image_size)}"
        for key, n in counts.items()
        if n
    ]


def report(images, log) -> None:
    """Say what was read into `images` (a `dann_jax.data.folders.Images`), what decoding
    changed, and what was left out."""
    n, h, w, _ = images.images.shape
    root = printable(images.root)
    what = f"{len(images.class_names)} classes" if images.class_names else "unlabelled"
    log(f"{root}: {n} images of {w}x{h} ({what}){' from the cache' if images.cached else ''}")
    if images.notes:
        log(f"note: of the images in {root}: {'; '.join(images.notes)}")
    if images.skipped:
        more = " ..." if len(images.skipped) > 5 else ""
        names = ", ".join(printable(p) for p in images.skipped[:5])
        log(
            f"warning: {len(images.skipped)} files in {root} could not be decoded and "
            f"were skipped: {names}{more}"
        )
    if images.ignored:
        log(
            f"note: {images.ignored} files in {root} were ignored (hidden, or without an "
            "image extension)"
        )
