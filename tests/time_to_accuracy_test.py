"""benchmarks/time_to_accuracy.py: the tiny run, its exit codes, milestones and loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import time_to_accuracy
from tests.helpers import run_script

# -------------------------------------------------------------- time_to_accuracy


def test_time_to_accuracy_without_data_exits_2(tmp_path):
    proc = run_script(
        ["benchmarks/time_to_accuracy.py", "--data-dir", str(tmp_path / "none")], tmp_path
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--data-dir" in lines[0] and "mnist_m.tar.gz" in lines[0]


def test_time_to_accuracy_tiny_run(tmp_path, digits_dir):
    out = tmp_path / "tta.json"
    args = ["--steps", "4", "--eval-every", "2", "--steps-per-call", "2", "--batch-size", "8"]
    args += ["--recipe", "improved"]  # BatchNorm state through the benchmark's loop too
    proc = run_script(
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
