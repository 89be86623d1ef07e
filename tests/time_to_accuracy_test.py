"""benchmarks/time_to_accuracy.py: its exit codes, milestones and loaders (its tiny run is
checked in device_check_test)."""

from __future__ import annotations

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


# The tiny run (every field of the report, the raw loader) is checked on the run that
# device_check_test makes of it: the same settings, on the device script's path.


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
