"""The host-fed input path: the batches, and so the parameters, of the resident path."""

import jax
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import compiled, feed, loop, memory
from dann_jax.config import Config
from dann_jax.data.domain import DataError
from dann_jax.data.pair import PairData
from dann_jax.pools import draw_indices
from dann_jax.train import _step_keys
from tests.helpers import synthetic_images

# The paper's small model on 16 x 16 images, with augmentation, several steps a dispatch.
CONFIG = Config(steps=6, steps_per_call=3, eval_every=6, batch_size=8, augment=True, rotate=True)


def _pair(n=40, size=16) -> PairData:
    xs, ys, xt, yt = synthetic_images(n, size)
    mean = np.full((3,), 0.5, np.float32)
    return PairData(xs, ys, xt, xs[:16], ys[:16], xt[:16], yt[:16], mean, {"variant": "test"})


def _train(tmp_path, config, seeds=(0,), data=None, log=None):
    out = loop.train_and_evaluate(
        config, data or _pair(), tmp_path, seeds, log=log or (lambda _: None)
    )
    return [r["state"] for r in out]


def _assert_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_host_draws_the_indices_the_device_draws():
    rng = jax.random.split(jax.random.key(3), 2)  # two stacked seeds
    i_s, i_t = feed.draw_chunk(rng, 5, 4, (40, 30), 8)
    assert i_s.shape == i_t.shape == (4, 2, 8)
    for k in range(4):
        for s in range(2):
            data_key, _ = _step_keys(rng[s], np.int32(5 + k))
            want = draw_indices(data_key, (40, 30), 8)
            np.testing.assert_array_equal(i_s[k, s], want[0])
            np.testing.assert_array_equal(i_t[k, s], want[1])


def test_a_gathered_chunk_holds_each_steps_rows():
    data = _pair().train_data()
    i_s, i_t = feed.draw_chunk(jax.random.key(0), 0, 3, (40, 40), 8)
    fed = feed.gather_chunk(data, i_s, i_t)
    np.testing.assert_array_equal(fed.pool.source_images[fed.source_index], data.source_images[i_s])
    np.testing.assert_array_equal(fed.pool.source_labels[fed.source_index], data.source_labels[i_s])
    np.testing.assert_array_equal(fed.pool.target_images[fed.target_index], data.target_images[i_t])


def test_a_scanned_chunk_fed_from_the_host_equals_the_resident_one():
    # unroll=1: the K steps in one lax.scan (the accelerator form of the program).
    config = CONFIG.replace(seeds=2)
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    states = [dj.create_train_state(jax.random.key(s), model, tx, (16, 16, 3)) for s in (0, 1)]
    state, hp, data = dj.stack_trees(states), dj.hyperparams(config), _pair().train_data()
    outs = []
    for fed in (False, True):
        run = compiled.compile_train_steps(
            model, tx, num_steps=3, batch_size=8, unroll=1, vmap_seeds=True,
            augment=config.augment_ops, stack="loop", host_fed=fed,
        )  # fmt: skip
        batches = data
        if fed:
            batches = feed.gather_chunk(data, *feed.draw_chunk(state.rng, 0, 3, (40, 40), 8))
        outs.append(run(jax.tree.map(jax.numpy.array, state), jax.device_put(batches), hp))
    (a, metrics_a), (b, metrics_b) = outs
    _assert_equal((a.params, a.opt_state, metrics_a), (b.params, b.opt_state, metrics_b))


def test_the_same_seed_trains_to_the_same_parameters_on_both_paths(tmp_path):
    device = _train(tmp_path / "device", CONFIG.replace(input="device"))
    host = _train(tmp_path / "host", CONFIG.replace(input="host"))
    _assert_equal(device[0].params, host[0].params)
    _assert_equal(device[0].opt_state, host[0].opt_state)


def test_stacked_seeds_train_alike_on_both_paths(tmp_path):
    config = CONFIG.replace(vmap_seeds=True, seeds=2, steps=3)
    device = _train(tmp_path / "device", config.replace(input="device"), seeds=(0, 1))
    host = _train(tmp_path / "host", config.replace(input="host"), seeds=(0, 1))
    for d, h in zip(device, host, strict=True):
        _assert_equal(d.params, h.params)


def _state():
    model, tx = dj.make_model(CONFIG), dj.make_optimizer(CONFIG)
    return dj.create_train_state(jax.random.key(0), model, tx, (16, 16, 3))


def test_pools_that_do_not_fit_name_the_host_path(monkeypatch):
    monkeypatch.setattr(memory, "_device_memory", lambda: 100_000)
    with pytest.raises(DataError, match=r"do not fit in device memory.*add --input host"):
        memory.check_memory(_pair(), _state(), 8, 8)


def test_models_split_over_the_devices_train_alike_on_both_paths(tmp_path):
    # 8 stacked seeds on 8 devices: each device trains whole models, its positions with it.
    config = CONFIG.replace(vmap_seeds=True, seeds=8, steps=2, steps_per_call=2, eval_every=2)
    seeds = tuple(range(8))
    device = _train(tmp_path / "device", config.replace(input="device"), seeds=seeds)
    host = _train(tmp_path / "host", config.replace(input="host"), seeds=seeds)
    for d, h in zip(device, host, strict=True):
        _assert_equal(d.params, h.params)
