"""Paper architectures: output shapes and exact parameter counts; per-domain BatchNorm
updates its running averages once per step; dropout; any extractor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from dann_jax.models import DANN, DomainBatchNorm, select_domain
from dann_jax.paper_models import max_pool, paper_model


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init(model, size, n=2):
    x = jnp.zeros((n, size, size, 3))
    return model.init(jax.random.key(0), x, x, 1.0, train=False)


def test_mnist_architecture_shapes_and_counts():
    model = paper_model("mnist")
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
    model = paper_model("svhn")
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

    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    want = np.asarray(nn.max_pool(x, (2, 2), (2, 2)))
    np.testing.assert_array_equal(np.asarray(max_pool(x, 2, 2, "VALID", "cpu")), want)
    np.testing.assert_array_equal(np.asarray(max_pool(x, 2, 2, "VALID", "xla")), want)
    # The reshape form is the CPU's only: on an accelerator the pool stays reduce_window.
    jaxpr = lambda kernels: str(jax.make_jaxpr(lambda x: max_pool(x, 2, 2, "VALID", kernels))(x))
    assert "reduce_window_max" in jaxpr("xla") and "reduce_window_max" not in jaxpr("cpu")


@pytest.mark.parametrize("bn_stats", ["joint", "per_domain"])
def test_batchnorm_variants(bn_stats):
    model = paper_model("mnist", batchnorm=True, bn_stats=bn_stats)
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
    model = paper_model("mnist", dtype=jnp.bfloat16)
    variables = _init(model, 28)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    out = model.apply(variables, jnp.ones((2, 28, 28, 3)), jnp.ones((2, 28, 28, 3)), 1.0)
    assert out["class_logits"].dtype == jnp.bfloat16


def test_dropout_needs_rng_only_in_training():
    model = paper_model("mnist", dropout=0.5)
    x = jnp.ones((2, 28, 28, 3))
    v = _init(model, 28)
    a = model.apply(v, x, x, 1.0, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(v, x, x, 1.0, train=False)
    assert a["class_logits"].shape == b["class_logits"].shape == (2, 10)
    assert not np.allclose(np.asarray(a["class_logits"]), np.asarray(b["class_logits"]))
    # Inference methods never drop out: no rng needed, and one given changes nothing.
    f = model.apply(v, x, method=DANN.features)
    g = model.apply(v, x, method=DANN.features, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(f, g)


def test_dropout_is_inverted_and_shared_by_both_heads():
    # Dropout (rate 0.25) on the extractor's features, in training only: each feature is
    # 0 or 1 / 0.75 times itself (its expectation unchanged), a quarter of them 0, with
    # the same mask for the label classifier and the discriminator, on source and target
    # rows alike. Here 64 features of 1, a label head that copies them (identity) and a
    # discriminator that sums them.
    import flax.linen as nn

    class Ones(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return jnp.ones((x.shape[0], 64))

    model = DANN(Ones(), num_classes=64, label_head=(), domain_head=(), dropout_rate=0.25)
    x = jnp.zeros((128, 4, 4, 3))

    def head(kernel):
        return {"_MLP_0": {"Dense_0": {"kernel": kernel, "bias": jnp.zeros(kernel.shape[1])}}}

    params = {"classifier": head(jnp.eye(64)), "discriminator": head(jnp.ones((64, 1)))}
    key = {"dropout": jax.random.key(1)}
    out = model.apply({"params": params}, x, x, 1.0, train=True, rngs=key)
    features = np.asarray(out["class_logits"])  # the source rows after dropout
    kept = features != 0
    np.testing.assert_allclose(features[kept], 1 / 0.75, rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.03  # 8,192 draws: std 0.005
    np.testing.assert_allclose(out["domain_logits_source"], features.sum(1), rtol=1e-6)
    target = np.asarray(out["domain_logits_target"]) * 0.75  # features kept per target row
    np.testing.assert_allclose(target, np.round(target), atol=1e-4)
    assert target.min() < 64 and abs(target.mean() - 48) < 2  # dropped there too
    test = model.apply({"params": params}, x, x, 1.0, train=False)
    np.testing.assert_array_equal(np.asarray(test["class_logits"]), 1.0)


def test_batchnorm_running_averages_move_once_per_step_by_both_domains():
    # Per domain: ra_g <- m * ra_g + (1 - m) * stat_g, once; so their mean moves by
    # m * mean(ra) + (1 - m) * mean(mu_source, mu_target), for the mean and the variance.
    bn = DomainBatchNorm(groups=2, momentum=0.9)
    xs = jax.random.normal(jax.random.key(0), (6, 4, 4, 5)) * 2.0 + 1.0
    xt = jax.random.normal(jax.random.key(1), (6, 4, 4, 5)) * 0.5 - 3.0
    x = jnp.concatenate([xs, xt])
    v = bn.init(jax.random.key(2), x)
    assert v["batch_stats"]["mean"].shape == (2, 5)
    old_mean = jnp.stack([jnp.full((5,), 0.25), jnp.full((5,), -1.0)])
    old_var = jnp.stack([jnp.full((5,), 2.0), jnp.full((5,), 0.5)])
    v = {"params": v["params"], "batch_stats": {"mean": old_mean, "var": old_var}}
    y, updates = bn.apply(v, x, train=True, mutable=["batch_stats"])
    got = updates["batch_stats"]
    for g, part in enumerate((xs, xt)):
        np.testing.assert_allclose(got["mean"][g], 0.9 * old_mean[g] + 0.1 * part.mean((0, 1, 2)),
                                   rtol=1e-5)  # fmt: skip
        np.testing.assert_allclose(got["var"][g], 0.9 * old_var[g] + 0.1 * part.var((0, 1, 2)),
                                   rtol=1e-5)  # fmt: skip
    mu = (xs.mean((0, 1, 2)) + xt.mean((0, 1, 2))) / 2
    np.testing.assert_allclose(got["mean"].mean(0), 0.9 * old_mean.mean(0) + 0.1 * mu, rtol=1e-5)
    # Each domain is normalised with its own statistics.
    for half in (y[:6], y[6:]):
        np.testing.assert_allclose(half.mean((0, 1, 2)), 0.0, atol=1e-5)
        np.testing.assert_allclose(half.var((0, 1, 2)), 1.0, rtol=1e-3)
    # At test time: a domain's own averages (select_domain), or their mean.
    stats = {"mean": got["mean"], "var": got["var"]}
    for domain, (m, var) in {0: (got["mean"][0], got["var"][0]),
                             None: (got["mean"].mean(0), got["var"].mean(0))}.items():  # fmt: skip
        out = bn.apply({"params": v["params"], "batch_stats": select_domain(stats, domain)}, xs)
        np.testing.assert_allclose(out, (xs - m) / jnp.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_batchnorm_statistics_after_one_train_step():
    # Through the whole train step (improved recipe): the extractor's first BatchNorm
    # layer moves its running mean by (1 - m) * mean(mu_s, mu_t) of its inputs, once.
    config = dj.Config(steps=10, batchnorm=True, bn_stats="per_domain")
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    state = dj.create_train_state(jax.random.key(0), model, tx, (28, 28, 3))
    xs = jax.random.uniform(jax.random.key(1), (8, 28, 28, 3))
    xt = jax.random.uniform(jax.random.key(2), (8, 28, 28, 3)) + 1.0
    batch = {"source_images": xs, "target_images": xt, "source_labels": jnp.zeros(8, jnp.int32)}
    params = state.params["extractor"]["Conv_0"]
    pre = lambda x: jax.lax.conv_general_dilated(
        x, params["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    ) + params["bias"]  # fmt: skip
    mu = (pre(xs).mean((0, 1, 2)) + pre(xt).mean((0, 1, 2))) / 2
    old = np.asarray(state.batch_stats["extractor"]["BatchNorm_0"]["mean"])  # before donation
    new, _ = dj.compile_train_step(model, tx)(state, batch, dj.hyperparams(config))
    got = np.asarray(new.batch_stats["extractor"]["BatchNorm_0"]["mean"]).mean(0)
    np.testing.assert_allclose(got, 0.9 * old.mean(0) + 0.1 * np.asarray(mu), rtol=1e-4, atol=1e-6)


def test_any_linen_module_is_an_extractor():
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.relu(nn.Dense(7)(x.reshape(x.shape[0], -1)))

    model = DANN(Tiny(), num_classes=6, label_head=(5,), domain_head=(3,))
    x = jnp.ones((4, 8, 8, 3))
    v = model.init(jax.random.key(0), x, x, 1.0, train=False)
    out = model.apply(v, x, x[:2], 0.3)
    assert out["class_logits"].shape == (4, 6)
    assert out["domain_logits_target"].shape == (2,)
    assert _count(v["params"]["extractor"]) == 8 * 8 * 3 * 7 + 7


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown arch 'lenet'"):
        _init(paper_model("lenet"), 28)
