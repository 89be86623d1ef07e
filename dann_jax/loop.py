"""The training loop of the main job: `train_and_evaluate`, in the style of flax's examples.

One function trains a run's seeds (one seed, or several stacked in one program), or one
seed's candidates (`Members`, each with its own hparams), to ``config.steps``, resuming
from the newest intact checkpoint:

* the state, the training pools and the hparams are replicated over the device mesh
  (stacked models whose count is a multiple of the device count: split over it whole),
  the test sets split along it, once (on the host-fed path, a slab at a time at each
  evaluation: `dann_jax.evaluate.Slabs`);
* chunks of up to ``config.call_steps`` steps are dispatched back to back: chunk i+1 is
  queued before the host reads chunk i's metrics (NaN check, ``metrics.jsonl``), so the
  device never waits for the host between evaluations; on the host-fed path
  (`dann_jax.feed`: ``--input host``, or ``auto`` when the pools do not fit) a thread
  gathers each chunk's batches ahead;
* at every evaluation the queue is drained (every chunk checked for NaN first), both
  test sets are evaluated and a checkpoint is written; a SIGTERM (a preempted VM) saves
  the step reached at the next chunk and stops (`dann_jax.failures.deferred_stops`).

What it writes and says as it goes (``metrics.jsonl``, TensorBoard, progress) is in
`dann_jax.run_log`.

Batches depend only on the seed and the step, so a resumed run ends in the same state as
an uninterrupted one. Only process 0 writes files, but on a bucket (a ``gs://``
workdir) every process takes part in orbax's save; on several hosts process 0 restores
the checkpoint and sends it to the others, so every process resumes at the same step
whatever each host's disk holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax import checkpoint, compiled, failures, feed, io, run_log, sharding, train
from dann_jax.build import hyperparams
from dann_jax.config import Config
from dann_jax.config_fields import ConfigError
from dann_jax.data.pair import PairData
from dann_jax.evaluate import SLAB_BYTES, compile_evaluate
from dann_jax.memory import check_memory
from dann_jax.resume import bookkeeping, jax_settings, restore_or_init, run_name, step_of
from dann_jax.workdir import is_writer

__all__ = ["Members", "is_writer", "run_name", "train_and_evaluate"]


@dataclasses.dataclass(frozen=True)
class Members:
    """Models of one seed trained together in one program, each with its own settings.

    The candidates of a label-free choice (`dann_jax.choose`): every member starts from
    the seed's initial state and draws the seed's batches; only traced values (lambda2,
    loss weights, learning-rate multiples) may differ between their configs.

    Attributes:
      names: each member's folder under the workdir (its ``metrics.jsonl``).
      configs: each member's settings.
      folder: the folder of their stacked checkpoint.
    """

    names: tuple[str, ...]
    configs: tuple[Config, ...]
    folder: str


def _pick(tree: Any, names: Sequence[str], i: int) -> Any:
    """Model i's part of a (possibly stacked) pytree."""
    return train.tree_index(tree, i) if len(names) > 1 else tree


def _evaluate(evaluate, state, eval_sets, mean, names, labelled) -> list[dict[str, Any]]:
    """Accuracy, loss and mean domain score on both test sets, one dict per seed
    (``evaluate``: the compiled evaluation of each set, by name).

    A test set without labels (``labelled[name]`` False: an unlabelled target) gets
    None for its accuracy and loss; its domain score needs no labels.
    """
    out: list[dict[str, Any]] = [{} for _ in names]
    # Models split over the devices (whole models per device) are evaluated replicated,
    # each device taking its share of every test set: one copy of the weights moves.
    mesh = getattr(mean.sharding, "mesh", None)
    params, stats = state.params, state.batch_stats
    if mesh is not None and not all(
        x.sharding.is_fully_replicated for x in jax.tree.leaves(params)
    ):
        params, stats = jax.device_put((params, stats), sharding.replicated(mesh))
    for name, slabs in eval_sets.items():
        r = _over_slabs(functools.partial(evaluate[name], params, stats), slabs, mesh, mean)
        for i in range(len(names)):
            for key, value in r.items():
                known = labelled[name] or key == "domain_score"
                out[i][f"{name}_{key}"] = float(_pick(value, names, i)) if known else None
    return out


def _over_slabs(evaluate, slabs, mesh, mean) -> dict[str, Any]:
    """Accuracy, loss and domain score (host values) of a test set: placed whole (a
    list of one `EvalSet`), or host `Slabs` placed one at a time and their sums added,
    one slab evaluating while the next is placed (a device holds two at most)."""
    keys = ("accuracy", "loss", "domain_score")
    if isinstance(slabs, list):  # resident: evaluated as one
        return sharding.fetch({k: evaluate(slabs[0], mean)[k] for k in keys})
    totals, running = 0.0, None
    for es in slabs:
        placed = sharding.put_sharded(es, mesh, axis=1) if mesh is not None else es
        out = evaluate(placed, mean)["totals"]
        if running is not None:
            totals = totals + np.asarray(sharding.fetch(running), np.float64)
        running = out
    totals = totals + np.asarray(sharding.fetch(running), np.float64)
    n = totals[..., 3]
    return {k: totals[..., i] / n for i, k in enumerate(keys)}


def _mesh_for(config: Config, models: int, members: bool):
    """(all devices as one mesh, how stacked models go on it: None when every model's
    batch is split over the devices, which it must divide; ``"shared"`` or
    ``"per_model"`` hparams when each device trains whole models: their count a multiple
    of the device count, so no gradient crosses devices)."""
    mesh = sharding.make_mesh()
    if models > 1 and mesh.size > 1 and models % mesh.size == 0:
        return mesh, "per_model" if members else "shared"
    if config.batch_size % mesh.size:
        raise ConfigError(
            f"--batch-size {config.batch_size} does not split over {mesh.size} devices; "
            f"use a multiple of {mesh.size}."
        )
    return mesh, None


def _run_info(data: PairData) -> dict[str, Any]:
    """The classes, input shape and normalisation mean a run's checkpoints go with."""
    return {
        "classes": list(data.class_names),
        "input_shape": [int(d) for d in data.source_train.shape[1:]],
        "mean": np.asarray(data.mean, np.float64).tolist(),
    }


def _pretrained(config: Config, log):
    """(the extractor's pretrained variables, what they are) or (None, None)."""
    if config.pretrained is None:
        return None, None
    from dann_jax import pretrained

    return pretrained.load(config, log)


def _place(state, data: PairData, hparams, mesh, split, how: str):
    """State, pools (``how == "device"``; the host path: their host arrays), hparams and
    mean replicated over the mesh (the state, and per-model hparams, split along the
    model axis when each device trains whole models); test sets split along it."""
    put = lambda tree: sharding.put_replicated(tree, mesh)
    if how == "device":
        sets = data.eval_sets(mesh.size).items()
        tests = {k: [sharding.put_sharded(next(iter(v)), mesh, axis=1)] for k, v in sets}
    else:  # the images do not fit on the device: the tests go there a slab at a time
        tests = data.eval_sets(mesh.size, SLAB_BYTES)
    mean = put(data.mean.astype(np.float32))
    models = (lambda t: sharding.put_sharded(t, mesh, axis=0)) if split else put
    hp = models(hparams) if split == "per_model" else put(hparams)
    pools = data.train_data()
    return models(state), put(pools) if how == "device" else pools, hp, tests, mean


def _schedule(config: Config, step: int):
    """(first step, steps) of each dispatch from `step` on: up to ``config.call_steps``,
    ending at every evaluation and at the last step."""
    every = config.eval_interval
    while step < config.steps:
        n = min(config.call_steps, config.steps - step, every - step % every)
        yield step, n
        step += n


def _prepare(config: Config, data: PairData, workdir: Path, keys, folder, model, log):
    """(model, optimizer, state, curves, checkpoint folder, pretrained weights' info,
    input path): the model (``config``'s unless given), restored or fresh, checked to
    fit in memory (which, for ``--input auto``, chooses the input path)."""
    if model is None:
        model = train.make_model(config, num_classes=data.num_classes)
    tx = train.make_optimizer(config)
    ckpt_dir = workdir / folder / "checkpoint"
    shape = tuple(data.source_train.shape[1:])
    extractor, weights = _pretrained(config, log)
    state, curves = restore_or_init(keys, model, tx, shape, ckpt_dir, log, extractor, config)
    fed = feed.chunk_bytes(data.train_data(), config.call_steps, len(keys), config.batch_size)
    how, why = check_memory(
        data, state, sharding.make_mesh().size, config.batch_size, config.input, fed
    )
    log(why)
    if is_writer():  # what a checkpoint needs to be used: `dann_jax.load_run` reads it
        from dann_jax.extractors import describe

        info = {**_run_info(data), "pretrained": weights, "jax": jax_settings(),
                "extractor": describe(model.extractor)}  # fmt: skip
        io.write_json(workdir / "run.json", info, make_parents=True)
    return model, tx, state, curves, ckpt_dir, weights, how


def _layout(config: Config, seeds: tuple[int, ...], members: Members | None):
    """(each model's folder, its seed, the checkpoint folder, the stacked hparams) of a
    run's models: its seeds, or one seed's members."""
    if members is None:
        return tuple(f"seed_{s}" for s in seeds), seeds, run_name(seeds), hyperparams(config)
    if len(seeds) != 1 or len(members.names) != len(members.configs):
        raise ValueError("members train one seed: one name per config")
    hparams = train.stack_trees([hyperparams(c) for c in members.configs])
    return members.names, seeds * len(members.names), members.folder, hparams


def train_and_evaluate(
    config: Config,
    data: PairData,
    workdir: Path,
    seeds: Sequence[int],
    log: Callable[[str], None] = print,
    on_eval: Callable[[Any, Any], None] | None = None,
    model=None,
    members: Members | None = None,
) -> list[dict[str, Any]]:
    """Train `seeds` (or one seed's `members`) to ``config.steps`` (resuming) and return
    each model's results.

    Several seeds (or members) train stacked in one program; one seed alone. ``model``
    replaces the model `config` describes (e.g. a `DANN` over your own extractor).
    ``on_eval(host_state, record)`` may add label-free fields to each evaluation record
    (one model only); with ``members`` it is called once per evaluation as
    ``on_eval(host_states, records)`` with every member's. Each result has the
    last-step ``target_accuracy``, ``source_accuracy``, ``domain_accuracy``
    (discriminator, last training steps), ``curves``, the host ``state`` and ``model``
    (for analysis), ``pretrained`` and ``wall_seconds`` (and ``member``, its name).
    """
    seeds = tuple(seeds)
    names, keys, folder, hparams = _layout(config, seeds, members)
    if len(names) > 1 and on_eval is not None and members is None:
        raise ValueError("on_eval hooks need one seed at a time")
    start = time.perf_counter()
    mesh, split = _mesh_for(config, len(names), members is not None)
    model, tx, state, curves, ckpt_dir, weights, how = _prepare(
        config, data, workdir, keys, folder, model, log
    )
    step, stacked, rng = step_of(state), len(names) > 1, state.rng
    state, pools, hp, tests, mean = _place(state, data, hparams, mesh, split, how)
    evaluate = {  # each test set with its own domain's BatchNorm statistics (config.bn_eval)
        name: compile_evaluate(model, stacked, mesh, config.bn_domain(name))
        for name in ("target", "source")
    }
    labelled = {"source": True, "target": data.target_labelled}
    every, bar = config.eval_interval, run_log.progress(config.steps, step, folder)
    # On CPU a vmapped convolution becomes a grouped one, several times slower per model:
    # stacked models are computed one after another inside the program there.
    stacked_as = "loop" if jax.default_backend() == "cpu" else "vmap"
    with contextlib.ExitStack() as stack:
        stop_asked = stack.enter_context(failures.deferred_stops())
        files = run_log.open_metrics(stack, workdir, names, step, log)
        boards = run_log.open_boards(stack, config, workdir, names, step)
        queue = run_log.Queue(
            names, files, bar, run_log.Eta(config.steps - step, log, folder), boards
        )
        chunks = stack.enter_context(
            feed.inputs(how, pools, _schedule(config, step), rng=rng,
                        batch_size=config.batch_size, mesh=mesh, split=split is not None)
        )  # fmt: skip
        # Leaving by an error (a NaN read, a stop), the chunk queued last may still be
        # running: wait for it, so that the process never exits (and tears its backend
        # down) under a running program, which can crash it after the error's paragraph.
        stack.callback(lambda: _settle(state))
        for first, n, batches in chunks:
            run = compiled.compile_train_steps(
                model, tx, num_steps=n, batch_size=config.batch_size,
                lambda2_schedule=config.lambda2_schedule, vmap_seeds=stacked, mesh=mesh,
                augment=config.augment_ops, stack=stacked_as, split_models=split,
                host_fed=how == "host",
            )  # fmt: skip
            state, metrics = run(state, batches, hp)  # queued: runs while the host reads on
            queue.push(first, n, metrics)
            step = first + n
            if stop_asked():  # SIGTERM (a preempted VM): save this step, then stop
                _save_and_stop(queue, state, ckpt_dir, config, curves, stop_asked(), log)
            if step % every and step < config.steps:
                continue
            records, host = queue.drain(), sharding.fetch(state)
            for i, r in enumerate(_evaluate(evaluate, state, tests, mean, names, labelled)):
                records[i].update(r)
                if on_eval is not None and members is None:
                    on_eval(host, records[i])
            if on_eval is not None and members is not None:
                on_eval(host, records)
            for i, r in enumerate(records):
                curves[i].append(r)
            if bar is None:
                run_log.log_eval(log, names, step, config.steps, records)
            if checkpoint.saves_here(ckpt_dir):  # on a bucket every process, as orbax expects
                checkpoint.save(ckpt_dir, host, bookkeeping(config, curves))
            queue.write(records, durable=True)
    if bar is not None:
        bar.close()
    args = (evaluate, tests, mean, labelled, curves, queue.last, model, start)
    results = _results(config, seeds, names, keys, state, *args)
    return [{**r, "pretrained": weights} for r in results]


def _settle(tree) -> None:
    """Wait for the programs computing `tree`; a failure of theirs is not this one's to
    report (an error is already on its way out, or the results read it next)."""
    with contextlib.suppress(Exception):
        jax.block_until_ready(tree)


def _save_and_stop(queue, state, ckpt_dir, config, curves, signal_name: str, log):
    """A checkpoint of the step training got to (after the NaN check of its chunks),
    then `dann_jax.failures.Stopped`: the same command resumes from there."""
    records, host = queue.drain(), sharding.fetch(state)
    if checkpoint.saves_here(ckpt_dir):
        checkpoint.save(ckpt_dir, host, bookkeeping(config, curves))
    queue.write(records, durable=True)
    log(f"{signal_name}: saved step {records[0]['step']} ({ckpt_dir}) before stopping")
    raise failures.Stopped(signal_name)


def _results(
    config, seeds, names, keys, state, evaluate, tests, mean, labelled, curves, last_train,
    model, start,
):  # fmt: skip
    """Each model's last-step numbers (from the last evaluation, or a new one)."""
    host = sharding.fetch(state)
    finals = None
    results = []
    for i, (name, seed) in enumerate(zip(names, keys, strict=True)):
        if curves[i] and curves[i][-1]["step"] == config.steps:
            final = curves[i][-1]
        else:  # a finished run resumed: nothing trained, evaluate once more
            finals = finals or _evaluate(evaluate, state, tests, mean, names, labelled)
            final = finals[i]
        results.append(
            {
                "seed": seed,
                "member": name,
                "target_accuracy": final["target_accuracy"],
                "source_accuracy": final["source_accuracy"],
                "domain_accuracy": last_train[i].get(
                    "domain_accuracy", final.get("train_domain_accuracy")
                ),
                "curves": curves[i],
                "state": _pick(host, names, i),
                "model": model,
                "vmapped_with": list(seeds) if len(seeds) > 1 else None,
                "wall_seconds": time.perf_counter() - start,
            }
        )
    return results
