"""Figures: curves, confusion matrix, embeddings; atomic PNGs, no pyplot, no global backend."""

import subprocess
import sys

import numpy as np

from dann_jax import analysis, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    """Non-empty file with the PNG signature that matplotlib reads back as an image."""
    import matplotlib.image as mpimg

    with open(path, "rb") as f:
        data = f.read()
    assert len(data) > 100
    assert data[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10


def _per_seed(seeds=(0, 1), n=4):
    """Curve records as the experiment runner keeps them, one list per seed."""
    keys = (
        "target_accuracy", "source_accuracy", "train_label_loss", "train_domain_loss",
        "train_domain_accuracy", "train_lambda2",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    return [
        {
            "seed": s,
            "curves": [
                {"step": 10 * (i + 1), **{k: float(rng.uniform()) for k in keys}} for i in range(n)
            ],
        }
        for s in seeds
    ]


def test_plot_curves_png(tmp_path):
    path = plots.plot_curves(tmp_path / "run" / "curves.png", _per_seed(), "dann: a -> b")
    assert path == str(tmp_path / "run" / "curves.png")
    _assert_png(path)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["curves.png"]  # no temp left
    # A diverged run (NaN values) and a run with no evaluation yet still draw.
    per_seed = _per_seed(seeds=(3,), n=2)
    per_seed[0]["curves"][1]["train_domain_loss"] = float("nan")
    _assert_png(plots.plot_curves(tmp_path / "nan.png", per_seed, "nan"))
    _assert_png(plots.plot_curves(tmp_path / "empty.png", [{"seed": 0, "curves": []}], "empty"))


def test_plot_confusion_matrix_png(tmp_path):
    m = analysis.confusion_matrix([0, 1, 2, 2], [0, 1, 2, 1], num_classes=3)
    path = plots.plot_confusion_matrix(tmp_path / "sub" / "cm.png", m, "test")
    assert path == str(tmp_path / "sub" / "cm.png")
    _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["cm.png"]  # no temp left


def test_plot_embeddings_png(tmp_path):
    rng = np.random.default_rng(0)

    def panel(title, shift):
        return {
            "title": title,
            "source": rng.normal(size=(30, 5)),
            "target": rng.normal(size=(30, 5)) + shift,
            "source_labels": rng.integers(0, 10, size=30),
            "target_labels": rng.integers(0, 10, size=30),
        }

    panels = [panel("source only", 3.0), panel("DANN", 0.2)]
    path = plots.plot_embeddings(tmp_path / "tsne.png", panels, method="tsne", seed=0)
    _assert_png(path)
    # Unlabelled panels, PCA, and subsampling above max_points_per_domain also work.
    unlabelled = [
        {"title": "x", "source": rng.normal(size=(50, 4)), "target": rng.normal(size=(20, 4))}
    ]
    path2 = plots.plot_embeddings(
        tmp_path / "pca.png", unlabelled, method="pca", max_points_per_domain=25
    )
    _assert_png(path2)


def test_plotting_never_imports_pyplot_or_sets_the_backend(tmp_path):
    # In a fresh interpreter: importing plots costs no matplotlib, and drawing every
    # figure leaves pyplot unimported and the configured backend as it was.
    code = f"""
import sys
import numpy as np
from dann_jax import plots
assert "matplotlib" not in sys.modules
import matplotlib
backend = dict.__getitem__(matplotlib.rcParams, "backend")
per_seed = [{{"seed": 0, "curves": [{{"step": 1, "target_accuracy": 0.5,
    "source_accuracy": 0.9, "train_label_loss": 1.0, "train_domain_loss": 0.7,
    "train_domain_accuracy": 0.5, "train_lambda2": 0.1}}]}}]
plots.plot_curves({str(tmp_path / "c.png")!r}, per_seed, "t")
plots.plot_confusion_matrix({str(tmp_path / "m.png")!r}, np.eye(3))
x = np.random.default_rng(0).normal(size=(10, 3))
plots.plot_embeddings({str(tmp_path / "e.png")!r}, [{{"source": x, "target": x}}], "pca")
assert "matplotlib.pyplot" not in sys.modules
assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
