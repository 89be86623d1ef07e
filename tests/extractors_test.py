"""Your own extractor: NNX gives the linen numbers, the recipe's parts stay, BatchNorm that
mixes the domains is named, and a run says what to pass to load it again."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dann_jax as dj
from dann_jax import extractors
from dann_jax.data import DataError

QUIET = lambda _: None


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID", name="conv")(x))
        return nn.relu(nn.Dense(24, name="dense")(x.reshape(x.shape[0], -1)))


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 6, (3, 3), padding="VALID", rngs=rngs)
        self.dense = nnx.Linear(6 * 10 * 10, 24, rngs=rngs)

    def __call__(self, x, train: bool = False):
        x = nnx.relu(self.conv(x))
        return nnx.relu(self.dense(x.reshape(x.shape[0], -1)))


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8)
    return xs, np.arange(n) % 3, rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8)


def test_an_nnx_extractor_trains_to_the_linen_numbers():
    config = dj.Config(steps=10, batchnorm=True, bn_stats="per_domain", dropout=0.5, mcc=0.5)
    models = {
        "linen": dj.make_model(config, num_classes=3, extractor=LinenNet()),
        "nnx": dj.make_model(config, num_classes=3, extractor=dj.from_nnx(NNXNet)),
    }
    tx = dj.make_optimizer(config)
    states = {k: dj.create_train_state(jax.random.key(1), m, tx, (12, 12, 3))
              for k, m in models.items()}  # fmt: skip
    # The same starting weights: NNX's extractor parameters in the linen names.
    p = states["linen"].params
    p = {**p, "extractor": jax.tree.map(np.array, states["nnx"].params["extractor"])}
    states["linen"] = states["linen"].replace(params=p, opt_state=tx.init(p))
    xs, ys, xt = _data()
    data = jax.device_put(dj.make_train_data(xs, ys, xt))
    out = {}
    for k, m in models.items():
        run = dj.compile_train_steps(m, tx, num_steps=3, batch_size=8)
        out[k], _ = run(states[k], data, dj.hyperparams(config))
    chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    jax.tree.map(chex_close, out["linen"].params, out["nnx"].params)
    assert float(jnp.abs(out["nnx"].params["extractor"]["conv"]["kernel"]
                         - p["extractor"]["conv"]["kernel"]).max()) > 0  # fmt: skip


def test_own_extractor_keeps_the_bottleneck_groups_and_the_office_heads(tmp_path):
    xs, ys, xt = _data()
    office = dict(arch="resnet50", bottleneck=16, batchnorm=True, bn_stats="per_domain",
                  backbone_lr_mult=0.1, normalize="imagenet", choose=False)  # fmt: skip
    model = dj.fit(xs, ys, xt, extractor=LinenNet(), steps=2, eval_every=2, batch_size=8,
                   workdir=tmp_path / "w", log=QUIET, **office)  # fmt: skip
    params, stats = model.state.params, model.state.batch_stats
    assert params["bottleneck_dense"]["kernel"].shape == (24, 16)
    assert stats["bottleneck_bn"]["mean"].shape == (2, 16)  # one row per domain
    assert params["classifier"]["_MLP_0"]["Dense_0"]["kernel"].shape == (16, 3)  # linear
    assert len(params["discriminator"]["_MLP_0"]) == 3  # 1024-1024-1
    # The workdir says what it was trained with, and load_run asks for it.
    with pytest.raises(DataError, match="LinenNet"):
        dj.load_run(tmp_path / "w")
    again = dj.load_run(tmp_path / "w", extractor=LinenNet())
    np.testing.assert_allclose(again.logits(xt), model.logits(xt), rtol=1e-6, atol=1e-6)


class JointBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return x.reshape(x.shape[0], -1)


class PerDomainBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = dj.DomainBatchNorm(groups=2)(x, train)
        return x.reshape(x.shape[0], -1)


def test_a_batchnorm_that_mixes_the_domains_is_named():
    config = dj.Config(bn_stats="per_domain")
    joint = dj.make_model(config, num_classes=3, extractor=JointBN())
    apart = dj.make_model(config, num_classes=3, extractor=PerDomainBN())
    assert extractors.joint_batchnorm(joint, (12, 12, 3)) == 1
    assert extractors.joint_batchnorm(apart, (12, 12, 3)) == 0
    xs, ys, xt = _data()
    lines = []
    dj.fit(xs, ys, xt, extractor=JointBN(), steps=1, eval_every=1, batch_size=8,
           choose=False, log=lines.append)  # fmt: skip
    assert any("DomainBatchNorm" in x and "1 BatchNorm layer" in x for x in lines)
    assert extractors.describe(JointBN())["kind"] == "linen"
    assert extractors.describe(dj.from_nnx(NNXNet)) == {
        "kind": "nnx",
        "class": f"{__name__}.NNXNet",
    }
