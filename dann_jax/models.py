"""Pure Flax (linen) modules of DANN: label classifier, domain discriminator, the network.

`DANN` takes any linen module as its feature extractor (images ``(N, H, W, C)`` -> flat
features ``(N, D)``, called as ``extractor(x, train=...)``) and adds the label classifier,
the gradient reversal layer and the domain discriminator; `DomainBatchNorm` normalises
each domain of a stacked batch on its own. The paper's digit CNNs are in
`dann_jax.paper_models`.

The domain head ends in a single logit trained with binary cross-entropy (source = 0,
target = 1), as in the reference code; the paper's 2-way softmax is equivalent.

Data parallelism: inside a per-device step (`jax.shard_map` or `jax.pmap`) the model is
cloned with ``axis_name`` (`with_axis`). BatchNorm then averages its batch statistics
over that axis and dropout draws each example's mask from the example's position in the
*global* batch, so N devices compute what one device computes on the whole batch.

References:
  Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016,
  https://arxiv.org/abs/1505.07818.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dann_jax.grl import grad_reverse

__all__ = [
    "ADVERSARIES",
    "DANN",
    "DomainBatchNorm",
    "DomainDiscriminator",
    "LabelClassifier",
    "select_domain",
    "with_axis",
]

# What the domain discriminator sees (`DANN.adversary`): the features, or CDAN's
# multilinear map of features and class predictions.
ADVERSARIES = ("dann", "cdan")


def _local_rows(axis_name: str | None, n: int) -> tuple[jax.Array, jax.Array]:
    """(first global row of this device's block, number of devices) for a local batch of n."""
    if axis_name is None:
        return jnp.zeros((), jnp.int32), 1
    return lax.axis_index(axis_name) * n, lax.axis_size(axis_name)


class DomainBatchNorm(nn.Module):
    """BatchNorm over a batch of ``groups`` domains stacked along axis 0, each on its own.

    In training each group (``groups=2``: the source half, then the target half) is
    normalised with its own batch statistics, averaged over ``axis_name`` when set (sync
    BatchNorm: N devices normalise as one device on the whole batch), and each group
    keeps its own running averages, updated once per call:
    ``ra_g <- momentum * ra_g + (1 - momentum) * stat_g`` (stored as ``(groups, C)``).

    At test time a domain's images are normalised with the running averages of
    `select_domain` (its own: what it was normalised with in training, as AdaBN does),
    or, with none selected, with the mean over the groups,
    ``ra <- momentum * ra + (1 - momentum) * mean_g(stat_g)``: both domains weigh the
    same. (Calling a BatchNorm once per domain would update one set of averages twice
    a step and weigh the second domain more.)

    ``groups=1`` is ordinary BatchNorm. Variables are named as ``flax.linen.BatchNorm``'s
    (``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``, the biased batch variance).
    Statistics are computed in float32 whatever ``dtype`` is.
    """

    groups: int = 1
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        shape = (c,) if self.groups == 1 else (self.groups, c)
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        x32 = x.astype(jnp.float32)
        if not train:
            # (groups, C) averages that `select_domain` did not narrow: their mean.
            mean, var = (v.mean(0) if v.ndim == 2 else v for v in (ra_mean.value, ra_var.value))
            y = (x32 - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
            return y.astype(self.dtype)
        xg = x32.reshape(self.groups, -1, *x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))
        moments = jnp.stack([xg.mean(axes), jnp.square(xg).mean(axes)])  # (2, groups, c)
        if self.axis_name is not None:
            moments = lax.pmean(moments, self.axis_name)  # one all-reduce per layer
        mean = moments[0]
        var = jnp.maximum(moments[1] - jnp.square(mean), 0.0)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(shape)
            ra_var.value = m * ra_var.value + (1 - m) * var.reshape(shape)
        shape = (self.groups,) + (1,) * (x.ndim - 1) + (c,)  # broadcast over each group
        inv = lax.rsqrt(var + self.epsilon) * scale
        y = (xg - mean.reshape(shape)) * inv.reshape(shape) + bias
        return y.reshape(x.shape).astype(self.dtype)


class _MLP(nn.Module):
    """Dense-ReLU stack ending in a linear layer of `out` units."""

    hidden: Sequence[int]
    out: int
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype, precision=self.precision)(x))
        return nn.Dense(self.out, dtype=self.dtype, precision=self.precision)(x)


class LabelClassifier(nn.Module):
    """Label predictor G_y: features -> class logits (N, num_classes)."""

    hidden: Sequence[int] = (100, 100)
    num_classes: int = 10
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return _MLP(tuple(self.hidden), self.num_classes, self.dtype, self.precision)(features)


class DomainDiscriminator(nn.Module):
    """Domain classifier G_d: features -> one logit per example (source = 0, target = 1)."""

    hidden: Sequence[int] = (100,)
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return _MLP(tuple(self.hidden), 1, self.dtype, self.precision)(features)[:, 0]


class DANN(nn.Module):
    """Domain-adversarial network: extractor, label classifier, GRL + domain discriminator.

    ``__call__(x_source, x_target, lambda_, train)`` returns a dict with
    ``class_logits`` (source), ``class_logits_target``, ``domain_logits_source`` and
    ``domain_logits_target``. The extractor runs once over the source batch followed by
    the target batch (BatchNorm with ``bn_groups=2`` normalises each half with its own
    statistics); the discriminator sees ``grad_reverse(h, lambda_)``, so one backward
    pass trains the discriminator to separate the domains and the extractor (with
    gradient -lambda) to confuse it. ``h`` is the features (DANN) or, with
    ``adversary="cdan"``, their multilinear map with the class predictions.

    Attributes:
      extractor: any linen module mapping images (N, H, W, C) to features (N, D), called
        as ``extractor(x, train=...)`` (e.g. `FeatureExtractor`, a backbone of
        `dann_jax.backbones`, or your own).
      num_classes: number of label classes.
      label_head: hidden widths of the label classifier.
      domain_head: hidden widths of the domain discriminator.
      dropout_rate: dropout on the extractor's output features (0 = the paper).
      bottleneck: width of a Dense + BatchNorm + ReLU layer between the extractor and both
        heads (the standard layer on pretrained backbones, e.g. 256); 0: none.
      bn_groups: domains stacked in the batch that the bottleneck's BatchNorm
        normalises separately (2 = per domain; the extractor has its own setting).
      sync_bn: synchronise BatchNorm statistics over the data-parallel axis (SyncBN: N
        devices normalise as one device on the whole batch, one all-reduce per layer
        forward and backward); False: each device normalises its own share (what DDP
        without SyncBN does). Dropout masks and gradients are global either way.
      adversary: ``"dann"`` (the discriminator sees the features) or ``"cdan"`` (it sees
        the multilinear map ``f (x) softmax(G_y(f))``, the predictions without gradient:
        Long et al., NeurIPS 2018).
      axis_name: data-parallel axis name, set by `with_axis` inside a per-device step.
      dtype: computation dtype of the heads; parameters are float32 whatever it is.
      precision: ``lax.Precision`` of the heads' matmuls.

    References:
      Ganin et al., JMLR 2016, Sec. 4 (eq. 18) and Fig. 1.
    """

    extractor: nn.Module
    num_classes: int = 10
    label_head: Sequence[int] = (100, 100)
    domain_head: Sequence[int] = (100,)
    dropout_rate: float = 0.0
    bottleneck: int = 0
    bn_groups: int = 1
    sync_bn: bool = True
    adversary: str = "dann"
    axis_name: str | None = None
    dtype: Any = jnp.float32
    precision: Any = None

    def setup(self):
        if self.adversary not in ADVERSARIES:
            raise ValueError(f"adversary must be one of {ADVERSARIES}, got {self.adversary!r}")
        self.classifier = LabelClassifier(
            tuple(self.label_head), self.num_classes, self.dtype, self.precision
        )
        self.discriminator = DomainDiscriminator(
            tuple(self.domain_head), self.dtype, self.precision
        )
        if self.bottleneck:
            self.bottleneck_dense = nn.Dense(
                self.bottleneck, dtype=self.dtype, precision=self.precision
            )
            self.bottleneck_bn = DomainBatchNorm(
                self.bn_groups, axis_name=self.axis_name if self.sync_bn else None,
                dtype=self.dtype,
            )  # fmt: skip

    def _embed(self, x: jax.Array, train: bool) -> jax.Array:
        """Extractor features, through the bottleneck layer when there is one."""
        features = self.extractor(x, train=train)
        if not self.bottleneck:
            return features
        return nn.relu(self.bottleneck_bn(self.bottleneck_dense(features), train))

    def _dropout(self, features: jax.Array, n: int) -> jax.Array:
        """Dropout whose mask row is a function of the example's row in the global batch.

        Rows are numbered as in one device's batch (source rows, then target rows), and
        each mask row comes from ``fold_in(key, row)``: a data-parallel step draws exactly
        the masks one device would on the whole batch, whatever the device count.
        """
        first, devices = _local_rows(self.axis_name, n)
        local = jnp.arange(n, dtype=jnp.int32)
        rows = jnp.concatenate([first + local, devices * n + first + local])
        keys = jax.vmap(jax.random.fold_in, (None, 0))(self.make_rng("dropout"), rows)
        keep_prob = jnp.float32(1.0 - self.dropout_rate)  # float32: the same masks under x64
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, keep_prob, features.shape[1:]))(keys)
        return jnp.where(keep, features / keep_prob, 0).astype(features.dtype)

    def _adversary_input(self, features: jax.Array, logits: jax.Array) -> jax.Array:
        """What the discriminator sees: the features, or CDAN's ``f (x) g`` per example.

        Long et al., NeurIPS 2018, eq. (4): ``T(h) = f (x) g``, the outer product of the
        features and the class probabilities, flattened (D * K values); ``g`` carries no
        gradient (as in the authors' code), so the label head learns from the labels only.
        """
        if self.adversary == "dann":
            return features
        g = jax.lax.stop_gradient(jax.nn.softmax(logits.astype(jnp.float32), -1))
        outer = features[:, :, None] * g[:, None, :].astype(features.dtype)
        return outer.reshape(features.shape[0], -1)

    def __call__(
        self,
        x_source: jax.Array,
        x_target: jax.Array,
        lambda_: float | jax.Array = 1.0,
        train: bool = True,
    ) -> dict[str, jax.Array]:
        n = x_source.shape[0]
        features = self._embed(jnp.concatenate([x_source, x_target]), train)
        if train and self.dropout_rate > 0:
            features = self._dropout(features, n)
        logits = self.classifier(features)
        h = self._adversary_input(features, logits)
        domain_logits = self.discriminator(grad_reverse(h, lambda_))
        return {
            "class_logits": logits[:n],
            "class_logits_target": logits[n:],
            "domain_logits_source": domain_logits[:n],
            "domain_logits_target": domain_logits[n:],
        }

    def features(self, x: jax.Array) -> jax.Array:
        """The features both heads see, in inference mode (running BatchNorm statistics)."""
        return self._embed(x, False)

    def predict(self, x: jax.Array) -> jax.Array:
        """Class logits in inference mode."""
        return self.classifier(self.features(x))

    def predict_domain(self, x: jax.Array) -> jax.Array:
        """Domain logits in inference mode (positive = looks like the target)."""
        return self.infer(x)[2]

    def infer(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(features, class logits, domain logits) in inference mode, one extractor pass."""
        features = self.features(x)
        logits = self.classifier(features)
        return features, logits, self.discriminator(self._adversary_input(features, logits))


def select_domain(batch_stats, domain: int | None):
    """BatchNorm running averages narrowed to one domain's (0 source, 1 target).

    Per-domain `DomainBatchNorm` layers keep ``(groups, C)`` averages; this picks row
    `domain` of each, so an evaluation normalises a domain's images with that domain's
    own statistics. ``domain=None`` leaves them whole (the layers then use their mean).
    One model's statistics (inside a vmap over seeds, not outside it).
    """
    if domain is None or not batch_stats:
        return batch_stats
    return jax.tree.map(lambda v: v[..., domain, :] if v.ndim >= 2 else v, batch_stats)


def with_axis(model: DANN, axis_name: str | None) -> DANN:
    """`model` for a per-device step over `axis_name`: synchronised BatchNorm (unless
    ``model.sync_bn`` is False), global dropout.

    The extractor gets the axis too when it has an ``axis_name`` attribute (the modules of
    this package do); an extractor without one computes its own statistics per device.
    """
    if axis_name is None:
        return model
    extractor = model.extractor
    if model.sync_bn and "axis_name" in {f.name for f in dataclasses.fields(extractor)}:
        extractor = extractor.clone(axis_name=axis_name)
    return model.clone(axis_name=axis_name, extractor=extractor)
