"""Evaluation on a held-out set: one pass of the extractor, both heads, in one dispatch.

A test set goes to the device once as fixed-size chunks of flat uint8 rows (`EvalSet`,
`make_eval_set`); `evaluate` maps over the chunks with ``lax.map`` and returns summaries
(accuracy, loss, mean domain score) and predictions; `predict` returns the per-example
features and both heads' logits (for the analyses and label-free validators).
Evaluation reads only the parameters and BatchNorm statistics: it never changes
training. Over a mesh (``compile_evaluate(..., mesh=mesh)``) each chunk is split over
the devices, every device evaluates its part and the sums are added with one ``psum``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from dann_jax.models import DANN, select_domain
from dann_jax.sharding import BATCH_AXIS as AXIS  # also the train step's axis name

__all__ = [
    "SLAB_BYTES",
    "EvalSet",
    "Slabs",
    "compile_evaluate",
    "compile_predict",
    "eval_slabs",
    "evaluate",
    "make_eval_set",
    "normalize",
    "predict",
]


# Where the images are too many to sit on the device (the host-fed path, `dann_jax.feed`),
# a test set goes there this many bytes of images at a time; outputs on host images
# (`dann_jax.outputs.predict_host`) are computed a slab at a time too.
SLAB_BYTES = 2**26


def normalize(images: jax.Array, mean: jax.Array) -> jax.Array:
    """Images in pixel units (uint8) -> float32 in [0, 1], normalised per channel.

    ``mean`` (C,) is subtracted (the paper: the training images' mean); a (2, C) array
    holds a mean and a std, ``(x - mean) / std`` (e.g. ImageNet's, for a pretrained
    backbone).
    """
    x = images.astype(jnp.float32) / 255.0
    if mean.ndim == 2:
        return (x - mean[0]) / mean[1]
    return x - mean


@flax.struct.dataclass
class EvalSet:
    """A test set as fixed-size chunks of flat uint8 rows, padded, with a validity mask.

    Attributes:
      images: (num_chunks, chunk, H*W*C) uint8 (flat rows: see `dann_jax.TrainData`).
      labels: (num_chunks, chunk) int32 (zeros where a domain has no labels).
      mask: (num_chunks, chunk) bool, False on the padding.
      image_shape: (H, W, C), static.
    """

    images: jax.Array
    labels: jax.Array
    mask: jax.Array
    image_shape: tuple[int, int, int] = flax.struct.field(pytree_node=False)

    @property
    def nbytes(self) -> int:
        return sum(
            int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(self)
        )


def _padded(images: np.ndarray, labels: np.ndarray | None, chunk: int, num_chunks: int):
    """``num_chunks`` chunks of ``chunk`` flat rows of ``images``, zero-padded, masked."""
    n, size = len(images), num_chunks * chunk
    flat = np.zeros((size, int(np.prod(images.shape[1:]))), images.dtype)
    flat[:n] = np.asarray(images).reshape(n, -1)  # the one copy (a memory map is read here)
    padded = np.zeros(size, np.int32)
    if labels is not None:
        padded[:n] = labels
    return EvalSet(
        flat.reshape(num_chunks, chunk, -1),
        padded.reshape(num_chunks, chunk),
        (np.arange(size) < n).reshape(num_chunks, chunk),
        tuple(int(d) for d in images.shape[1:]),
    )


@dataclasses.dataclass(frozen=True)
class Slabs:
    """A test set evaluated a slab at a time: consecutive runs of whole chunks, every slab
    of one shape (the last padded), each `EvalSet` built from the host arrays only when
    iteration reaches it, so a memory-mapped set is read one slab at a time and a device
    holds one slab, not the set. One slab (``max_bytes=None``) is `make_eval_set`'s set.

    Attributes:
      images: uint8 (N, H, W, C) host images (may be memory-mapped).
      labels: int (N,) or None (zeros are stored: accuracy and loss then meaningless).
      chunk: rows a chunk (a multiple of the device count).
      per: chunks a slab.
    """

    images: np.ndarray
    labels: np.ndarray | None
    chunk: int
    per: int

    def __len__(self) -> int:
        return -(-len(self.images) // (self.chunk * self.per))

    def __iter__(self) -> Iterator[EvalSet]:
        rows = self.chunk * self.per
        for start in range(0, len(self.images), rows):
            labels = None if self.labels is None else self.labels[start : start + rows]
            yield _padded(self.images[start : start + rows], labels, self.chunk, self.per)

    @property
    def nbytes(self) -> int:
        """Bytes of one slab's `EvalSet` (images, labels, mask)."""
        return self.chunk * self.per * (int(np.prod(self.images.shape[1:])) + 5)


def eval_slabs(
    images: np.ndarray, labels: np.ndarray | None = None, chunk: int = 1000,
    multiple_of: int = 1, max_bytes: int | None = None,
) -> Slabs:  # fmt: skip
    """A test set as `Slabs` of at most ``max_bytes`` of images (chunks shrunk to fit
    one, down to a row; None: all in one). ``multiple_of`` rounds the chunk up to a
    multiple of the device count, so a mesh splits every chunk evenly."""
    n, row = len(images), int(np.prod(images.shape[1:]))
    if max_bytes is not None:  # a chunk no larger than a slab
        chunk = min(chunk, max(1, max_bytes // row))
    chunk = max(1, min(chunk, n))
    chunk = -(-chunk // multiple_of) * multiple_of
    num_chunks = -(-n // chunk)
    per = num_chunks if max_bytes is None else min(num_chunks, max_bytes // (chunk * row))
    labels = None if labels is None else np.asarray(labels, np.int32)
    return Slabs(images, labels, chunk, max(1, per))


def make_eval_set(
    images: np.ndarray, labels: np.ndarray | None = None, chunk: int = 1000, multiple_of: int = 1
) -> EvalSet:
    """Pad and reshape a test set into (num_chunks, chunk, H*W*C) with a validity mask.

    Done once on the host; the result goes to the device once and `evaluate` runs over
    it in a single dispatch. ``multiple_of`` rounds the chunk up to a multiple of the
    device count, so a mesh splits every chunk evenly. ``labels=None`` (a domain without
    labels) stores zeros: the accuracy and loss are then meaningless, the predictions not.
    """
    slabs = eval_slabs(images, labels, chunk, multiple_of)
    return next(iter(slabs)) if len(slabs) else _padded(images, labels, slabs.chunk, 0)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """Flax variables of an inference pass (no BatchNorm collection when it is empty)."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _infer(variables: dict, images: jax.Array, shape, mean: jax.Array, model: DANN):
    """Features, class logits and domain logits of one chunk of flat rows, float32."""
    x = normalize(images.reshape(images.shape[0], *shape), mean)
    features, logits, domain = model.apply(variables, x, method=DANN.infer)
    return features.astype(jnp.float32), logits.astype(jnp.float32), domain.astype(jnp.float32)


def evaluate(
    params: Any,
    batch_stats: Any,
    eval_set: EvalSet,
    mean: jax.Array,
    *,
    model: DANN,
    axis_name: str | None = None,
    domain: int | None = None,
) -> dict[str, jax.Array]:
    """Accuracy, mean loss, predictions and mean domain score on a `make_eval_set` set.

    Args:
      params: model parameters.
      batch_stats: BatchNorm statistics (may be empty).
      eval_set: an `EvalSet` (device arrays).
      mean: per-channel mean used for normalisation.
      model: the `DANN` module.
      axis_name: inside a per-device program, the axis the chunks are split over: the
        sums are then added over it.
      domain: the set's domain (0 source, 1 target): per-domain BatchNorm then uses that
        domain's running statistics (`dann_jax.models.select_domain`); None: their mean.

    Returns:
      ``accuracy``, ``loss`` (unsmoothed cross-entropy), ``domain_score`` (mean
      probability of "target" from the discriminator) and ``predictions``
      (num_chunks, chunk), row-major the examples in order, of which the first N are real;
      ``totals``: the sums (correct, loss, domain score) and the count they divide by.
    """
    variables = _variables(params, select_domain(batch_stats, domain))

    def one_chunk(chunk):
        images, labels, mask = chunk
        _, logits, domain = _infer(variables, images, eval_set.image_shape, mean, model)
        m = mask.astype(jnp.float32)
        predictions = jnp.argmax(logits, -1)
        correct = (predictions == labels).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        sums = jnp.stack(
            [jnp.sum(correct * m), jnp.sum(nll * m), jnp.sum(jax.nn.sigmoid(domain) * m)]
        )
        return sums, predictions.astype(jnp.int32)

    sums, predictions = jax.lax.map(one_chunk, (eval_set.images, eval_set.labels, eval_set.mask))
    totals = jnp.concatenate([sums.sum(0), jnp.sum(eval_set.mask, dtype=jnp.float32)[None]])
    if axis_name is not None:
        totals = jax.lax.psum(totals, axis_name)
    correct, nll, domain, n = totals
    return {
        "accuracy": correct / n,
        "loss": nll / n,
        "domain_score": domain / n,
        "predictions": predictions,
        "totals": totals,  # the sums, to add up a set evaluated in slabs
    }


def predict(
    params: Any,
    batch_stats: Any,
    eval_set: EvalSet,
    mean: jax.Array,
    *,
    model: DANN,
    domain: int | None = None,
) -> dict[str, jax.Array]:
    """Per-example outputs over a `make_eval_set` set, in one pass of the extractor
    (``domain`` as in `evaluate`).

    Returns:
      ``features`` (M, D), ``class_logits`` (M, classes), ``domain_logits`` (M,) and
      ``loss`` (M,) (cross-entropy against ``eval_set.labels``), all float32, with
      M = num_chunks * chunk: the first N rows are the real examples.
    """
    variables = _variables(params, select_domain(batch_stats, domain))

    def one_chunk(chunk):
        images, labels = chunk
        features, logits, domain = _infer(variables, images, eval_set.image_shape, mean, model)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return features, logits, domain, loss

    features, logits, domain, loss = jax.lax.map(one_chunk, (eval_set.images, eval_set.labels))
    return {
        "features": features.reshape(-1, features.shape[-1]),
        "class_logits": logits.reshape(-1, logits.shape[-1]),
        "domain_logits": domain.reshape(-1),
        "loss": loss.reshape(-1),
    }


# Cached by the (hashable, compared by value) model: a new ``jax.jit`` of a new partial
# would trace and compile again on every call, e.g. at every checkpoint or seed.
@functools.lru_cache(maxsize=32)
def compile_evaluate(
    model: DANN,
    vmap_seeds: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    domain: int | None = None,
) -> Callable[..., dict[str, jax.Array]]:
    """`evaluate` under ``jax.jit``; call as ``fn(params, batch_stats, eval_set, mean)``.

    With ``vmap_seeds=True``, params and batch_stats carry a leading seed axis (as in
    `dann_jax.compile_train_steps`) and every result gains it. With a ``mesh``, the
    state and mean are replicated over it and the eval set is split along its chunk
    axis (`dann_jax.sharding.put_sharded` with ``axis=1``; build it with
    ``make_eval_set(..., multiple_of=mesh.size)``): each device evaluates 1/N of every
    chunk. ``domain`` picks per-domain BatchNorm statistics (see `evaluate`). Equal
    arguments get the same compiled function.
    """
    fn = functools.partial(
        evaluate, model=model, axis_name=None if mesh is None else AXIS, domain=domain
    )
    if vmap_seeds:
        fn = jax.vmap(fn, in_axes=(0, 0, None, None))
    if mesh is None:
        return jax.jit(fn)
    predictions = P(None, None, AXIS) if vmap_seeds else P(None, AXIS)
    out = {"accuracy": P(), "loss": P(), "domain_score": P(), "predictions": predictions,
           "totals": P()}  # fmt: skip

    def over_mesh(params, batch_stats, eval_set, mean):
        # The specs mirror the eval set's structure (its image_shape is static).
        split = eval_set.replace(images=P(None, AXIS), labels=P(None, AXIS), mask=P(None, AXIS))
        return jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), split, P()), out_specs=out)(
            params, batch_stats, eval_set, mean
        )

    return jax.jit(over_mesh)


@functools.lru_cache(maxsize=32)
def compile_predict(model: DANN, domain: int | None = None) -> Callable[..., dict[str, jax.Array]]:
    """`predict` under ``jax.jit``; call as ``fn(params, batch_stats, eval_set, mean)``.

    Cached like `compile_evaluate`: one compiled function per model and domain.
    """
    return jax.jit(functools.partial(predict, model=model, domain=domain))
