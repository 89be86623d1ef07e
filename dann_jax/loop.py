"""The training loop of the digits job, in small named steps.

`train_group` trains a group of seeds, one seed or several in one vmapped program:

1. `restore_or_init`: the newest intact checkpoint of the group, or fresh states;
2. `place`: state, data pools, hparams and test sets onto the device mesh, once;
3. `run_chunk`: up to ``steps_per_call`` steps in one call, metrics checked for NaN;
4. `evaluate_group`: source and target test accuracy, loss and domain score per seed;
5. `finish`: each seed's last-step numbers.

Every device count is the same code: one program over `dann_jax.sharding.make_mesh`
(the batch split over the devices, the state replicated). Batches depend only on the
seed and the step, so a resumed run ends in the same state as an uninterrupted one.
Only process 0 writes files (checkpoints, ``metrics.jsonl``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax import checkpoint, compiled, io, sharding, train
from dann_jax.config import Config, ConfigError, hyperparams
from dann_jax.data.pair import PairData
from dann_jax.evaluate import compile_evaluate, make_eval_set

__all__ = ["Group", "train_group"]


@dataclasses.dataclass(frozen=True)
class Group:
    """Seeds trained together: one seed, or several stacked along a leading axis."""

    seeds: tuple[int, ...]
    vmapped: bool

    @property
    def name(self) -> str:
        return (
            f"seeds_{self.seeds[0]}-{self.seeds[-1]}" if self.vmapped else f"seed_{self.seeds[0]}"
        )

    def pick(self, tree: Any, i: int) -> Any:
        """Seed i's part of a (possibly stacked) pytree."""
        return train.tree_index(tree, i) if self.vmapped else tree


@dataclasses.dataclass
class Placed:
    """What lives on the devices during training."""

    state: Any
    data: dict[str, jax.Array]
    hparams: dict[str, jax.Array]
    eval_sets: dict[str, dict[str, jax.Array]]
    mean: jax.Array


def is_writer() -> bool:
    """Whether this process writes files (process 0 of a multi-host run)."""
    return jax.process_index() == 0


def restore_or_init(config: Config, group: Group, model, tx, shape, ckpt_dir: Path, log):
    """(state, curves per seed): the newest intact checkpoint, or fresh states at step 0."""
    states = [train.create_train_state(jax.random.key(s), model, tx, shape) for s in group.seeds]
    state = train.stack_trees(states) if group.vmapped else states[0]
    restored = checkpoint.restore_latest(ckpt_dir, state, log)
    if restored is None:
        return state, [[] for _ in group.seeds]
    state, loop = restored
    log(f"{group.name}: resuming from step {step_of(state)} ({ckpt_dir})")
    return state, loop["curves"]


def step_of(state: train.TrainState) -> int:
    """The global step of a state (the first entry when seeds are stacked)."""
    return int(np.asarray(state.step).reshape(-1)[0])


def place(state, data: PairData, config: Config, mesh) -> Placed:
    """State, training pools, hparams and test sets replicated over the mesh, once."""
    eval_sets = {
        "target": make_eval_set(data.target_test, data.target_test_labels),
        "source": make_eval_set(data.source_test, data.source_test_labels),
    }
    put = lambda tree: sharding.put_replicated(tree, mesh)
    mean = data.mean.astype(np.float32)
    return Placed(
        put(state), put(data.train_arrays()), put(hyperparams(config)), put(eval_sets), put(mean)
    )


def run_chunk(run, placed: Placed, group: Group, step: int) -> list[dict[str, float]]:
    """One call of the compiled steps; the mean metrics of each seed over the call.

    Raises `NonFiniteLossError` naming the seed, the step and the loss term.
    """
    placed.state, metrics = run(placed.state, placed.data, placed.hparams)
    metrics = sharding.fetch(metrics)
    out = []
    for i, seed in enumerate(group.seeds):
        mine = {key: group.pick(v, i) for key, v in metrics.items()}
        try:
            train.check_finite(mine, first_step=step)
        except train.NonFiniteLossError as e:
            raise train.NonFiniteLossError(f"seed {seed}: {e}") from None
        out.append({k: float(np.mean(v)) for k, v in mine.items()})
    return out


def evaluate_group(evaluate, placed: Placed, group: Group) -> list[dict[str, float]]:
    """Accuracy, loss and mean domain score on both test sets, one dict per seed."""
    state = placed.state
    out: list[dict[str, float]] = [{} for _ in group.seeds]
    for name, es in placed.eval_sets.items():
        r = sharding.fetch(evaluate(state.params, state.batch_stats, es, placed.mean))
        for i in range(len(group.seeds)):
            for key in ("accuracy", "loss", "domain_score"):
                out[i][f"{name}_{key}"] = float(group.pick(r[key], i))
    return out


def _progress(total: int, initial: int, desc: str):
    """A tqdm bar on a terminal; None when stderr is a log file or tqdm is missing."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr)


def _trim_metrics(paths: list[Path], step: int) -> None:
    """Keep only the records up to `step` (a resumed run's log equals an uninterrupted one)."""
    for path in paths:
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
        io.write_text(path, "".join(ln + "\n" for ln in kept))


class _Eta:
    """Says once, early, how long the rest of the run should take (from its step time).

    The first chunk is left out of the estimate: it includes compilation.
    """

    def __init__(self, remaining: int, log, name: str):
        self.remaining, self.log, self.name = remaining, log, name
        self.chunks, self.start, self.steps, self.said = 0, 0.0, 0, False

    def chunk_done(self, n: int) -> None:
        self.chunks += 1
        self.remaining -= n
        if self.said or self.chunks == 1:
            self.start = time.perf_counter()
            return
        self.steps += n
        seconds = time.perf_counter() - self.start
        if seconds > 2.0 or self.remaining == 0:
            per_step = seconds / self.steps
            self.log(
                f"{self.name}: {1e3 * per_step:.0f} ms per step; about "
                f"{per_step * self.remaining / 60:.1f} min of training left (evaluations extra)"
            )
            self.said = True


def eval_interval(config: Config) -> int:
    """Evaluation interval: a multiple of the steps per call."""
    k = config.steps_per_call
    return max(k, (config.eval_every // k) * k)


def _log_eval(log, group: Group, step: int, total: int, train_m, records) -> None:
    """One plain line per seed and evaluation (when no progress bar is shown)."""
    for seed, t, r in zip(group.seeds, train_m, records, strict=True):
        log(
            f"seed {seed} step {step}/{total}: loss {t['loss']:.4f} "
            f"domain_acc {t['domain_accuracy']:.3f} source_acc {r['source_accuracy']:.4f} "
            f"target_acc {r['target_accuracy']:.4f}"
        )


def _compile_steps(config: Config, model, tx, mesh, group: Group) -> Callable[[int], Any]:
    """A cache of compiled K-step programs, one per chunk length met."""
    cache: dict[int, Any] = {}

    def get(n: int):
        if n not in cache:
            cache[n] = compiled.compile_train_steps(
                model, tx, num_steps=n, batch_size=config.batch_size,
                lambda2_schedule=config.lambda2_schedule, vmap_seeds=group.vmapped, mesh=mesh,
            )  # fmt: skip
        return cache[n]

    return get


def _evaluate_into(evaluate, placed, group, records, curves, on_eval) -> Any:
    """Evaluate every seed into its record and curve; the host copy of the state."""
    host = sharding.fetch(placed.state)
    for i, r in enumerate(evaluate_group(evaluate, placed, group)):
        records[i].update(r)
        if on_eval is not None:
            on_eval(host, records[i])
        curves[i].append(records[i])
    return host


def _mesh_for(config: Config):
    """All devices as one mesh; the batch must split evenly over them."""
    mesh = sharding.make_mesh()
    if config.batch_size % mesh.size:
        raise ConfigError(
            f"--batch-size {config.batch_size} does not split over {mesh.size} devices; "
            f"use a multiple of {mesh.size}."
        )
    return mesh


def _start_metrics(paths: list[Path], step: int) -> None:
    """Each seed's metrics.jsonl, cut back to `step` (process 0 only)."""
    if not is_writer():
        return
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    _trim_metrics(paths, step)


def train_group(
    config: Config,
    data: PairData,
    group: Group,
    workdir: Path,
    log: Callable[[str], None] = print,
    on_eval: Callable[[Any, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the seeds of `group` to ``config.steps`` (resuming) and return their results.

    ``on_eval(host_state, record)`` may add label-free fields to each evaluation record
    (one seed at a time only). Each result has the last-step ``target_accuracy``,
    ``source_accuracy``, ``domain_accuracy`` (discriminator, last training steps),
    ``curves``, the host ``state`` and ``model`` (for analysis) and ``wall_seconds``.
    """
    if group.vmapped and on_eval is not None:
        raise ValueError("on_eval hooks need one seed at a time")
    start = time.perf_counter()
    mesh = _mesh_for(config)
    ckpt_dir = workdir / group.name / "checkpoint"
    metrics_paths = [workdir / f"seed_{seed}" / "metrics.jsonl" for seed in group.seeds]
    model, tx = train.make_model(config), train.make_optimizer(config)
    shape = tuple(data.source_train.shape[1:])
    state, curves = restore_or_init(config, group, model, tx, shape, ckpt_dir, log)
    step = step_of(state)
    _start_metrics(metrics_paths, step)
    placed = place(state, data, config, mesh)
    steps_for = _compile_steps(config, model, tx, mesh, group)
    evaluate = compile_evaluate(model, vmap_seeds=group.vmapped)
    every, last_train = eval_interval(config), [{} for _ in group.seeds]
    bar = _progress(config.steps, step, group.name.replace("_", " "))
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(p.open("a")) for p in metrics_paths] if is_writer() else []
        eta = _Eta(config.steps - step, log, group.name)
        while step < config.steps:
            n = min(config.steps_per_call, config.steps - step, every - step % every)
            last_train = run_chunk(steps_for(n), placed, group, step)
            step += n
            eta.chunk_done(n)
            records = [
                {"step": step, **{f"train_{k}": v for k, v in t.items()}} for t in last_train
            ]
            if bar is not None:
                bar.update(n)
            if step % every == 0 or step == config.steps:
                host = _evaluate_into(evaluate, placed, group, records, curves, on_eval)
                if bar is None:
                    _log_eval(log, group, step, config.steps, last_train, records)
                if is_writer():
                    checkpoint.save(ckpt_dir, host, {"curves": curves})
            for f, record in zip(logs, records, strict=bool(logs)):  # no files off process 0
                f.write(io.dumps(record, indent=None) + "\n")
                f.flush()
    if bar is not None:
        bar.close()
    return finish(config, group, placed, evaluate, curves, last_train, model, start)


def finish(config, group, placed, evaluate, curves, last_train, model, start) -> list[dict]:
    """Each seed's last-step numbers (from the last evaluation, or a new one)."""
    host = sharding.fetch(placed.state)
    finals = None
    results = []
    for i, seed in enumerate(group.seeds):
        if curves[i] and curves[i][-1]["step"] == config.steps:
            final = curves[i][-1]
        else:
            finals = finals or evaluate_group(evaluate, placed, group)
            final = finals[i]
        results.append(
            {
                "seed": seed,
                "target_accuracy": final["target_accuracy"],
                "source_accuracy": final["source_accuracy"],
                "domain_accuracy": last_train[i].get(
                    "domain_accuracy", final.get("train_domain_accuracy")
                ),
                "curves": curves[i],
                "state": group.pick(host, i),
                "model": model,
                "vmapped_with": list(group.seeds) if group.vmapped else None,
                "wall_seconds": time.perf_counter() - start,
            }
        )
    return results
