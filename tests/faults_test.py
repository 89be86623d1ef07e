"""Faults and bad input: a clear error that names the fix, or a recovery that is announced.

One test per case of the faults issue: kills during a checkpoint save, damaged
checkpoints, unusable workdirs, np.save files posing as .npz, out of memory, a
non-finite loss, a failed run pinning its workdir, and silent surprises.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dann_jax import cli, experiment
from dann_jax.config import Config
from dann_jax.config_fields import ConfigError
from dann_jax.data import DataError, load_npz

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "digits.py"
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


def _copy_run(finished, tmp_path) -> tuple[Path, Config]:
    """A copy of the finished run without its results (as if killed before the end)."""
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    (workdir / "results.json").unlink()
    return workdir, Config(**SMALL, workdir=str(workdir))


def _rerun(config: Config) -> tuple[dict, list[str]]:
    lines: list[str] = []
    return experiment.run(config, log=lines.append), lines


def _biggest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_kill_during_a_checkpoint_save_does_not_wedge_the_workdir(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    ckpt = workdir / "seed_0" / "checkpoint"
    shutil.rmtree(ckpt / "8")  # the save of step 8 never completed ...
    partial = ckpt / "8.orbax-checkpoint-tmp-1764460000000000"  # ... it left its temp folder
    shutil.copytree(ckpt / "4", partial)
    shutil.rmtree(partial / "state")
    results, lines = _rerun(config)
    assert any("resuming from step 4" in x for x in lines)
    assert results["seeds"][0]["curves"] == finished[1]["seeds"][0]["curves"]
    assert (ckpt / "8" / "commit_success.txt").exists()


def test_a_flipped_bit_is_detected_and_the_previous_checkpoint_used(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    victim = _biggest_file(workdir / "seed_0" / "checkpoint" / "8" / "state")
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    results, lines = _rerun(config)
    assert any("damaged" in x for x in lines), lines
    assert any("resuming from step 4" in x for x in lines)
    # Resumed from step 4, the run ends exactly as the uninterrupted one.
    assert results["seeds"][0]["curves"] == finished[1]["seeds"][0]["curves"]


def test_a_missing_loop_state_falls_back_and_says_so(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    shutil.rmtree(workdir / "seed_0" / "checkpoint" / "8" / "loop")
    _, lines = _rerun(config)
    assert any("damaged or unreadable" in x for x in lines), lines
    assert any("resuming from step 4" in x for x in lines)


def test_no_intact_checkpoint_stops_with_restart_as_the_fix(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    for step in ("4", "8"):  # the saved arrays are gone, the folders and metadata stay
        for data in (workdir / "seed_0" / "checkpoint" / step / "state").glob("**/d"):
            shutil.rmtree(data)
    code, err = _cli_in_process(config)
    assert code == 2 and "--restart" in err and "No intact checkpoint" in err
    assert not (workdir / "results.json").exists()


def _cli_in_process(config, runner=None) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_cli(config, runner=runner)
    return code, " ".join(err.getvalue().split())  # the message is wrapped at 100 columns


def _cli(*args, cwd):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    env["TFDS_DATA_DIR"] = str(Path(cwd) / "no_tfds_here")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_unusable_workdir_is_refused_before_loading_data(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    workdir = blocker if where == "file" else blocker / "run"
    proc = _cli("--workdir", workdir, "--steps", "4", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = " ".join(proc.stderr.split())  # the message is wrapped at 100 columns
    assert "is a file" in err and "--workdir" in err
    assert "EMBEDDED" not in proc.stdout + proc.stderr  # refused before any data was loaded


def test_an_np_save_array_named_npz_is_a_data_error(tmp_path):
    path = tmp_path / "mine.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"np\.savez"):
        load_npz(path)


def test_out_of_memory_names_the_flag_to_lower():
    def runner(config):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB")

    code, err = _cli_in_process(Config(batch_size=4096, steps=10), runner=runner)
    assert code == 2 and "--batch-size (now 4096" in err and "--restart" in err


def test_non_finite_loss_names_the_component_and_the_fix(tmp_path):
    config = Config(**SMALL, lr=1e12, workdir=str(tmp_path / "w"))
    code, err = _cli_in_process(config)
    assert code == 2 and "at step" in err and "--restart" in err
    assert "label_loss (" in err or "domain_loss (" in err, err
    assert not (tmp_path / "w" / "results.json").exists()
    # The run saved no checkpoint, so the advice is accepted on the same workdir.
    results, lines = _rerun(config.replace(lr=0.01))
    assert results["config"]["lr"] == 0.01
    assert any("saved no checkpoint; replacing its config" in x for x in lines)


def test_restart_starts_over_a_run_with_another_config(finished, tmp_path):
    workdir, config = _copy_run(finished, tmp_path)
    other = config.replace(lambda2=0.5)
    code, err = _cli_in_process(other)
    assert code == 2 and "different config" in err and "--restart" in err
    results, lines = _rerun(other.replace(restart=True))
    assert any("--restart: deleted the earlier run" in x for x in lines)
    assert not any("resuming" in x for x in lines)
    assert results["config"]["lambda2"] == 0.5
    assert json.loads((workdir / "config.json").read_text())["lambda2"] == 0.5


def test_steps_per_call_above_eval_every_is_refused_only_when_the_user_set_it():
    with pytest.raises(ConfigError, match="--steps-per-call 50 is larger than --eval-every 10"):
        Config(eval_every=10, steps_per_call=50).validate()
    # Unset, the default adapts to --eval-every: its largest divisor up to 50.
    for every, k in ((10, 10), (30, 30), (500, 50), (120, 40), (60, 30), (53, 1)):
        config = Config(eval_every=every).validate()
        assert (config.call_steps, config.eval_interval) == (k, every)
    assert Config(eval_every=30, steps_per_call=20).eval_interval == 20  # set: rounded down


def test_source_equal_to_target_warns(tmp_path):
    lines: list[str] = []
    experiment.check_request(Config(target="mnist", workdir=str(tmp_path / "w")), lines.append)
    assert any("no domain shift" in x for x in lines)


def test_a_typo_in_the_target_names_the_typo(tmp_path):
    with pytest.raises(DataError, match="--target 'mnist_mm' is not a known domain"):
        experiment.check_request(Config(target="mnist_mm", workdir=str(tmp_path)), print)


@pytest.mark.parametrize(("n", "side"), [(1, 28), (50, 4)])
def test_too_small_domains_are_refused_with_the_minimum(tmp_path, n, side):
    path = tmp_path / "tiny.npz"
    x = np.zeros((n, side, side), np.uint8)
    y = np.arange(n) % 2  # two classes where there are two images
    np.savez(path, x_train=x, y_train=y, x_test=x[:1], y_test=y[:1])
    config = Config(source=str(path), target=str(path), steps=4, steps_per_call=2, eval_every=2)
    with pytest.raises(DataError, match=r"too small to train on.*at least 10 training images"):
        experiment.run(config.replace(workdir=str(tmp_path / "w")), log=lambda s: None)
    assert not (tmp_path / "w" / "results.json").exists()
