"""Your own feature extractor: linen or NNX, and what a run records about it.

`DANN` (and `dann_jax.fit`) take any linen module mapping images ``(N, H, W, C)`` to
features ``(N, D)``, called as ``extractor(x, train=...)``. Flax recommends NNX to new
users: `from_nnx` wraps an NNX module class the same way (``flax.nnx.bridge.ToLinen``),
so the GRL, the heads, the train step, checkpoints and `dann_jax.load_run` are unchanged.

BatchNorm: the step runs the extractor once over the source batch followed by the target
batch. A plain ``nn.BatchNorm`` (or ``nnx.BatchNorm``) then normalises both domains with
one set of statistics; `dann_jax.DomainBatchNorm` (``groups=2``) normalises each domain
with its own and keeps each domain's running averages, as the recipes' models do.
`joint_batchnorm` finds the plain kind, so a run can say so.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["BUILT_IN", "describe", "from_nnx", "joint_batchnorm"]

BUILT_IN = ("FeatureExtractor", "ResNet")  # the extractors `make_model` builds itself


def from_nnx(nnx_class, *args, **kwargs):
    """An NNX module class as a linen extractor for `DANN` / `dann_jax.fit`.

    ``nnx_class(*args, **kwargs, rngs=...)`` is built at initialisation; its
    ``__call__(x, train=...)`` maps images to features. Parameters come out as plain
    arrays (no partitioning metadata), and NNX BatchNorm statistics land in the
    ``batch_stats`` collection like linen's.
    """
    from flax.core import FrozenDict
    from flax.nnx import bridge

    # Hashable arguments: the module is a static argument of the compiled programs.
    return bridge.ToLinen(nnx_class, tuple(args), FrozenDict(kwargs), metadata_fn=None)


def describe(extractor) -> dict[str, str]:
    """What a run records about its extractor: ``kind`` (``built_in``, ``linen`` or
    ``nnx``) and ``class`` (the module's import path)."""
    from flax.nnx import bridge

    if isinstance(extractor, bridge.ToLinen):
        cls, kind = extractor.nnx_class, "nnx"
    else:
        cls = type(extractor)
        kind = "built_in" if cls.__module__.startswith("dann_jax.") and (
            cls.__name__ in BUILT_IN
        ) else "linen"  # fmt: skip
    return {"kind": kind, "class": f"{cls.__module__}.{cls.__qualname__}"}


def joint_batchnorm(model, image_shape: tuple[int, ...]) -> int:
    """How many of the extractor's BatchNorm layers keep one set of statistics for both
    domains (a plain BatchNorm: ``(C,)`` averages; `DomainBatchNorm` with two groups
    keeps ``(2, C)``). Shapes only: nothing is computed."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                           x, x, 0.0, train=False)
    )  # fmt: skip
    stats: Any = variables.get("batch_stats", {}).get("extractor", {})
    means = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(stats)
        if str(getattr(path[-1], "key", "")) == "mean"
    ]  # fmt: skip
    return sum(1 for m in means if len(m.shape) == 1)


def joint_batchnorm_warning(count: int) -> str:
    """The log line for `joint_batchnorm`'s count (per-domain statistics asked for)."""
    return (
        f"warning: {count} BatchNorm layer(s) of your extractor normalise the source and "
        "target batches together with one set of statistics, while this run asks for "
        "per-domain statistics (bn_stats='per_domain'). Use dann_jax.DomainBatchNorm("
        "groups=2) in the extractor for each domain's own statistics (as the recipes' "
        "models do), or pass bn_stats='joint' if one set is what you mean."
    )
