"""Wall time until a MNIST -> MNIST-M DANN run first reaches the paper's target accuracy.

The clock starts when this script starts (so reading the data, moving it to the device
and compiling are included) and stops the first time the MNIST-M test accuracy, evaluated
every `--eval-every` steps, reaches `--target-accuracy` (0.7666, the DANN paper's
MNIST -> MNIST-M result). The run then continues to `--steps` (unless
`--stop-at-target`) and the total time is reported too. Evaluation reads the parameters
only: it never touches the training state or its RNG, so training is the same with or
without it.

Needs the upstream files::

    <data-dir>/mnist/    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
                         t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
    <data-dir>/mnist_m/  mnist_m.tar.gz  (or its extracted mnist_m/ folder)

read through TensorFlow Datasets when it is installed (`dann_jax.data.load_domain`), or
else straight from the files with dann_jax's own raw readers (`dann_jax.data.raw`).

Run from the repository root::

    python -m benchmarks.time_to_accuracy --data-dir DIR --out tta.json

The ``--out`` JSON is written however the run ends (Ctrl-C and SIGTERM included); its
``complete`` is true only for a run that finished without diverging, and ``error`` says
why one did not.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: they count towards the wall time

import argparse  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import benchmarks  # noqa: E402

PAPER_ACCURACY = 0.7666  # Ganin et al., JMLR 2016, Table 2: DANN, MNIST -> MNIST-M
IMAGE_SIZE = 28  # the paper's MNIST architecture
EXPECTED = (
    "expected <data-dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz and "
    "<data-dir>/mnist_m/mnist_m.tar.gz (or its extracted mnist_m/ folder)"
)


def elapsed() -> float:
    """Seconds since this script started."""
    return time.perf_counter() - START


def check_data_dir(data_dir: str | None) -> str | None:
    """A one-line error if `data_dir` lacks the MNIST or MNIST-M upstream files, else None."""
    if not data_dir:
        return f"error: --data-dir is required; {EXPECTED}."
    from dann_jax.data import DataError, raw  # cheap: no JAX, no TFDS

    for name in ("mnist", "mnist_m"):
        try:
            raw.check_files(name, data_dir)
        except DataError:
            return f"error: --data-dir {data_dir}: no usable {name} files; {EXPECTED}."
    return None


def load_domains(data_dir: str, tfds_dir: str | None, loader: str) -> tuple[dict, str]:
    """``{name: (x_train, y_train, x_test, y_test)}`` for mnist and mnist_m, and the loader used.

    "tfds" goes through `dann_jax.data.load_domain` (prepared once into `tfds_dir`);
    "raw" parses the upstream files with `dann_jax.data.pair.read_raw_domain` (no TFDS);
    "auto" picks tfds when tensorflow_datasets imports, else raw.
    """
    from dann_jax import data
    from dann_jax.data.pair import read_raw_domain

    if loader == "auto":
        try:
            import tensorflow_datasets  # noqa: F401
        except ImportError:
            loader = "raw"
        else:
            loader = "tfds"
    out = {}
    for name in ("mnist", "mnist_m"):
        if loader == "tfds":
            d = data.load_domain(name, manual_dir=data_dir, data_dir=tfds_dir)
        else:
            d = read_raw_domain(name, data_dir)  # the main job's raw path, shared
        out[name] = (d.x_train, d.y_train, d.x_test, d.y_test)
    return out, loader


def prepare(domains: dict, resize: str = "auto") -> dict[str, Any]:
    """Host arrays for training: 28x28 RGB uint8 images, labels, the pooled channel mean."""
    from dann_jax import data

    def prep(x, name):
        return data.prepare_images(x, IMAGE_SIZE, resize=data.resize_method(name, resize))

    xs = prep(domains["mnist"][0], "mnist")
    xt, xt_test = prep(domains["mnist_m"][0], "mnist_m"), prep(domains["mnist_m"][2], "mnist_m")
    # Mean pixel of both training sets together (as the reference DANN code), weighted by
    # size so that no concatenated copy is needed.
    ns, nt = len(xs), len(xt)
    mean = (data.channel_mean(xs) * ns + data.channel_mean(xt) * nt) / (ns + nt)
    return {
        "source_images": xs,
        "source_labels": domains["mnist"][1],
        "target_images": xt,
        "mean": mean.astype("float32"),
        "test_images": xt_test,
        "test_labels": domains["mnist_m"][3],
    }


def steps_per_call(requested: int | None, eval_every: int, steps: int, backend: str) -> int:
    """K for compile_train_steps: divides both eval_every and steps.

    Default 50 on accelerators (a rolled loop) and 10 on CPU, where dann_jax unrolls the
    K steps and compile time grows with K.
    """
    k = requested or (10 if backend == "cpu" else 50)
    return math.gcd(k, eval_every, steps)


def train(args: argparse.Namespace, host: dict, report: dict) -> None:
    """Run the DANN training, evaluating every eval_every steps; fills `report` as it goes."""
    import jax

    import dann_jax as dj
    from dann_jax.reproduce import RECIPES

    config = dj.Config(
        arch="mnist",
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        **RECIPES[args.recipe],
    ).validate()
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    k = steps_per_call(args.steps_per_call, args.eval_every, args.steps, jax.default_backend())
    t = elapsed()
    pools = dj.make_train_data(
        host["source_images"], host["source_labels"], host["target_images"], host["mean"]
    )
    data = jax.device_put(pools)
    eval_set = jax.device_put(dj.make_eval_set(host["test_images"], host["test_labels"]))
    jax.block_until_ready((data, eval_set))
    report["timings"]["to_device_s"] = elapsed() - t
    t = elapsed()
    state = dj.create_train_state(
        jax.random.key(config.seed), model, tx, (IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    hp = dj.hyperparams(config)
    jax.block_until_ready(state)
    report["timings"]["init_s"] = elapsed() - t

    run = dj.compile_train_steps(model, tx, num_steps=k, batch_size=config.batch_size)
    evaluate = dj.compile_evaluate(model)
    t = elapsed()
    # AOT compilation fills the jit caches, so the calls below do not compile again; timed
    # here to report compilation apart from training. (A K-steps function without .lower,
    # as dann_jax returns on CPU, compiles inside the first training call instead.)
    if hasattr(run, "lower"):
        run.lower(state, data, hp).compile()
    evaluate.lower(state.params, state.batch_stats, eval_set, data.mean).compile()
    report["timings"]["compile_s"] = elapsed() - t
    report["steps_per_call"] = k

    train_start, eval_s, step = elapsed(), 0.0, 0
    curve, target = report["curve"], args.target_accuracy
    while step < args.steps:
        state, metrics = run(state, data, hp)
        step += k
        if step % args.eval_every and step < args.steps:
            continue
        # Wait for the training steps first, so that eval_s counts evaluation only.
        metrics = jax.device_get(metrics)
        t = elapsed()
        dj.check_finite(metrics, step - k)
        # float() waits for the result, so the next call cannot donate params still in use.
        acc = float(evaluate(state.params, state.batch_stats, eval_set, data.mean)["accuracy"])
        now = elapsed()
        eval_s += now - t
        curve.append({"step": step, "accuracy": acc, "elapsed_s": now})
        print(f"step {step:6d}  target accuracy {acc:.4f}  {now:8.1f} s", flush=True)
        if acc >= target and report["time_to_target_s"] is None:
            report.update(reached=True, time_to_target_s=now, step_at_target=step)
            report["time_to_target_from_training_start_s"] = now - train_start
            if args.stop_at_target:
                break
    report["timings"].update(train_loop_s=elapsed() - train_start, eval_s=eval_s)
    report["steps_run"] = step
    report["final_accuracy"] = curve[-1]["accuracy"] if curve else None
    report["best_accuracy"] = max((c["accuracy"] for c in curve), default=None)


def milestones(curve: list[dict], thresholds: list[float]) -> list[dict]:
    """First evaluation at or above each threshold: accuracy, step, elapsed_s (None if never)."""
    out = []
    for threshold in sorted(thresholds):
        first = next((c for c in curve if c["accuracy"] >= threshold), None)
        out.append(
            {
                "accuracy": threshold,
                "step": first["step"] if first else None,
                "elapsed_s": first["elapsed_s"] if first else None,
            }
        )
    return out


def _accuracies(value: str) -> list[float]:
    """Parse --milestones: comma-separated non-negative accuracies (above 1: never reached)."""
    try:
        out = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        out = None
    if not out or not all(a >= 0.0 for a in out):
        raise argparse.ArgumentTypeError(
            f"{value!r}: give comma-separated accuracies between 0 and 1, e.g. 0.6,0.7"
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with mnist/ and mnist_m/ upstream files")
    p.add_argument("--tfds-dir", help="TFDS data dir for the prepared data (tfds loader)")
    p.add_argument(
        "--loader",
        choices=("auto", "tfds", "raw"),
        default="auto",
        help="tfds (dann_jax.data.load_domain), raw (parse the upstream files), or auto: tfds "
        "when tensorflow_datasets is installed",
    )
    p.add_argument(
        "--recipe",
        choices=("paper", "improved"),
        default="paper",
        help="settings of dann_jax.reproduce.RECIPES: the paper's, or the labelled improved "
        "one (BatchNorm with per-domain statistics, dropout 0.5; SGD as in the paper)",
    )
    # The main job's default length on full data (dann_jax.experiment.DEFAULT_STEPS).
    p.add_argument("--steps", type=int, default=12_000, help="training steps (default 12000)")
    p.add_argument("--batch-size", type=int, default=64, help="images per domain per step")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument(
        "--steps-per-call",
        type=int,
        default=None,
        help="steps per dispatch (default 50, 10 on CPU); reduced to divide --eval-every",
    )
    p.add_argument("--target-accuracy", type=float, default=PAPER_ACCURACY)
    p.add_argument("--stop-at-target", action="store_true", help="stop once the target is met")
    p.add_argument(
        "--milestones",
        type=_accuracies,
        default=[0.6, 0.7],
        help="also report the time to these accuracies, comma-separated (default 0.6,0.7), "
        "so a run that misses the target still shows how fast it got where it got",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def measure(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """Load, train and summarise into `report`; the exit status (0, or 1 on divergence).

    `report` is filled as the run goes, so whatever stops it leaves what was measured;
    ``report["complete"]`` is set only at the end of a run that did not diverge.
    """
    domains, loader = load_domains(args.data_dir, args.tfds_dir, args.loader)
    from dann_jax.config import Config
    from dann_jax.reproduce import RECIPES

    host = prepare(domains, Config(**RECIPES[args.recipe]).resize)
    report["timings"]["load_s"] = elapsed()
    report["data"] = {
        "loader": loader,
        "source_train": len(host["source_images"]),
        "target_train": len(host["target_images"]),
        "target_test": len(host["test_images"]),
    }
    report.update(benchmarks.environment("time_to_accuracy"))
    report["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    from dann_jax import NonFiniteLossError

    try:
        train(args, host, report)
    except NonFiniteLossError as e:
        report["error"] = str(e)
        print(f"error: {e}", file=sys.stderr)
    report["total_s"] = elapsed()
    if "error" in report:
        return 1
    report["milestones"] = milestones(report["curve"], [*args.milestones, args.target_accuracy])
    for m in report["milestones"]:
        when = "never" if m["step"] is None else f"step {m['step']}, {m['elapsed_s']:.1f} s"
        print(f"time to {m['accuracy']}: {when}")
    reached = (
        f"reached {args.target_accuracy} at step {report['step_at_target']} after "
        f"{report['time_to_target_s']:.1f} s"
        if report["reached"]
        else f"did not reach {args.target_accuracy} (best {report['best_accuracy']:.4f})"
    )
    print(f"{reached}; {report['steps_run']} steps in {report['total_s']:.1f} s in total")
    report["complete"] = True
    return 0


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (``timeout``, a batch scheduler) as SystemExit, so `main` still writes --out."""
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Checked before JAX is imported, so a wrong --data-dir fails at once.
    error = check_data_dir(args.data_dir)
    if error:
        print(error, file=sys.stderr)
        return 2
    from dann_jax import io as dj_io  # here, not at the top: keeps the data check fast

    if args.out:
        try:
            dj_io.check_writable(args.out, "--out", is_file=True)
        except dj_io.NotWritable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    report: dict[str, Any] = {
        "complete": False,
        "target_accuracy": args.target_accuracy,
        "reached": False,
        "time_to_target_s": None,
        "time_to_target_from_training_start_s": None,
        "step_at_target": None,
        "timings": {},
        "curve": [],
    }
    try:
        return measure(args, report)
    except BaseException as e:  # Ctrl-C, SIGTERM, a crash: record why the run stopped
        report.setdefault("error", f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        raise
    finally:
        # Written whatever happened, so a run cut short still leaves a complete JSON file
        # (with "complete": false) holding the curve measured so far.
        report.setdefault("total_s", elapsed())
        if args.out:
            dj_io.write_json(args.out, report, make_parents=True)
            print(f"wrote {args.out}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
