"""--analyze: analysis.json (proxy A-distance, DEV selection, confusion) and its figures."""

import json

import numpy as np
from pytest import approx

from dann_jax import experiment
from dann_jax.config import Config


def test_analyze_writes_analysis_and_figures(tmp_path, monkeypatch):
    from dann_jax import experiment_analysis

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    monkeypatch.setattr(experiment_analysis, "_MAX_PAD", 150)
    monkeypatch.setattr(experiment_analysis, "_MAX_DEV", 150)
    config = Config(
        steps=6,
        steps_per_call=2,
        eval_every=2,
        batch_size=8,
        analyze=True,
        workdir=str(tmp_path / "an"),
    )
    results = experiment.run(config, log=lambda s: None)
    analysis = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert set(analysis["proxy_a_distance"]) == {
        "raw_pixels",
        "source_only_features",
        "dann_features",
    }
    pad = analysis["proxy_a_distance"]
    assert all(-2.0 <= v <= 2.0 for v in pad.values())  # 2 (1 - 2 err)
    assert pad["raw_pixels"] > 1.5  # grey digits against colour photos: easy to tell apart
    sel = analysis["selection"]
    assert sel["steps"] == [2, 4, 6] and all(np.isfinite(sel["dev_risk"]))
    assert sel["chosen_step"] == sel["steps"][int(np.argmin(sel["dev_risk"]))]
    cm = np.asarray(analysis["confusion_matrix_target"])
    assert cm.shape == (10, 10) and cm.sum() == results["dataset"]["target"]["test_size"]
    assert np.trace(cm) / cm.sum() == approx(results["target_accuracy"], abs=1e-6)
    for name in ("embeddings.png", "confusion_target.png", "curves.png"):
        assert (tmp_path / "an" / name).read_bytes().startswith(b"\x89PNG")
    assert results["analysis"]["proxy_a_distance"] == analysis["proxy_a_distance"]
