"""Loading a finished (or interrupted) run from its workdir: `load_run`.

A workdir of ``experiments/digits.py``, ``adapt.py`` or `dann_jax.fit` holds the run's
``config.json``, ``run.json`` (classes, input shape, normalisation: what a checkpoint needs
to be used), its checkpoints and, once finished, ``results.json``. Each file that is
missing or damaged is named with what to do; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax import storage
from dann_jax.config import Config
from dann_jax.data.domain import DataError

__all__ = ["TrainedModel", "load_run"]

# Rerunning what trained a run rewrites its config.json, run.json and results.json; a
# finished run trains no further.
_AGAIN = (
    "Rerun what trained it (the same command, or dann_jax.fit with the same arguments and "
    "workdir): it writes the file again, and a finished run trains no further."
)


@dataclasses.dataclass
class TrainedModel:
    """A trained DANN and what it needs to predict: the normalisation mean, the classes.

    Attributes:
      model: the `dann_jax.DANN` module.
      state: the host `dann_jax.TrainState` (params, batch_stats, ...).
      mean: (C,) float32 subtracted from images scaled to [0, 1].
      class_names: the name of each class index.
      image_shape: (H, W, C) the model was trained on.
      config: the run's `dann_jax.Config`.
      results: the run's results (``results.json``'s contents), when there are any.
      step: the training step of the checkpoint the state was restored from (by
        `load_run`; None for a model `fit` returns).
      choice: for a run that chose its model without target labels (``--choose``), which
        candidate it kept, at which step, by what (``seed_<k>/choice.json``); else None.
    """

    model: Any
    state: Any
    mean: np.ndarray
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    config: Config
    results: dict | None = None
    step: int | None = None
    choice: dict | None = None

    def logits(self, images: np.ndarray, domain: str = "target") -> np.ndarray:
        """Class logits (N, classes) of uint8 images (N, H, W[, C]) of the training size
        (no images: an empty (0, classes) array).

        ``domain``: whose images they are (``"target"``: new images of the domain adapted
        to; ``"source"``), for per-domain BatchNorm statistics (`dann_jax.Config.bn_eval`).
        """
        from dann_jax.data.arrays import rgb
        from dann_jax.outputs import LOGITS, predict_host

        if domain not in ("target", "source"):
            raise ValueError(
                f"domain must be 'target' or 'source' (whose BatchNorm statistics normalise "
                f"the images), got {domain!r}."
            )
        x = rgb(images, "input")
        if x.shape[1:] != tuple(self.image_shape):
            (h, w, _), (mh, mw, _) = x.shape[1:], self.image_shape
            how = (
                f"dann_jax.read_images(folder, image_size={mh}) resizes (shorter side) and "
                "centre-crops image files"
                if mh == mw
                else "the model is not square, so bring them to its size exactly"
            )
            raise ValueError(
                f"the images are {w}x{h}, the model takes {mw}x{mh} (what it was trained on). "
                f"Resize them first: {how}."
            )
        if not len(x):
            return np.zeros((0, len(self.class_names)), np.float32)
        out = predict_host(
            self.model,
            self.state,
            x,
            self.mean,
            domain=self.config.bn_domain(domain),
            keep=LOGITS,
        )
        return out["class_logits"]

    def predict(self, images: np.ndarray, domain: str = "target") -> tuple[np.ndarray, np.ndarray]:
        """(class index, its softmax probability) of each image (``domain`` as in `logits`)."""
        z = self.logits(images, domain)
        p = np.exp(z - z.max(1, keepdims=True, initial=-np.inf))
        p /= p.sum(1, keepdims=True)
        best = p.argmax(1)
        return best, p[np.arange(len(best)), best]


def _json(path: Path, missing: str) -> dict[str, Any]:
    """A run file's JSON object; `missing` says why it can be absent."""
    if not path.exists():
        raise DataError(f"{path.parent} holds no finished run to load: {missing}")
    try:
        value = json.loads(path.read_text())
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is damaged ({e}). {_AGAIN}") from None


def _read_run(workdir: Path) -> tuple[Config, dict, dict | None]:
    """(config, run.json, results.json or None) of a workdir, each checked."""
    if not workdir.is_dir():
        what = "it does not exist" if not workdir.exists() else "it is a file"
        raise DataError(
            f"{workdir} holds no finished run to load: {what}. Give --workdir (workdir= in "
            "Python) the folder of a run of adapt.py, digits.py or dann_jax.fit."
        )
    saved = _json(workdir / "config.json", "it has no config.json (no run was started there).")
    try:
        config = Config(**saved)
    except TypeError as e:
        raise DataError(
            f"{workdir / 'config.json'} has settings this version of dann_jax does not know "
            f"({e}): the run was trained by another version. Load it with that version."
        ) from None
    meta = _json(workdir / "run.json", "it has no run.json yet (the run is still starting).")
    missing = [k for k in ("classes", "input_shape", "mean") if k not in meta]
    if missing:
        raise DataError(f"{workdir / 'run.json'} is damaged (no {', '.join(missing)}). {_AGAIN}")
    results_file = workdir / "results.json"
    results = _json(results_file, "") if results_file.exists() else None
    return config, meta, results


def _seeds_saved_with(workdir: Path, seed: int) -> tuple[int, ...]:
    """The seeds whose checkpoint holds `seed`'s state (several when they were vmapped)."""
    for folder in workdir.glob("seeds_*-*"):
        found = re.fullmatch(r"seeds_(\d+)-(\d+)", folder.name)
        if found and int(found[1]) <= seed <= int(found[2]):
            return tuple(range(int(found[1]), int(found[2]) + 1))
    return (seed,)


def _check_classes(workdir: Path, names: tuple[str, ...]) -> None:
    """Refuse a workdir whose run.json names other classes than the data the run was
    trained on (data.json): its predictions would carry the wrong names."""
    try:
        recorded = json.loads((workdir / "data.json").read_text())["source"]["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record (a run of an earlier version): nothing to check
    if list(recorded) != list(names):
        raise DataError(
            f"{workdir}: run.json names the classes {', '.join(names[:5])}, but the run was "
            f"trained on the classes {', '.join(map(str, recorded[:5]))} (data.json): its "
            "files belong to two different runs. Train it again with --restart."
        )


def _no_checkpoint(workdir: Path, seed: int, ckpt: Path) -> DataError:
    """The error for a seed without a checkpoint: the seeds there are."""
    have = sorted(
        int(p.name.removeprefix("seed_"))
        for p in workdir.glob("seed_*")
        if p.name.removeprefix("seed_").isdigit() and (p / "checkpoint").is_dir()
    )
    there = (
        f"; seeds with checkpoints: {', '.join(map(str, have))}"
        if have
        else (": the run saved no checkpoint yet")
    )
    return DataError(f"{workdir}: seed {seed} has no checkpoint to load ({ckpt}){there}.")


def _mismatch(workdir: Path, config: Config, extractor, error: Exception) -> str:
    """The message for a checkpoint that does not fit the model `config` describes."""
    # Its own fix (--restart) would delete the run: not what loading it needs.
    detail = re.split(r"\s*(?:Rerun with|Add) --restart", str(error))[0].rstrip(". ")
    fix = (
        "The extractor passed is not the one the run was trained with: pass that one."
        if extractor is not None
        else "A run trained with dann_jax.fit(extractor=...) loads with the same extractor: "
        "dann_jax.load_run(workdir, extractor=...)."
    )
    return (
        f"{workdir}: its checkpoint does not fit the model of its config.json (--arch "
        f"{config.arch}): {detail}. {fix}"
    )


def load_run(workdir: str | Path, extractor=None, seed: int | None = None):
    """A finished (or interrupted) run of `experiments/digits.py`, `adapt.py` or `fit`,
    as a `dann_jax.TrainedModel` (its ``step``: the checkpoint's).

    Reads ``config.json`` and ``results.json`` (or, for a run still going, the newest
    checkpoint with the mean and classes of ``run.json``) and restores the newest intact
    checkpoint of ``seed`` (default: the run's first seed). Pass ``extractor`` again for
    a run trained with your own extractor.

    Raises:
      dann_jax.data.DataError: no run there, or a missing or damaged run file (named,
        with what to do). dann_jax.checkpoint.CheckpointError: no intact checkpoint, or
        one of another model.
    """
    from dann_jax import checkpoint, train
    from dann_jax.resume import run_name, step_of

    workdir = storage.as_path(workdir)  # a folder, or gs://bucket/run
    config, meta, results = _read_run(workdir)
    seed = config.seed if seed is None else seed
    names, shape = tuple(meta["classes"]), tuple(meta["input_shape"])
    _check_classes(workdir, names)
    own = meta.get("extractor", {})
    if extractor is None and own.get("kind") in ("linen", "nnx"):
        raise DataError(
            f"{workdir} was trained with your own extractor ({own['kind']} module "
            f"{own['class']}), which a workdir cannot rebuild. Load it in Python with the "
            f"same module: dann_jax.load_run({str(workdir)!r}, extractor=...) (for NNX: "
            "dann_jax.from_nnx(YourClass, ...)); --predict needs a run of a built-in "
            "architecture."
        )
    model = train.make_model(config, num_classes=len(names), extractor=extractor)
    tx = train.make_optimizer(config)
    seeds = _seeds_saved_with(workdir, seed)
    states = [train.create_train_state(jax.random.key(s), model, tx, shape) for s in seeds]
    like = train.stack_trees(states) if len(seeds) > 1 else states[0]
    ckpt = workdir / run_name(seeds) / "checkpoint"
    try:
        restored = checkpoint.restore_latest(ckpt, like, print)
    except checkpoint.CheckpointMismatch as e:
        raise checkpoint.CheckpointError(_mismatch(workdir, config, extractor, e)) from None
    if restored is None:
        raise _no_checkpoint(workdir, seed, ckpt)
    state = train.tree_index(restored[0], seeds.index(seed)) if len(seeds) > 1 else restored[0]
    mean = np.asarray(meta["mean"], np.float32)
    state = jax.device_get(state)
    choice = _choice(workdir, seed)
    return TrainedModel(model, state, mean, names, shape, config, results, step_of(state), choice)


def _choice(workdir: Path, seed: int) -> dict | None:
    """What a choosing run kept for `seed` (`dann_jax.candidates`), or None; with
    ``trained_to``: the step its candidates got to (their newest checkpoint)."""
    folder = workdir / f"seed_{seed}"
    try:
        kept = json.loads((folder / "choice.json").read_text())
    except (OSError, ValueError):
        return None
    steps = [int(p.name) for p in (folder / "candidates" / "checkpoint").glob("*")
             if p.name.isdigit()]  # fmt: skip
    return {**{k: kept.get(k) for k in ("member", "step", "by", "value")},
            "trained_to": max(steps, default=None)}  # fmt: skip
