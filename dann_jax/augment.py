"""Data augmentation on the device: random resized crops and flips, rotations, colour.

Applied inside the compiled step to the batch just gathered from the resident uint8
pools, so augmenting costs no host work and no transfer. Each example's randomness comes
from ``fold_in(key, row)`` with its row in the *global* batch, as dropout's does, so a
data-parallel step augments exactly as one device would on the whole batch.

The crop follows torchvision's ``RandomResizedCrop`` (an area of 8-100% of the image, an
aspect ratio between 3/4 and 4/3, uniform log-ratio; a box that does not fit is clipped
to the image instead of redrawn) and is resized back to the stored size with
antialiased bilinear interpolation (``jax.image.scale_and_translate``).

`OPS` names what a run may turn on: ``crop_flip`` (``--augment``), ``rotate``
(``--rotate``: a random multiple of 90 degrees and a vertical flip, for images whose
orientation means nothing; with ``crop_flip``'s horizontal flip every one of the 8
orientations is equally likely) and ``color`` (``--color-jitter``: torchvision's
``ColorJitter(0.4, 0.4, 0.4)`` and ``RandomGrayscale(0.2)``). `augment` applies them in
that order.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["OPS", "augment", "color", "crop_and_flip", "ops_of", "rotate"]

OPS = ("crop_flip", "rotate", "color")

SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults
RATIO = (3 / 4, 4 / 3)


def _one(key: jax.Array, image: jax.Array) -> jax.Array:
    """One (H, W, C) float image: a random resized crop back to (H, W), maybe flipped."""
    h, w = image.shape[:2]
    k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
    f32 = jnp.float32  # explicit dtypes: the same draws with or without JAX_ENABLE_X64
    area = jax.random.uniform(k_area, (), f32, SCALE[0], SCALE[1]) * h * w
    ratio = jnp.exp(jax.random.uniform(k_ratio, (), f32, math.log(RATIO[0]), math.log(RATIO[1])))
    ch = jnp.clip(jnp.sqrt(area / ratio), 1.0, h)
    cw = jnp.clip(jnp.sqrt(area * ratio), 1.0, w)
    y0 = jax.random.uniform(k_y, (), f32) * (h - ch)
    x0 = jax.random.uniform(k_x, (), f32) * (w - cw)
    scale = jnp.stack([h / ch, w / cw])
    out = jax.image.scale_and_translate(
        image, image.shape, (0, 1), scale, -jnp.stack([y0, x0]) * scale, "linear"
    )
    return jnp.where(jax.random.bernoulli(k_flip, jnp.float32(0.5)), out[:, ::-1], out)


def crop_and_flip(key: jax.Array, images: jax.Array, rows: jax.Array) -> jax.Array:
    """`images` (n, H, W, C) float, each cropped, resized back and flipped at random.

    Args:
      key: the step's augmentation key.
      images: float images in [0, 1].
      rows: (n,) each image's row in the global batch (its randomness depends on it).
    """
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows)
    return jax.vmap(_one)(keys, images).astype(images.dtype)


def _rotate_one(key: jax.Array, image: jax.Array) -> jax.Array:
    """One square (H, H, C) image turned by a random multiple of 90 degrees, maybe flipped
    upside down."""
    k_rot, k_flip = jax.random.split(key)
    turns = jax.random.randint(k_rot, (), 0, 4, jnp.int32)
    out = jnp.stack([jnp.rot90(image, k, axes=(0, 1)) for k in range(4)])[turns]
    return jnp.where(jax.random.bernoulli(k_flip, jnp.float32(0.5)), out[::-1], out)


def rotate(key: jax.Array, images: jax.Array, rows: jax.Array) -> jax.Array:
    """`images` (n, H, H, C), each turned by 0, 90, 180 or 270 degrees and flipped
    vertically at random (square images: a turn keeps the shape)."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"rotations need square images, got {images.shape[1:3]}")
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows)
    return jax.vmap(_rotate_one)(keys, images)


# torchvision's ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4): each factor
# uniform in [0.6, 1.4]; RandomGrayscale(p=0.2). ITU-R 601 luma, as torchvision's.
JITTER, GREY_P = 0.4, 0.2
_LUMA = (0.299, 0.587, 0.114)


def _grey(image: jax.Array) -> jax.Array:
    """(H, W, 1) luma of an RGB image; a one-channel image is its own."""
    if image.shape[-1] != 3:
        return image
    r, g, b = _LUMA  # elementwise: exact float32 on every backend (no matmul unit)
    return (r * image[..., 0:1] + g * image[..., 1:2] + b * image[..., 2:3]).astype(image.dtype)


def _color_one(key: jax.Array, image: jax.Array) -> jax.Array:
    """One float (H, W, C) image in [0, 1] with random brightness, contrast and
    saturation, then greyscale with probability 0.2."""
    k_b, k_c, k_s, k_g = jax.random.split(key, 4)
    f32 = jnp.float32
    factor = lambda k: jax.random.uniform(k, (), f32, 1.0 - JITTER, 1.0 + JITTER)
    x = jnp.clip(image * factor(k_b), 0.0, 1.0)  # brightness
    x = jnp.clip((x - jnp.mean(_grey(x))) * factor(k_c) + jnp.mean(_grey(x)), 0.0, 1.0)
    x = jnp.clip((x - _grey(x)) * factor(k_s) + _grey(x), 0.0, 1.0)  # saturation
    grey = jnp.broadcast_to(_grey(x), x.shape)
    return jnp.where(jax.random.bernoulli(k_g, jnp.float32(GREY_P)), grey, x)


def color(key: jax.Array, images: jax.Array, rows: jax.Array) -> jax.Array:
    """`images` (n, H, W, C) float in [0, 1], each with random colour (`_color_one`)."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows)
    return jax.vmap(_color_one)(keys, images).astype(images.dtype)


def ops_of(augment: bool | tuple[str, ...] | None) -> tuple[str, ...]:
    """The augmentations asked for, in `OPS` order: True is ``("crop_flip",)``."""
    if augment is True:
        return ("crop_flip",)
    wanted = tuple(augment or ())
    unknown = [op for op in wanted if op not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {list(OPS)}")
    return tuple(op for op in OPS if op in wanted)


_APPLY = {"crop_flip": crop_and_flip, "rotate": rotate, "color": color}


def augment(key: jax.Array, images: jax.Array, rows: jax.Array, ops: tuple[str, ...]):
    """`images` (n, H, W, C) float in [0, 1] through each of `ops` (`OPS` order).

    ``crop_flip`` draws from `key` itself (what a run with only ``--augment`` always
    drew); every other op from its own ``fold_in(key, 1 + index in OPS)``.
    """
    for op in ops_of(ops):
        k = key if op == "crop_flip" else jax.random.fold_in(key, 1 + OPS.index(op))
        images = _APPLY[op](k, images, rows)
    return images
