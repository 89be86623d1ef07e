"""A run's workdir: what it may hold, and whether this run may continue what it holds.

A workdir belongs to one run: one config (``config.json``, also saved inside every
checkpoint) and one pair of domains (``data.json``: a fingerprint of each domain's
prepared images, labels, class names and file names). A rerun or a resume with another
config or other data is refused, naming what differs, unless the earlier run saved no
checkpoint (then nothing is pinned and the new run's record replaces it, with a note);
``--restart`` deletes the earlier run's outputs (only those) first. Every such check is
here: the workdir's records (`check_workdir`) and each checkpoint restored (`same_run`).

A workdir is a local folder or a ``gs://`` URL (`dann_jax.storage`): an `etils.epath.Path`
either way, so the same code reads and writes both.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from typing import Any

import jax
from etils import epath

from dann_jax import io, storage
from dann_jax.config import Config
from dann_jax.data import fingerprint

__all__ = [
    "RESTART", "RunError", "check_workdir", "clear_run", "is_writer", "same_run", "usable_workdir",
]  # fmt: skip

# Fields that may differ between a run and its resumption (how it is run, not what).
RESUMABLE_FIELDS = (
    "workdir", "eval_every", "steps_per_call", "analyze", "tfds_dir", "multihost", "restart",
    "tensorboard", "input",
)  # fmt: skip
# Behaviour of runs whose saved config predates a field, where it differs from today's
# default (resize="auto" came later; before it, every domain was resampled bilinearly).
DEFAULTS_BEFORE_THE_FIELD = {"resize": "bilinear"}


def is_writer() -> bool:
    """Whether this process writes files (process 0 of a multi-host run)."""
    return jax.process_index() == 0


def config_differences(saved: dict, config: Config) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, this config's value)} of the fields a resumption must keep.

    A field the saved config lacks was written before the field existed: the run then had
    that field's default of the time.
    """
    defaults = {**dataclasses.asdict(Config()), **DEFAULTS_BEFORE_THE_FIELD}
    theirs = {**defaults, **saved}
    return {
        k: (theirs.get(k), v)
        for k, v in dataclasses.asdict(config).items()
        if k not in RESUMABLE_FIELDS and theirs.get(k) != v
    }


def describe_differences(diff: dict[str, tuple[Any, Any]]) -> str:
    """``lr: 0.01 there, 0.1 now, ...``"""
    return ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))


# The fix every refusal names: the flag, and its spelling in the Python API.
RESTART = (
    "Add --restart (restart=True with dann_jax.fit) to delete that run and start over, or "
    "use another --workdir"
)


class RunError(RuntimeError):
    """A problem with the run set-up (e.g. a workdir holding a different run)."""


# What a run writes in its workdir (removed by --restart; nothing else there is touched).
_RUN_OUTPUTS = (
    "config.json", "data.json", "run.json", "metrics.jsonl", "results.json", "curves.png",
    "analysis.json", "predictions.csv", "confusion_target.png", "embeddings.png",
)  # fmt: skip
_RUN_FOLDERS = ("seed_*", "seeds_*", "analysis_source_only")


def usable_workdir(workdir: epath.Path) -> None:
    """Refuse a --workdir that is a file, lies under a file, or cannot be written.

    Checked before any data is loaded, so a bad path fails in a second, not minutes. A
    URL must be a bucket this machine can reach (`dann_jax.storage.check_url`).
    """
    try:
        if storage.is_url(workdir):
            storage.check_url(workdir, "--workdir")
        else:
            io.check_writable(workdir, "--workdir")
    except (io.NotWritable, storage.UnusableURL) as e:
        raise RunError(str(e)) from None


def clear_run(workdir: epath.Path, log: Callable[[str], None]) -> None:
    """--restart: delete an earlier run's outputs in `workdir` (only those)."""
    workdir = storage.as_path(workdir)
    removed = [workdir / name for name in _RUN_OUTPUTS if (workdir / name).exists()]
    removed += [p for pattern in _RUN_FOLDERS for p in workdir.glob(pattern) if p.is_dir()]
    for path in removed:
        if not path.is_dir():
            path.unlink()
        elif storage.is_url(path):
            path.rmtree()
        else:
            shutil.rmtree(path)
    if removed:
        log(f"--restart: deleted the earlier run in {workdir} ({len(removed)} entries)")


def has_checkpoint(workdir: epath.Path) -> bool:
    """Whether any seed of the run in `workdir` got as far as a saved checkpoint."""
    workdir = storage.as_path(workdir)
    return any(
        any(p.name.isdigit() for p in ckpt.iterdir())
        for pattern in ("seed_*/checkpoint", "seeds_*/checkpoint")
        for ckpt in workdir.glob(pattern)
        if ckpt.is_dir()
    )


def check_workdir(
    config: Config, workdir: epath.Path, log: Callable[[str], None] = print, data=None
) -> None:
    """Refuse a workdir that holds a run with a different config or (given the pair
    `data`, a `dann_jax.data.pair.PairData`) other data; record this run's.

    A run that failed before its first checkpoint (a NaN or out-of-memory at the start)
    pins nothing: a new config or new data replace its record, with a note.
    """
    workdir = storage.as_path(workdir)
    pinned = has_checkpoint(workdir)
    _check_config(config, workdir, log, pinned)
    mine = None if data is None else fingerprint.pair_fingerprint(data)
    if mine is not None:
        _check_data(mine, workdir, log, pinned)
    if is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
        io.write_json(workdir / "config.json", dataclasses.asdict(config))
        if mine is not None:
            io.write_json(workdir / "data.json", mine)


def _check_config(config: Config, workdir: epath.Path, log, pinned: bool) -> None:
    """Refuse another config's run (from config.json, or its checkpoints' own copy)."""
    theirs = _read_json(
        workdir / "config.json", log, "the config saved inside the checkpoints is checked instead"
    )
    if theirs is None:  # config.json gone or damaged: the checkpoints carry their config
        theirs = _checkpointed_config(workdir)
    if theirs is None:
        return
    diff = config_differences(theirs, config)
    what = describe_differences(diff)
    if diff and pinned:
        raise RunError(
            f"The workdir {workdir} holds a run with a different config ({what}). {RESTART}."
        )
    if diff:
        log(f"the run in {workdir} saved no checkpoint; replacing its config ({what})")


def _check_data(mine: dict, workdir: epath.Path, log, pinned: bool) -> None:
    """Refuse a run in `workdir` that was trained on other data (data.json)."""
    path = workdir / "data.json"
    theirs = _read_json(path, log, "the data cannot be checked against the run's")
    if theirs is None:
        if pinned and not path.exists():
            log(
                f"note: the run in {workdir} has no record of its data (data.json; written "
                "by an earlier version of dann_jax): it is resumed as it is, and the data "
                "recorded now"
            )
        return
    changes = fingerprint.describe_changes(theirs, mine)
    if changes and pinned:
        raise RunError(
            f"The workdir {workdir} holds a run trained on other data than this run's: "
            f"{changes}. Resuming would train one model on a mix of both, and a finished "
            f"run would report on the new data with the old model. Put back the data the "
            f"run was trained on to continue it; or: {RESTART}."
        )
    if changes:
        log(f"the run in {workdir} saved no checkpoint; replacing its data record ({changes})")


def same_run(config: Config, ckpt_dir) -> Callable[[dict], None]:
    """The check `dann_jax.checkpoint.restore_latest` makes of each checkpoint it would
    restore: one trained with another config is refused (its own copy of the config is
    read, so this holds even when config.json is gone)."""
    from dann_jax import checkpoint

    def check(meta: dict) -> None:
        if "config" not in meta:
            return  # saved before checkpoints carried their config
        diff = config_differences(meta["config"], config)
        if diff:
            raise checkpoint.CheckpointMismatch(
                f"The checkpoints in {ckpt_dir} were trained with a different config "
                f"({describe_differences(diff)}). Add --restart to delete that run and "
                "start over with this config, or use another --workdir."
            )

    return check


def _checkpointed_config(workdir: epath.Path) -> dict | None:
    """The config saved with the newest checkpoint of any seed in `workdir`, or None."""
    from dann_jax import checkpoint

    for ckpt in sorted(workdir.glob("seed*/checkpoint")):
        meta = checkpoint.latest_bookkeeping(ckpt)
        if meta and "config" in meta:
            return meta["config"]
    return None


def _read_json(path: epath.Path, log, instead: str) -> dict | None:
    """A saved JSON object, or None when there is none or it is damaged (said in the log,
    with what is checked `instead`; the file is then written again)."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        return saved
    except (OSError, ValueError) as e:
        log(f"note: {path} is damaged ({e}); {instead}, and {path.name} written again")
        return None
