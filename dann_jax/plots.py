"""Figures of a run: training curves, confusion matrix, source/target embeddings.

Every figure is a bare ``matplotlib.figure.Figure`` saved with `dann_jax.io.save_figure`
(atomically). pyplot is never imported and the global matplotlib backend is never set:
a figure that is not attached to pyplot needs neither, is freed like any other object,
and cannot disturb a caller (a notebook, a GUI) that uses pyplot with its own backend.

* `plot_curves`: accuracies, losses, discriminator accuracy and lambda over steps.
* `plot_confusion_matrix`: a confusion-matrix heat map (`dann_jax.analysis.confusion_matrix`).
* `plot_embeddings`: t-SNE/PCA of source and target features (DANN paper, Fig. 5).

matplotlib is imported inside the functions, so ``import dann_jax.plots`` is cheap and
a missing matplotlib only fails the call that draws.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dann_jax.analysis import embed, flatten_features
from dann_jax.io import save_figure

__all__ = [
    "confusion_figure",
    "curves_figure",
    "embeddings_figure",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_embeddings",
]

SOURCE_COLOR = "tab:blue"
TARGET_COLOR = "tab:red"
# Raster resolutions: the analysis figures carry small digit markers and cell labels.
CURVES_DPI = 100
ANALYSIS_DPI = 120


def _new_figure(width: float, height: float):
    """An empty ``Figure`` of the given size in inches, outside pyplot."""
    from matplotlib.figure import Figure

    # Figure.savefig picks a canvas for the file format by itself (Agg for PNG), so no
    # backend has to be chosen and nothing global changes.
    return Figure(figsize=(width, height))


def _save(fig, path: str | os.PathLike, dpi: float) -> str:
    """Lay out and save `fig` atomically, creating missing parent folders."""
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi, make_parents=True)


# ---------------------------------------------------------------------------- curves

# The panels of `plot_curves`: (title, y label, [(record key, line style, label)]).
_PANELS = (
    ("test accuracy", "accuracy", [("target_accuracy", "-", "target"),
                                   ("source_accuracy", "--", "source")]),
    ("training losses", "loss", [("train_label_loss", "-", "label (source)"),
                                 ("train_domain_loss", "--", "domain")]),
    ("discriminator (training batches)", "accuracy",
     [("train_domain_accuracy", "-", "discriminator")]),
    ("GRL coefficient", "lambda", [("train_lambda2", "-", "lambda")]),
)  # fmt: skip


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list, list]:
    """(steps, values) of the records that have a number for `key`."""
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def curves_figure(per_seed: Sequence[Mapping[str, Any]], title: str):
    """The `plot_curves` figure (a `matplotlib.figure.Figure`)."""
    fig = _new_figure(12.0, 7.5)
    axes = fig.subplots(2, 2).ravel()
    for r in per_seed:
        # Test accuracy at the evaluations; the training metrics at every record.
        evals, every = r.get("curves", []), r.get("metrics") or r.get("curves", [])
        for ax, (_, _, lines) in zip(axes, _PANELS, strict=True):
            for key, style, label in lines:
                steps, values = _series(evals if ax is axes[0] else every, key)
                if steps:
                    ax.plot(steps, values, style, label=f"{label}, seed {r['seed']}")
    for ax, (name, ylabel, _) in zip(axes, _PANELS, strict=True):
        ax.set(title=name, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    # A little room above 1: a discriminator that is right on every batch draws its line
    # at exactly 1.0, which must not hide in the frame.
    axes[0].set_ylim(0, 1.03)
    axes[2].set_ylim(0, 1.03)
    axes[2].axhline(0.5, color="grey", lw=0.8, label="0.5: domains confused")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls=":", label="1.0: domains apart")
    if not any(_series(r.get("curves", []), "target_accuracy")[0] for r in per_seed):
        axes[0].text(0.02, 0.02, "target: no labels", transform=axes[0].transAxes, fontsize=8)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def plot_curves(path: str | os.PathLike, per_seed: Sequence[Mapping[str, Any]], title: str) -> str:
    """Test accuracies, training losses, the discriminator's accuracy and the GRL's lambda.

    Four panels, one line per seed and quantity, each with its own y axis: target and
    source test accuracy at the evaluations; the label and domain losses, the
    discriminator's accuracy on the training batches (a grey line at 0.5, the accuracy of
    a discriminator the features fully confuse) and lambda at every record of
    ``metrics.jsonl`` (one a dispatch).

    Args:
      path: output image (``.png``); parent folders are created.
      per_seed: one dict per seed with ``seed``, ``curves`` (the evaluation records:
        ``step``, ``target_accuracy`` (None without target labels), ``source_accuracy``)
        and optionally ``metrics`` (every record: ``step``, ``train_label_loss``,
        ``train_domain_loss``, ``train_domain_accuracy``, ``train_lambda2``); without
        ``metrics`` the training lines use the evaluation records.
      title: figure title.

    Returns:
      The path written.
    """
    return _save(curves_figure(per_seed, title), path, CURVES_DPI)


# ---------------------------------------------------------------------------- confusion


def confusion_figure(matrix: Any, title: str = "", class_names: Sequence[str] | None = None):
    """The `plot_confusion_matrix` figure (a `matplotlib.figure.Figure`)."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix must be square (K, K), got {m.shape}")
    k = m.shape[0]
    names = [str(i) for i in range(k)] if class_names is None else [str(n) for n in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k} x {k} matrix")
    row_sums = m.sum(axis=1, keepdims=True)
    rates = np.divide(m, row_sums, out=np.zeros(m.shape, np.float64), where=row_sums > 0)
    size = max(4.5, 0.45 * k + 2.5)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="colour: fraction of the true class")
    ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        (title + "\n" if title else "") + "numbers: counts; colour: row-normalised", fontsize=9
    )
    if k <= 30:  # beyond that the numbers are unreadable
        for i in range(k):
            for j in range(k):
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, f"{m[i, j]:g}", ha="center", va="center", fontsize=7, color=color)
    return fig


def plot_confusion_matrix(
    path: str | os.PathLike, matrix: Any, title: str = "", class_names: Sequence[str] | None = None
) -> str:
    """Save a confusion-matrix heat map, K x K for K classes (named on the axes).

    Colour is the row-normalised rate (per-class recall on the diagonal), so rare and
    common classes are comparable; each cell is annotated with its raw count, and the
    figure says so.

    Args:
      path: output image (``.png``); parent folders are created.
      matrix: (K, K) counts, rows = true class (as from
        `dann_jax.analysis.confusion_matrix`).
      title: figure title.
      class_names: K names for the axes (default 0..K-1).

    Returns:
      The path written.
    """
    return _save(confusion_figure(matrix, title, class_names), path, ANALYSIS_DPI)


# ---------------------------------------------------------------------------- embeddings


def _subsample(
    rng: np.random.Generator, x: np.ndarray, labels: np.ndarray | None, n_max: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """At most n_max rows of x (and the matching labels), sampled without replacement."""
    if len(x) <= n_max:
        return x, labels
    idx = np.sort(rng.choice(len(x), n_max, replace=False))
    return x[idx], None if labels is None else labels[idx]


def _scatter_domain(ax, xy: np.ndarray, labels: np.ndarray | None, color: str) -> None:
    """Scatter one domain, each point drawn as its class digit (or a dot if unlabelled)."""
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=8, c=color, marker="o", alpha=0.6, linewidths=0)
        return
    for cls in np.unique(labels):
        sel = labels == cls
        # Mathtext markers draw the class label itself, as in the paper's Fig. 5.
        marker = f"${int(cls)}$"
        ax.scatter(xy[sel, 0], xy[sel, 1], s=30, c=color, marker=marker, alpha=0.6, linewidths=0)


def _panel_arrays(panel: Mapping[str, Any], i: int) -> tuple:
    """(source, source labels, target, target labels) of one panel, checked."""
    xs = flatten_features(panel["source"], "source")
    xt = flatten_features(panel["target"], "target")
    ys, yt = panel.get("source_labels"), panel.get("target_labels")
    ys = None if ys is None else np.asarray(ys).reshape(-1)
    yt = None if yt is None else np.asarray(yt).reshape(-1)
    if (ys is not None and len(ys) != len(xs)) or (yt is not None and len(yt) != len(xt)):
        raise ValueError(f"panel {i}: labels and features differ in length")
    return xs, ys, xt, yt


def _legend(ax, panel: Mapping[str, Any]) -> None:
    """Domain legend (colour = domain) of one panel."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="", marker="o", color=color, label=panel.get(f"{name}_name", name))
        for name, color in (("source", SOURCE_COLOR), ("target", TARGET_COLOR))
    ]
    ax.legend(handles=handles, loc="best", fontsize=8)


def plot_embeddings(
    path: str | os.PathLike,
    panels: Sequence[Mapping[str, Any]],
    method: str = "tsne",
    seed: int = 0,
    max_points_per_domain: int = 1000,
    title: str = "",
) -> str:
    """Side-by-side 2-D embeddings of source and target features (DANN paper, Fig. 5).

    Each panel embeds its source and target features jointly (one t-SNE/PCA over both,
    so the two domains share coordinates; `dann_jax.analysis.embed`). Colour is the
    domain (source blue, target red); each point is drawn as its class label. Typical
    use: one panel for a source-only model, one for the adapted model.

    Args:
      path: output image (``.png``); parent folders are created.
      panels: list of dicts with ``title`` (str), ``source`` (N_s, D) and ``target``
        (N_t, D) features, and optionally ``source_labels`` (N_s,) and ``target_labels``
        (N_t,) integer classes (dots when absent), ``source_name`` / ``target_name``
        (legend entries; default "source" / "target").
      method: "tsne" or "pca" (see `dann_jax.analysis.embed`).
      seed: seed of the subsampling and of the embedding.
      max_points_per_domain: each domain is subsampled (seeded) to at most this many
        points, which keeps t-SNE to seconds.
      title: the figure's title (e.g. naming the pair); each panel keeps its own.

    Returns:
      The path written.

    References:
      Ganin et al., JMLR 2016, Fig. 5.
    """
    fig = embeddings_figure(panels, method, seed, max_points_per_domain, title)
    return _save(fig, path, ANALYSIS_DPI)


def embeddings_figure(panels, method="tsne", seed=0, max_points_per_domain=1000, title=""):
    """The `plot_embeddings` figure (a `matplotlib.figure.Figure`)."""
    if not panels:
        raise ValueError("panels is empty")
    fig = _new_figure(5.0 * len(panels), 5.4)
    rng = np.random.default_rng(seed)
    for i, panel in enumerate(panels):
        xs, ys, xt, yt = _panel_arrays(panel, i)
        xs, ys = _subsample(rng, xs, ys, max_points_per_domain)
        xt, yt = _subsample(rng, xt, yt, max_points_per_domain)
        xy = embed(np.concatenate([xs, xt]), method=method, seed=seed)

        ax = fig.add_subplot(1, len(panels), i + 1)
        _scatter_domain(ax, xy[: len(xs)], ys, SOURCE_COLOR)
        _scatter_domain(ax, xy[len(xs) :], yt, TARGET_COLOR)
        ax.set_title(str(panel.get("title", "")))
        ax.set_xticks([])
        ax.set_yticks([])
        axis = {"tsne": "t-SNE", "pca": "PCA"}.get(method, method)
        ax.set_xlabel(f"{axis} 1")
        ax.set_ylabel(f"{axis} 2")
        _legend(ax, panel)
    if title:
        fig.suptitle(title)
    return fig
