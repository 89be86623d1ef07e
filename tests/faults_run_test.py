"""Faults of a run and its files: the config travels with the checkpoint, damaged run files
are recovered or refused, a full disk, SIGTERM and a second process on one workdir end in
one paragraph, and JAX_ENABLE_X64 changes nothing."""

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dann_jax import checkpoint, cli, experiment, run_log
from dann_jax import io as dj_io
from dann_jax.config import Config
from tests.helpers import REPO_ROOT

SMALL = dict(steps=8, steps_per_call=2, eval_every=4, batch_size=8)


@pytest.fixture(autouse=True)
def _no_prepared_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 8-step run (checkpoints at steps 4 and 8) to copy and damage."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    os.environ.setdefault("TFDS_DATA_DIR", str(workdir.parent / "no_tfds_here"))
    results = experiment.run(Config(**SMALL, workdir=str(workdir)), log=lambda s: None)
    return workdir, results


def _copy_run(finished, tmp_path, keep_results=False):
    """A copy of the finished run without its results (as if killed before the end)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    if not keep_results:
        (workdir / "results.json").unlink()
    shutil.rmtree(workdir / "seed_0" / "checkpoint" / "8")  # resumes from step 4
    return workdir, Config(**SMALL, workdir=str(workdir))


def _cli(config, runner=None) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_cli(config, runner=runner)
    return code, " ".join(err.getvalue().split())  # the message is wrapped at 100 columns


def test_without_config_json_the_checkpoint_still_knows_its_config(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    (workdir / "config.json").unlink()
    code, err = _cli(config.replace(lr=0.05))
    assert code == 2 and "different config" in err and "lr: 0.01 there, 0.05 now" in err
    assert "--restart" in err and not (workdir / "results.json").exists()
    lines = []  # the same config: resumed
    results = experiment.run(config, log=lines.append)
    assert any("resuming from step 4" in x for x in lines)
    assert results["seeds"][0]["curves"] == finished[1]["seeds"][0]["curves"]


def test_a_damaged_config_json_is_rewritten_and_the_checkpoint_checked(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    text = (workdir / "config.json").read_text()
    (workdir / "config.json").write_text(text[: len(text) // 2])  # truncated
    lines = []
    results = experiment.run(config, log=lines.append)
    assert any("config.json is damaged" in x for x in lines)
    assert results["seeds"][0]["curves"] == finished[1]["seeds"][0]["curves"]
    assert json.loads((workdir / "config.json").read_text())["lr"] == config.lr


def test_another_architectures_checkpoint_is_named_as_such(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    (workdir / "config.json").unlink()
    code, err = _cli(config.replace(arch="svhn"))
    assert code == 2 and "arch: 'mnist' there, 'svhn' now" in err
    assert "No intact checkpoint" not in err and "damaged" not in err


def test_a_partial_last_metrics_line_is_dropped_and_a_damaged_one_refused(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    metrics = workdir / "seed_0" / "metrics.jsonl"
    full = metrics.read_text()
    metrics.write_text(full + '{"step": 10, "train_lo')  # an append cut by a kill
    lines = []
    experiment.run(config, log=lines.append)
    assert any("dropped a partial last line" in x for x in lines)
    assert metrics.read_text() == full
    workdir2, config2 = _copy_run(finished, tmp_path / "b")
    rows = (workdir2 / "seed_0" / "metrics.jsonl").read_text().splitlines()
    rows[1] = rows[1][:20]
    (workdir2 / "seed_0" / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    code, err = _cli(config2)
    assert code == 2 and "damaged at line 2" in err and "--restart" in err


@pytest.mark.parametrize("where", ["checkpoint", "metrics", "results"])
def test_a_full_disk_names_the_path_and_says_a_rerun_resumes(
    finished, tmp_path, monkeypatch, where
):
    workdir, config = _copy_run(finished, tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", str(workdir / where))

    def no_space(*args, **kwargs):
        raise full

    if where == "checkpoint":
        monkeypatch.setattr(checkpoint, "save", no_space)
    elif where == "metrics":
        monkeypatch.setattr(run_log.Queue, "write", no_space)
    else:
        monkeypatch.setattr(dj_io, "write_json", no_space)
    code, err = _cli(config)
    assert code == 2 and "no space left on the device writing" in err
    assert str(workdir / where) in err and "the same command resumes" in err
    assert "(the last: step 4)" in err
    assert not (workdir / "results.json").exists()


def _digits(*args, cwd, **popen):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(cwd / "nt"))
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "experiments" / "digits.py"), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env, **popen,
    )  # fmt: skip


def test_a_second_process_on_one_workdir_and_sigterm_then_resume(tmp_path):
    args = ("--steps", "2000", "--eval-every", "4", "--steps-per-call", "2", "--batch-size", "8",
            "--workdir", tmp_path / "w")  # fmt: skip
    first = _digits(*args, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while checkpoint_steps(tmp_path / "w") < 2 and time.monotonic() < deadline:
            time.sleep(0.5)  # until two checkpoints exist: mid-run
        assert checkpoint_steps(tmp_path / "w") >= 2
        second = _digits(*args, cwd=tmp_path)
        _, err = second.communicate(timeout=240)
        assert second.returncode == 2 and "is in use by process" in " ".join(err.split())
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    err = " ".join(err.split())
    assert "stopped by SIGTERM" in err and "the same command resumes" in err
    assert "Traceback" not in err and not (tmp_path / "w" / "results.json").exists()
    again = _digits(*args, cwd=tmp_path)  # the same command: it resumes
    try:
        line = ""
        while "resuming from step" not in line and again.poll() is None:
            line = again.stdout.readline()
        assert "resuming from step" in line
    finally:
        again.kill()
        again.communicate()


def checkpoint_steps(workdir: Path) -> int:
    folder = workdir / "seed_0" / "checkpoint"
    return len([p for p in folder.iterdir() if p.name.isdigit()]) if folder.is_dir() else 0


_X64 = """
import json, jax, numpy as np
import dann_jax as dj
from tests.helpers import synthetic_images
c = dj.Config(steps=10, dropout=0.5, augment=True)  # every random draw of a step
m, tx = dj.make_model(c), dj.make_optimizer(c)
s = dj.create_train_state(jax.random.key(0), m, tx, (28, 28, 3))
xs, ys, xt, _ = synthetic_images(64)
run = dj.compile_train_steps(m, tx, num_steps=2, batch_size=8, augment=True)
s, met = run(s, dj.make_train_data(xs, ys, xt), dj.hyperparams(c))
leaves = [np.asarray(x) for x in jax.tree.leaves((s.params, s.batch_stats))]
dtypes = sorted({str(x.dtype) for x in leaves})
values = [float(x.astype(np.float64).sum()) for x in leaves]
print(json.dumps({"x64": bool(jax.config.jax_enable_x64), "dtypes": dtypes, "values": values}))
"""


def test_jax_enable_x64_changes_nothing_in_training():
    outs = []
    for x64 in ("0", "1"):
        env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAX_ENABLE_X64=x64,
                   PYTHONPATH=str(REPO_ROOT))  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", _X64], capture_output=True, text=True,
                              env=env, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [o["x64"] for o in outs] == [False, True]
    assert outs[0]["dtypes"] == outs[1]["dtypes"] == ["float32"]
    np.testing.assert_array_equal(outs[0]["values"], outs[1]["values"])  # bit for bit
