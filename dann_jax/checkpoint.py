"""Checkpoints of a run: orbax's CheckpointManager, named keys, a checksum per save.

Each save is a numbered orbax checkpoint (written to a temporary folder and renamed
when complete, so a kill leaves either the previous checkpoints or a finished new one;
orbax skips unfinished ones). The state is saved with its field names
(`flax.serialization.to_state_dict`), so a restore into a differently structured state
fails loudly instead of silently assigning same-shaped arrays to the wrong fields, and
with a SHA-256 of its bytes, so a damaged file is detected: `restore_latest` then falls
back to the previous complete checkpoint and says so, and stops with `CheckpointError`
when none is intact.

Where the checkpoints go decides who saves them. On a bucket (a ``gs://`` workdir, shared
by every host) every process calls orbax's save, as orbax's multi-process protocol
expects (barriers; process 0 writes the replicated arrays and finalises the step). On
local disks (one per host on TPU VMs) only process 0 saves, as its own primary host.
Reading is always one process's own (process 0 restores and sends the state on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np

from dann_jax import storage

__all__ = [
    "KEEP",
    "CheckpointError",
    "CheckpointMismatch",
    "from_tree",
    "latest_bookkeeping",
    "restore_latest",
    "save",
    "saves_here",
    "state_digest",
    "to_tree",
]

KEEP = 2  # checkpoints kept: the newest, and one to fall back to if it is damaged


class CheckpointError(RuntimeError):
    """No intact checkpoint could be restored; the message names the fix."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint is intact but belongs to another run (another config or model)."""


def to_tree(state: Any) -> dict[str, Any]:
    """Nested dict of host arrays with the state's field names (PRNG keys as raw data)."""
    state = state.replace(rng=jax.random.key_data(state.rng))
    return jax.tree.map(np.asarray, flax.serialization.to_state_dict(state))


def from_tree(tree: dict[str, Any], like: Any) -> Any:
    """Inverse of `to_tree`; refuses (`CheckpointMismatch`) an intact tree whose names,
    shapes or dtypes differ: another model's state."""
    template = like.replace(rng=jax.random.key_data(like.rng))
    want, got = _named_leaves(to_tree(like)), _named_leaves(tree)
    fix = "Rerun with --restart to start this run over, or use another --workdir."
    if set(want) != set(got):
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise CheckpointMismatch(
            f"checkpoint fields differ from the run's (another model's state): missing "
            f"{missing[:5]}, unexpected {extra[:5]}. {fix}"
        )
    for key, value in want.items():
        theirs = np.asarray(got[key])
        if theirs.shape != value.shape or theirs.dtype != value.dtype:
            raise CheckpointMismatch(
                f"checkpoint field {key} is {theirs.dtype}{list(theirs.shape)}, "
                f"the run needs {value.dtype}{list(value.shape)}. {fix}"
            )
    restored = flax.serialization.from_state_dict(template, tree)
    return restored.replace(rng=jax.random.wrap_key_data(restored.rng))


def _named_leaves(tree: Any) -> dict[str, np.ndarray]:
    """{"['params']['conv1']['kernel']": array, ...}: every leaf under its path."""
    return {
        jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def state_digest(tree: dict[str, Any]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, value in sorted(_named_leaves(tree).items()):
        h.update(f"{name}:{value.dtype}:{value.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def saves_here(directory: Path) -> bool:
    """Whether this process takes part in saving to `directory`: every process for a
    bucket (shared: orbax's multi-process save), process 0 for a local folder."""
    return storage.is_url(directory) or jax.process_index() == 0


def _manager(directory: Path, together: bool = False):
    """An orbax CheckpointManager over `directory` (synchronous saves).

    ``together``: every process calls it (a shared bucket; orbax's default multi-process
    options, process 0 primary, orbax creating the folder). Otherwise, with several
    processes each uses it on its own, as its own primary host: process 0 writing to its
    disk, or any process reading.
    """
    import orbax.checkpoint as ocp

    extra = {}
    if jax.process_count() > 1 and not together:
        me = jax.process_index()
        extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}
        )
    options = ocp.CheckpointManagerOptions(
        max_to_keep=KEEP,
        # Alone, made by `save` (orbax cannot create it for a subset of processes).
        create=together,
        enable_async_checkpointing=False,  # the loop waits for the save anyway
        **extra,
    )
    directory = storage.as_path(directory)
    return ocp.CheckpointManager(
        directory if storage.is_url(directory) else directory.absolute(), options=options
    )


def save(directory: Path, state: Any, loop: dict[str, Any]) -> None:
    """Save a host `state` and the loop's bookkeeping as checkpoint number ``state.step``.

    Called by every process that `saves_here` (with the same replicated `state`).
    """
    import orbax.checkpoint as ocp

    tree = to_tree(state)
    step = int(np.asarray(state.step).reshape(-1)[0])
    meta = {**loop, "sha256": state_digest(tree)}
    together = storage.is_url(directory)
    if not together:
        storage.as_path(directory).mkdir(parents=True, exist_ok=True)
    with _manager(directory, together) as mngr:
        if step in mngr.all_steps():
            # Left by a damaged checkpoint that `restore_latest` skipped: this run has
            # retrained to the same step (deterministically), so it replaces it.
            mngr.delete(step)
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), loop=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mngr.wait_until_finished()


def _restore_step(mngr, step: int, like: Any, check) -> tuple[Any, dict[str, Any]]:
    """One checkpoint: its bookkeeping checked by `check` first, then its state, checked
    against its recorded checksum, then against the run's fields (`from_tree`)."""
    import orbax.checkpoint as ocp

    meta = dict(mngr.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"])
    if check is not None:
        check(meta)  # raises CheckpointMismatch: another run's checkpoint
    # Restored as saved (no template): a state of other fields is then told apart from a
    # damaged one, which orbax's structure check would not.
    out = mngr.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), loop=ocp.args.JsonRestore()),
    )
    tree, loop = jax.tree.map(np.asarray, dict(out["state"])), dict(out["loop"])
    digest = loop.pop("sha256", None)
    if digest is None or digest != state_digest(tree):
        raise CheckpointError(f"checkpoint {step}: the saved state does not match its checksum")
    return from_tree(tree, like), loop


def latest_bookkeeping(directory: Path) -> dict[str, Any] | None:
    """The bookkeeping (curves, config, ...) of the newest readable checkpoint, or None."""
    import orbax.checkpoint as ocp

    directory = storage.as_path(directory)
    if not directory.is_dir():
        return None
    with _manager(directory) as mngr:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                args = ocp.args.Composite(loop=ocp.args.JsonRestore())
                return dict(mngr.restore(step, args=args)["loop"])
            except Exception:  # a damaged one: the one before
                continue
    return None


def restore_latest(
    directory: Path, like: Any, log: Callable[[str], None] = print, check=None
) -> tuple[Any, dict[str, Any]] | None:
    """(state, loop bookkeeping) of the newest intact checkpoint, or None when there is none.

    ``check(bookkeeping)`` sees each checkpoint's bookkeeping before its state is read and
    raises `CheckpointMismatch` for another run's checkpoint (another config, another
    model): that stops the restore at once, naming the difference. A damaged or
    unreadable checkpoint is skipped with a message, and the previous one is used; when
    every checkpoint there is damaged, raises `CheckpointError`.
    """
    directory = storage.as_path(directory)
    if not directory.exists():
        return None
    if (directory / "loop.json").exists():
        raise CheckpointError(
            f"{directory} holds a checkpoint in the format of an older dann_jax, which this "
            "version cannot resume. Rerun with --restart to start this run over, or use "
            "another --workdir."
        )
    with _manager(directory) as mngr:
        steps = sorted(mngr.all_steps(), reverse=True)
        problems = []
        for step in steps:
            try:
                restored = _restore_step(mngr, step, like, check)
            except CheckpointMismatch:
                raise
            except Exception as e:  # orbax/tensorstore raise many kinds on damaged files
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                problems.append(f"step {step}: {why}")
                log(f"checkpoint {step} in {directory} is damaged or unreadable ({why})")
                continue
            if problems:
                log(f"resuming from the intact checkpoint of step {step} instead")
            return restored
    if problems:
        raise CheckpointError(
            f"No intact checkpoint in {directory} ({'; '.join(problems)}). Rerun with --restart "
            "to start this run over, or use another --workdir."
        )
    return None
