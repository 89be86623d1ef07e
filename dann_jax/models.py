"""Pure Flax (linen) modules of DANN: feature extractor, label classifier, domain discriminator.

The two architectures of the DANN paper's digit experiments are shipped:

* ``mnist`` (MNIST, MNIST-M, USPS at 28x28): conv 5x5x32 -> max-pool 2 -> conv 5x5x48 ->
  max-pool 2 (768 features); label head 100-100-10; domain head 100-1.
* ``svhn`` (SVHN, Syn digits at 32x32): conv 5x5x64 -> max-pool 3/2 -> conv 5x5x64 ->
  max-pool 3/2 -> conv 5x5x128 (8x8x128 = 8192 features); label head 3072-2048-10;
  domain head 1024-1024-1.

The domain head ends in a single logit trained with binary cross-entropy (source = 0,
target = 1), as in the reference code; the paper's 2-way softmax is equivalent.

References:
  Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016,
  Sec. 5.2.2 and Fig. 4 (architectures), https://arxiv.org/abs/1505.07818.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dann_jax import cpu_conv
from dann_jax.config import BN_STATS
from dann_jax.grl import grad_reverse

__all__ = [
    "ARCHITECTURES",
    "DANN",
    "DomainDiscriminator",
    "FeatureExtractor",
    "LabelClassifier",
]

# name -> (conv layers as (features, kernel, padding, pool window, pool stride, pool padding),
#          label head widths, domain head widths, input side)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    # DANN paper Fig. 4 (MNIST): "valid" convolutions, 28 -> 24 -> 12 -> 8 -> 4; 4*4*48 = 768.
    "mnist": {
        "convs": ((32, 5, "VALID", 2, 2, "VALID"), (48, 5, "VALID", 2, 2, "VALID")),
        "label_head": (100, 100),
        "domain_head": (100,),
        "input_size": 28,
    },
    # DANN paper Fig. 4 (SVHN, after Srivastava et al. 2014). "same" padding keeps the
    # 3/2 pools well-defined at 32x32: 32 -> 16 -> 8 -> 8x8x128 = 8192 features.
    "svhn": {
        "convs": (
            (64, 5, "SAME", 3, 2, "SAME"),
            (64, 5, "SAME", 3, 2, "SAME"),
            (128, 5, "SAME", None, None, None),
        ),
        "label_head": (3072, 2048),
        "domain_head": (1024, 1024),
        "input_size": 32,
    },
}


# How a convolution is computed; `dann_jax.train.make_model` picks per backend.
CONV_IMPLS = {"xla": jax.lax.conv_general_dilated, "patch": cpu_conv.cpu_conv}


def _arch(name: str) -> dict[str, Any]:
    """Look up an architecture by name with a helpful error."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {name!r}; choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def _max_pool(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
    """Max pooling; non-overlapping windows as a reshape + max.

    Same forward values as ``nn.max_pool``; its backward is an elementwise mask instead
    of XLA's select-and-scatter, which on CPU made the MNIST step about 30% slower.
    """
    n, h, w, c = x.shape
    if window == stride and padding == "VALID" and h % window == 0 and w % window == 0:
        return x.reshape(n, h // window, window, w // window, window, c).max(axis=(2, 4))
    return nn.max_pool(x, (window, window), (stride, stride), padding=padding)


class FeatureExtractor(nn.Module):
    """Convolutional feature extractor G_f of the DANN paper.

    Attributes:
      arch: ``"mnist"`` or ``"svhn"`` (see `ARCHITECTURES`).
      batchnorm: add BatchNorm after each convolution (off = the paper).
      dropout_rate: dropout on the flattened features (0 = the paper).
      bn_axis_name: pmap axis over which BatchNorm statistics are averaged, so a
        data-parallel step normalises with whole-batch statistics (sync BatchNorm).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      conv_impl: ``"xla"`` (`lax.conv_general_dilated`) or ``"patch"`` (the same
        forward, gradients written out for XLA:CPU: `dann_jax.cpu_conv`); the same
        parameters and numbers either way.
    """

    arch: str = "mnist"
    batchnorm: bool = False
    dropout_rate: float = 0.0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Map images (N, H, W, C) to flat features (N, D)."""
        conv = CONV_IMPLS[self.conv_impl]
        for features, kernel, padding, window, stride, pool_padding in _arch(self.arch)["convs"]:
            x = nn.Conv(
                features, (kernel, kernel), padding=padding, dtype=self.dtype,
                conv_general_dilated=conv,
            )(x)  # fmt: skip
            if self.batchnorm:
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    axis_name=self.bn_axis_name if train else None,
                    dtype=self.dtype,
                )(x)
            x = nn.relu(x)
            if window is not None:
                x = _max_pool(x, window, stride, pool_padding)
        x = x.reshape(x.shape[0], -1)
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


class _MLP(nn.Module):
    """Dense-ReLU stack ending in a linear layer of `out` units."""

    hidden: Sequence[int]
    out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
        return nn.Dense(self.out, dtype=self.dtype)(x)


class LabelClassifier(nn.Module):
    """Label predictor G_y: features -> class logits (paper head for `arch`)."""

    arch: str = "mnist"
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """Return class logits (N, num_classes)."""
        return _MLP(_arch(self.arch)["label_head"], self.num_classes, self.dtype)(features)


class DomainDiscriminator(nn.Module):
    """Domain classifier G_d: features -> one logit (source = 0, target = 1)."""

    arch: str = "mnist"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        """Return domain logits (N,)."""
        return _MLP(_arch(self.arch)["domain_head"], 1, self.dtype)(features)[:, 0]


class DANN(nn.Module):
    """Domain-adversarial network: extractor, label classifier, GRL + domain discriminator.

    ``__call__(x_source, x_target, lambda_, train)`` returns a dict with
    ``class_logits`` (source only), ``domain_logits_source`` and
    ``domain_logits_target``. The discriminator sees ``grad_reverse(features,
    lambda_)``, so one backward pass trains the discriminator to separate the domains
    and the extractor (with gradient -lambda) to confuse it.

    Attributes:
      arch: ``"mnist"`` or ``"svhn"``.
      num_classes: number of label classes.
      batchnorm: BatchNorm in the extractor (off = the paper).
      bn_stats: with BatchNorm, ``"joint"`` normalises source and target together with
        statistics of the concatenated batch; ``"per_domain"`` runs the extractor on each
        domain separately, so each is normalised with its own batch statistics (the
        running averages, used at test time, then see both domains in turn).
      dropout_rate: dropout on the extractor's output features.
      bn_axis_name: pmap axis name for synchronised BatchNorm statistics.
      dtype: computation dtype; parameters are float32 whatever it is.
      conv_impl: how the extractor's convolutions are computed (see `FeatureExtractor`).

    References:
      Ganin et al., JMLR 2016, Sec. 4 (eq. 18) and Fig. 1.
    """

    arch: str = "mnist"
    num_classes: int = 10
    batchnorm: bool = False
    bn_stats: str = "joint"
    dropout_rate: float = 0.0
    bn_axis_name: str | None = None
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    def setup(self):
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {self.bn_stats!r}")
        self.extractor = FeatureExtractor(
            self.arch, self.batchnorm, self.dropout_rate, self.bn_axis_name, self.dtype,
            self.conv_impl,
        )  # fmt: skip
        self.classifier = LabelClassifier(self.arch, self.num_classes, self.dtype)
        self.discriminator = DomainDiscriminator(self.arch, self.dtype)

    def __call__(
        self,
        x_source: jax.Array,
        x_target: jax.Array,
        lambda_: float | jax.Array = 1.0,
        train: bool = True,
    ) -> dict[str, jax.Array]:
        n = x_source.shape[0]
        if self.batchnorm and self.bn_stats == "per_domain":
            f_source = self.extractor(x_source, train)
            f_target = self.extractor(x_target, train)
            features = jnp.concatenate([f_source, f_target])
        else:
            # One pass over the joint batch: same numbers without BatchNorm, bigger kernels.
            features = self.extractor(jnp.concatenate([x_source, x_target]), train)
            f_source = features[:n]
        domain_logits = self.discriminator(grad_reverse(features, lambda_))
        return {
            "class_logits": self.classifier(f_source),
            "domain_logits_source": domain_logits[:n],
            "domain_logits_target": domain_logits[n:],
        }

    def features(self, x: jax.Array) -> jax.Array:
        """Extractor features in inference mode (running BatchNorm statistics)."""
        return self.extractor(x, False)

    def predict(self, x: jax.Array) -> jax.Array:
        """Class logits in inference mode."""
        return self.classifier(self.extractor(x, False))

    def predict_domain(self, x: jax.Array) -> jax.Array:
        """Domain logits in inference mode (positive = looks like the target)."""
        return self.discriminator(self.extractor(x, False))

    def infer(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(features, class logits, domain logits) in inference mode, one extractor pass.

        The same numbers as `features`, `predict` and `predict_domain` (the inference
        extractor is deterministic), for a third of the extractor's cost.
        """
        features = self.extractor(x, False)
        return features, self.classifier(features), self.discriminator(features)
