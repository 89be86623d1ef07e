"""Evaluation on a held-out set: one pass of the extractor, both heads, in one dispatch.

A test set goes to the device once as fixed-size chunks (`make_eval_set`);
`evaluate` maps over the chunks with ``lax.map`` and returns summaries (accuracy, loss,
mean domain score) and predictions; `predict` returns the per-example features and
both heads' logits (for the analyses and label-free validators). Evaluation reads only
the parameters and BatchNorm statistics: it never changes training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dann_jax.models import DANN

__all__ = [
    "compile_evaluate",
    "compile_predict",
    "evaluate",
    "make_eval_set",
    "normalize",
    "predict",
]


def normalize(images: jax.Array, mean: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1] minus the per-channel training mean."""
    return images.astype(jnp.float32) / 255.0 - mean


def make_eval_set(images: np.ndarray, labels: np.ndarray, chunk: int = 1000) -> dict[str, Any]:
    """Pad and reshape a test set into (num_chunks, chunk, ...) with a validity mask.

    Done once on the host; the result goes to the device once and `evaluate` runs over
    it in a single dispatch.
    """
    n = len(images)
    chunk = max(1, min(chunk, n))
    num_chunks = -(-n // chunk)
    pad = num_chunks * chunk - n
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)])
    mask = np.arange(num_chunks * chunk) < n
    return {
        "images": images.reshape(num_chunks, chunk, *images.shape[1:]),
        "labels": labels.reshape(num_chunks, chunk),
        "mask": mask.reshape(num_chunks, chunk),
    }


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """Flax variables of an inference pass (no BatchNorm collection when it is empty)."""
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _infer(variables: dict, images: jax.Array, mean: jax.Array, model: DANN):
    """Features, class logits and domain logits of one chunk, float32."""
    x = normalize(images, mean)
    features, logits, domain = model.apply(variables, x, method=DANN.infer)
    return features.astype(jnp.float32), logits.astype(jnp.float32), domain.astype(jnp.float32)


def evaluate(
    params: Any, batch_stats: Any, eval_set: dict[str, jax.Array], mean: jax.Array, *, model: DANN
) -> dict[str, jax.Array]:
    """Accuracy, mean loss, predictions and mean domain score on a `make_eval_set` set.

    Args:
      params: model parameters.
      batch_stats: BatchNorm statistics (may be empty).
      eval_set: from `make_eval_set` (device arrays).
      mean: per-channel mean used for normalisation.
      model: the `DANN` module.

    Returns:
      ``accuracy``, ``loss`` (unsmoothed cross-entropy), ``domain_score`` (mean
      probability of "target" from the discriminator) and ``predictions`` (num_chunks *
      chunk,) of which the first N are real.
    """
    variables = _variables(params, batch_stats)

    def one_chunk(chunk):
        _, logits, domain = _infer(variables, chunk["images"], mean, model)
        m = chunk["mask"].astype(jnp.float32)
        predictions = jnp.argmax(logits, -1)
        correct = (predictions == chunk["labels"]).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, chunk["labels"])
        return (
            jnp.sum(correct * m),
            jnp.sum(nll * m),
            jnp.sum(jax.nn.sigmoid(domain) * m),
            predictions.astype(jnp.int32),
        )

    correct, nll, domain, predictions = jax.lax.map(one_chunk, eval_set)
    n = jnp.sum(eval_set["mask"].astype(jnp.float32))
    return {
        "accuracy": jnp.sum(correct) / n,
        "loss": jnp.sum(nll) / n,
        "domain_score": jnp.sum(domain) / n,
        "predictions": predictions.reshape(-1),
    }


def predict(
    params: Any, batch_stats: Any, eval_set: dict[str, jax.Array], mean: jax.Array, *, model: DANN
) -> dict[str, jax.Array]:
    """Per-example outputs over a `make_eval_set` set, in one pass of the extractor.

    Returns:
      ``features`` (M, D), ``class_logits`` (M, classes), ``domain_logits`` (M,) and
      ``loss`` (M,) (cross-entropy against ``eval_set["labels"]``), all float32, with
      M = num_chunks * chunk: the first N rows are the real examples.
    """
    variables = _variables(params, batch_stats)

    def one_chunk(chunk):
        features, logits, domain = _infer(variables, chunk["images"], mean, model)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, chunk["labels"])
        return features, logits, domain, loss

    features, logits, domain, loss = jax.lax.map(one_chunk, eval_set)
    return {
        "features": features.reshape(-1, features.shape[-1]),
        "class_logits": logits.reshape(-1, logits.shape[-1]),
        "domain_logits": domain.reshape(-1),
        "loss": loss.reshape(-1),
    }


# Cached by the (hashable, compared by value) model: a new ``jax.jit`` of a new partial
# would trace and compile again on every call, e.g. at every checkpoint or seed.
@functools.lru_cache(maxsize=32)
def compile_evaluate(model: DANN, vmap_seeds: bool = False) -> Callable[..., dict[str, jax.Array]]:
    """`evaluate` under ``jax.jit``; call as ``fn(params, batch_stats, eval_set, mean)``.

    With ``vmap_seeds=True``, params and batch_stats carry a leading seed axis (as in
    `dann_jax.compile_train_steps`) and every result gains it. Equal models get the same
    compiled function, so it compiles once per model and input shapes.
    """
    fn = functools.partial(evaluate, model=model)
    if vmap_seeds:
        fn = jax.vmap(fn, in_axes=(0, 0, None, None))
    return jax.jit(fn)


@functools.lru_cache(maxsize=32)
def compile_predict(model: DANN) -> Callable[..., dict[str, jax.Array]]:
    """`predict` under ``jax.jit``; call as ``fn(params, batch_stats, eval_set, mean)``.

    Cached like `compile_evaluate`: one compiled function per model.
    """
    return jax.jit(functools.partial(predict, model=model))
