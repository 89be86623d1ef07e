"""The adaptation options of the train step: CDAN's discriminator input, the target terms
(MCC, entropy) and CDAN+E weights in the objective, per-part learning rates, candidates
with their own hparams stacked in one program, and the new on-device augmentations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import augment, losses, train
from dann_jax.models import DANN
from tests.helpers import setup_run, synthetic_data


def _batch(seed=1, n=16):
    return dj.sample_batch(jax.random.key(seed), synthetic_data(64), n)


def test_cdan_discriminator_sees_the_multilinear_map():
    _, model, _, state = setup_run(adversary="cdan")
    d_in = state.params["discriminator"]["_MLP_0"]["Dense_0"]["kernel"].shape[0]
    assert d_in == 768 * 10  # D features x K classes (Long et al., eq. 4)
    batch = _batch()
    v = {"params": state.params}
    out = model.apply(v, batch["source_images"], batch["target_images"], 1.0, train=False)
    # Recompute by hand: features (x) softmax(logits), flattened, through the head.
    x = batch["source_images"]
    f = np.asarray(model.apply(v, x, method=DANN.features), np.float64)
    g = np.asarray(jax.nn.softmax(model.apply(v, x, method=DANN.predict)), np.float64)
    h = (f[:, :, None] * g[:, None, :]).reshape(len(f), -1)
    disc = model.apply(v, jnp.asarray(h, jnp.float32), method=lambda m, h: m.discriminator(h))
    np.testing.assert_allclose(out["domain_logits_source"], disc, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(
        model.apply(v, x, method=DANN.predict_domain), disc, rtol=2e-5, atol=2e-5
    )


def test_cdan_domain_loss_does_not_train_the_label_head():
    # g = softmax(G_y(f)) enters the discriminator without gradient: the domain loss
    # moves the extractor and the discriminator, never the label classifier.
    _, model, _, state = setup_run(adversary="cdan")
    batch = _batch()

    def domain_loss(params):
        out = model.apply({"params": params}, batch["source_images"], batch["target_images"], 1.0)
        return losses.domain_adversarial_loss(
            out["domain_logits_source"], out["domain_logits_target"]
        )

    grads = jax.jit(jax.grad(domain_loss))(state.params)  # op by op: seconds
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["classifier"]))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["extractor"]))


def _step(state, model, tx, hp, batch):
    return dj.compile_train_step(model, tx)(jax.tree.map(jnp.copy, state), batch, hp)


def test_the_objective_adds_each_target_term_with_its_weight():
    config, model, tx, state = setup_run(
        mcc=0.7, entropy_weight=0.3, cdan_entropy=1.0, lambda3=0.5, label_smoothing=0.1
    )
    batch = _batch()
    hp = dj.hyperparams(config)
    _, metrics = _step(state, model, tx, hp, batch)
    # The same forward pass by hand (training mode, the step's dropout key: no dropout here).
    out = model.apply({"params": state.params}, batch["source_images"], batch["target_images"], 0.0)
    zs, zt = np.asarray(out["class_logits"], np.float64), np.asarray(out["class_logits_target"])
    onehot = np.eye(10)[np.asarray(batch["source_labels"])] * 0.9 + 0.01
    logp = zs - zs.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -(onehot * logp).sum(1).mean()
    ws = np.asarray(losses.entropy_weights(out["class_logits"], 1.0), np.float64)
    wt = np.asarray(losses.entropy_weights(out["class_logits_target"], 1.0), np.float64)
    ds, dt = (
        np.asarray(out[k], np.float64) for k in ("domain_logits_source", "domain_logits_target")
    )
    domain = 0.5 * ((ws * np.log1p(np.exp(ds))).sum() / ws.sum()
                    + (wt * np.log1p(np.exp(-dt))).sum() / wt.sum())  # fmt: skip
    mcc = float(losses.minimum_class_confusion(jnp.asarray(zt), 2.5))
    ent = float(losses.entropy(jnp.asarray(zt)))
    np.testing.assert_allclose(float(metrics["label_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["domain_loss"]), domain, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mcc_loss"]), mcc, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["entropy_loss"]), ent, rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["loss"]), ce + 0.5 * domain + 0.7 * mcc + 0.3 * ent, rtol=1e-5
    )


def test_target_term_weights_are_traced_and_zero_is_plain_dann():
    config, model, tx, state = setup_run()
    batch = _batch()
    hp = dj.hyperparams(config)
    old = {k: hp[k] for k in ("lambda2", "lambda3", "gamma", "label_smoothing", "lr",
                              "lr_alpha", "lr_beta", "total_steps")}  # fmt: skip
    step = chex.assert_max_traces(n=1)(
        lambda s, b, h: train.train_step(s, b, h, model=model, tx=tx)
    )
    step = jax.jit(step)
    plain, _ = step(jax.tree.map(jnp.copy, state), batch, hp)
    # An hparams dict from before the target terms existed: the same update (another
    # program, so XLA may fuse the sums in another order: equal to float32 rounding).
    before, _ = jax.jit(lambda s, b, h: train.train_step(s, b, h, model=model, tx=tx))(
        jax.tree.map(jnp.copy, state), batch, old
    )
    chex.assert_trees_all_close(plain.params, before.params, rtol=1e-6, atol=1e-8)
    # Another weight is another value, not another program (the step traced once).
    with_mcc, _ = step(jax.tree.map(jnp.copy, state), batch, {**hp, "mcc": jnp.float32(1.0)})
    delta = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), plain.params, with_mcc.params)
    assert delta["discriminator"]["_MLP_0"]["Dense_0"]["kernel"] == 0  # MCC: not the head D
    assert delta["extractor"]["Conv_0"]["kernel"] > 0


def test_learning_rate_multiples_scale_each_part():
    config, model, tx, state = setup_run(momentum=0.9)
    batch = _batch()
    hp = dj.hyperparams(config)
    base, _ = _step(state, model, tx, hp, batch)
    scaled, _ = _step(
        state, model, tx,
        {**hp, "backbone_lr_mult": jnp.float32(0.1), "discriminator_lr_mult": jnp.float32(0.0)},
        batch,
    )  # fmt: skip
    moved = lambda new: jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, new, state.params)
    d_base, d_scaled = moved(base.params), moved(scaled.params)
    # First SGD step: the update is -lr * g, linear in the rate.
    for a, b in zip(
        jax.tree.leaves(d_base["extractor"]), jax.tree.leaves(d_scaled["extractor"]), strict=True
    ):
        # (deltas of float32 parameters: exact to a rounding of the parameter, ~1e-8)
        np.testing.assert_allclose(b, 0.1 * a, rtol=1e-4, atol=4e-8)
    assert all(np.all(b == 0) for b in jax.tree.leaves(d_scaled["discriminator"]))
    chex.assert_trees_all_equal(d_base["classifier"], d_scaled["classifier"])


def _candidates(config, lambdas):
    """Each candidate's hparams (its lambda2), and the stacked dict."""
    hps = [dj.hyperparams(config.replace(lambda2=lam)) for lam in lambdas]
    return hps, train.stack_trees(hps)


@pytest.mark.parametrize("stack", ["vmap", "loop"])
def test_candidates_with_their_own_hparams_train_as_alone(stack):
    config, model, tx, _ = setup_run(steps=20, mcc=0.5)
    data = synthetic_data(64)
    lambdas = (0.0, 0.3, 1.0)
    hps, stacked_hp = _candidates(config, lambdas)
    states = [dj.create_train_state(jax.random.key(7), model, tx, (28, 28, 3)) for _ in lambdas]
    run = dj.compile_train_steps(
        model, tx, num_steps=3, batch_size=16, vmap_seeds=True, stack=stack
    )
    together, metrics = run(dj.stack_trees(states), data, stacked_hp)
    assert metrics["lambda2"].shape == (3, 3)
    single = dj.compile_train_steps(model, tx, num_steps=3, batch_size=16)
    for i, (st, hp) in enumerate(zip(states, hps, strict=True)):
        alone, m = single(st, data, hp)
        chex.assert_trees_all_close(
            train.tree_index(together.params, i), alone.params, rtol=2e-5, atol=2e-6
        )
        np.testing.assert_allclose(metrics["lambda2"][:, i], m["lambda2"], rtol=1e-6)


# ---------------------------------------------------------------- augmentations


def _dihedral(image):
    """The 8 orientations of a square image."""
    turns = [np.rot90(image, k, axes=(0, 1)) for k in range(4)]
    return turns + [t[::-1] for t in turns]


def test_rotate_gives_each_orientation_exactly():
    rng = np.random.default_rng(0)
    image = rng.random((6, 6, 3)).astype(np.float32)
    images = np.repeat(image[None], 64, axis=0)
    out = np.asarray(augment.rotate(jax.random.key(3), jnp.asarray(images), jnp.arange(64)))
    seen = set()
    for o in out:
        matches = [k for k, d in enumerate(_dihedral(image)) if np.array_equal(o, d)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))  # 64 draws: every orientation turned up
    with pytest.raises(ValueError, match="square"):
        augment.rotate(jax.random.key(0), jnp.zeros((1, 4, 6, 3)), jnp.arange(1))


def test_color_jitter_keeps_range_and_a_flat_image_flat():
    # A flat colour: contrast and saturation keep each pixel as it is relative to the
    # image mean, so the result is flat too: brightness (x 0.6-1.4) or its grey.
    images = jnp.full((32, 4, 4, 3), jnp.asarray([0.5, 0.25, 0.125], jnp.float32))
    out = np.asarray(augment.color(jax.random.key(1), images, jnp.arange(32)))
    assert out.min() >= 0 and out.max() <= 1
    assert np.allclose(out, out[:, :1, :1], atol=1e-6)  # every image still flat
    grey = np.isclose(out[:, 0, 0, 0], out[:, 0, 0, 2], atol=1e-6)
    assert 0 < grey.sum() < 32  # some greyscale (p = 0.2), not all
    assert len(np.unique(out[~grey, 0, 0, 0].round(5))) > 1  # random factors per example


def test_ops_are_named_and_crop_flip_draws_as_before():
    assert augment.ops_of(True) == ("crop_flip",)
    assert augment.ops_of(("color", "crop_flip")) == ("crop_flip", "color")
    with pytest.raises(ValueError, match="unknown augmentations"):
        augment.ops_of(("mixup",))
    x = jnp.asarray(np.random.default_rng(0).random((4, 8, 8, 3)), jnp.float32)
    key, rows = jax.random.key(5), jnp.arange(4)
    np.testing.assert_array_equal(
        augment.augment(key, x, rows, ("crop_flip",)), augment.crop_and_flip(key, x, rows)
    )
    assert dj.Config(rotate=True, color_jitter=True).augment_ops == ("rotate", "color")
