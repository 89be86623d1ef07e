"""dann_jax.build: the initial state is the same bits however its program is compiled."""

import jax
import pytest

import dann_jax as dj
from dann_jax import build, checkpoint
from dann_jax.cli import RECIPES
from dann_jax.config import Config


def _bits(state) -> str:
    """Every field's name, dtype, shape and bytes (the key's raw data too), as one hash."""
    return checkpoint.state_digest(checkpoint.to_tree(state))


# The paper's CNNs with and without BatchNorm and dropout, SGD and Adam state.
@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (Config(**RECIPES["improved"], optimizer="adam"), (28, 28, 3)),
        (Config(arch="svhn", **RECIPES["paper"]), (32, 32, 3)),
    ],
)
def test_cpu_initialisation_at_o1_has_the_default_programs_bits(config, shape):
    assert jax.default_backend() == "cpu"
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    build._init_state_cpu.clear_cache()  # so that the count below is this test's
    for seed in (0, 7):
        rng = jax.random.key(seed)
        fast = dj.create_train_state(rng, model, tx, shape)  # CPU: build._init_state_cpu
        default = build._init_state(rng, model=model, tx=tx, image_shape=shape)
        assert _bits(fast) == _bits(default)
    assert build._init_state_cpu._cache_size() == 1  # the CPU path ran, compiled once


def test_inside_a_callers_jit_the_callers_program_gives_the_same_bits():
    # A jit with its own compiler options cannot be nested: with the key an argument or a
    # constant, create_train_state runs in the caller's program (any model shows it).
    model, tx, shape = dj.make_model(Config()), dj.make_optimizer(Config()), (28, 28, 3)
    rng = jax.random.key(0)
    fast = dj.create_train_state(rng, model, tx, shape)
    passed = jax.jit(lambda key: dj.create_train_state(key, model, tx, shape))(rng)
    closed = jax.jit(lambda: dj.create_train_state(rng, model, tx, shape))()
    assert _bits(passed) == _bits(closed) == _bits(fast)
