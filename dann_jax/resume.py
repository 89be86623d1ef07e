"""Resuming a run: the newest intact checkpoint of the same run, on every process.

A checkpoint saves the state and its bookkeeping: the curves so far, the config it was
trained with and the JAX settings. On resume the saved config is compared with the run's
before any state is read (another config's checkpoint is refused, naming the difference,
even when ``config.json`` is gone), and on several hosts process 0 restores and sends
the state to the others.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax import checkpoint, train
from dann_jax.config import Config
from dann_jax.workdir import is_writer, same_run

__all__ = ["bookkeeping", "jax_settings", "restore_or_init", "step_of"]


def run_name(seeds) -> str:
    """The folder of a run's checkpoints: ``seed_<k>``, or ``seeds_<a>-<b>`` when vmapped."""
    return f"seed_{seeds[0]}" if len(seeds) == 1 else f"seeds_{seeds[0]}-{seeds[-1]}"


def step_of(state: train.TrainState) -> int:
    """The global step of a state (the first entry when seeds are stacked)."""
    return int(np.asarray(state.step).reshape(-1)[0])


def _broadcast_from_writer(restored, fresh):
    """Process 0's restored (state, loop) on every process; None when it had none.

    Per-host disks (TPU VMs) hold checkpoints on process 0 only: without this the other
    processes would start at step 0 and wait forever in the first collective.
    """
    from jax.experimental import multihost_utils as mh

    found = bool(mh.broadcast_one_to_all(np.int32(restored is not None)))
    if not found:
        return None
    state, loop = restored if is_writer() else (fresh, {})
    raw = mh.broadcast_one_to_all(checkpoint.to_tree(state))
    payload = np.frombuffer(json.dumps(loop).encode(), np.uint8) if is_writer() else None
    size = int(mh.broadcast_one_to_all(np.int64(0 if payload is None else payload.size)))
    payload = np.zeros(size, np.uint8) if payload is None else payload
    text = np.asarray(mh.broadcast_one_to_all(payload)).tobytes().decode()
    return checkpoint.from_tree(jax.tree.map(np.asarray, raw), fresh), json.loads(text)


def jax_settings() -> dict[str, Any]:
    """The JAX settings a run is recorded with (the program does not depend on x64: its
    draws and dtypes are explicit; a test trains with and without it)."""
    return {"jax_version": jax.__version__, "jax_enable_x64": bool(jax.config.jax_enable_x64)}


def bookkeeping(config: Config, curves) -> dict[str, Any]:
    """What a checkpoint saves beside the state: the curves, and the config it was trained
    with (checked on resume even when config.json is gone)."""
    return {"curves": curves, "config": dataclasses.asdict(config), "jax": jax_settings()}


def restore_or_init(seeds, model, tx, shape, ckpt_dir: Path, log, extractor=None, config=None):
    """(state, curves per seed): the newest intact checkpoint, or fresh states at step 0
    (with the ``extractor``'s variables, e.g. pretrained weights, when given). With a
    ``config``, a checkpoint trained with another config is refused."""
    states = [
        train.create_train_state(jax.random.key(s), model, tx, shape, extractor) for s in seeds
    ]
    state = train.stack_trees(states) if len(seeds) > 1 else states[0]
    check = None if config is None else same_run(config, ckpt_dir)
    restored = checkpoint.restore_latest(ckpt_dir, state, log, check) if is_writer() else None
    if jax.process_count() > 1:
        restored = _broadcast_from_writer(restored, state)
    if restored is None:
        return state, [[] for _ in seeds]
    state, loop = restored
    log(f"{ckpt_dir.parent.name}: resuming from step {step_of(state)} ({ckpt_dir})")
    return state, loop["curves"]
