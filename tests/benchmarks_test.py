"""Smoke tests of benchmarks/: each script runs in its small form and writes well-formed rows;
the hand-written step and PyTorch-free paths behave; no timing assertions.

The scripts run in subprocesses from the repo root, as a user would run them. PyTorch is
hidden from them by a stub package that fails to import, so the torch rows must say
"not installed" whether or not torch happens to be installed here.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from benchmarks import handwritten as hw
from benchmarks import rows, step_time, time_to_accuracy, timing, xla_cost
from tests.helpers import ROW_FIELDS, run_script

REPO_ROOT = Path(__file__).resolve().parent.parent


# -------------------------------------------------------------- step_time


def test_step_time_quick_writes_rows(tmp_path):
    out = tmp_path / "step.json"
    args = ["--quick", "--archs", "mnist", "--batch-sizes", "8", "--repeats", "2"]
    # bf16 rows run the same code with another Config; left out to keep the test short.
    impls = [i for i in step_time.IMPLS if not i.endswith("bf16")]
    proc = run_script(
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
        assert r["precision"] == "fp32"  # the bf16 rows were left out above
    kernels = {r["impl"]: r["kernels_per_step"] for r in rows}
    # The diagnostics (accuracies, gradient norm) are extra kernels; the update is not.
    assert 0 < kernels["handwritten"] <= kernels["jit_lean"] < kernels["jit"]
    # On CPU: K dispatches of a 1-step program, counted once; it also draws the batch.
    assert kernels["steps"] > kernels["handwritten"]
    assert "not installed" in proc.stdout and "dann_jax jit" in proc.stdout


def test_step_time_cut_short_keeps_its_rows(tmp_path, monkeypatch):
    """An interrupt (the device script's deadline sends SIGINT) still writes the JSON,
    with the rows measured so far and ``complete`` false; exit status 130."""

    def measure(args, env, rows):
        rows.append(timing.base_row("mnist", 8, "jit"))
        raise KeyboardInterrupt

    monkeypatch.setattr(step_time, "_measure_all", measure)
    out = tmp_path / "step.json"
    assert step_time.main(["--quick", "--warm-up-s", "0", "--out", str(out)]) == 130
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["stopped"] == "interrupted after 1 rows"
    assert [r["impl"] for r in report["rows"]] == ["jit"] and "after" in report


def test_time_to_accuracy_cut_short_writes_its_json(tmp_path, monkeypatch, digits_dir):
    def measure(args, report):
        report["curve"].append({"step": 100, "accuracy": 0.5, "elapsed_s": 1.0})
        raise KeyboardInterrupt

    monkeypatch.setattr(time_to_accuracy, "measure", measure)
    out = tmp_path / "tta.json"
    with pytest.raises(KeyboardInterrupt):
        time_to_accuracy.main(["--data-dir", str(digits_dir), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["error"] == "KeyboardInterrupt"
    assert report["curve"] == [{"step": 100, "accuracy": 0.5, "elapsed_s": 1.0}]


def test_bf16_rows_are_compared_with_torch_bf16():
    rows_ = [timing.base_row("mnist", 64, i) for i in ("jit", "jit_bf16", "torch_eager")]
    for r, ms in zip(rows_, (2.0, 1.0, 4.0), strict=True):
        r["step_ms_median"] = ms
    timing.finish_rows(rows_, "cpu", True)
    assert rows_[0]["speedup_vs_torch_eager"] == 2.0
    assert rows_[1]["speedup_vs_torch_eager"] is None  # no torch bf16 row: left blank
    bf16 = timing.base_row("mnist", 64, "torch_bf16")
    bf16["step_ms_median"] = 3.0
    timing.finish_rows([*rows_, bf16], "cpu", True)
    assert rows_[1]["speedup_vs_torch_eager"] == 3.0 and bf16["precision"] == "bf16"


def test_expected_seconds_grow_with_the_work():
    small = step_time.parse_args(["--quick", "--impls", "jit", "--warm-up-s", "0"])
    big = step_time.parse_args(["--quick", "--warm-up-s", "0", "--batch-sizes", "8", "16"])
    assert 0 < step_time.expected_seconds(small, "cpu") < step_time.expected_seconds(big, "cpu")
    assert step_time.expected_seconds(big, "gpu") < step_time.expected_seconds(big, "cpu")


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
    assert xla_cost.peak_for("NVIDIA H100 80GB HBM3", "bf16", True)[0] == 989e12
    assert xla_cost.peak_for("NVIDIA H100 80GB HBM3", "fp32", True)[0] == 494e12
    assert xla_cost.peak_for("NVIDIA H100 80GB HBM3", "fp32", False)[0] == 67e12
    assert xla_cost.peak_for("NVIDIA H200", "bf16", True)[0] == 989e12
    assert xla_cost.peak_for("NVIDIA H100 PCIe", "bf16", True)[0] == 756e12
    assert xla_cost.peak_for("cpu", "fp32", True) == (None, None)


def test_cost_analysis_dict_or_list():
    assert xla_cost._flops_of({"flops": 10.0}) == 10.0
    assert xla_cost._flops_of([{"flops": 7.0}]) == 7.0
    assert xla_cost._flops_of([]) is None and xla_cost._flops_of({}) is None


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
    assert xla_cost.count_kernels(_HLO) == 2
    entry_only = _HLO.replace("while(", "copy(").replace(", condition=%cond, body=%body", "")
    assert xla_cost.count_kernels(entry_only) == 1  # the copy; constants etc. launch nothing
    assert xla_cost.count_kernels("not HLO") is None
    # A loop whose body launches less than the rest is not the step (XLA:CPU's
    # random-bit loops): the entry is counted, the loop left out.
    busy_entry = _HLO.replace(
        "  ROOT %b =",
        "".join(f"  %e{i} = f32[8]{{0}} exponential(f32[8]{{0}} %y)\n" for i in range(3))
        + "  ROOT %b =",
    )
    assert xla_cost.count_kernels(busy_entry) == 3


_COMMAND_BUFFER = """HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[]}

%fused_a (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %n = f32[8]{0} negate(f32[8]{0} %p)
}

%command_buffer (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  %f1 = f32[8]{0} fusion(f32[8]{0} %p0), kind=kLoop, calls=%fused_a
  %g = f32[8]{0} custom-call(f32[8]{0} %f1), custom_call_target="__cublas$gemm"
  ROOT %f2 = f32[8]{0} fusion(f32[8]{0} %g), kind=kLoop, calls=%fused_a
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

ENTRY %main (x: f32[8]) -> f32[] {
  %x = f32[8]{0} parameter(0)
  %call = f32[8]{0} call(f32[8]{0} %x), to_apply=%command_buffer
  %c = f32[] constant(0)
  ROOT %r = f32[] reduce(f32[8]{0} %call, f32[] %c), dimensions={0}, to_apply=%add
}
"""


def test_count_kernels_follows_command_buffers():
    # XLA:GPU groups kernels into command buffers, each one `call` in its caller: the
    # three kernels inside count, the call does not; a reduce's to_apply is not followed.
    assert xla_cost.count_kernels(_COMMAND_BUFFER) == 4
    # The same inside a scanned step: the loop body's command buffer is the step.
    body_call = _HLO.replace(
        "  %f = f32[8]{0} fusion(f32[8]{0} %x), kind=kLoop, calls=%fused_computation\n"
        '  %g = f32[8]{0} custom-call(f32[8]{0} %f), custom_call_target="__cublas$gemm"\n',
        "  %g = f32[8]{0} call(f32[8]{0} %x), to_apply=%command_buffer\n",
    )
    cb = _COMMAND_BUFFER.split("\n\n")[2]  # the command buffer computation
    assert "to_apply=%command_buffer" in body_call
    assert xla_cost.count_kernels(body_call + "\n" + cb + "\n") == 3


def test_k_steps_row_takes_its_flops_from_the_one_step_program(monkeypatch):
    """The `steps` row's FLOPs and kernels are one step's program's, not the K-step
    program's divided by K (XLA counts a loop body once: that would be K times too low)."""
    # On a CPU dann_jax dispatches K one-step programs; force the rolled K-step scan an
    # accelerator gets.
    rolled = functools.partial(dj.compile_train_steps, unroll=1)
    monkeypatch.setattr(dj, "compile_train_steps", rolled)
    shape = rows.make_shape("mnist", 8, 4)
    bench = rows.bench_steps(shape, "fp32")
    assert bench.steps_per_call == 4 and "dispatches" not in bench.note
    model, tx, state, hp = rows._library(shape)
    one = rolled(model, tx, num_steps=1, batch_size=8)
    flops, _, _, kernels = xla_cost.compile_with_flops(one, state, shape.data, hp)
    assert bench.flops_per_step == pytest.approx(flops) and bench.kernels == kernels
    k_steps = rolled(model, tx, num_steps=4, batch_size=8)
    k_flops, _, _, k_kernels = xla_cost.compile_with_flops(k_steps, state, shape.data, hp)
    assert k_flops < 1.5 * flops  # the loop body counted once, not four times
    assert k_kernels == pytest.approx(kernels, rel=0.2)  # the body is one step


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
