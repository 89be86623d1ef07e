"""DANN without the command line: train on arrays, load a finished run, predict.

::

    model = dann_jax.fit(source_images, source_labels, target_images, steps=2000)
    classes, probabilities = model.predict(new_images)
    model = dann_jax.load_run("runs/adapt")          # a workdir of either entry point

`fit` runs the main job's loop (`dann_jax.loop.train_and_evaluate`: the same step, mesh,
checkpoints and resume) on a pair made from the arrays (`dann_jax.data.pair_from_arrays`:
the source split 90/10 for a source validation set, the target used whole and
unlabelled). ``extractor=`` takes any linen module as the feature extractor; the GRL,
the heads and the train step are unchanged.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dann_jax.cli import OWN_DATA
from dann_jax.config import Config
from dann_jax.run_files import TrainedModel, load_run

__all__ = ["RECOMMENDED", "TrainedModel", "fit", "load_run"]

# The settings for data nobody tuned for (docs/own_data.md; `dann_jax.cli.OWN_DATA`).
RECOMMENDED = dict(OWN_DATA)


def fit(
    source_images: np.ndarray,
    source_labels: np.ndarray,
    target_images: np.ndarray,
    *,
    target_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    extractor=None,
    config: Config | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = print,
    **settings,
) -> TrainedModel:
    """Train a DANN from labelled source arrays to unlabelled target arrays.

    Args:
      source_images, target_images: uint8 images (N, H, W) or (N, H, W, C), one size.
      source_labels: integer class indices (N,).
      target_labels: optional, used only to report target accuracy (training never
        reads them).
      class_names: a name per class index (default "0", "1", ...).
      extractor: any linen module mapping (N, H, W, C) to (N, D), called as
        ``extractor(x, train=...)`` (an NNX one through `dann_jax.from_nnx`); None: the
        extractor of ``config.arch``. The heads, bottleneck, BatchNorm groups and recipe
        settings stay ``config``'s. A plain BatchNorm in it (one set of statistics for
        both domains) is named in the log: `dann_jax.DomainBatchNorm` keeps each
        domain's own.
      config: the settings (default: `Config` with the `RECOMMENDED` recipe);
        ``settings`` override its fields (e.g. ``steps=2000, lambda2=0.3``).
      workdir: keep checkpoints and metrics there (rerunning resumes); None: a
        temporary folder, deleted afterwards. A workdir holding a run with another
        config or other arrays is refused (`dann_jax.workdir.RunError`) unless
        ``restart=True``, which deletes that run first.
      log: progress lines.

    Raises:
      dann_jax.data.DataError: arrays the command line would refuse as files, with the
        same message: too few or too small images, labels that are not one class index
        per image (one-hot rows, floats, negative numbers), a class without images, fewer
        class names than classes, target labels the source lacks.
      dann_jax.config_fields.ConfigError: a bad setting. dann_jax.workdir.RunError: a workdir
        holding another run. dann_jax.io.Busy: another process training in the workdir.
    """
    from dann_jax import io, loop, storage
    from dann_jax import workdir as workdir_module
    from dann_jax.data.arrays import pair_from_arrays

    config = (config or Config(**RECOMMENDED)).replace(**settings)
    if config.steps is None:
        config = config.replace(steps=2000)
    arch = None if extractor is not None else config.arch
    data = pair_from_arrays(
        source_images, source_labels, target_images, target_labels, class_names, arch
    )
    model = None
    if extractor is not None:
        from dann_jax import extractors, train

        model = train.make_model(config, num_classes=data.num_classes, extractor=extractor)
        shape = tuple(int(d) for d in data.source_train.shape[1:])
        joint = extractors.joint_batchnorm(model, shape) if config.bn_stats == "per_domain" else 0
        if joint:
            log(extractors.joint_batchnorm_warning(joint))
    with tempfile.TemporaryDirectory() if workdir is None else _nothing() as tmp:
        path = storage.as_path(workdir or tmp)  # a folder, or gs://bucket/run
        config = config.replace(workdir=str(path))
        workdir_module.usable_workdir(path)
        with io.exclusive(path, "the workdir"):  # a second process on it: refused at once
            if config.restart:
                workdir_module.clear_run(path, log)
            # config.json and data.json: another config's or other arrays' run is refused
            workdir_module.check_workdir(config, path, log, data)
            if config.choose and config.mode == "dann":
                from dann_jax.candidates import train_choosing

                result = train_choosing(config, data, path, config.seed, log, model)
            else:
                (result,) = loop.train_and_evaluate(
                    config, data, path, (config.seed,), log, model=model
                )
    shape = tuple(int(d) for d in data.source_train.shape[1:])
    mean, names = data.mean, data.class_names
    return TrainedModel(
        result["model"], result["state"], mean, names, shape, config, choice=result.get("choice")
    )


class _nothing:
    """A context manager that provides None (``workdir`` given: nothing to clean up)."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
