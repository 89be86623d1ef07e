"""``--analyze``: what `dann_jax.analysis` measures, computed on a finished digits run.

* Proxy A-distance (DANN paper Sec. 5.1.5) on raw pixels, on the features of a
  source-only model and on the features of the DANN model (the source-only model is
  trained alongside, same seed and steps, in ``WORKDIR/analysis_source_only``).
* t-SNE (or PCA) of source and target test features before (source-only) and after
  (DANN) adaptation, side by side: ``embeddings.png`` (paper Fig. 5).
* Deep Embedded Validation (You et al., ICML 2019) at every evaluation, a label-free
  model-selection score, and how its choice agrees with the report-only target
  accuracy (``selection`` in ``analysis.json``). The source test split serves as DEV's
  labelled source validation set; target *training* images (no labels) are its target.
* The confusion matrix on the target test set: ``confusion_target.png``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dann_jax import analysis, train
from dann_jax.models import DANN

__all__ = ["analyze", "make_dev_hook"]

_MAX_DEV = 1000  # examples per domain for DEV at each evaluation (sklearn cost)
_MAX_PAD = 2000  # examples per domain for the proxy A-distance


@functools.partial(jax.jit, static_argnames=("model",))
def _features_and_losses(params, batch_stats, eval_set, mean, *, model: DANN):
    """Features, per-example CE losses and predictions over a `make_eval_set` set."""
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}

    def one_chunk(chunk):
        x = train.normalize(chunk["images"], mean)
        feats = model.apply(variables, x, method=DANN.features)
        logits = model.apply(variables, x, method=DANN.predict).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, chunk["labels"])
        return feats.astype(jnp.float32), loss

    feats, losses = jax.lax.map(one_chunk, eval_set)
    return feats.reshape(-1, feats.shape[-1]), losses.reshape(-1)


def _subset(images: np.ndarray, labels: np.ndarray, n: int, seed: int):
    """A seeded random subset of at most n examples."""
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[idx], labels[idx]


def _features(model, state, images, labels, mean):
    """(features, per-example losses) of host images under `state` (host numpy)."""
    es = train.make_eval_set(images, labels, chunk=250)
    feats, losses = _features_and_losses(
        state.params, state.batch_stats, jax.device_put(es), jnp.asarray(mean), model=model
    )
    n = len(images)
    return np.asarray(feats)[:n], np.asarray(losses)[:n]


def make_dev_hook(config, data, model, seed: int) -> Callable[[Any, dict], None]:
    """A per-evaluation hook that adds DEV's ``dev_risk`` (and IWCV) to the record."""
    src = _subset(data.source_test, data.source_test_labels, _MAX_DEV, seed)
    tgt_images = data.target_train[
        np.random.default_rng(seed + 1).permutation(len(data.target_train))[:_MAX_DEV]
    ]
    tgt = (tgt_images, np.zeros(len(tgt_images), np.int32))  # labels unused

    def hook(state, record):
        fs, ls = _features(model, state, *src, data.mean)
        ft, _ = _features(model, state, *tgt, data.mean)
        dev = analysis.deep_embedded_validation(fs, ls, ft, seed=seed)
        record["dev_risk"] = dev["dev_risk"]
        record["iwcv_risk"] = dev["iwcv_risk"]

    return hook


def analyze(config, data, dann_result: dict, workdir: Path, log, run_seed) -> dict[str, Any]:
    """Write ``analysis.json``, ``embeddings.png`` and ``confusion_target.png``.

    Args:
      config: the run's config.
      data: the run's `dann_jax.experiment.Data`.
      dann_result: `run_seed`'s result for the first seed (state, model, curves).
      workdir: the run's workdir.
      log: progress output.
      run_seed: `dann_jax.experiment.run_seed` (to train the source-only reference).

    Returns:
      The analysis dict (also in ``analysis.json``).
    """
    seed = dann_result["seed"]
    model, state = dann_result["model"], dann_result["state"]
    if config.mode == "source_only":
        reference = dann_result
    else:
        log("analysis: training the source-only reference model (same seed and steps)")
        ref_config = dataclasses.replace(config, mode="source_only", analyze=False, seeds=1)
        reference = run_seed(ref_config, data, seed, workdir / "analysis_source_only", log)

    n = _MAX_PAD
    xs, ys = _subset(data.source_test, data.source_test_labels, n, seed)
    xt, yt = _subset(data.target_test, data.target_test_labels, n, seed + 1)
    fs_ref, _ = _features(reference["model"], reference["state"], xs, ys, data.mean)
    ft_ref, _ = _features(reference["model"], reference["state"], xt, yt, data.mean)
    fs, _ = _features(model, state, xs, ys, data.mean)
    ft, _ = _features(model, state, xt, yt, data.mean)
    log("analysis: proxy A-distance (raw pixels, source-only features, DANN features)")
    pad = {
        "raw_pixels": analysis.proxy_a_distance(
            xs.astype(np.float32), xt.astype(np.float32), seed=seed
        ),
        "source_only_features": analysis.proxy_a_distance(fs_ref, ft_ref, seed=seed),
        f"{config.mode}_features": analysis.proxy_a_distance(fs, ft, seed=seed),
    }
    log("analysis: embeddings")
    emb_path = workdir / "embeddings.png"
    analysis.plot_embeddings(
        emb_path,
        [
            {
                "title": "source-only features",
                "source": fs_ref,
                "target": ft_ref,
                "source_labels": ys,
                "target_labels": yt,
            },
            {
                "title": f"{config.mode} features",
                "source": fs,
                "target": ft,
                "source_labels": ys,
                "target_labels": yt,
            },
        ],
        method="tsne",
        seed=seed,
        max_points_per_domain=500,
    )
    evaluate = train.compile_evaluate(model)
    es = jax.device_put(train.make_eval_set(data.target_test, data.target_test_labels))
    preds = np.asarray(
        evaluate(state.params, state.batch_stats, es, jnp.asarray(data.mean))["predictions"]
    )
    cm = analysis.confusion_matrix(data.target_test_labels, preds[: len(data.target_test)])
    cm_path = workdir / "confusion_target.png"
    analysis.plot_confusion_matrix(cm_path, cm, f"target test confusion ({config.mode})")
    curves = dann_result["curves"]
    dev = [c.get("dev_risk") for c in curves]
    selection = None
    if all(d is not None for d in dev) and dev:
        selection = {
            "validator": "deep embedded validation (You et al., ICML 2019); lower is better",
            "steps": [c["step"] for c in curves],
            "dev_risk": dev,
            "target_accuracy": [c["target_accuracy"] for c in curves],
            **analysis.selection_agreement(dev, [c["target_accuracy"] for c in curves]),
        }
        selection["chosen_step"] = curves[selection["chosen_index"]]["step"]
    result = {
        "seed": seed,
        "proxy_a_distance": {k: v["pad"] for k, v in pad.items()},
        "proxy_a_distance_details": pad,
        "source_only_reference": {
            "target_accuracy": reference["target_accuracy"],
            "source_accuracy": reference["source_accuracy"],
        },
        "confusion_matrix_target": cm.tolist(),
        "selection": selection,
        "figures": {"embeddings": emb_path.name, "confusion_target": cm_path.name},
        "note": "target labels are used here only to report, never to select",
    }
    analysis.write_analysis(workdir, result)
    return result
