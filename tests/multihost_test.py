"""Multi-host on CPU: two processes on 127.0.0.1 with 2 devices each train like one
process with 4 devices on the same global batch, and only process 0 writes files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir: Path, num_processes: int, process_id: int, port: int, cwd: Path):
    env = dict(os.environ, TFDS_DATA_DIR=str(cwd / "no_tfds_here"), PYTHONPATH=os.getcwd())
    env.pop("XLA_FLAGS", None)  # the worker sets its own device count
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), str(num_processes), str(process_id), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=env,
    )


def _result(proc) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_two_processes_equal_one_process_with_as_many_devices(tmp_path):
    port = _free_port()
    procs = [_start(tmp_path / f"run_{i}", 2, i, port, tmp_path) for i in range(2)]
    two = [_result(p) for p in procs]
    one = _result(_start(tmp_path / "single", 1, 0, 0, tmp_path))
    assert one["devices"] == two[0]["devices"] == two[1]["devices"] == 4
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
