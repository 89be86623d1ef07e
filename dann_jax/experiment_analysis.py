"""``--analyze``: what `dann_jax.analysis` and `dann_jax.validators` measure, on a finished
digits run.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dann_jax import analysis, loop, plots, validators
from dann_jax.data.pair import PairData
from dann_jax.outputs import LOGITS, predict_host

__all__ = ["analyze", "make_dev_hook"]

_MAX_DEV = 1000  # examples per domain for DEV at each evaluation (sklearn cost)
_MAX_PAD = 2000  # examples per domain for the proxy A-distance


def _subset(images: np.ndarray, labels: np.ndarray | None, n: int, seed: int):
    """A seeded random subset of at most n examples (labels None stay None)."""
    idx = np.random.default_rng(seed).permutation(len(images))[:n]
    return images[idx], None if labels is None else labels[idx]


def make_dev_hook(config, data: PairData, seed: int) -> Callable[[Any, dict], None]:
    """A per-evaluation hook that adds DEV's ``dev_risk`` (and IWCV) to the record."""
    from dann_jax.train import make_model

    model = make_model(config, num_classes=data.num_classes)
    source, target = config.bn_domain("source"), config.bn_domain("target")
    src = _subset(data.source_test, data.source_test_labels, _MAX_DEV, seed)
    tgt_images = data.target_train[
        np.random.default_rng(seed + 1).permutation(len(data.target_train))[:_MAX_DEV]
    ]
    tgt = (tgt_images, np.zeros(len(tgt_images), np.int32))  # labels unused

    def hook(state, record):
        s = predict_host(model, state, src[0], data.mean, src[1], domain=source)
        t = predict_host(model, state, tgt[0], data.mean, tgt[1], domain=target)
        dev = validators.deep_embedded_validation(
            s["features"], s["loss"], t["features"], seed=seed
        )
        record["dev_risk"] = dev["dev_risk"]
        record["iwcv_risk"] = dev["iwcv_risk"]

    return hook


def _reference(config, data: PairData, dann_result: dict, workdir: Path, log) -> dict:
    """The source-only model to compare with: the run itself, or one trained alongside."""
    if config.mode == "source_only":
        return dann_result
    log("analysis: training the source-only reference model (same seed and steps)")
    ref_config = dataclasses.replace(config, mode="source_only", analyze=False, seeds=1)
    (reference,) = loop.train_and_evaluate(
        ref_config, data, workdir / "analysis_source_only", (dann_result["seed"],), log
    )
    return reference


def _embeddings(path: Path, mode: str, feats: dict, ys, yt, seed: int, names) -> None:
    """t-SNE of source and target test features, source-only beside the run's model."""
    source, target = names
    panels = [
        {"title": title, "source": feats[f"{key}_s"], "target": feats[f"{key}_t"],
         "source_labels": ys, "target_labels": yt, "source_name": f"source: {source}",
         "target_name": f"target: {target}"}
        for key, title in (("ref", "source-only model"), ("run", f"{mode} model"))
    ]  # fmt: skip
    title = f"t-SNE of test-set features, {source} → {target} (points: their class; colour: domain)"
    plots.plot_embeddings(
        path, panels, method="tsne", seed=seed, max_points_per_domain=500, title=title
    )


def _dev_selection(curves: list[dict]) -> dict[str, Any] | None:
    """How DEV's choice of evaluation agrees with the (report-only) target accuracy."""
    dev = [c.get("dev_risk") for c in curves]
    accuracy = [c["target_accuracy"] for c in curves]
    if not dev or any(d is None for d in dev) or any(a is None for a in accuracy):
        return None  # (no target labels: nothing to agree with)
    selection = {
        "validator": "deep embedded validation (You et al., ICML 2019); lower is better",
        "steps": [c["step"] for c in curves],
        "dev_risk": dev,
        "target_accuracy": accuracy,
        **validators.selection_agreement(dev, accuracy),
    }
    selection["chosen_step"] = curves[selection["chosen_index"]]["step"]
    return selection


def analyze(config, data: PairData, dann_result: dict, workdir: Path, log) -> dict[str, Any]:
    """Write ``analysis.json``, ``embeddings.png`` and ``confusion_target.png``.

    Args:
      config: the run's config.
      data: the run's `dann_jax.data.PairData`.
      dann_result: `dann_jax.loop.train_and_evaluate`'s result for the first seed (state, model,
        curves).
      workdir: the run's workdir.
      log: progress output.

    Returns:
      The analysis dict (also in ``analysis.json``).
    """
    seed, model, state = dann_result["seed"], dann_result["model"], dann_result["state"]
    source, target = config.bn_domain("source"), config.bn_domain("target")
    reference = _reference(config, data, dann_result, workdir, log)
    xs, ys = _subset(data.source_test, data.source_test_labels, _MAX_PAD, seed)
    xt, yt = _subset(data.target_test, data.target_test_labels, _MAX_PAD, seed + 1)
    feats = {}
    for key, (m, st) in {
        "ref": (reference["model"], reference["state"]),
        "run": (model, state),
    }.items():
        feats[f"{key}_s"] = predict_host(m, st, xs, data.mean, ys, domain=source)["features"]
        feats[f"{key}_t"] = predict_host(m, st, xt, data.mean, yt, domain=target)["features"]
    log("analysis: proxy A-distance (raw pixels, source-only features, DANN features)")
    pad = {
        "raw_pixels": analysis.proxy_a_distance(
            xs.astype(np.float32), xt.astype(np.float32), seed=seed
        ),
        "source_only_features": analysis.proxy_a_distance(
            feats["ref_s"], feats["ref_t"], seed=seed
        ),
        f"{config.mode}_features": analysis.proxy_a_distance(
            feats["run_s"], feats["run_t"], seed=seed
        ),
    }
    log("analysis: embeddings")
    emb_path, cm_path = workdir / "embeddings.png", workdir / "confusion_target.png"
    names = tuple(Path(data.info[r]["name"]).name for r in ("source", "target"))
    _embeddings(emb_path, config.mode, feats, ys, yt, seed, names)
    cm = None
    if data.target_labelled:  # a confusion matrix needs the target's labels
        logits = predict_host(model, state, data.target_test, data.mean, domain=target,
                              keep=LOGITS)["class_logits"]  # fmt: skip
        cm = analysis.confusion_matrix(
            data.target_test_labels, np.argmax(logits, -1), data.num_classes
        )
        title = f"target test set ({names[1]}), {config.mode} model"
        plots.plot_confusion_matrix(cm_path, cm, title, data.class_names)
    result = {
        "seed": seed,
        "proxy_a_distance": {k: v["pad"] for k, v in pad.items()},
        "proxy_a_distance_details": pad,
        "source_only_reference": {
            "target_accuracy": reference["target_accuracy"],
            "source_accuracy": reference["source_accuracy"],
        },
        "confusion_matrix_target": None if cm is None else cm.tolist(),
        "selection": _dev_selection(dann_result["curves"]),
        "figures": {
            "embeddings": emb_path.name,
            "confusion_target": None if cm is None else cm_path.name,
        },
        "note": "target labels are used here only to report, never to select",
    }
    analysis.write_analysis(workdir, result)
    return result
