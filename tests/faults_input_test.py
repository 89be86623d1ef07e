"""Faults of the input and the environment: damaged prepared data, unusable folders, a
batch that cannot fit, out of memory however worded, a platform JAX cannot start, corrupt
or odd files named .npz, a trickling mirror, and arguments checked before any training."""

import contextlib
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from dann_jax import cli, experiment
from dann_jax.config import Config
from dann_jax.data import DataError, download, load_domain, load_npz
from tests.helpers import REPO_ROOT, paragraph, write_mnist

pytestmark = pytest.mark.usefixtures("quiet_tfds", "no_internet")


def _cli(config, runner=None) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_cli(config, runner=runner)
    return code, paragraph(err.getvalue())


def _script(name, *args, cwd, env=None, timeout=120):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
    )  # fmt: skip


# ------------------------------------------------------------------ prepared data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Tiny MNIST files and their prepared TFDS records, to copy and damage."""
    root = tmp_path_factory.mktemp("prepared")
    write_mnist(root / "digits" / "mnist")
    load_domain("mnist", data_dir=root / "tfds", manual_dir=root / "digits")
    return root


def _damage(kind: str, version: Path) -> None:
    record = sorted(version.glob("*train.array_record*"))[0]
    info = version / "dataset_info.json"
    if kind == "truncated":
        record.write_bytes(record.read_bytes()[:200])
    elif kind == "bit_flip":
        raw = bytearray(record.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        record.write_bytes(bytes(raw))
    elif kind == "no_info":
        info.unlink()
    else:
        info.write_text(info.read_text()[:30])


@pytest.mark.parametrize("kind", ["truncated", "bit_flip", "no_info", "cut_info"])
def test_damaged_prepared_records_name_the_folder_or_are_prepared_again(prepared, tmp_path, kind):
    shutil.copytree(prepared, tmp_path / "p")
    version = tmp_path / "p" / "tfds" / "dann_mnist" / "1.0.0"
    _damage(kind, version)
    with pytest.raises(DataError, match=r"records in .*1\.0\.0 are damaged") as err:
        load_domain("mnist", data_dir=tmp_path / "p" / "tfds")
    assert "no network" not in str(err.value) and f"Delete {version}" in str(err.value)
    # With the upstream files at hand, they are prepared again (and said so).
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        domain = load_domain("mnist", data_dir=tmp_path / "p" / "tfds",
                             manual_dir=tmp_path / "p" / "digits")  # fmt: skip
    assert "preparing them again" in err.getvalue() and domain.x_train.shape[0] == 12


def test_a_tfds_dir_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    write_mnist(tmp_path / "digits" / "mnist")
    with pytest.raises(DataError, match=r"afile is a file\. Pass --tfds-dir a writable folder"):
        load_domain("mnist", data_dir=tmp_path / "afile" / "tfds", manual_dir=tmp_path / "digits")
    # A read-only data dir (read-only HOME, no --tfds-dir): os.access as a non-root user.
    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == tmp_path / "ro" else real(p, m)
    )
    with pytest.raises(DataError, match=r"cannot be written. Pass --tfds-dir"):
        load_domain("mnist", data_dir=tmp_path / "ro", manual_dir=tmp_path / "digits")


# ------------------------------------------------------------------ folders and paths


def test_a_workdir_that_is_a_dangling_link_is_refused(tmp_path):
    (tmp_path / "w").symlink_to(tmp_path / "gone")
    with pytest.raises(experiment.RunError, match=r"symbolic link to .*gone, which does not exist"):
        experiment.usable_workdir(tmp_path / "w")


@pytest.mark.parametrize(
    ("script", "flag"),
    [
        ("experiments/reproduce.py", "--out"),
        ("experiments/selection.py", "--out"),
        ("experiments/reproduce.py", "--compilation-cache"),
        ("benchmarks/step_time.py", "--out"),
    ],
)
def test_output_paths_are_checked_before_any_work(tmp_path, script, flag):
    (tmp_path / "blocker").write_text("a file")
    target = tmp_path / "blocker" / "x" if flag != "--out" or "step" not in script else tmp_path
    env = {"PYTHONPATH": str(REPO_ROOT)}
    start = time.monotonic()
    proc = _script(script, flag, target, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = paragraph(proc.stderr)
    assert flag in err and ("is a file" in err or "is a folder" in err) and "Traceback" not in err
    assert time.monotonic() - start < 60  # refused at once, not after training or timing


def test_reproduce_checks_every_mode_before_the_first_cell(tmp_path):
    proc = _script("experiments/reproduce.py", "--modes", "dann,dan", "--out", tmp_path / "o",
                   cwd=tmp_path, env={"PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert proc.returncode == 2 and "--modes has ['dan']" in paragraph(proc.stderr)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ memory, environment


def test_a_batch_that_cannot_fit_is_refused_before_compiling(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "nt"))
    config = Config(steps=4, batch_size=2_000_000, workdir=str(tmp_path / "w"))
    code, err = _cli(config)
    assert code == 2 and "--batch-size 2000000 does not fit in memory" in err
    assert "Lower --batch-size" in err and not (tmp_path / "w" / "results.json").exists()


@pytest.mark.parametrize(
    "message",
    ["RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB",
     "INTERNAL: Error dispatching computation: Out of memory allocating 1846272155200 bytes"],
)  # fmt: skip
def test_out_of_memory_however_the_backend_words_it(message):
    def runner(config):
        raise jax.errors.JaxRuntimeError(message)

    code, err = _cli(Config(batch_size=4096, steps=10), runner=runner)
    assert code == 2 and "out of memory" in err and "--batch-size (now 4096" in err


def test_a_platform_jax_cannot_start_is_named(tmp_path):
    proc = _script("experiments/digits.py", "--steps", "2", "--workdir", tmp_path / "w",
                   cwd=tmp_path, env={"JAX_PLATFORMS": "cuda"})  # fmt: skip
    err = paragraph(proc.stderr)
    assert proc.returncode == 2 and "JAX_PLATFORMS='cuda'" in err and "Unset JAX_PLATFORMS" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------ files named .npz


def test_a_corrupt_compressed_npz_is_a_data_error(tmp_path):
    path = tmp_path / "c.npz"
    x = np.random.default_rng(0).integers(0, 255, (50, 28, 28), dtype=np.uint8)
    np.savez_compressed(path, x_train=x, x_test=x)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_train.npy")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 40
    raw[start : start + 64] = bytes(64)  # inside the deflate stream, the CRC left as it was
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"not a readable .npz file"):
        load_npz(path)


def test_a_folder_or_a_pipe_named_npz_says_what_it_is(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(DataError, match=r"is a folder, not an .npz file"):
        load_npz(tmp_path / "d.npz")
    os.mkfifo(tmp_path / "p.npz")
    with pytest.raises(DataError, match="is not a regular file"):
        load_npz(tmp_path / "p.npz")


def test_analyze_on_a_tiny_target_test_set_is_refused_before_training(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(40) % 2, x_test=x[:20],
             y_test=np.arange(20) % 2)  # fmt: skip
    np.savez(tmp_path / "t.npz", x_train=x, x_test=x[:3])
    config = Config(source=str(tmp_path / "s.npz"), target=str(tmp_path / "t.npz"), steps=4,
                    analyze=True, workdir=str(tmp_path / "w"))  # fmt: skip
    with pytest.raises(experiment.RunError, match="--analyze needs at least 10 test images"):
        experiment.run(config, log=lambda s: None)
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ downloads


class _Trickle(http.server.BaseHTTPRequestHandler):
    """/slow/<f> sends 10 bytes every 0.2 s; /fast/<f> the whole body."""

    def do_GET(self):
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/fast/"):
            self.wfile.write(body)
            return
        for i in range(0, len(body), 10):
            try:
                self.wfile.write(body[i : i + 10])
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, *args):
        pass


def test_a_trickling_mirror_is_given_up_with_progress_and_the_next_one_used(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    httpd.body = os.urandom(100_000)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(download, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(download, "PROGRESS_SECONDS", 0.5)
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    source = download.Source((f"{base}/slow/f.bin", f"{base}/fast/f.bin"),
                             sha256=hashlib.sha256(httpd.body).hexdigest())  # fmt: skip
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            path, errors = download.download_file(tmp_path, "f.bin", source, group="x")
    finally:
        httpd.shutdown()
    assert errors == [] and path.read_bytes() == httpd.body
    assert "downloading f.bin:" in err.getvalue() and "MB/s" in err.getvalue()


def test_a_checksum_mismatch_is_not_blamed_on_the_network(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_fetch_verified", lambda *a: ["u: checksum mismatch (...)"])
    with pytest.raises(download.DownloadError) as err:
        download.download_domain("mnist", tmp_path)
    assert "no network" not in str(err.value) and "checksum mismatch" in str(err.value)
