"""Paper architectures: output shapes and exact parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dann_jax.models import DANN, FeatureExtractor


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init(model, size, n=2):
    x = jnp.zeros((n, size, size, 3))
    return model.init(jax.random.key(0), x, x, 1.0, train=False)


def test_mnist_architecture_shapes_and_counts():
    model = DANN(arch="mnist")
    params = _init(model, 28)["params"]
    ext = params["extractor"]
    assert _count(ext["Conv_0"]) == 5 * 5 * 3 * 32 + 32 == 2_432
    assert _count(ext["Conv_1"]) == 5 * 5 * 32 * 48 + 48 == 38_448
    # label head 768-100-100-10, domain head 768-100-1
    assert _count(params["classifier"]) == (768 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10)
    assert _count(params["discriminator"]) == (768 * 100 + 100) + (100 * 1 + 1)
    x = jnp.ones((5, 28, 28, 3))
    out = model.apply({"params": params}, x, x[:3], 0.5)
    assert out["class_logits"].shape == (5, 10)
    assert out["domain_logits_source"].shape == (5,)
    assert out["domain_logits_target"].shape == (3,)
    feats = model.apply({"params": params}, x, method=DANN.features)
    assert feats.shape == (5, 768)


def test_svhn_architecture_shapes_and_counts():
    model = DANN(arch="svhn")
    params = jax.eval_shape(lambda: _init(model, 32))["params"]
    ext = params["extractor"]
    assert _count(ext["Conv_0"]) == 5 * 5 * 3 * 64 + 64
    assert _count(ext["Conv_1"]) == 5 * 5 * 64 * 64 + 64
    assert _count(ext["Conv_2"]) == 5 * 5 * 64 * 128 + 128
    d = 8 * 8 * 128
    assert _count(params["classifier"]) == (d * 3072 + 3072) + (3072 * 2048 + 2048) + (
        2048 * 10 + 10
    )
    assert _count(params["discriminator"]) == (d * 1024 + 1024) + (1024 * 1024 + 1024) + 1025
    out = jax.eval_shape(
        lambda: model.apply(_init(model, 32), jnp.ones((4, 32, 32, 3)), jnp.ones((4, 32, 32, 3)))
    )
    assert out["class_logits"].shape == (4, 10)
    assert out["domain_logits_target"].shape == (4,)


def test_reshape_pool_equals_flax_max_pool():
    import flax.linen as nn

    from dann_jax.models import _max_pool

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    np.testing.assert_array_equal(
        np.asarray(_max_pool(x, 2, 2, "VALID")), np.asarray(nn.max_pool(x, (2, 2), (2, 2)))
    )


@pytest.mark.parametrize("bn_stats", ["joint", "per_domain"])
def test_batchnorm_variants(bn_stats):
    model = DANN(arch="mnist", batchnorm=True, bn_stats=bn_stats)
    variables = _init(model, 28)
    assert "batch_stats" in variables
    xs = jax.random.normal(jax.random.key(2), (4, 28, 28, 3))
    xt = 3.0 + jax.random.normal(jax.random.key(3), (4, 28, 28, 3))
    out, updates = model.apply(variables, xs, xt, 1.0, train=True, mutable=["batch_stats"])
    assert out["class_logits"].shape == (4, 10)
    stats = updates["batch_stats"]["extractor"]["BatchNorm_0"]["mean"]
    assert not np.allclose(np.asarray(stats), 0.0)
    # per_domain normalises each domain on its own: source logits do not depend on target.
    out2, _ = model.apply(variables, xs, xt + 5.0, 1.0, train=True, mutable=["batch_stats"])
    same = np.allclose(np.asarray(out["class_logits"]), np.asarray(out2["class_logits"]))
    assert same == (bn_stats == "per_domain")


def test_bfloat16_compute_keeps_float32_params():
    model = DANN(arch="mnist", dtype=jnp.bfloat16)
    variables = _init(model, 28)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    out = model.apply(variables, jnp.ones((2, 28, 28, 3)), jnp.ones((2, 28, 28, 3)), 1.0)
    assert out["class_logits"].dtype == jnp.bfloat16


def test_dropout_needs_rng_only_in_training():
    ext = FeatureExtractor(arch="mnist", dropout_rate=0.5)
    x = jnp.ones((2, 28, 28, 3))
    v = ext.init(jax.random.key(0), x)
    a = ext.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = ext.apply(v, x, train=False)
    assert a.shape == b.shape == (2, 768)
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown arch 'lenet'"):
        _init(DANN(arch="lenet"), 28)
