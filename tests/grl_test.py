"""Gradient reversal: exact forward identity, exact -lambda * g cotangent, no retraces."""

import functools
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dann_jax.grl import GradientReversal, grad_reverse


def _vjp(x, lam, g):
    """Cotangents (of x, of lambda) of grad_reverse for output cotangent g."""
    _, pullback = jax.vjp(grad_reverse, x, lam)
    return pullback(g)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_forward_is_bitwise_identity(dtype):
    x = jax.random.normal(jax.random.key(0), (4, 7)).astype(dtype)
    y = grad_reverse(x, 0.37)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(y).view(np.uint8), np.asarray(x).view(np.uint8))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0, 3.7])
def test_cotangent_is_exactly_minus_lambda_g(dtype, lam):
    x = jax.random.normal(jax.random.key(1), (5, 3)).astype(dtype)
    g = jax.random.normal(jax.random.key(2), (5, 3)).astype(dtype)
    gx, glam = _vjp(x, jnp.float32(lam), g)
    assert gx.dtype == dtype, "the cotangent must keep the leaf dtype (no upcast)"
    expected = jnp.asarray(-lam, jnp.float32).astype(dtype) * g
    np.testing.assert_array_equal(np.asarray(gx), np.asarray(expected))
    if lam == 1.0:
        np.testing.assert_array_equal(np.asarray(gx), -np.asarray(g))
    assert float(glam) == 0.0


def test_cotangent_on_dict_pytree_keeps_each_dtype():
    x = {
        "a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
        "b": [jnp.ones((3,), jnp.bfloat16), jnp.arange(3, dtype=jnp.int32)],
    }
    y = grad_reverse(x, 2.0)
    chex.assert_trees_all_equal(y, x)
    chex.assert_trees_all_equal_dtypes(y, x)

    def f(x):
        y = grad_reverse(x, 2.0)
        return jnp.sum(y["a"] * y["a"]) + jnp.sum(y["b"][0].astype(jnp.float32) * 3.0)

    g = jax.grad(f, allow_int=True)(x)
    np.testing.assert_array_equal(np.asarray(g["a"]), -2.0 * 2.0 * np.asarray(x["a"]))
    assert g["b"][0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(g["b"][0], np.float32), -6.0 * np.ones(3))


def test_lambda_cotangent_is_zero_under_grad():
    x = jnp.array([1.0, -2.0, 3.0])
    g_lam = jax.grad(lambda lam: jnp.sum(grad_reverse(x, lam) ** 2))(jnp.float32(0.7))
    assert float(g_lam) == 0.0


def test_no_retrace_across_lambda_values():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def grad_fn(x, lam):
        return jax.grad(lambda x: jnp.sum(grad_reverse(x, lam) * 2.0))(x)

    x = jnp.ones((3,))
    for lam in [0.0, 0.1, 0.5, 1.0, 2.0]:
        expected = -np.float32(lam) * np.full(3, 2.0, np.float32)
        np.testing.assert_array_equal(np.asarray(grad_fn(x, lam)), expected)


def test_no_retrace_across_traced_lambda_arrays():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def grad_fn(x, lam):
        return jax.grad(lambda x: jnp.sum(grad_reverse(x, lam)))(x)

    for lam in np.linspace(0.0, 1.0, 5, dtype=np.float32):
        np.testing.assert_array_equal(np.asarray(grad_fn(jnp.ones(2), lam)), np.full(2, -lam))


def test_grad_of_grad():
    lam = 0.5
    # f(x) = sum(R(x)^2) -> df/dx = -lam * 2x -> d/dx sum(df/dx) = -2 lam per element.
    first = jax.grad(lambda x: jnp.sum(grad_reverse(x, lam) ** 2))
    second = jax.grad(lambda x: jnp.sum(first(x)))
    x = jnp.array([1.0, 2.0, -3.0])
    np.testing.assert_array_equal(np.asarray(first(x)), -2 * lam * np.asarray(x))
    np.testing.assert_array_equal(np.asarray(second(x)), np.full(3, -2 * lam, np.float32))


def test_second_order_reverses_once_and_treats_the_forward_as_identity():
    # d2/dx2 of sum(R(x)^3) is -lam * 6x (the reversal is not squared), and in
    # sin(x) * R(x) the outer derivative sees R's forward pass as the identity.
    lam = 0.5
    x = jnp.array([1.0, 2.0])
    cube = lambda x: jnp.sum(grad_reverse(x, lam) ** 3)
    np.testing.assert_allclose(np.diag(jax.jacrev(jax.grad(cube))(x)), -lam * 6 * x, rtol=1e-6)
    mixed = lambda x: jnp.sum(jnp.sin(x) * grad_reverse(x, lam))
    # grad = cos(x) * x - lam * sin(x); its derivative = -sin(x) x + cos(x) - lam cos(x)
    want = -np.sin(x) * x + np.cos(x) - lam * np.cos(x)
    np.testing.assert_allclose(np.diag(jax.jacrev(jax.grad(mixed))(x)), want, rtol=1e-5)


def test_importing_the_grl_loads_jax_only():
    code = (
        "import sys, dann_jax.grl; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dann_jax', 'optax', 'flax', 'chex', 'orbax'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dann_jax", "dann_jax.grl"]


def test_jvp_fails_with_clear_message():
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: grad_reverse(x, 1.0), (jnp.ones(2),), (jnp.ones(2),))


def _per_example_grad(x, lam):
    return jax.grad(lambda x: jnp.sum(grad_reverse(x, lam) ** 2))(x)


def test_vmap_matches_unbatched():
    xs = jax.random.normal(jax.random.key(3), (6, 4))
    lams = jnp.linspace(0.0, 2.0, 6)
    batched = jax.vmap(_per_example_grad)(xs, lams)
    for i in range(6):
        np.testing.assert_array_equal(
            np.asarray(batched[i]), np.asarray(_per_example_grad(xs[i], lams[i]))
        )
    np.testing.assert_array_equal(
        np.asarray(batched), -np.asarray(lams)[:, None] * (2 * np.asarray(xs))
    )


def test_pmap_on_8_devices_matches_single_device():
    assert jax.local_device_count() == 8, "conftest should create 8 CPU devices"
    xs = jax.random.normal(jax.random.key(4), (8, 5))
    lams = jnp.linspace(0.1, 1.5, 8)
    mapped = jax.pmap(_per_example_grad)(xs, lams)
    single = jnp.stack([_per_example_grad(xs[i], lams[i]) for i in range(8)])
    np.testing.assert_array_equal(np.asarray(mapped), np.asarray(single))


def test_pmap_with_collective_inside_grad():
    xs = jax.random.normal(jax.random.key(5), (8, 3))

    @functools.partial(jax.pmap, axis_name="i")
    def f(x):
        g = jax.grad(lambda x: jnp.sum(grad_reverse(x, 0.5) * 4.0))(x)
        return jax.lax.pmean(g, "i")

    np.testing.assert_array_equal(np.asarray(f(xs)), np.full((8, 3), -2.0, np.float32))


def test_linen_module_has_no_params_and_reverses():
    module = GradientReversal()
    x = jnp.ones((2, 3))
    variables = module.init(jax.random.key(0), x, 0.5)
    assert not variables.get("params")
    g = jax.grad(lambda x: jnp.sum(module.apply(variables, x, 0.25)))(x)
    np.testing.assert_array_equal(np.asarray(g), np.full((2, 3), -0.25, np.float32))
