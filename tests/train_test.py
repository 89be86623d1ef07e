"""Train step: learning, the reversed gradient, pmap == one device, scan == single steps,
vmapped seeds == separate runs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import build, train
from dann_jax.models import DANN
from tests.helpers import RECIPES, setup_run, synthetic_data, synthetic_images, unflat


def _batch(data, batch_size, seed):
    return dj.sample_batch(jax.random.key(seed), data, batch_size)


def test_label_loss_falls():
    config, model, tx, state = setup_run(steps=60, lr=0.02)
    data = synthetic_data()
    run = dj.compile_train_steps(model, tx, num_steps=5, batch_size=32)
    hp = dj.hyperparams(config)
    losses = []
    for _ in range(12):
        state, metrics = run(state, data, hp)
        losses.extend(np.asarray(metrics["label_loss"]).tolist())
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.5 * first, (first, last)
    assert int(state.step) == 60
    np.testing.assert_allclose(
        np.asarray(metrics["learning_rate"][-1]), 0.02 / (1 + 10 * 59 / 60) ** 0.75, rtol=1e-5
    )


def test_extractor_receives_reversed_domain_gradient():
    lam, lambda3, lr = 0.6, 0.8, 0.01
    data = synthetic_data(64)
    batch = _batch(data, 16, seed=1)

    def one_step(lambda2):
        config, model, tx, state = setup_run(
            lambda2=lambda2, lambda3=lambda3, lr=lr, lambda2_schedule="constant", momentum=0.9
        )
        step = dj.compile_train_step(model, tx, lambda2_schedule="constant")
        initial = jax.tree.map(jnp.copy, state)
        new, metrics = step(state, batch, dj.hyperparams(config))
        assert float(metrics["lambda2"]) == pytest.approx(lambda2)
        return model, initial, new

    model, state0, with_zero = one_step(0.0)  # state0 is a fresh copy (the step donates)
    _, _, with_lam = one_step(lam)

    # The plain (un-reversed) gradient of the domain loss w.r.t. the extractor, computed
    # without the GRL through the inference-mode domain head.
    def domain_loss(params):
        v = {"params": params}
        ds = model.apply(v, batch["source_images"], method=DANN.predict_domain)
        dt = model.apply(v, batch["target_images"], method=DANN.predict_domain)
        return dj.domain_adversarial_loss(ds, dt)

    g_domain = jax.grad(domain_loss)(state0.params)["extractor"]
    # First SGD step (momentum buffer empty): delta = -lr * grad, and the extractor's
    # grad is grad_label - lam * lambda3 * grad_domain, so the difference of the two
    # updates is +lr * lam * lambda3 * grad_domain.
    diff = jax.tree.map(
        lambda a, b: a - b, with_lam.params["extractor"], with_zero.params["extractor"]
    )
    expected = jax.tree.map(lambda g: lr * lam * lambda3 * g, g_domain)
    chex.assert_trees_all_close(diff, expected, atol=2e-7, rtol=1e-3)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(expected)) > 1e-5
    # The discriminator's gradient does not depend on lambda (it learns at full strength).
    chex.assert_trees_all_equal(with_lam.params["discriminator"], with_zero.params["discriminator"])
    chex.assert_trees_all_equal(with_lam.params["classifier"], with_zero.params["classifier"])


def test_no_recompile_across_hyperparameter_values():
    config, model, tx, state = setup_run()
    batch = _batch(synthetic_data(64), 8, seed=2)

    @chex.assert_max_traces(n=1)
    def traced_step(state, batch, hparams):
        return dj.train_step(state, batch, hparams, model=model, tx=tx)

    step = jax.jit(traced_step, donate_argnums=(0,))
    for i in range(5):
        cfg = config.replace(lambda2=0.2 * i, lambda3=1.0 + i, lr=0.01 * (i + 1), steps=100 + i)
        state, _metrics = step(state, batch, dj.hyperparams(cfg))
    assert int(state.step) == 5


def test_equal_settings_reuse_one_compiled_program():
    config, model, tx, _ = setup_run()
    other = config.replace(lambda2=0.3, lambda3=2.0, seed=5, steps=7)  # traced values only
    assert dj.make_optimizer(other) is tx
    assert dj.make_optimizer(config.replace(lr=0.5)) is not tx
    assert dj.compile_evaluate(dj.make_model(other)) is dj.compile_evaluate(model)
    assert dj.compile_predict(dj.make_model(other)) is dj.compile_predict(model)
    # On CPU every chunk length runs the same one-step program.
    three = dj.compile_train_steps(model, tx, num_steps=3, batch_size=8)
    five = dj.compile_train_steps(model, tx, num_steps=5, batch_size=8)
    assert three.program is five.program and (three.dispatches, five.dispatches) == (3, 5)
    before = build._init_state._cache_size()
    for seed in (11, 12, 13):
        dj.create_train_state(jax.random.key(seed), model, tx, (28, 28, 3))
    assert build._init_state._cache_size() - before <= 1


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
@pytest.mark.parametrize("recipe", ["paper", "improved"])
def test_pmap_on_8_devices_equals_one_device(recipe, backend):
    # The improved recipe has per-domain BatchNorm (synchronised) and dropout (masks drawn
    # per example of the global batch), so these too must agree with one device.
    assert jax.local_device_count() == 8
    config, model, tx, state = setup_run(
        backend, lambda2_schedule="constant", lambda2=0.7, **RECIPES[recipe]
    )
    data = synthetic_data(128)
    batches = [_batch(data, 64, seed=s) for s in range(3)]
    hp = dj.hyperparams(config)

    single = dj.compile_train_step(model, tx, lambda2_schedule="constant")
    s1 = jax.tree.map(jnp.copy, state)
    for b in batches:
        s1, m1 = single(s1, b, hp)

    parallel = dj.compile_train_step(model, tx, lambda2_schedule="constant", parallel=True)
    sp, hp_r = dj.replicate(state), dj.replicate(hp)
    for b in batches:
        sp, mp = parallel(sp, dj.shard(b), hp_r)
    sp = dj.unreplicate(sp)

    chex.assert_trees_all_close(sp.params, s1.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(sp.batch_stats, s1.batch_stats, atol=1e-5, rtol=1e-5)
    assert int(sp.step) == 3
    for k in ("loss", "label_loss", "domain_loss", "domain_accuracy"):
        np.testing.assert_allclose(np.asarray(mp[k][0]), np.asarray(m1[k]), rtol=1e-5, atol=1e-6)


def test_scanned_steps_equal_single_steps():
    config, model, tx, state = setup_run(steps=20)
    data = synthetic_data(128)
    hp = dj.hyperparams(config)
    k = 4

    single = dj.compile_train_step(model, tx)
    s1 = jax.tree.map(jnp.copy, state)
    losses = []
    for _ in range(k):
        data_key, _ = train._step_keys(s1.rng, s1.step)
        s1, m = single(s1, dj.sample_batch(data_key, data, 16), hp)
        losses.append(float(m["loss"]))

    scanned = dj.compile_train_steps(model, tx, num_steps=k, batch_size=16)
    s2, ms = scanned(state, data, hp)
    assert ms["loss"].shape == (k,)
    chex.assert_trees_all_close(s2.params, s1.params, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ms["loss"]), losses, rtol=1e-6)


def _seed_states(model, tx, seeds):
    return [dj.create_train_state(jax.random.key(s), model, tx, (28, 28, 3)) for s in seeds]


@pytest.mark.parametrize(("batchnorm", "unroll"), [(True, None), (False, 1)])
def test_vmapped_seeds_equal_separate_runs(batchnorm, unroll):
    config, model, tx, _ = setup_run(steps=20, batchnorm=batchnorm, bn_stats="per_domain")
    data, hp, k, seeds = synthetic_data(64), dj.hyperparams(config), 2, (0, 5)
    states = _seed_states(model, tx, seeds)
    stacked = dj.stack_trees(states)  # new arrays: the runs below may donate `states`
    # unroll=None: K dispatches of one step on CPU; unroll=1: a rolled lax.scan.
    kwargs = dict(num_steps=k, batch_size=8, unroll=unroll)
    run_one = dj.compile_train_steps(model, tx, **kwargs)
    alone = [run_one(s, data, hp) for s in states]

    vmapped = dj.compile_train_steps(model, tx, vmap_seeds=True, **kwargs)
    together, metrics = vmapped(stacked, data, hp)
    assert metrics["loss"].shape == (k, len(seeds))  # the step axis first
    for i, (state_i, metrics_i) in enumerate(alone):
        mine = dj.tree_index(together, i)
        chex.assert_trees_all_close(mine.params, state_i.params, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(mine.batch_stats, state_i.batch_stats, atol=1e-5, rtol=1e-5)
        assert int(mine.step) == k
        np.testing.assert_array_equal(
            jax.random.key_data(mine.rng), jax.random.key_data(state_i.rng)
        )
        np.testing.assert_allclose(metrics["loss"][:, i], metrics_i["loss"], rtol=1e-5)
    # The seeds really differ (distinct initialisations and batches).
    assert not np.allclose(metrics["loss"][:, 0], metrics["loss"][:, 1])

    eval_set = dj.make_eval_set(unflat(data.target_images[:40], data), None, 20)
    ev = dj.compile_evaluate(model, vmap_seeds=True)
    together_eval = ev(together.params, together.batch_stats, eval_set, data.mean)
    ev_one = dj.compile_evaluate(model)
    for i, (state_i, _) in enumerate(alone):
        one = ev_one(state_i.params, state_i.batch_stats, eval_set, data.mean)
        np.testing.assert_allclose(together_eval["loss"][i], one["loss"], rtol=1e-5)


def test_diagnostics_off_changes_only_the_metrics():
    config, model, tx, state = setup_run()
    batch, hp = _batch(synthetic_data(64), 16, seed=3), dj.hyperparams(config)
    full, m_full = dj.compile_train_step(model, tx)(jax.tree.map(jnp.copy, state), batch, hp)
    lean, m_lean = dj.compile_train_step(model, tx, diagnostics=False)(state, batch, hp)
    chex.assert_trees_all_equal(lean.params, full.params)
    chex.assert_trees_all_equal(lean.opt_state, full.opt_state)
    lean_keys = {"loss", "label_loss", "domain_loss", "mcc_loss", "entropy_loss", "lambda2"}
    assert set(m_lean) == lean_keys | {"learning_rate"}
    assert set(m_full) == set(m_lean) | {"domain_accuracy", "source_accuracy", "grad_norm"}
    for key in m_lean:
        np.testing.assert_array_equal(m_lean[key], m_full[key])


def test_bfloat16_precision_trains():
    losses = {}
    for precision in ("bf16", "fp32"):
        config, model, tx, state = setup_run(precision=precision, steps=10)
        x = jnp.asarray(synthetic_images(4)[0], jnp.float32) / 255
        out = model.apply({"params": state.params}, x, x, 0.5)
        want = jnp.bfloat16 if precision == "bf16" else jnp.float32
        assert out["class_logits"].dtype == want  # the computation, not only the inputs
        run = dj.compile_train_steps(model, tx, num_steps=3, batch_size=8)
        state, metrics = run(state, synthetic_data(64), dj.hyperparams(config))
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
        losses[precision] = np.asarray(metrics["loss"], np.float32)
    assert np.all(np.isfinite(losses["bf16"]))
    # Same run in both precisions: close (bf16 keeps ~3 significant digits), not equal.
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=3e-2)
    assert not np.array_equal(losses["bf16"], losses["fp32"])


def test_non_finite_loss_fails_fast_with_step_and_term():
    config, model, tx, state = setup_run()
    batch = _batch(synthetic_data(64), 8, seed=3)
    hp = dj.hyperparams(config)
    hp["lambda3"] = jnp.float32(jnp.inf)  # what a diverging run looks like
    step = dj.compile_train_step(model, tx)
    state, metrics = step(state, batch, hp)
    with pytest.raises(dj.NonFiniteLossError, match=r"non-finite loss .* at step 8"):
        dj.check_finite(jax.device_get(metrics), first_step=7)
    dj.check_finite({"loss": np.ones(3), "label_loss": np.ones(3), "domain_loss": np.ones(3)}, 0)
    with pytest.raises(dj.NonFiniteLossError, match=r"non-finite domain_loss .* at step 12"):
        dj.check_finite(
            {
                "loss": np.ones(3),
                "label_loss": np.ones(3),
                "domain_loss": np.array([1.0, np.inf, np.nan]),
            },
            first_step=10,
        )


def test_evaluate_matches_direct_computation():
    _config, model, _tx, state = setup_run()
    data = synthetic_data(50)
    images, labels = unflat(data.target_images, data), np.asarray(data.source_labels)
    eval_set = jax.device_put(dj.make_eval_set(images, labels, chunk=16))
    assert eval_set.images.shape == (4, 16, 28 * 28 * 3)  # flat rows, padded to 4 chunks
    out = dj.compile_evaluate(model)(state.params, state.batch_stats, eval_set, data.mean)
    logits = model.apply(
        {"params": state.params}, dj.normalize(jnp.asarray(images), data.mean), method=DANN.predict
    )
    expected = float(dj.accuracy(logits, labels))
    assert float(out["accuracy"]) == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(
        np.asarray(out["predictions"]).reshape(-1)[:50], np.asarray(jnp.argmax(logits, -1))
    )
