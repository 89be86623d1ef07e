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


def test_curves_have_labelled_axes_each_quantity_its_own_and_every_record():
    per_seed = _per_seed(seeds=(0,), n=3)
    # Training metrics at every record (a dispatch), test accuracy at the evaluations only.
    per_seed[0]["metrics"] = [
        {"step": s, "train_label_loss": 1.0 / s, "train_domain_loss": 0.6,
         "train_domain_accuracy": 0.7, "train_lambda2": 0.5}
        for s in range(2, 31, 2)
    ]  # fmt: skip
    fig = plots.curves_figure(per_seed, "source_only: a → b")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["test accuracy", "training losses", "discriminator (training batches)",
                      "GRL coefficient"]  # fmt: skip
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "loss", "accuracy", "lambda"]
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)
    assert len(fig.axes[1].get_lines()[0].get_xdata()) == 15  # every record
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 3  # the evaluations
    assert fig._suptitle.get_text() == "source_only: a → b"
    # Without target labels: no target line, and the figure says why.
    for r in per_seed[0]["curves"]:
        r["target_accuracy"] = None
    fig = plots.curves_figure(per_seed, "t")
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["source, seed 0"]
    assert any("no labels" in t.get_text() for t in fig.axes[0].texts)


def test_a_discriminator_at_exactly_one_is_drawn_inside_the_frame():
    per_seed = _per_seed(seeds=(0,), n=3)
    per_seed[0]["metrics"] = [{"step": s, "train_domain_accuracy": 1.0} for s in (10, 20, 30)]
    ax = plots.curves_figure(per_seed, "t").axes[2]
    low, high = ax.get_ylim()
    assert low <= 0 and high > 1.0  # the line at 1.0 is not hidden by the top of the frame
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "discriminator, seed 0"]
    assert list(line.get_ydata()) == [1.0, 1.0, 1.0]
    assert any(ln.get_label() == "1.0: domains apart" for ln in ax.get_lines())


def test_the_confusion_matrix_has_one_row_per_class_named_and_says_what_it_shows():
    names = [f"class_{i}" for i in range(6)]
    m = analysis.confusion_matrix([0, 1, 5, 5], [0, 2, 5, 1], num_classes=6)
    fig = plots.confusion_figure(m, "target", names)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert "counts" in ax.get_title() and "row-normalised" in ax.get_title()
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted class", "true class")


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
    fig = plots.embeddings_figure(unlabelled, method="pca", max_points_per_domain=25)
    drawn = [len(c.get_offsets()) for c in fig.axes[0].collections]
    assert drawn == [25, 20]  # the source subsampled to 25, the target's 20 all drawn


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
