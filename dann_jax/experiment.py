"""The digits experiment behind ``experiments/digits.py``: one config in, results out.

One run = one source/target pair, one mode, ``config.seeds`` seeds, trained by
`dann_jax.loop.train_and_evaluate` (one seed at a time, or all seeds in one vmapped program),
on every device there is (one program over a device mesh). Every ``eval_every`` steps the
run evaluates on the source and target test sets, appends to ``metrics.jsonl`` and
checkpoints; rerunning with the same workdir resumes and ends in the same state as an
uninterrupted run.

Protocol: the reported number is the target test accuracy at the last step. Target
labels are used only for reporting: never to choose a step, a checkpoint or a setting.

Outputs in ``config.workdir``: ``config.json``, ``metrics.jsonl``, ``results.json``
(written last, atomically: its presence means the run completed), ``curves.png``, and
``seed_<k>/checkpoint`` (orbax checkpoints, numbered by step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dann_jax import diagnose, io, loop, memory, storage
from dann_jax.config import Config, resolved_precision
from dann_jax.data.pair import PairData, load_pair
from dann_jax.paper_models import ARCHITECTURES
from dann_jax.workdir import RunError, check_workdir, clear_run, usable_workdir

__all__ = ["DEFAULT_STEPS", "RunError", "check_workdir", "load_data", "run"]

# Steps when --steps is not given: the paper-scale run on full data; on the embedded
# default (2,000 images a domain) a run that ends in a few minutes on a 2-core CPU and
# where DANN has already pulled away from source-only training (README).
DEFAULT_STEPS = {
    "full": 12_000, "synthesised": 12_000, "embedded": 2_000, "npz": 12_000, "images": 12_000,
}  # fmt: skip

EMBEDDED_WARNING = (
    "EMBEDDED DEFAULT DATA: small MNIST subset -> synthetic MNIST-M-style target; "
    "not comparable with the paper's MNIST -> MNIST-M numbers."
)
PROTOCOL = (
    "target accuracy of the model at the last step; target labels used for reporting only "
    "(no model selection on target labels); mean and population std over seeds"
)
CHOICE_PROTOCOL = (
    "target accuracy of the candidate and checkpoint each seed kept by a label-free choice "
    "(--choose: dann_jax.candidates); target labels used for reporting only, never to "
    "choose; mean and population std over seeds"
)


def load_data(config: Config, log: Callable[[str], None] = print) -> PairData:
    """The pair of `config`, preprocessed for its architecture (`dann_jax.data.load_pair`)."""
    # The ResNets' standard input is 224 x 224 (a digit domain paired with one gets that).
    size = ARCHITECTURES[config.arch]["input_size"] if config.arch in ARCHITECTURES else 224
    return load_pair(config, size, log)


def device_info() -> dict[str, Any]:
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


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and (population) standard deviation; (None, None) when a value is missing
    (the target accuracy of a target without labels)."""
    if any(v is None for v in values):
        return None, None
    a = np.asarray(values, np.float64)
    return float(a.mean()), float(a.std())


def check_request(config: Config, log: Callable[[str], None]) -> None:
    """Cheap checks before any data is loaded: domain names, the workdir, surprises."""
    from dann_jax.data import KNOWN_DOMAINS, DataError

    for role in ("source", "target"):
        name = getattr(config, role)
        if name in KNOWN_DOMAINS or Path(name).expanduser().exists():
            continue
        what = "an .npz file" if name.lower().endswith(".npz") else "a known domain or a path"
        raise DataError(
            f"--{role} {name!r} is not {what} that exists. Known domains: "
            f"{', '.join(KNOWN_DOMAINS)}; or give an .npz file, an image folder (one "
            "subfolder per class, or a flat folder for an unlabelled target) or an "
            "image-list file."
        )
    usable_workdir(config.workdir)  # a local folder, or a gs:// bucket (dann_jax.storage)
    if config.tensorboard:
        try:
            import tensorboardX  # noqa: F401
        except ImportError as e:
            raise RunError(
                f"--tensorboard writes through tensorboardX, which does not import ({e}). "
                "pip install tensorboardX (no TensorFlow needed), or drop --tensorboard."
            ) from None
    if config.source == config.target:
        log(
            f"warning: --source and --target are both {config.source!r}: there is no domain "
            "shift to adapt to (fine as a sanity check)."
        )
    every = config.eval_interval
    if every != config.eval_every:
        log(
            f"note: evaluating every {every} steps, the largest multiple of --steps-per-call "
            f"{config.steps_per_call} up to --eval-every {config.eval_every}"
        )


def _train_all(config: Config, data: PairData, workdir: Path, log) -> list[dict[str, Any]]:
    """Every seed's results: all seeds in one vmapped group, or one group per seed."""
    seeds = tuple(range(config.seed, config.seed + config.seeds))
    if config.choose and config.mode == "dann":
        from dann_jax.candidates import train_choosing

        return [train_choosing(config, data, workdir, seed, log) for seed in seeds]
    if config.vmap_seeds and len(seeds) > 1:
        return loop.train_and_evaluate(config, data, workdir, seeds, log)
    per_seed = []
    for seed in seeds:
        hook = None
        if config.analyze:
            from dann_jax import experiment_analysis

            hook = experiment_analysis.make_dev_hook(config, data, seed)
        per_seed += loop.train_and_evaluate(config, data, workdir, (seed,), log, on_eval=hook)
    return per_seed


def _merge_metrics(workdir: Path, per_seed: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` at the top: every seed's records, tagged with the seed."""
    merged = []
    for r in per_seed:
        member = r.get("member", f"seed_{r['seed']}")
        for line in (workdir / member / "metrics.jsonl").read_text().splitlines():
            merged.append(io.dumps({"seed": r["seed"], **json.loads(line)}, indent=None))
    io.write_text(workdir / "metrics.jsonl", "".join(m + "\n" for m in merged))


def _target_outputs(config: Config, data: PairData, per_seed, workdir: Path, log) -> None:
    """What a run says about its target beyond accuracy: each seed's predictions of an
    image-folder target (``predictions.csv``, the first seed's also at the top), and,
    for a target without labels, the label-free validators' scores of the final model."""
    from dann_jax import outputs

    for r in per_seed:
        if data.target_paths is not None:
            path = workdir / f"seed_{r['seed']}" / "predictions.csv"
            outputs.write_predictions(
                path, r["model"], r["state"], data.target_test, data.mean,
                data.target_paths, data.class_names, config.bn_domain("target"),
            )  # fmt: skip
            if r is per_seed[0]:
                io.write_text(workdir / "predictions.csv", path.read_text(encoding="utf-8"))
        if not data.target_labelled:
            domains = outputs.set_domains(config)
            scores = outputs.label_free_scores(
                r["model"], r["state"], data, r["seed"], 1000, domains
            )
            r["validators"] = {k: (v if np.isfinite(v) else None) for k, v in scores.items()}
    if data.target_paths is not None:
        log(f"wrote {workdir / 'predictions.csv'} ({len(data.target_paths)} target images)")
    elif data.info.get("target", {}).get("variant") == "npz":
        log(
            f"note: no predictions.csv: the target {data.info['target']['name']} is an .npz, "
            "whose images have no file names; dann_jax.load_run(workdir).predict(images) "
            "predicts them"
        )


def summarize(config, data, per_seed, analysis, device, wall_seconds) -> dict[str, Any]:
    """The contents of ``results.json``."""
    stats = {
        key: _mean_std([r[key] for r in per_seed])
        for key in ("target_accuracy", "source_accuracy", "domain_accuracy")
    }
    results = {
        "config": dataclasses.asdict(config),
        "device": device,
        "precision": {  # --precision auto resolves per backend (dann_jax.config)
            "setting": config.precision,
            "used": resolved_precision(config.precision, device["platform"]),
        },
        "dataset": data.info,
        "protocol": CHOICE_PROTOCOL if config.choose and config.mode == "dann" else PROTOCOL,
        **{k: v[0] for k, v in stats.items()},
        **{f"{k}_std": v[1] for k, v in stats.items()},
        "seeds": [
            {k: v for k, v in r.items() if k not in ("state", "model", "pretrained")}
            for r in per_seed
        ],
        "analysis": analysis,
        "pretrained": per_seed[0].get("pretrained"),
        "wall_seconds": wall_seconds,
    }
    if not data.target_labelled:
        # No target labels: target_accuracy is null; the label-free scores instead.
        names = per_seed[0].get("validators", {})
        results["validators"] = {
            k: _mean_std([r["validators"][k] for r in per_seed])[0] for k in names
        }
        results["validators_note"] = (
            "label-free validators of the final model (dann_jax.validators; each in its own "
            "direction: see dann_jax.validators.VALIDATORS); the target has no labels"
        )
    if data.info["variant"] == "embedded":
        results["warning"] = EMBEDDED_WARNING
    return results


def _resolve_steps(config: Config, data: PairData, log) -> Config:
    """``steps=None``: the default for the kind of data found."""
    if config.steps is not None:
        return config
    steps = DEFAULT_STEPS[data.info["variant"]]
    log(f"--steps not given: {steps} steps (the default for {data.info['variant']} data)")
    return config.replace(steps=steps)


def _announce(config: Config, data: PairData, device: dict, workdir: Path, log) -> None:
    """One line saying what is about to run."""
    info = data.info
    log(
        f"dann_jax: {config.mode} {info['source']['name']} -> {info['target']['name']} "
        f"({info['variant']} data: {info['source']['train_size']} source / "
        f"{info['target']['train_size']} target train images), {config.steps} steps, "
        f"batch {config.batch_size}+{config.batch_size}, lambda2 {config.lambda2}, "
        f"{config.seeds} seed(s), on {device['global_count']} x {device['kind']}; "
        f"workdir {workdir}"
    )
    if config.analyze and config.mode != "source_only":
        log(
            "--analyze: after this run a source-only reference model is trained too (same "
            "seed and steps, in analysis_source_only/), so the whole job takes about twice "
            "as long"
        )


def run(
    config: Config, log: Callable[[str], None] = print, data: PairData | None = None
) -> dict[str, Any]:
    """Run the experiment described by `config` and write its outputs.

    Args:
      config: the run's settings (validated here); ``steps=None`` picks
        `DEFAULT_STEPS` for the kind of data found.
      log: where progress lines go.
      data: the pair, already loaded with `load_data` for this config's source, target,
        mode, architecture and resize (e.g. shared by the cells of a table); None loads it.

    Returns:
      The results dict also written to ``results.json``.

    Raises:
      ConfigError, RunError, dann_jax.data.DataError, NonFiniteLossError,
      dann_jax.checkpoint.CheckpointError.
    """
    config.validate()
    start = time.perf_counter()
    workdir = storage.as_path(config.workdir)  # keeps the // of gs://bucket/run
    check_request(config, log)
    data = load_data(config, log) if data is None else data
    config = _resolve_steps(config, data, log)
    _check_analysis(config, data)
    with io.exclusive(workdir, "--workdir") if loop.is_writer() else contextlib.nullcontext():
        if config.restart and loop.is_writer():
            clear_run(workdir, log)
        return _run_locked(config, data, workdir, log, start)


# `--analyze` needs this many test images a domain (its proxy A-distance, DEV, t-SNE).
MIN_ANALYSIS_IMAGES = 10


def _check_analysis(config: Config, data: PairData) -> None:
    """Refuse --analyze before training when a test set is too small for it."""
    if not config.analyze:
        return
    small = {r: len(x) for r, x in (("source", data.source_test), ("target", data.target_test))}
    small = {r: n for r, n in small.items() if n < MIN_ANALYSIS_IMAGES}
    if small:
        what = ", ".join(f"the {r} has {n}" for r, n in small.items())
        raise RunError(
            f"--analyze needs at least {MIN_ANALYSIS_IMAGES} test images in each domain "
            f"({what}). Drop --analyze, or give the domain more test images."
        )


def _run_locked(config: Config, data: PairData, workdir: Path, log, start: float) -> dict:
    """`run`'s work once the workdir is this process's."""
    check_workdir(config, workdir, log, data)
    results_path = workdir / "results.json"
    if results_path.exists() and loop.is_writer():
        results_path.unlink()  # about to be rewritten; never leave a stale one behind
    device = device_info()
    _announce(config, data, device, workdir, log)
    log(memory.describe_memory(data, device["global_count"]))
    per_seed = _train_all(config, data, workdir, log)
    if not loop.is_writer():
        return summarize(config, data, per_seed, None, device, time.perf_counter() - start)
    _merge_metrics(workdir, per_seed)
    _target_outputs(config, data, per_seed, workdir, log)
    analysis = None
    if config.analyze:
        from dann_jax import experiment_analysis

        analysis = experiment_analysis.analyze(config, data, per_seed[0], workdir, log)
    _plot(workdir / "curves.png", config, data, per_seed, log)
    results = summarize(config, data, per_seed, analysis, device, time.perf_counter() - start)
    results["warnings"] = diagnose.run_warnings(config, data, per_seed, analysis)
    for w in results["warnings"]:
        log(f"warning (seed {w['seed']}): {w['message']}")
    io.write_json(results_path, results)
    log(_summary_line(results, results_path, workdir))
    return results


def _summary_line(results: dict, results_path: Path, workdir: Path) -> str:
    """The run's last line: accuracies (the target's only where it has labels)."""
    pm = "\u00b1"
    if results["target_accuracy"] is None:
        target = "target accuracy n/a (the target has no labels; validators in results.json)"
    else:
        kept = "kept candidate" if results["protocol"] == CHOICE_PROTOCOL else "last step"
        target = (
            f"target accuracy ({kept}) {results['target_accuracy']:.4f} {pm} "
            f"{results['target_accuracy_std']:.4f}"
        )
    return (
        f"{target}, source accuracy {results['source_accuracy']:.4f} {pm} "
        f"{results['source_accuracy_std']:.4f}, domain accuracy "
        f"{results['domain_accuracy']:.3f}; {results['wall_seconds']:.0f} s. Wrote "
        f"{results_path}, {workdir / 'curves.png'}"
    )


def _short(name: str) -> str:
    """A domain's name for a title: a digit domain's, or the last part of a path."""
    return Path(name).name if "/" in name else name


def _metrics(workdir: Path, member: str) -> list[dict]:
    """Every record of one model's metrics.jsonl."""
    path = workdir / member / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _plot(path: Path, config: Config, data: PairData, per_seed, log) -> None:
    """``curves.png``; without matplotlib the run still completes (with a warning)."""
    from dann_jax import plots  # imports matplotlib only when it draws

    info = data.info
    title = f"{config.mode}: {_short(info['source']['name'])} → {_short(info['target']['name'])}"
    title += f" ({info['variant']} data)"
    if config.mode == "dann":  # lambda is 0 in the other modes
        ramp = {"dann": "the paper's ramp", "constant": "constant"}[config.lambda2_schedule]
        title += f", lambda2 = {config.lambda2:g} ({ramp})"
    # Every record of each seed's metrics.jsonl for the training lines (one a dispatch).
    seeds = [
        {**r, "metrics": _metrics(path.parent, r.get("member", f"seed_{r['seed']}"))}
        for r in per_seed
    ]
    try:
        plots.plot_curves(path, seeds, title)
    except ImportError as e:
        log(f"warning: no curves.png ({e}); pip install matplotlib to get it")
