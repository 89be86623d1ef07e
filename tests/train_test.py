"""Train step: learning, the reversed gradient, pmap == one device, scan == single steps,
vmapped seeds == separate runs; K scanned steps against a hand-written float64 DANN update
(ramp, smoothing, lambda3, annealing, momentum, per-domain BatchNorm averages) and each
domain evaluated with its own averages."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import build, train
from dann_jax.models import DANN
from tests.helpers import (
    RECIPES,
    float64,
    reference_cross_entropy,
    reference_dann_step,
    reference_logits,
    setup_run,
    synthetic_data,
    synthetic_images,
    unflat,
)


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

    g_domain = jax.jit(jax.grad(domain_loss))(state0.params)["extractor"]  # op by op: 4 s
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
    before = build._init_state_cpu._cache_size()
    for seed in (11, 12, 13):
        dj.create_train_state(jax.random.key(seed), model, tx, (28, 28, 3))
    assert build._init_state_cpu._cache_size() - before <= 1


# The mesh form is checked on all four (sharding_test); the pmap form on the CPU model
# of the paper recipe and the accelerator model of the improved one (synchronised BN).
@pytest.mark.parametrize(("recipe", "backend"), [("paper", "cpu"), ("improved", "gpu")])
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


# Every number of the objective away from its default, so that a step which ignores one
# (or takes another in its place) cannot agree with the reference by accident.
HAND_CHECKED = dict(
    steps=50, batchnorm=True, bn_stats="per_domain", lambda2=0.8, lambda3=0.6, gamma=7.0,
    label_smoothing=0.2, lr=0.03, lr_alpha=3.0, lr_beta=0.6, momentum=0.8,
)  # fmt: skip
HAND_FIELDS = ("steps", "lambda2", "lambda3", "gamma", "label_smoothing", "lr", "lr_alpha",
               "lr_beta", "momentum")  # fmt: skip


def _bn_stats(batch_stats):
    """[(mean, var)] of the extractor's two BatchNorm layers, each (2, C): source, target."""
    layers = batch_stats["extractor"]
    return [(layers[f"BatchNorm_{i}"]["mean"], layers[f"BatchNorm_{i}"]["var"]) for i in (0, 1)]


@pytest.fixture(scope="module")
def hand_checked():
    """Two scanned steps from step 20 of 50 (p = 0.4, 0.42) of the improved recipe's model
    (no dropout), and the same two steps computed by `reference_dann_step` in float64."""
    config = dj.Config(**HAND_CHECKED)
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    start = 20
    state = dj.create_train_state(jax.random.key(4), model, tx, (28, 28, 3))
    state = state.replace(step=jnp.int32(start))
    before = jax.tree.map(np.asarray, (state.params, state.batch_stats))
    data, k, batch_size = synthetic_data(64), 2, 8
    # Step s draws sample_batch(data key of fold_in(rng, s)) (`train_steps`' contract).
    keys = [jax.random.split(jax.random.fold_in(state.rng, s))[0] for s in range(start, start + k)]
    batches = [dj.sample_batch(key, data, batch_size) for key in keys]
    run = dj.compile_train_steps(model, tx, num_steps=k, batch_size=batch_size, unroll=1)
    new, metrics = run(state, data, dj.hyperparams(config))  # a rolled lax.scan
    h = {f: getattr(config, f) for f in HAND_FIELDS}
    with jax.enable_x64(True):
        params, stats = float64(before[0]), float64(_bn_stats(before[1]))
        trace = jax.tree.map(jnp.zeros_like, params)  # SGD's momentum starts empty
        step = jax.jit(reference_dann_step)
        ref_metrics = []
        for s, b in enumerate(batches, start):
            xs, xt = float64((b["source_images"], b["target_images"]))
            params, stats, trace, m = step(params, stats, trace, s, (xs, b["source_labels"], xt), h)
            ref_metrics.append(jax.tree.map(float, m))
        ref = jax.tree.map(np.asarray, (params, stats))
    return {
        "config": config, "model": model, "data": data, "before": before, "k": k,
        "state": new, "metrics": jax.tree.map(np.asarray, metrics), "ref_params": ref[0],
        "ref_stats": ref[1], "ref_metrics": ref_metrics,
    }  # fmt: skip


def test_scanned_steps_are_the_papers_update_computed_by_hand(hand_checked):
    # The README's objective: CE(label-smoothed, source) + lambda3 * domain loss, the
    # extractor's domain gradient times -lambda2 * ramp(p) with gamma, SGD with momentum
    # at lr / (1 + alpha p)^beta, p = step / steps from the state's step; each domain's
    # running averages 0.9 ra + 0.1 mu_d (docs/design.md). The reference is float64.
    r = hand_checked
    new, before = r["state"], r["before"]
    assert int(new.step) == 20 + r["k"]
    flat_got = jax.tree.leaves_with_path(new.params)
    flat_want = jax.tree.leaves(r["ref_params"])
    flat_before = jax.tree.leaves(before[0])
    for (path, got), want, old in zip(flat_got, flat_want, flat_before, strict=True):
        # Compare the updates (float32 parameters minus their start: exact to ~3e-8), to
        # 3e-4 of each leaf's largest (float32 rounding reaches 3e-5 of it, through the
        # BatchNorm scales; p of one step later moves lambda_p by 1.6%).
        delta, want_delta = np.asarray(got) - old, want - old
        scale = np.abs(want_delta).max()
        np.testing.assert_allclose(delta, want_delta, rtol=0, atol=3e-4 * scale + 1e-8,
                                   err_msg=jax.tree_util.keystr(path))  # fmt: skip
    for (mean, var), (want_mean, want_var) in zip(_bn_stats(new.batch_stats), r["ref_stats"],
                                                  strict=True):  # fmt: skip
        np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(var, want_var, rtol=1e-4, atol=1e-6)
    for i, want in enumerate(r["ref_metrics"]):
        for key in ("loss", "label_loss", "domain_loss"):
            np.testing.assert_allclose(r["metrics"][key][i], want[key], rtol=1e-5, err_msg=key)
        for key in ("lambda2", "learning_rate"):
            np.testing.assert_allclose(r["metrics"][key][i], want[key], rtol=1e-6, err_msg=key)


def test_each_domain_is_evaluated_with_its_own_running_averages(hand_checked):
    # docs/design.md: at test time target images are normalised with the target's running
    # averages and source images with the source's (--bn-eval domain), or with the mean of
    # both (--bn-eval mean).
    r = hand_checked
    config, model, data, state = r["config"], r["model"], r["data"], r["state"]
    xs, ys, xt, yt = synthetic_images(24, seed=3)
    stats = _bn_stats(state.batch_stats)
    with jax.enable_x64(True):
        params = float64(state.params)
        rows = {d: [float64((m[d], v[d])) for m, v in stats] for d in (0, 1)}
        rows[None] = [float64((m.mean(0), v.mean(0))) for m, v in stats]  # f32 mean, then f64
        cases = [
            (config, "target", xt, yt, 1), (config, "source", xs, ys, 0),
            (config.replace(bn_eval="mean"), "target", xt, yt, None),
        ]  # fmt: skip
        expected = []
        for _, _, images, labels, row in cases:
            x = jnp.asarray(images / 255.0 - 0.5)  # the pools' mean, 0.5 per channel
            logits, domain = reference_logits(params, x, rows[row])
            other = reference_logits(params, x, rows[1 - row] if row is not None else rows[0])
            # The test can fail: the other domain's averages give other logits.
            assert np.abs(np.asarray(other[0] - logits)).max() > 1e-2
            expected.append((
                np.asarray(logits),
                float(reference_cross_entropy(logits, labels).mean()),
                float(jax.nn.sigmoid(domain).mean()),
            ))  # fmt: skip
    for (cfg, role, images, labels, _), (logits, loss, score) in zip(cases, expected, strict=True):
        domain = cfg.bn_domain(role)
        eval_set = dj.make_eval_set(images, labels, chunk=8)
        out = dj.compile_evaluate(model, domain=domain)(
            state.params, state.batch_stats, eval_set, data.mean
        )
        assert float(out["loss"]) == pytest.approx(loss, rel=1e-5), (role, cfg.bn_eval)
        assert float(out["domain_score"]) == pytest.approx(score, rel=1e-5), (role, cfg.bn_eval)
        predictions = np.asarray(out["predictions"]).reshape(-1)[:24]
        assert float(out["accuracy"]) == pytest.approx(np.mean(predictions == labels), abs=1e-6)
        sure = np.sort(logits, 1)[:, -1] - np.sort(logits, 1)[:, -2] > 1e-4  # no near-ties
        np.testing.assert_array_equal(predictions[sure], logits.argmax(1)[sure])
