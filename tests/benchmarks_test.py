"""Smoke tests of benchmarks/: each script runs in its small form and writes well-formed rows;
the hand-written step and PyTorch-free paths behave; no timing assertions.

The scripts run in subprocesses from the repo root, as a user would run them. PyTorch is
hidden from them by a stub package that fails to import, so the torch rows must say
"not installed" whether or not torch happens to be installed here.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import dann_jax as dj
from benchmarks import handwritten as hw
from benchmarks import step_time, time_to_accuracy

REPO_ROOT = Path(__file__).resolve().parent.parent

ROW_FIELDS = {
    "arch", "batch_size", "impl", "label", "status", "precision", "step_ms_median",
    "step_ms_min", "images_per_s", "speedup_vs_torch_eager", "flops_per_step", "flops_source",
    "achieved_tflops", "peak_tflops", "peak_name", "fraction_of_peak", "compile_s",
    "kernels_per_step", "repeats", "steps_per_repeat", "note",
}  # fmt: skip


def _run_script(args: list[str], tmp_path: Path, timeout: int = 300):
    """Run a benchmark script from the repo root with torch hidden; return the process."""
    stub = tmp_path / "no_torch" / "torch"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text('raise ImportError("torch hidden by benchmarks_test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub.parent), str(REPO_ROOT)]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -------------------------------------------------------------- step_time


def test_step_time_quick_writes_rows(tmp_path):
    out = tmp_path / "step.json"
    args = ["--quick", "--archs", "mnist", "--batch-sizes", "8", "--repeats", "2"]
    # bf16 rows run the same code with another Config; left out to keep the test short.
    impls = [i for i in step_time.IMPLS if not i.endswith("bf16")]
    proc = _run_script(
        [
            "benchmarks/step_time.py",
            *args,
            "--steps-per-call",
            "2",
            "--impls",
            *impls,
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("device_kind", "jax_version", "date", "command", "rows", "load_average"):
        assert key in report
    assert report["usable_cores"] >= 1 and isinstance(report["busy"], bool)
    assert "load_average" in report["after"]
    assert "# before: load average" in proc.stdout and "# after: load average" in proc.stdout
    rows = report["rows"]
    assert [r["impl"] for r in rows] == impls
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert (r["arch"], r["batch_size"]) == ("mnist", 8)
        if r["impl"].startswith("torch"):
            assert r["status"] == "not installed", r
            assert r["step_ms_median"] is None
            continue
        assert r["status"] == "ok", r
        assert 0 < r["step_ms_min"] <= r["step_ms_median"]
        assert r["images_per_s"] == pytest.approx(16 / (r["step_ms_median"] / 1e3))
        assert r["flops_per_step"] > 0 and r["achieved_tflops"] > 0
        assert r["fraction_of_peak"] is None  # no peak for a CPU
        assert r["speedup_vs_torch_eager"] is None  # no torch row to compare with
        assert r["precision"] == ("bf16" if r["impl"].endswith("bf16") else "fp32")
    kernels = {r["impl"]: r["kernels_per_step"] for r in rows}
    # The diagnostics (accuracies, gradient norm) are extra kernels; the update is not.
    assert 0 < kernels["handwritten"] <= kernels["jit_lean"] < kernels["jit"]
    # On CPU: K dispatches of a 1-step program, counted once; it also draws the batch.
    assert kernels["steps"] > kernels["handwritten"]
    assert "not installed" in proc.stdout and "dann_jax jit" in proc.stdout


def test_busy_machine_is_flagged_and_refused(monkeypatch, capsys):
    import benchmarks

    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 5.0, 1.0))
    load = benchmarks.machine_load()
    assert load["busy"] and load["load_average"] == [9.0, 5.0, 1.0]
    assert "BUSY" in benchmarks.describe_load(load)
    assert step_time.main(["--quick", "--require-idle"]) == 2  # refused before any timing
    assert "BUSY" in capsys.readouterr().err
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    idle = benchmarks.machine_load()
    assert not idle["busy"] and "BUSY" not in benchmarks.describe_load(idle)


def test_peak_table():
    assert step_time.peak_for("NVIDIA H100 80GB HBM3", "bf16", True)[0] == 989e12
    assert step_time.peak_for("NVIDIA H100 80GB HBM3", "fp32", True)[0] == 494e12
    assert step_time.peak_for("NVIDIA H100 80GB HBM3", "fp32", False)[0] == 67e12
    assert step_time.peak_for("NVIDIA H200", "bf16", True)[0] == 989e12
    assert step_time.peak_for("NVIDIA H100 PCIe", "bf16", True)[0] == 756e12
    assert step_time.peak_for("cpu", "fp32", True) == (None, None)


def test_cost_analysis_dict_or_list():
    assert step_time._flops_of({"flops": 10.0}) == 10.0
    assert step_time._flops_of([{"flops": 7.0}]) == 7.0
    assert step_time._flops_of([]) is None and step_time._flops_of({}) is None


_HLO = """HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_computation (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %a = f32[8]{0} add(f32[8]{0} %p, f32[8]{0} %p)
  ROOT %m = f32[8]{0} multiply(f32[8]{0} %a, f32[8]{0} %a)
}

%body (s: (s32[], f32[8])) -> (s32[], f32[8]) {
  %s = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8]{0}) %s), index=0
  %x = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %s), index=1
  %f = f32[8]{0} fusion(f32[8]{0} %x), kind=kLoop, calls=%fused_computation
  %g = f32[8]{0} custom-call(f32[8]{0} %f), custom_call_target="__cublas$gemm"
  ROOT %t = (s32[], f32[8]{0}) tuple(s32[] %i, f32[8]{0} %g)
}

ENTRY %main.7 (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %c = s32[] constant(0)
  %t = (s32[], f32[8]{0}) tuple(s32[] %c, f32[8]{0} %x)
  %w = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %t), condition=%cond, body=%body
  %y = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %w), index=1
  ROOT %b = f32[8]{0} bitcast(f32[8]{0} %y)
}
"""


def test_count_kernels_counts_launches_of_one_step():
    # A scanned program: the loop body's fusion and library call, not the bookkeeping.
    assert step_time.count_kernels(_HLO) == 2
    entry_only = _HLO.replace("while(", "copy(").replace(", condition=%cond, body=%body", "")
    assert step_time.count_kernels(entry_only) == 1  # the copy; constants etc. launch nothing
    assert step_time.count_kernels("not HLO") is None


# -------------------------------------------------------------- hand-written step == library


def _random_batch(size: int, n: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {
        "source_images": jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32),
        "source_labels": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
        "target_images": jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32),
    }


def _library_state(arch: str, total: int, start: int):
    """dann_jax's config, model, optimizer and a state at step `start` with random params.

    The parameter tree comes from `create_train_state` under `jax.eval_shape` and is filled
    from numpy: compiling the real initialiser takes several seconds on a CPU.
    """
    size = step_time.SIZES[arch]
    config = dj.Config(arch=arch, steps=total)
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    shapes = jax.eval_shape(
        lambda key: dj.create_train_state(key, model, tx, (size, size, 3)), jax.random.key(0)
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0.0, 0.05, s.shape), jnp.float32), shapes.params
    )
    state = dj.TrainState(
        step=jnp.asarray(start, jnp.int32),
        params=params,
        batch_stats={},
        opt_state=tx.init(params),
        rng=jax.random.key(0),
    )
    return config, model, tx, state


@pytest.mark.parametrize("arch", ["mnist", "svhn"])
def test_handwritten_loss_matches_library(arch):
    """Same params (mapped) and batch: the same DANN loss, so the same model."""
    _, model, _, state = _library_state(arch, 1000, 0)
    mapped = hw.from_flax(state.params)
    # The mapping covers exactly the hand-written model's own parameters (shapes only).
    own = jax.eval_shape(lambda key: hw.init_params(key, arch), jax.random.key(1))
    assert jax.tree.map(jnp.shape, mapped) == jax.tree.map(jnp.shape, own)
    batch, lam = _random_batch(step_time.SIZES[arch]), jnp.float32(0.7)

    @jax.jit
    def library_loss(params):
        out = model.apply({"params": params}, batch["source_images"], batch["target_images"], lam)
        label = dj.classification_loss(out["class_logits"], batch["source_labels"])
        domain = dj.domain_adversarial_loss(
            out["domain_logits_source"], out["domain_logits_target"]
        )
        return label + domain

    ours = jax.jit(hw.loss_fn, static_argnums=3)(mapped, batch, lam, arch)
    np.testing.assert_allclose(float(ours), float(library_loss(state.params)), rtol=1e-5)


def test_handwritten_step_matches_library():
    """Two MNIST steps from the same state: same losses and the same updated parameters
    (so the same gradient reversal, learning-rate schedule and momentum)."""
    total, start = 1000, 300  # mid-run, so the GRL lambda and the lr are not at their ends
    config, model, tx, state = _library_state("mnist", total, start)
    hw_tx = hw.make_optimizer(total)
    hw_state = hw.init_state(jax.tree.map(jnp.copy, hw.from_flax(state.params)), hw_tx, start)
    lib_step = dj.compile_train_step(model, tx)
    hw_step = hw.make_step("mnist", hw_tx, total)
    batch, hp = _random_batch(28), dj.hyperparams(config)
    for _ in range(2):
        state, metrics = lib_step(state, batch, hp)
        hw_state, loss = hw_step(hw_state, batch)
        np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=1e-5)
    for ours, theirs in zip(
        jax.tree.leaves(hw_state[1]), jax.tree.leaves(hw.from_flax(state.params)), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


# -------------------------------------------------------------- time_to_accuracy


def _idx(arr: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0800 | ndim, big-endian dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_digits(root: Path, n_train: int = 192, n_test: int = 64) -> None:
    """MNIST IDX .gz files and an MNIST-M tar.gz in the upstream layouts, random content."""
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            (root / "mnist" / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(_idx(arr)))
    (root / "mnist_m").mkdir()
    with tarfile.open(root / "mnist_m" / "mnist_m.tar.gz", "w:gz") as tar:

        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for split, n in (("train", n_train), ("test", n_test)):
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, n)
            for i in range(n):
                add(f"mnist_m/mnist_m_{split}/{i:08d}.png", _png(images[i]))
            text = "".join(f"{i:08d}.png {labels[i]}\n" for i in range(n))
            add(f"mnist_m/mnist_m_{split}_labels.txt", text.encode())


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    _write_digits(root)
    return root


def test_time_to_accuracy_without_data_exits_2(tmp_path):
    proc = _run_script(
        ["benchmarks/time_to_accuracy.py", "--data-dir", str(tmp_path / "none")], tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data-dir" in lines[0] and "mnist_m.tar.gz" in lines[0]


def test_time_to_accuracy_tiny_run(tmp_path, digits_dir):
    out = tmp_path / "tta.json"
    args = ["--steps", "4", "--eval-every", "2", "--steps-per-call", "2", "--batch-size", "8"]
    args += ["--recipe", "improved"]  # BatchNorm state through the benchmark's loop too
    proc = _run_script(
        [
            "benchmarks/time_to_accuracy.py",
            "--data-dir",
            str(digits_dir),
            "--loader",
            "raw",  # the path taken where tensorflow_datasets is missing (the GPU machine)
            *args,
            "--target-accuracy",
            "0.0",  # reached at the first evaluation, so every field gets filled
            "--milestones",
            "0.6,1.01",
            "--out",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["data"] == {
        "loader": "raw",
        "source_train": 192,
        "target_train": 192,
        "target_test": 64,
    }
    assert [c["step"] for c in report["curve"]] == [2, 4]
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in report["curve"])
    assert report["reached"] is True and report["step_at_target"] == 2
    assert 0 < report["time_to_target_s"] <= report["total_s"]
    assert report["steps_run"] == 4 and report["steps_per_call"] == 2
    for key in ("load_s", "to_device_s", "init_s", "compile_s", "train_loop_s", "eval_s"):
        assert report["timings"][key] >= 0
    for key in ("device_kind", "jax_version", "date", "command"):
        assert key in report
    assert report["settings"]["recipe"] == "improved"
    # 0.0 is reached at the first evaluation, 1.01 never.
    assert [m["accuracy"] for m in report["milestones"]] == [0.0, 0.6, 1.01]
    assert report["milestones"][0]["step"] == 2 and report["milestones"][2]["step"] is None


@pytest.mark.parametrize("bad", ["abc", "0.6,x", "-0.1", ","])
def test_time_to_accuracy_bad_milestones_name_the_fix(bad, capsys):
    with pytest.raises(SystemExit) as e:
        time_to_accuracy.parse_args(["--milestones", bad])
    assert e.value.code == 2
    assert "comma-separated accuracies" in capsys.readouterr().err


def test_time_to_accuracy_milestones():
    curve = [
        {"step": 100, "accuracy": 0.55, "elapsed_s": 3.0},
        {"step": 200, "accuracy": 0.72, "elapsed_s": 4.0},
        {"step": 300, "accuracy": 0.69, "elapsed_s": 5.0},
    ]
    got = time_to_accuracy.milestones(curve, [0.7666, 0.6, 0.7])
    assert got == [
        {"accuracy": 0.6, "step": 200, "elapsed_s": 4.0},
        {"accuracy": 0.7, "step": 200, "elapsed_s": 4.0},
        {"accuracy": 0.7666, "step": None, "elapsed_s": None},
    ]


def test_loaders_agree(tmp_path, digits_dir):
    """The TFDS path and the raw-file fallback give the same arrays."""
    via_tfds, used = time_to_accuracy.load_domains(str(digits_dir), str(tmp_path / "tfds"), "tfds")
    assert used == "tfds"
    via_raw, used = time_to_accuracy.load_domains(str(digits_dir), None, "raw")
    assert used == "raw"
    for name in ("mnist", "mnist_m"):
        for ours, theirs in zip(via_raw[name], via_tfds[name], strict=True):
            np.testing.assert_array_equal(ours, theirs)


# -------------------------------------------------------------- device_check.sh


def test_device_check_script_runs_every_part_on_cpu(tmp_path, digits_dir):
    # The accelerator image lacks tensorflow_datasets (and mlxtend, array_record): hide
    # them, and torch (its rows are tested above), then run the device script with the
    # parts shrunk to a few steps.
    hidden = tmp_path / "hidden"
    for name in ("torch", "tensorflow_datasets", "mlxtend", "array_record"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(f'raise ImportError("{name} hidden")\n')
    out = tmp_path / "out"
    env = dict(
        os.environ,
        PYTHONPATH=str(hidden),
        PYTHON=sys.executable,
        XLA_FLAGS="",
        JAX_PLATFORMS="cpu",
        DATA_DIR=str(digits_dir),
        REPRODUCE_ARGS="--steps 4 --seeds 2 --steps-per-call 2 --eval-every 2 --batch-size 8 "
        "--pairs mnist:mnist_m --modes dann --recipes improved --vmap-seeds on",
        TTA_ARGS="--steps 4 --eval-every 2 --steps-per-call 2 --batch-size 8",
        STEP_ARGS="--quick --impls jit handwritten --repeats 1",
    )
    proc = subprocess.run(
        ["bash", "benchmarks/device_check.sh", str(out), "reproduce", "tta", "step_mnist"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else proc.stdout
    assert proc.returncode == 0, log[-3000:]
    for part in ("reproduce", "tta_paper", "tta_improved", "step_mnist"):
        assert f"== {part}: exit 0" in log, log[-3000:]
    files = sorted(p.name for p in out.iterdir())
    expected = (
        "env.txt log.txt step_mnist.json table.json table.md tta_improved.json tta_paper.json"
    )
    assert files == expected.split()
    table = json.loads((out / "table.json").read_text())
    assert table["complete"] and [r["recipe"] for r in table["rows"]] == ["improved"]
    assert all(r["vmap_seeds"] and len(r["per_seed"]) == 2 for r in table["rows"])
    assert json.loads((out / "tta_improved.json").read_text())["settings"]["recipe"] == "improved"
    rows = json.loads((out / "step_mnist.json").read_text())["rows"]
    assert {r["impl"] for r in rows if r["status"] == "ok"} == {"jit", "handwritten"}
    assert "| mnist → mnist_m | improved | dann |" in proc.stdout  # the summary at the end
