"""Data augmentation on the device: random resized crops and horizontal flips.

Applied inside the compiled step to the batch just gathered from the resident uint8
pools, so augmenting costs no host work and no transfer. Each example's randomness comes
from ``fold_in(key, row)`` with its row in the *global* batch, as dropout's does, so a
data-parallel step augments exactly as one device would on the whole batch.

The crop follows torchvision's ``RandomResizedCrop`` (an area of 8-100% of the image, an
aspect ratio between 3/4 and 4/3, uniform log-ratio; a box that does not fit is clipped
to the image instead of redrawn) and is resized back to the stored size with
antialiased bilinear interpolation (``jax.image.scale_and_translate``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["crop_and_flip"]

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
