"""Bad input on the command line (experiments/digits.py, dann_jax.cli): exit status 2,
one paragraph naming the fix, no traceback, no results.json."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import paragraph
from tests.helpers import run_digits_cli as _cli

FAST = ["--steps-per-call", "5", "--eval-every", "10"]


def _assert_clean_failure(proc, *needles, workdir=None):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in paragraph(proc.stderr), (needle, proc.stderr)
    if workdir is not None:
        assert not (Path(workdir) / "results.json").exists()


def test_missing_data_dir_names_the_expected_files(tmp_path):
    empty = tmp_path / "digits"
    empty.mkdir()
    proc = _cli("--data-dir", empty, "--workdir", tmp_path / "w", "--steps", "5", cwd=tmp_path)
    _assert_clean_failure(proc, "train-images-idx3-ubyte", "mnist", workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_unknown_domain_lists_known_ones(tmp_path):
    proc = _cli("--source", "imagenet", "--workdir", tmp_path / "w", cwd=tmp_path)
    _assert_clean_failure(proc, "imagenet", "mnist_m", "usps", "svhn", ".npz")


def test_npz_with_wrong_keys(tmp_path):
    bad = tmp_path / "mine.npz"
    np.savez(bad, images=np.zeros((4, 28, 28), np.uint8))
    proc = _cli("--source", bad, "--target", bad, "--workdir", tmp_path / "w", cwd=tmp_path)
    _assert_clean_failure(proc, "x_train", workdir=tmp_path / "w")


def test_non_finite_loss_names_the_step(tmp_path):
    proc = _cli("--lr", "1e12", "--steps", "20", *FAST, "--workdir", tmp_path / "w", cwd=tmp_path)
    _assert_clean_failure(proc, "diverged", "at step", workdir=tmp_path / "w")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--label-smoothing", "1.5"], "--label-smoothing"),
        (["--lr", "-1"], "--lr"),
    ],
)
def test_bad_flag_values(tmp_path, args, needle):
    proc = _cli(*args, "--workdir", tmp_path / "w", cwd=tmp_path)
    _assert_clean_failure(proc, needle, workdir=tmp_path / "w")


def test_unknown_choice_is_an_argparse_error(tmp_path):
    proc = _cli("--mode", "magic", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("gcsfs") is not None
    or importlib.util.find_spec("google.cloud.storage") is not None,
    reason="the gcs extra is installed here: a gs:// workdir would reach for the bucket",
)
def test_a_bucket_workdir_without_its_clients_is_refused_before_anything_is_written(tmp_path):
    proc = _cli("--workdir", "gs://bucket/run", "--steps", "5", cwd=tmp_path, timeout=120)
    _assert_clean_failure(proc, "gs://bucket/run needs", "pip install 'dann_jax[gcs]'")
    assert not (tmp_path / "gs:").exists()


def test_a_url_orbax_cannot_write_is_refused_before_anything_is_written(tmp_path):
    proc = _cli("--workdir", "s3://bucket/run", "--steps", "5", cwd=tmp_path, timeout=120)
    _assert_clean_failure(proc, "s3://bucket/run", "Mount the bucket")
    assert not (tmp_path / "s3:").exists()


def test_an_eval_interval_below_the_default_steps_per_call_just_works(tmp_path):
    # The user set --eval-every only: --steps-per-call's default adapts (here to 3).
    proc = _cli("--steps", "6", "--eval-every", "3", "--workdir", tmp_path / "w", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [
        r["step"]
        for r in json.loads((tmp_path / "w" / "results.json").read_text())["seeds"][0]["curves"]
    ]
    assert steps == [3, 6]
