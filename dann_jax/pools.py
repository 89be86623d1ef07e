"""Training pools and the batches drawn from them on the device.

`TrainData` holds both domains' training images as flat uint8 rows (plus the source
labels and the normalisation mean); `sample_batch` draws a batch from it inside the
compiled step, so no batch ever crosses from the host. Under data parallelism every
device draws the same global indices and gathers only its own block.

When the pools do not fit on the device, `Fed` carries instead the rows a chunk of K
steps draws (gathered on the host by `dann_jax.feed`) and each step's positions in
them: the indices are those `draw_indices` gives the resident path, so both paths
train on the same batches, augmented on the device with the same keys.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dann_jax.augment import augment as apply_augment
from dann_jax.augment import ops_of
from dann_jax.evaluate import normalize

__all__ = ["Batch", "Fed", "TrainData", "draw_indices", "make_train_data", "sample_batch"]

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainData:
    """Device-resident training pools: one flat uint8 row per image.

    Flat rows (``(N, H*W*C)``) because a TPU tiles the two minor dimensions of an array in
    device memory: ``(N, 28, 28, 3)`` would pad each (28, 3) slice to a (32, 128) tile,
    about 48 times the data. Batches are gathered as rows and reshaped on the device.

    Attributes:
      source_images: (N_s, H*W*C) uint8.
      source_labels: (N_s,) int32.
      target_images: (N_t, H*W*C) uint8 (no labels: the target is unlabelled).
      mean: (C,) float32 subtracted after scaling to [0, 1], or (2, C): mean and std,
        ``(x - mean) / std`` (see `dann_jax.evaluate.normalize`).
      image_shape: (H, W, C), static (part of the pytree structure, not a traced value).
    """

    source_images: jax.Array
    source_labels: jax.Array
    target_images: jax.Array
    mean: jax.Array
    image_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the pools (what every device holds a copy of)."""
        return sum(
            int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(self)
        )


def make_train_data(
    source_images: np.ndarray,
    source_labels: np.ndarray,
    target_images: np.ndarray,
    mean: np.ndarray | None = None,
) -> TrainData:
    """`TrainData` (host arrays) from uint8 images ``(N, H, W, C)`` and int labels.

    ``mean`` defaults to the per-channel mean of both domains' images scaled to [0, 1]
    (no labels involved).
    """
    xs, xt = np.asarray(source_images), np.asarray(target_images)
    if xs.dtype != np.uint8 or xt.dtype != np.uint8 or xs.shape[1:] != xt.shape[1:]:
        raise ValueError(
            f"images must be uint8 (N, H, W, C) of one shape; got {xs.dtype}{list(xs.shape)} "
            f"and {xt.dtype}{list(xt.shape)}"
        )
    if mean is None:
        total = xs.reshape(-1, xs.shape[-1]).sum(0, np.float64) + xt.reshape(-1, xt.shape[-1]).sum(
            0, np.float64
        )
        mean = total / (255.0 * (xs.size + xt.size) / xs.shape[-1])
    return TrainData(
        xs.reshape(len(xs), -1),
        np.asarray(source_labels, np.int32),
        xt.reshape(len(xt), -1),
        np.asarray(mean, np.float32),
        tuple(int(d) for d in xs.shape[1:]),
    )


@flax.struct.dataclass
class Fed:
    """The batches of K steps, gathered on the host, in place of the whole pools.

    Attributes:
      pool: a `TrainData` of just the rows the K steps draw (every seed's), in draw order.
      source_index, target_index: (K, B) int32, or (K, S, B) for S stacked seeds: each
        step's global batch as positions in ``pool`` (what `draw_indices` drew, remapped).
    """

    pool: TrainData
    source_index: jax.Array
    target_index: jax.Array

    def steps(self, start: int, stop: int) -> Fed:
        """Steps ``start:stop`` of the chunk (one dispatch of several); the pool is shared."""
        return self.replace(
            source_index=self.source_index[start:stop], target_index=self.target_index[start:stop]
        )


def draw_indices(key: jax.Array, sizes: tuple[int, int], batch_size: int):
    """(source, target) indices of one global batch: uniform with replacement from pools
    of ``sizes`` images. The one draw both input paths use (the host path runs it on the
    host CPU: the same keys give the same integers on every backend)."""
    ks, kt, _ = jax.random.split(key, 3)  # the third key augments (`sample_batch`)
    # int32 indices: the same batches whether or not JAX_ENABLE_X64 is set.
    i_s = jax.random.randint(ks, (batch_size,), 0, sizes[0], jnp.int32)
    i_t = jax.random.randint(kt, (batch_size,), 0, sizes[1], jnp.int32)
    return i_s, i_t


def _rows(pool: jax.Array, idx: jax.Array, data: TrainData, key, ops, rows) -> jax.Array:
    """Gathered flat rows as normalised float32 images (n, H, W, C), augmented or not."""
    images = pool[idx].reshape(len(idx), *data.image_shape)
    if not ops:
        return normalize(images, data.mean)
    x = apply_augment(key, images.astype(jnp.float32) / 255.0, rows, ops)
    return normalize(x * 255.0, data.mean)  # back to pixel units: one normalisation rule


def sample_batch(
    key: jax.Array,
    data: TrainData,
    batch_size: int,
    axis_name: str | None = None,
    augment: bool | tuple[str, ...] = False,
    indices: tuple[jax.Array, jax.Array] | None = None,
) -> Batch:
    """Draw one training batch on the device from device-resident pools.

    Indices are drawn uniformly with replacement, independently for source and target,
    so no host-side epoch bookkeeping is needed. With ``axis_name`` (inside a per-device
    step) every device draws the same ``batch_size`` global indices and gathers only its
    own contiguous block of ``batch_size / devices`` rows per domain.

    Args:
      key: PRNG key.
      data: a `TrainData`.
      batch_size: images per domain in the (global) batch.
      axis_name: the data-parallel axis, or None for the whole batch.
      augment: the augmentations (`dann_jax.augment.OPS`; True: random resized crops
        and flips), each example's drawn from its row in the global batch.
      indices: the global batch's (source, target) positions in ``data`` (the host path:
        `Fed`), or None to draw them (`draw_indices`).

    Returns:
      ``source_images``, ``source_labels``, ``target_images`` (normalised float32).
    """
    ka = jax.random.split(key, 3)[2]
    if indices is None:
        sizes = (data.source_images.shape[0], data.target_images.shape[0])
        indices = draw_indices(key, sizes, batch_size)
    i_s, i_t = indices
    per, start = batch_size, jnp.zeros((), jnp.int32)
    if axis_name is not None:
        per = batch_size // jax.lax.axis_size(axis_name)
        start = jax.lax.axis_index(axis_name) * per
        i_s, i_t = (jax.lax.dynamic_slice_in_dim(i, start, per) for i in (i_s, i_t))
    rows = start + jnp.arange(per, dtype=jnp.int32)  # this block's rows of the global batch
    ops = ops_of(augment)
    return {
        "source_images": _rows(data.source_images, i_s, data, ka, ops, rows),
        "source_labels": data.source_labels[i_s],
        "target_images": _rows(data.target_images, i_t, data, ka, ops, batch_size + rows),
    }
