"""Data parallelism over a mesh: 8 devices compute what one device computes on the whole
batch (the CPU and the accelerator model, both recipes, one seed and vmapped seeds), the
pmap form agrees with it, and nothing recompiles."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import compiled, sharding, train
from tests.helpers import HLO_ONLY, RECIPES, setup_run, synthetic_data, unflat


def _close(a, b, tol=1e-5):
    chex.assert_trees_all_close(a, b, atol=tol, rtol=tol)


# The CPU model of the paper recipe and the accelerator model of the improved one
# (synchronised per-domain BatchNorm, dropout); the K-step test below has all four.
@pytest.mark.parametrize(("recipe", "backend"), [("paper", "cpu"), ("improved", "gpu")])
def test_mesh_step_equals_one_device_on_the_whole_batch(recipe, backend):
    mesh = dj.make_mesh()
    assert mesh.size == 8
    config, model, tx, state = setup_run(
        backend, lambda2_schedule="constant", lambda2=0.7, **RECIPES[recipe]
    )
    data, hp = synthetic_data(128), dj.hyperparams(config)
    batches = [dj.sample_batch(jax.random.key(s), data, 64) for s in range(3)]

    single = dj.compile_train_step(model, tx, lambda2_schedule="constant")
    s1 = jax.tree.map(jnp.copy, state)
    for b in batches:
        s1, m1 = single(s1, b, hp)

    step = dj.compile_train_step(model, tx, lambda2_schedule="constant", mesh=mesh)
    sm, hp_m = dj.put_replicated(state, mesh), dj.put_replicated(hp, mesh)
    for b in batches:
        sm, mm = step(sm, jax.device_put(b, sharding.batch_sharding(mesh)), hp_m)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sm.params))
    sm = dj.fetch(sm)
    _close(sm.params, s1.params)
    _close(sm.batch_stats, s1.batch_stats)
    assert int(sm.step) == 3
    for k in ("loss", "label_loss", "domain_loss", "domain_accuracy"):
        np.testing.assert_allclose(np.asarray(mm[k]), np.asarray(m1[k]), rtol=1e-5, atol=1e-6)


# Every pair of two factors' values once (4 of the 8 combinations; each is ~10 s of CI).
@pytest.mark.parametrize(
    ("vmap_seeds", "recipe", "backend"),
    [(False, "paper", "cpu"), (False, "improved", "gpu"), (True, "paper", "gpu"),
     (True, "improved", "cpu")],
)  # fmt: skip
def test_mesh_steps_draw_the_one_device_batches(vmap_seeds, recipe, backend):
    mesh = dj.make_mesh()
    config, model, tx, state = setup_run(backend, steps=20, **RECIPES[recipe])
    if vmap_seeds:
        other = dj.create_train_state(jax.random.key(7), model, tx, (28, 28, 3))
        state = dj.stack_trees([state, other])
    data, hp = synthetic_data(64), dj.hyperparams(config)
    kwargs = dict(num_steps=3, batch_size=16, vmap_seeds=vmap_seeds)
    one, m1 = dj.compile_train_steps(model, tx, **kwargs)(jax.tree.map(jnp.copy, state), data, hp)
    run = dj.compile_train_steps(model, tx, mesh=mesh, **kwargs)
    put = lambda t: dj.put_replicated(t, mesh)
    sm, mm = run(put(state), put(data), put(hp))
    _close(dj.fetch(sm).params, one.params)
    _close(dj.fetch(sm).batch_stats, one.batch_stats)
    np.testing.assert_allclose(np.asarray(mm["loss"]), np.asarray(m1["loss"]), rtol=1e-5)


@pytest.mark.parametrize("vmap_seeds", [False, True])
def test_mesh_evaluation_equals_one_device(vmap_seeds):
    mesh = dj.make_mesh()
    _, model, tx, state = setup_run("gpu", **RECIPES["improved"])
    if vmap_seeds:
        state = dj.stack_trees(
            [state, dj.create_train_state(jax.random.key(3), model, tx, (28, 28, 3))]
        )
    data = synthetic_data(50)
    images, labels = unflat(data.target_images, data), np.asarray(data.source_labels)
    one = dj.compile_evaluate(model, vmap_seeds=vmap_seeds)(
        state.params, state.batch_stats, dj.make_eval_set(images, labels, 16), data.mean
    )
    eval_set = dj.make_eval_set(images, labels, 12, multiple_of=mesh.size)
    assert eval_set.images.shape[1] == 16  # the chunk rounded up to split over 8 devices
    put = lambda t: dj.put_replicated(t, mesh)
    split = sharding.put_sharded(eval_set, mesh, axis=1)
    assert split.images.addressable_shards[0].data.shape == (4, 2, 28 * 28 * 3)
    over = dj.compile_evaluate(model, vmap_seeds=vmap_seeds, mesh=mesh)
    out = over(put(state.params), put(state.batch_stats), split, put(data.mean))
    for key in ("accuracy", "loss", "domain_score"):
        np.testing.assert_allclose(np.asarray(out[key]), np.asarray(one[key]), rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(out["predictions"]).reshape(*out["predictions"].shape[:-2], -1)[..., :50],
        np.asarray(one["predictions"]).reshape(*one["predictions"].shape[:-2], -1)[..., :50],
    )


def test_pmap_form_and_mesh_end_in_the_same_state():
    config, model, tx, state = setup_run(lambda2_schedule="constant", lambda2=0.5)
    data, hp = synthetic_data(128), dj.hyperparams(config)
    batches = [dj.sample_batch(jax.random.key(s), data, 32) for s in range(4)]
    pmapped = dj.compile_train_step(model, tx, lambda2_schedule="constant", parallel=True)
    sp, hp_r = dj.replicate(state), dj.replicate(hp)
    for b in batches:
        sp, _ = pmapped(sp, dj.shard(b), hp_r)
    mesh = dj.make_mesh()
    step = dj.compile_train_step(model, tx, lambda2_schedule="constant", mesh=mesh)
    sm, hp_m = dj.put_replicated(state, mesh), dj.put_replicated(hp, mesh)
    for b in batches:
        sm, _ = step(sm, jax.device_put(b, sharding.batch_sharding(mesh)), hp_m)
    _close(dj.fetch(sm).params, dj.unreplicate(sp).params)
    assert int(dj.fetch(sm).step) == int(dj.unreplicate(sp).step) == 4


def test_mesh_steps_do_not_recompile_for_new_hyperparameters(monkeypatch):
    counted = chex.assert_max_traces(train.train_steps, n=1)
    monkeypatch.setattr(train, "train_steps", counted)
    compiled._steps_program.cache_clear()  # trace anew, through the counted function
    mesh = dj.make_mesh()
    config, model, tx, state = setup_run()
    run = dj.compile_train_steps(model, tx, num_steps=2, batch_size=8, mesh=mesh, unroll=True)
    put = lambda t: dj.put_replicated(t, mesh)
    state, data = put(state), put(synthetic_data(32))
    for i in range(3):
        cfg = config.replace(lambda2=0.3 * i, lr=0.01 * (i + 1), steps=50 + i)
        state, _ = run(state, data, put(dj.hyperparams(cfg)))
    assert int(dj.fetch(state).step) == 6


def test_put_replicated_and_fetch_round_trip_keys_and_arrays():
    mesh = dj.make_mesh()
    tree = {"x": np.arange(6.0).reshape(2, 3), "key": jax.random.key(3), "n": np.int32(4)}
    placed = dj.put_replicated(tree, mesh)
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))
    back = dj.fetch(placed)
    np.testing.assert_array_equal(np.asarray(back["x"]), tree["x"])
    np.testing.assert_array_equal(
        jax.random.key_data(back["key"]), jax.random.key_data(tree["key"])
    )
    assert int(back["n"]) == 4


def test_mesh_and_pmap_cannot_be_combined():
    _, model, tx, _ = setup_run()
    with pytest.raises(ValueError, match="either parallel=True"):
        dj.compile_train_step(model, tx, parallel=True, mesh=dj.make_mesh())


def test_a_batch_that_does_not_split_over_the_mesh_is_refused():
    _, model, tx, _ = setup_run()
    with pytest.raises(ValueError, match="does not split over 8 devices"):
        dj.compile_train_steps(model, tx, num_steps=1, batch_size=12, mesh=dj.make_mesh())


def test_whole_models_per_device_train_as_on_one_device_with_no_collective():
    # 8 stacked models (candidates with their own lambda2) on 8 devices: each device
    # trains one whole model on its whole batch; the result is one device's, and the
    # program moves nothing between devices.
    mesh = dj.make_mesh()
    config, model, tx, _ = setup_run("gpu", steps=20, **RECIPES["improved"])
    states = [
        dj.create_train_state(jax.random.key(s % 2), model, tx, (28, 28, 3)) for s in range(8)
    ]
    hp = train.stack_trees([dj.hyperparams(config.replace(lambda2=0.1 * s)) for s in range(8)])
    data = synthetic_data(64)
    kwargs = dict(num_steps=2, batch_size=12, vmap_seeds=True)  # 12: does not split over 8
    one, m1 = dj.compile_train_steps(model, tx, **kwargs)(dj.stack_trees(states), data, hp)
    run = dj.compile_train_steps(model, tx, mesh=mesh, split_models="per_model", **kwargs)
    split = lambda t: sharding.put_sharded(t, mesh, axis=0)
    args = (split(dj.stack_trees(states)), dj.put_replicated(data, mesh), split(hp))
    text = run.lower(*args).compile().as_text()
    assert not re.search(r"\b(all-reduce|all-gather|collective-permute|all-to-all)\b", text)
    sm, mm = run(*args)
    assert sm.params["classifier"]["_MLP_0"]["Dense_0"]["kernel"].sharding.spec[0] == "batch"
    _close(dj.fetch(sm).params, one.params)
    np.testing.assert_allclose(np.asarray(mm["loss"]), np.asarray(m1["loss"]), rtol=1e-5)


def test_per_device_batchnorm_statistics_leave_one_all_reduce():
    # --no-bn-sync (DDP without SyncBN): each device normalises its own share, and the
    # step's only collective is the gradient all-reduce.
    from benchmarks.xla_cost import collectives

    mesh = dj.make_mesh()
    config, model, tx, state = setup_run("gpu", bn_sync=False, **RECIPES["improved"])
    data, hp = synthetic_data(64), dj.hyperparams(config)
    run = dj.compile_train_steps(model, tx, num_steps=1, batch_size=64, mesh=mesh, unroll=True)
    put = lambda t: dj.put_replicated(t, mesh)
    lowered = run.lower(put(state), put(data), put(hp))
    counts = collectives(lowered.compile(HLO_ONLY).as_text())  # read, never run
    assert counts["all-reduce"]["count"] == 1, counts  # 5 with synchronised BatchNorm
