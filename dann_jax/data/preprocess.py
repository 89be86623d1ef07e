"""Host-side preprocessing as in the DANN paper: resize once, grey -> RGB, stay uint8."""

from __future__ import annotations

import numpy as np

from dann_jax.data.domain import DataError

# ITU-R 601-2 luma weights, the ones PIL uses for RGB -> "L".
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_nhwc(x: np.ndarray, what: str) -> np.ndarray:
    """View uint8 (N, H, W) or (N, H, W, C) images as NHWC, rejecting anything else."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        fix = {
            "f": " (floats in [0, 1]: pass (x * 255).round().astype(np.uint8))",
            "u": " (16-bit: pass (x / 257).round().astype(np.uint8))" * (x.dtype.itemsize == 2),
        }.get(x.dtype.kind, "")
        raise DataError(f"{what} must be uint8 images (0..255), got dtype {x.dtype}{fix}.")
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{what} must be (N, H, W) or (N, H, W, C) with C in (1, 3), got {x.shape}."
        )
    return x


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear-resize NHWC uint8 images to size x size with PIL, one image at a time.

    Square images are resized whole; others have their shorter side resized to `size`
    and are then centre-cropped (the aspect ratio is kept, nothing is stretched).
    """
    from PIL import Image  # lazy: keeps `import dann_jax.data` cheap

    n, h, w, c = x.shape
    scale = size / min(h, w)
    inner = (max(size, round(w * scale)), max(size, round(h * scale)))  # PIL: (W, H)
    top, left = (inner[1] - size) // 2, (inner[0] - size) // 2
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(x[i, ..., 0] if c == 1 else x[i])
        resized = np.asarray(img.resize(inner, Image.BILINEAR))[
            top : top + size, left : left + size
        ]
        out[i] = resized[..., None] if c == 1 else resized
    return out


def _crop_or_pad(x: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (larger) or zero-pad (smaller) NHWC images to size x size."""
    h, w = x.shape[1:3]
    for axis, n in ((1, h), (2, w)):
        if n > size:
            start = (n - size) // 2
            x = np.take(x, np.arange(start, start + size), axis=axis)
        elif n < size:
            pad = [(0, 0)] * 4
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            x = np.pad(x, pad)
    return x


def _mnist_box(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear-resize to MNIST's digit box (20/28 of the side) and zero-pad to size."""
    box = max(1, round(size * 20 / 28))
    return _crop_or_pad(_resize(x, box) if x.shape[1] != box else x, size)


RESIZE_METHODS = ("bilinear", "crop_pad", "mnist_box")

# How ``resize="auto"`` brings each domain to the input size, so that digits have the
# same size and place in every domain. MNIST-M is MNIST (28 x 28) padded by 2 pixels to
# 32 x 32: a centre crop gives MNIST's digits back pixel for pixel. USPS digits fill
# their 16 x 16 frame where MNIST's sit in a 20 x 20 box inside 28 x 28: scaled into
# that box (MNIST -> USPS, 2,000 steps, seed 0 on CPU: source only 0.778 -> 0.931, DANN
# 0.712 -> 0.893 against bilinear resampling to the full frame). Others: bilinear.
AUTO_RESIZE = {"mnist_m": "crop_pad", "usps": "mnist_box"}


def resize_method(domain: str, resize: str = "auto") -> str:
    """The `prepare_images` method for `domain`: ``resize`` itself unless ``"auto"``.

    ``"auto"`` looks the domain up in `AUTO_RESIZE` (MNIST-M: ``crop_pad``, USPS:
    ``mnist_box``) and resamples bilinearly otherwise (e.g. MNIST 28 -> 32 for the SVHN
    architecture).
    """
    if resize == "auto":
        return AUTO_RESIZE.get(domain, "bilinear")
    if resize not in RESIZE_METHODS:
        raise DataError(f"resize must be 'auto' or one of {list(RESIZE_METHODS)}, got {resize!r}.")
    return resize


def prepare_images(
    x_uint8: np.ndarray, size: int, channels: int = 3, resize: str = "bilinear"
) -> np.ndarray:
    """Resize images to the model's input size and set their channel count.

    The paper feeds 28x28 inputs to the MNIST architecture and 32x32 to the SVHN
    one, with grey digits given as three equal channels. Done once on the host
    (not per step on device) so the training loop only moves uint8 batches;
    mean subtraction is left to the device (see `channel_mean`).

    Choices: ``resize="bilinear"``: PIL bilinear resampling (PIL antialiases when
    shrinking, e.g. MNIST-M 32 -> 28), only when the size differs; aspect ratio is
    not kept (every known domain is square). ``resize="crop_pad"``: centre crop or
    zero padding, no resampling. The released MNIST-M images are MNIST digits padded
    by 2 pixels to 32 x 32 (aligning them, the edge maps of MNIST-M training image i
    and MNIST training image i correlate best at a 2-pixel offset, 0.50, against 0.29
    one pixel off and 0.46 for a bilinear 28 -> 32 resize), so a 28 x 28 centre crop
    gives back MNIST's own digit geometry, where a resize shrinks and blurs the
    target digits by 12.5% relative to the source ones. ``resize="mnist_box"``:
    MNIST's own normalisation, digits scaled into a 20 x 20 box (20/28 of the side)
    and zero-padded around it, for domains whose digits fill the frame (USPS).
    Grey -> RGB repeats the
    channel; RGB -> grey uses the ITU-R 601-2 luma weights, rounded.

    Args:
      x_uint8: uint8 images, (N, H, W) or (N, H, W, C) with C in (1, 3).
      size: output height and width.
      channels: 3 (RGB) or 1 (grey).
      resize: ``"bilinear"``, ``"crop_pad"`` or ``"mnist_box"``, used only when the
        size differs.

    Returns:
      uint8 array of shape (N, size, size, channels).

    Raises:
      DataError: wrong dtype, rank or channel count.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}.")
    if resize not in RESIZE_METHODS:
        raise DataError(f"resize must be one of {list(RESIZE_METHODS)}, got {resize!r}.")
    x = _as_nhwc(x_uint8, "prepare_images input")
    if x.shape[1:3] != (size, size):
        method = {"bilinear": _resize, "crop_pad": _crop_or_pad, "mnist_box": _mnist_box}
        x = method[resize](x, size)
    if x.shape[-1] == channels:
        return np.ascontiguousarray(x)
    if channels == 3:
        return np.repeat(x, 3, axis=-1)
    grey = np.rint(x.astype(np.float32) @ _LUMA.astype(np.float32))
    return np.clip(grey, 0, 255).astype(np.uint8)[..., None]


def channel_mean(*x_uint8: np.ndarray) -> np.ndarray:
    """Per-channel mean pixel of uint8 images, in [0, 1] scale.

    The paper subtracts the mean image value; the core does the subtraction on
    device after scaling pixels to [0, 1], so this returns the matching float32
    (C,) vector. Accumulates in float64 without copying the images (several arrays:
    the mean of all their images, not of their means).

    Args:
      x_uint8: uint8 images, (N, H, W) (treated as C = 1) or (N, H, W, C); several
        arrays of the same channel count.

    Returns:
      float32 array of shape (C,).

    Raises:
      DataError: wrong dtype, rank or channel count, or no images.
    """
    xs = [_as_nhwc(x, "channel_mean input") for x in x_uint8]
    if len({x.shape[-1] for x in xs}) != 1:
        raise DataError(f"channel_mean's arrays differ in channels: {[x.shape for x in xs]}.")
    pixels = sum(int(np.prod(x.shape[:3])) for x in xs)
    if not pixels:
        raise DataError("channel_mean needs at least one image.")
    total = sum(x.sum(axis=(0, 1, 2), dtype=np.float64) for x in xs)
    return (total / pixels / 255.0).astype(np.float32)
