"""Multi-host on CPU: two processes on 127.0.0.1 with 2 devices each, fed from the host,
train like one process with 4 devices and resident pools on the same global batch, only
process 0 writes files, and a run
resumed on per-host disks (checkpoints on process 0's only, as on TPU VMs) resumes at the
same step on both processes and ends as an uninterrupted run; with one bucket for both
(a gs:// workdir) both take part in orbax's saves and resume from the bucket."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("multihost_worker.py")
TIMEOUT = 180  # a process waiting for a peer that never comes must fail, not hang


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, num_processes: int, process_id: int, port: int, cwd: Path, *extra, env=()):
    env = dict(os.environ, TFDS_DATA_DIR=str(cwd / "no_tfds_here"), PYTHONPATH=os.getcwd(),
               **dict(env))  # fmt: skip
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    args = [str(workdir), str(num_processes), str(process_id), str(port), *map(str, extra)]
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def _results(procs) -> list[dict]:
    out = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, stderr[-3000:]
            line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
            out.append(json.loads(line.removeprefix("RESULT ")))
    finally:
        for proc in procs:
            proc.kill()
    return out


def _pair(tmp_path, *extra, env=()):
    """Two processes, each with its own workdir (a host's own disk)."""
    port = _free_port()
    return _results(
        [_start(tmp_path / f"run_{i}", 2, i, port, tmp_path, *extra, env=env) for i in range(2)]
    )


HOST_FED = {"WORKER_INPUT": "host"}  # two processes each gather every chunk's rows


def test_two_processes_equal_one_process_and_resume_together(tmp_path):
    (one,) = _results([_start(tmp_path / "single", 1, 0, 0, tmp_path)])
    assert one["devices"] == 4

    # Stopped at step 4 (before its checkpoint): process 0's disk has step 2, process 1's
    # has nothing at all, since only process 0 writes.
    # The two processes are fed from the host (the one process trains on resident pools):
    # the same batches, so the same curves.
    assert all(r["interrupted"] for r in _pair(tmp_path, 4, env=HOST_FED))
    assert (tmp_path / "run_0" / "seed_0" / "checkpoint" / "2").is_dir()
    assert not (tmp_path / "run_1").exists()

    two = _pair(tmp_path, env=HOST_FED)
    for r in two:
        assert r["devices"] == 4
        assert any(line.startswith("input: host (--input host") for line in r["log"]), r["log"]
        assert any("resuming from step 2" in line for line in r["log"]), r["log"]
    curves = [r["seeds"][0]["curves"] for r in (one, *two)]
    assert [c["step"] for c in curves[0]] == [2, 4, 6]
    for other in curves[1:]:
        for a, b in zip(curves[0], other, strict=True):
            for key in ("train_loss", "train_domain_loss", "target_accuracy", "source_accuracy"):
                np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6)
    # Only process 0 writes: results, metrics and checkpoints.
    assert (tmp_path / "run_0" / "results.json").exists()
    assert (tmp_path / "run_0" / "seed_0" / "checkpoint" / "6").is_dir()
    assert not (tmp_path / "run_1").exists()


def test_two_processes_sharing_a_bucket_both_save_and_resume_from_it(tmp_path):
    # A gs:// workdir is one bucket for every host: every process calls orbax's save (one
    # that did not would leave the other waiting at orbax's barriers until the timeout).
    bucket = {"FAKE_GCS_ROOT": str(tmp_path / "gcs")}
    run = tmp_path / "gcs" / "bucket" / "run"

    def pair(*extra):
        port = _free_port()
        return _results(
            [_start("gs://bucket/run", 2, i, port, tmp_path, *extra, env=bucket) for i in range(2)]
        )

    assert all(r["interrupted"] for r in pair(4))
    assert (run / "seed_0" / "checkpoint" / "2" / "commit_success.txt").is_file()
    assert not (run / "seed_0" / "checkpoint" / "4").exists()
    two = pair()
    for r in two:
        assert any("resuming from step 2" in line for line in r["log"]), r["log"]
    a, b = (r["seeds"][0]["curves"] for r in two)
    assert [c["step"] for c in a] == [2, 4, 6] and a == b
    assert (run / "seed_0" / "checkpoint" / "6" / "commit_success.txt").is_file()
    assert json.loads((run / "results.json").read_text())["seeds"][0]["curves"] == a
    assert not (tmp_path / "gs:").exists()
