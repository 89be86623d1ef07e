"""``adapt.py --predict DIR``: classify new images with a run, keeping every result.

The predictions of a folder go to ``<workdir>/predictions_<folder name>.csv`` (a workdir
in a bucket, ``gs://...``, included). Which
folder (and which checkpoint) each such file holds is recorded in
``<workdir>/predictions_index.json``: predicting the same folder again replaces its file,
while another folder of the same name (``a/new`` after ``b/new``) gets the next free
name (``predictions_new_2.csv``), said in the log; ``--predict-out FILE`` chooses the
file. The log says which checkpoint predicted: the final one, or, for a run still
training, the newest, with its step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["INDEX", "predict_folder"]

INDEX = "predictions_index.json"


def _as_path(path: str | Path) -> Path:
    """A local path, or a bucket's (``gs://``: `dann_jax.storage`) as an epath path."""
    from dann_jax import storage

    return storage.as_path(path) if storage.is_url(path) else Path(path)


def _same(a: Path, b: Path) -> bool:
    """Whether two folders are one (a URL is compared as written)."""
    from dann_jax import storage

    if storage.is_url(a) or storage.is_url(b):
        return os.fspath(a).rstrip("/") == os.fspath(b).rstrip("/")
    return a.resolve() == b.resolve()


def _index(workdir: Path) -> dict:
    """The record of earlier predictions ({} when there is none or it is unreadable)."""
    try:
        value = json.loads((workdir / INDEX).read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def output_path(workdir: Path, folder: Path, index: dict, log=print) -> Path:
    """Where the predictions of `folder` go: its own earlier file, or the first free name
    (said when the plain name holds another folder's predictions)."""
    stem = folder.stem if folder.is_file() else folder.name
    for k in range(1, 10_000):
        name = f"predictions_{stem}{'' if k == 1 else f'_{k}'}.csv"
        if not (workdir / name).exists() or index.get(name, {}).get("images") == str(folder):
            if k > 1:
                plain = f"predictions_{stem}.csv"
                other = index.get(plain, {}).get("images", "an earlier --predict")
                log(f"note: {workdir / plain} holds the predictions of {other}; these go to "
                    f"{name}")  # fmt: skip
            return workdir / name
    raise RuntimeError(f"{workdir} holds 9,999 predictions of folders named {stem}")


def which_checkpoint(run) -> str:
    """'the final checkpoint (step 3000)', or the newest one of a run still training, or
    the checkpoint a choosing run kept (`dann_jax.candidates`)."""
    if run.choice is not None:
        kept = f"candidate {run.choice['member']} at step {run.step}, by {run.choice['by']}"
        if (run.choice["trained_to"] or 0) >= run.config.steps:
            return f"the checkpoint the run kept without target labels ({kept})"
        return (
            f"the checkpoint kept so far ({kept}; the candidates are at step "
            f"{run.choice['trained_to']} of {run.config.steps}): the run is not finished; "
            "predict again once it is, for its final choice"
        )
    if run.step is not None and run.step >= run.config.steps:
        return f"the final checkpoint (step {run.step})"
    return (
        f"the newest checkpoint, step {run.step} of {run.config.steps}: the run is not "
        "finished; predict again once it is, for the final model"
    )


def predict_folder(
    workdir: str | Path, images: str | Path, out: str | Path | None = None, log=print
) -> Path:
    """Predict the images under `images` (a folder, subfolders included, or a list) with
    the run in `workdir`; write them as CSV (`out`, or the file `output_path` picks) and
    return its path. Raises `dann_jax.data.DataError`, `CheckpointError`, `ValueError`,
    `dann_jax.io.NotWritable` naming the problem."""
    from dann_jax import io, outputs, storage
    from dann_jax.data import DataError
    from dann_jax.data.folders import MixedSizes, read_images
    from dann_jax.run_files import load_run

    workdir, folder = _as_path(workdir), Path(images).expanduser().resolve()
    index = _index(workdir)
    path = _as_path(out) if out is not None else output_path(workdir, folder, index, log)
    if storage.is_url(path):  # a run kept in a bucket: its predictions go beside it
        storage.check_url(path.parent, "--predict-out")
    else:
        io.check_writable(path, "--predict-out", is_file=True)
    run = load_run(workdir)
    (h, w, _), square = run.image_shape, run.image_shape[0] == run.image_shape[1]
    try:
        found = read_images(folder, h if square else None, run.config.tfds_dir, log=log,
                            unlabelled=True)  # fmt: skip
    except MixedSizes as e:  # its advice, --image-size, is not a flag of --predict
        raise DataError(
            f"{e.what} The model of {workdir} takes {w}x{h} images (the size "
            "it was trained on, not square, so --predict does not resize): bring them to "
            f"{w}x{h} first."
        ) from None
    logits = run.logits(found.images)
    text = outputs.predictions_csv(found.paths, run.class_names, logits)
    io.write_text(path, text, make_parents=True)
    index[path.name] = {"images": str(folder), "step": run.step, "count": len(found.paths)}
    if _same(path.parent, workdir):
        io.write_json(workdir / INDEX, index)
    log(f"wrote {path} ({len(found.paths)} images), predicted with {which_checkpoint(run)}")
    return path
