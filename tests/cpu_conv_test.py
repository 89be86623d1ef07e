"""The CPU convolution path computes what the default path computes: values, loss and
gradients, on both paper architectures; GPU/TPU keep the default."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import dann_jax as dj
from dann_jax import cpu_conv
from tests.helpers import synthetic_data

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("padding", ["VALID", "SAME", ((1, 2), (0, 3))])
@pytest.mark.parametrize("channels", [1, 3])
def test_patch_conv_equals_lax_conv_and_its_gradients(padding, channels):
    x = jax.random.normal(jax.random.key(0), (4, 13, 11, channels))
    w = jax.random.normal(jax.random.key(1), (5, 3, channels, 6))

    def loss(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=DN)))

    # Compiled: op by op, each test spent seconds dispatching.
    value_and_grad = jax.jit(jax.value_and_grad(loss, (1, 2)), static_argnums=0)
    want = value_and_grad(lax.conv_general_dilated, x, w)
    got = value_and_grad(cpu_conv.cpu_conv, x, w)
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-5)


def _jaxpr(x, w, strides=(1, 1)) -> str:
    conv = lambda x, w: cpu_conv.cpu_conv(x, w, strides, "VALID", dimension_numbers=DN)
    return str(jax.make_jaxpr(conv)(x, w))


def test_many_channels_and_strides_go_to_lax():
    assert 8 > cpu_conv.MAX_PATCH_CHANNELS
    assert "conv_general_dilated" in _jaxpr(jnp.ones((2, 9, 9, 8)), jnp.ones((3, 3, 8, 4)))
    x3, w3 = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4))
    assert "conv_general_dilated" in _jaxpr(x3, w3, strides=(2, 2))
    assert "conv_general_dilated" not in _jaxpr(x3, w3)


@pytest.mark.parametrize("arch", ["mnist", "svhn"])
def test_cpu_model_has_the_default_models_loss_and_gradients(arch):
    config = dj.Config(arch=arch, steps=100)
    cpu, default = dj.make_model(config, backend="cpu"), dj.make_model(config, backend="gpu")
    assert (cpu.extractor.kernels, default.extractor.kernels) == ("cpu", "xla")
    size = 28 if arch == "mnist" else 32
    data = synthetic_data(32, size=size)
    batch = dj.sample_batch(jax.random.key(0), data, 8)
    state = dj.create_train_state(
        jax.random.key(0), default, dj.make_optimizer(config), (size, size, 3)
    )

    def loss(model, params):
        out = model.apply({"params": params}, batch["source_images"], batch["target_images"], 0.7)
        ce = dj.classification_loss(out["class_logits"], batch["source_labels"], 0.0)
        dom = dj.domain_adversarial_loss(out["domain_logits_source"], out["domain_logits_target"])
        return ce + dom

    # Compiled: op by op, the SVHN model took half a minute on two cores.
    want = jax.jit(jax.value_and_grad(lambda p: loss(default, p)))(state.params)
    got = jax.jit(jax.value_and_grad(lambda p: loss(cpu, p)))(state.params)
    chex.assert_trees_all_close(got, want, atol=2e-5, rtol=2e-4)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-5)
