"""Tests of dann_jax.data: TFDS builders on tiny upstream-format fixtures, downloads, npz,
embedded pair, synthesised MNIST-M.

Every TFDS data dir is a tmp dir. No test reaches the internet: downloads go to a
server on 127.0.0.1 started in the test process (or to file:// URLs), and every
other test points ``$DANN_DATA_MIRROR`` at a closed local port. The real-data tests
read the offline copies in ``../shared/data/digits`` (relative to the repo root;
``DANN_DIGITS_DIR`` overrides) and skip when they are absent.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.server
import importlib.util
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dann_jax import data
from dann_jax.data import DataError, Domain, download, raw
from tests.helpers import (
    N_TEST,
    N_TRAIN,
    fixture_rng,
    usps_libsvm_text,
    write_bsds_archive,
    write_mnist,
    write_mnist_m_archive,
    write_mnist_m_folder,
    write_svhn,
    write_usps,
    write_usps_libsvm,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def assert_round_trip(domain: Domain, splits, channels: int) -> None:
    """Pixel-exact images and exact labels, in upstream order."""
    for split in ("train", "test"):
        x, y = splits[split]
        got_x, got_y = getattr(domain, f"x_{split}"), getattr(domain, f"y_{split}")
        assert got_x.dtype == np.uint8 and got_y.dtype == np.int32
        assert got_x.shape == (*x.shape[:3], channels)
        np.testing.assert_array_equal(got_x, x.reshape(got_x.shape))
        np.testing.assert_array_equal(got_y, y)
    assert domain.variant == "full"


@pytest.fixture(autouse=True)
def _quiet_tfds():
    """No TFDS progress bars in test output."""
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(False)
    yield


def _closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """Any download a test does not serve itself goes to a dead local port, not upstream."""
    monkeypatch.setenv(download.MIRROR_ENV, _closed_port_url())


# -------------------------------------------------------------- builders on fixtures


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_builder_round_trip(tmp_path, gz):
    splits = write_mnist(tmp_path / "raw" / "mnist", gz=gz)
    d = data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=1)
    assert (tmp_path / "tfds" / "dann_mnist" / "1.0.0").is_dir()
    assert "manual dir" in d.origin


def test_mnist_m_archive_round_trip(tmp_path):
    splits = write_mnist_m_archive(tmp_path / "raw" / "mnist_m")
    d = data.load_domain("mnist_m", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=3)


@pytest.mark.parametrize("nested", [True, False])
def test_mnist_m_extracted_folder(tmp_path, nested):
    splits = write_mnist_m_folder(tmp_path / "raw" / "mnist_m", nested=nested)
    d = data.load_domain("mnist_m", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=3)


def test_mnist_m_loads_what_labels_list(tmp_path):
    # A cut-down bundle: labels list only the first 5 train images.
    splits = write_mnist_m_archive(tmp_path / "raw" / "mnist_m", n_listed={"train": 5})
    d = data.load_domain("mnist_m", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    np.testing.assert_array_equal(d.x_train, splits["train"][0][:5])
    np.testing.assert_array_equal(d.y_train, splits["train"][1][:5])
    assert len(d.x_test) == N_TEST


def test_mnist_m_missing_png_is_clear(tmp_path):
    write_mnist_m_folder(tmp_path / "raw" / "mnist_m")
    (tmp_path / "raw" / "mnist_m" / "mnist_m" / "mnist_m_train" / "00000003.png").unlink()
    with pytest.raises(DataError, match=r"00000003\.png"):
        data.load_domain("mnist_m", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert not (tmp_path / "tfds" / "dann_mnist_m" / "1.0.0").exists()


def test_usps_builder_round_trip(tmp_path):
    splits = write_usps(tmp_path / "raw" / "usps")
    d = data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=1)


# Each process imports TFDS first, then waits at a file barrier so that both look for
# the prepared data at the same moment.
_PREPARE_AT_ONCE = """
import sys, time
from pathlib import Path
import dann_jax.data.builders
from dann_jax import data
tmp = Path(sys.argv[1])
(tmp / f"ready_{sys.argv[2]}").touch()
while len(list(tmp.glob("ready_*"))) < 2:
    time.sleep(0.005)
d = data.load_domain("usps", data_dir=tmp / "tfds", manual_dir=tmp / "raw")
print(d.origin.split("(")[1].split(";")[0], int(d.x_train.astype("int64").sum()))
"""


def test_two_processes_preparing_at_once_do_not_clash(tmp_path):
    import subprocess

    splits = write_usps(tmp_path / "raw" / "usps")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE_AT_ONCE, str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    # One prepared, the other waited for it (or came after) and read the same data.
    last = [out.splitlines()[-1].split() for out, _ in outs]  # TFDS prints above it
    assert sorted(how for how, _ in last) == ["new", "reused"]
    expected = int(splits["train"][0].astype(np.int64).sum())
    assert [int(total) for _, total in last] == [expected, expected]


def test_svhn_builder_round_trip_maps_10_to_0(tmp_path):
    splits = write_svhn(tmp_path / "raw" / "svhn")
    d = data.load_domain("svhn", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=3)
    assert d.y_train.max() <= 9 and (d.y_train == 0).any()


def test_manual_dir_may_be_the_domain_folder(tmp_path):
    splits = write_usps(tmp_path / "usps_only")
    d = data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "usps_only")
    assert_round_trip(d, splits, channels=1)


def test_builds_and_reads_without_tensorflow(tmp_path):
    write_usps(tmp_path / "raw" / "usps")
    data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    if importlib.util.find_spec("tensorflow") is None:
        # Not installed, so the build above cannot have used it.
        assert "tensorflow" not in sys.modules
    assert "tensorflow" not in sys.modules, "TFDS imported TensorFlow"


def test_prepared_data_is_reused_without_raw_files(tmp_path):
    splits = write_mnist(tmp_path / "raw" / "mnist")
    data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    shutil.rmtree(tmp_path / "raw")  # a second call without manual_dir must not need them
    d = data.load_domain("mnist", data_dir=tmp_path / "tfds")
    assert_round_trip(d, splits, channels=1)
    assert "reused" in d.origin
    assert d.source_kind == "prepared records"
    # ...but a manual_dir that is given and gone is never silently ignored.
    with pytest.raises(DataError, match="does not exist"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    d2 = data.load_domain("mnist", data_dir=tmp_path / "tfds", download=False)
    np.testing.assert_array_equal(d2.x_test, d.x_test)


def test_interrupted_preparation_is_not_taken_as_complete(tmp_path, monkeypatch):
    from dann_jax.data import builders

    splits = write_usps(tmp_path / "raw" / "usps")
    calls = {"n": 0}
    original = builders.DigitsBuilder._generate_examples

    def failing(self, images, labels):
        for i, ex in enumerate(original(self, images, labels)):
            if i == 3:
                calls["n"] += 1
                raise KeyboardInterrupt  # like Ctrl-C halfway through a split
            yield ex

    monkeypatch.setattr(builders.DigitsBuilder, "_generate_examples", failing)
    with pytest.raises(KeyboardInterrupt):
        data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert calls["n"] == 1
    assert not builders.is_prepared(builders.make_builder("usps", tmp_path / "tfds"))
    # A killed run leaves an incomplete.* folder: it must be ignored, not read.
    leftover = tmp_path / "tfds" / "dann_usps" / "incomplete.ABC123_1.0.0"
    leftover.mkdir(parents=True, exist_ok=True)
    (leftover / "dataset_info.json").write_text("{}")
    monkeypatch.undo()
    d = data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=1)
    assert "new" in d.origin


def test_tfds_data_source_by_name_reads_prepared_data(tmp_path):
    import tensorflow_datasets as tfds

    splits = write_usps(tmp_path / "raw" / "usps")
    data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    src = tfds.data_source("dann_usps", split="test", data_dir=tmp_path / "tfds", download=False)
    assert len(src) == N_TEST
    np.testing.assert_array_equal(src[2]["image"][..., 0], splits["test"][0][2])


def test_tfds_native_data_source_with_manual_dir(tmp_path):
    import tensorflow_datasets as tfds

    import dann_jax.data.builders  # noqa: F401  (registers dann_* builders)

    splits = write_svhn(tmp_path / "raw" / "svhn")
    src = tfds.data_source(
        "dann_svhn",
        split="train",
        data_dir=tmp_path / "tfds",
        builder_kwargs={"file_format": "array_record"},
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=tmp_path / "raw")
        },
    )
    assert len(src) == N_TRAIN
    np.testing.assert_array_equal(src[3]["image"], splits["train"][0][3])
    assert src[0]["label"] == 0


# -------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("mnist", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]),
        ("mnist_m", ["mnist_m.tar.gz", "mnist_m_train_labels.txt"]),
        ("usps", ["usps.h5"]),
        ("svhn", ["train_32x32.mat", "test_32x32.mat"]),
    ],
)
def test_missing_manual_files_name_expected_files(tmp_path, domain, expected):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError) as err:
        data.load_domain(domain, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    for name in expected:
        assert name in str(err.value)
    assert "layout" in str(err.value).lower()
    assert not (tmp_path / "tfds" / f"dann_{domain}" / "1.0.0").exists()


def test_partial_mnist_names_the_missing_file(tmp_path):
    write_mnist(tmp_path / "raw" / "mnist")
    (tmp_path / "raw" / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"Missing: t10k-labels-idx1-ubyte\.gz"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_corrupt_idx_is_a_data_error(tmp_path):
    write_mnist(tmp_path / "raw" / "mnist")
    (tmp_path / "raw" / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"junk"))
    with pytest.raises(DataError, match="IDX"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_unknown_domain_lists_known_ones():
    with pytest.raises(DataError) as err:
        data.load_domain("cifar10")
    for name in data.KNOWN_DOMAINS:
        assert name in str(err.value)
    assert ".npz" in str(err.value)


def test_no_manual_dir_and_no_download_is_clear(tmp_path):
    with pytest.raises(DataError, match="manual_dir"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds", download=False)


@pytest.mark.parametrize("domain", ["usps", "mnist_m"])
def test_failed_download_says_to_use_a_manual_dir(tmp_path, domain):
    # Both now have a download source; with no reachable mirror the error names the fix.
    with pytest.raises(data.DownloadError, match="manual_dir"):
        data.load_domain(domain, data_dir=tmp_path / "tfds")
    assert not list((tmp_path / "tfds" / "downloads" / "dann_digits" / domain).iterdir())


def _serve_as_file_urls(monkeypatch, src_dir: Path, sha: dict[str, str | None]):
    """Point the MNIST download table at file:// URLs (tests the download path offline)."""
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    table = {
        name: download.Source((src_dir.joinpath(name).resolve().as_uri(),), sha256=sha.get(name))
        for name in download.SOURCES["mnist"]
    }
    monkeypatch.setitem(download.SOURCES, "mnist", table)


def test_download_path_verifies_and_prepares(tmp_path, monkeypatch):
    splits = write_mnist(tmp_path / "upstream")
    sums = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "upstream").iterdir()
    }
    _serve_as_file_urls(monkeypatch, tmp_path / "upstream", sums)
    d = data.load_domain("mnist", data_dir=tmp_path / "tfds")
    assert_round_trip(d, splits, channels=1)
    assert "download" in d.origin
    assert (
        tmp_path / "tfds" / "downloads" / "dann_digits" / "mnist" / "t10k-images-idx3-ubyte.gz"
    ).is_file()


def test_download_checksum_mismatch_and_no_network_are_clear(tmp_path, monkeypatch):
    write_mnist(tmp_path / "upstream")
    _serve_as_file_urls(
        monkeypatch,
        tmp_path / "upstream",
        dict.fromkeys(os.listdir(tmp_path / "upstream"), "0" * 64),
    )
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds")
    _serve_as_file_urls(monkeypatch, tmp_path / "nowhere", {})
    with pytest.raises(DataError, match="no network"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds2")


# -------------------------------------------------------------- downloads over local HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `server.routes[path]`: {'body': bytes, 'range': honour Range?, 'cuts': [n, ...]}.

    Each entry of 'cuts' makes one response stop after n body bytes (the announced
    Content-Length stays whole), like a dropped connection. Unknown paths get 404.
    """

    def do_GET(self):
        self.server.log.append((self.path, self.headers.get("Range")))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, start = route["body"], 0
        asked = self.headers.get("Range")
        if asked and route.get("range", True):
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cuts = route.get("cuts", [])
        self.wfile.write(payload[: cuts.pop(0)] if cuts else payload)

    def log_message(self, *args):
        pass  # quiet test output


@pytest.fixture
def http_files():
    """A file server on 127.0.0.1 in this process: set `.routes`, read `.log`, use `.url`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes, server.log = {}, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def _serve_domain(monkeypatch, server, domain: str, folder: Path, mirrors=("m1",)) -> dict:
    """Serve `folder`'s files under each mirror prefix; SOURCES point there with their md5."""
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    table = {
        name: download.Source(tuple(f"{server.url}/{m}/{name}" for m in mirrors), md5=_md5(b))
        for name, b in files.items()
    }
    monkeypatch.setitem(download.SOURCES, domain, table)
    return files


def _dl_folder(tmp_path: Path, domain: str) -> Path:
    return tmp_path / "tfds" / "downloads" / "dann_digits" / domain


def test_http_download_happy_path_md5(tmp_path, monkeypatch, http_files):
    splits = write_usps_libsvm(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "usps", tmp_path / "upstream")
    http_files.routes = {f"/m1/{n}": {"body": b} for n, b in files.items()}
    d = data.load_domain("usps", data_dir=tmp_path / "tfds")
    assert_round_trip(d, splits, channels=1)
    assert d.source_kind == "download" and "download" in d.origin
    assert sorted(p.name for p in _dl_folder(tmp_path, "usps").iterdir()) == sorted(files)
    assert all(rng is None for _, rng in http_files.log)  # nothing to resume


def test_http_checksum_mismatch_leaves_nothing_as_complete(tmp_path, monkeypatch, http_files):
    write_mnist(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "mnist", tmp_path / "upstream")
    http_files.routes = {f"/m1/{n}": {"body": b"other bytes " + b} for n, b in files.items()}
    with pytest.raises(data.DownloadError, match="checksum mismatch") as err:
        data.load_domain("mnist", data_dir=tmp_path / "tfds")
    assert "md5" in str(err.value) and "manual_dir" in str(err.value)
    assert not list(_dl_folder(tmp_path, "mnist").iterdir())  # no final file, no .part
    assert not (tmp_path / "tfds" / "dann_mnist" / "1.0.0").exists()


@pytest.mark.parametrize("first", ["404", "wrong file", "refused"])
def test_http_dead_first_mirror_uses_the_second(tmp_path, monkeypatch, http_files, first):
    splits = write_mnist(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "mnist", tmp_path / "upstream", ("m1", "m2"))
    http_files.routes = {f"/m2/{n}": {"body": b} for n, b in files.items()}
    if first == "wrong file":
        http_files.routes |= {f"/m1/{n}": {"body": b[::-1]} for n, b in files.items()}
    if first == "refused":
        dead = _closed_port_url()
        table = {
            n: download.Source((f"{dead}/{n}", s.urls[1]), md5=s.md5)
            for n, s in download.SOURCES["mnist"].items()
        }
        monkeypatch.setitem(download.SOURCES, "mnist", table)
    d = data.load_domain("mnist", data_dir=tmp_path / "tfds")
    assert_round_trip(d, splits, channels=1)
    served = {path for path, _ in http_files.log}
    assert served >= {f"/m2/{n}" for n in files}
    assert (first == "refused") != (served >= {f"/m1/{n}" for n in files})


def test_http_all_mirrors_failing_lists_every_one(tmp_path, monkeypatch, http_files):
    write_mnist(tmp_path / "upstream")
    _serve_domain(monkeypatch, http_files, "mnist", tmp_path / "upstream", ("m1", "m2"))
    with pytest.raises(data.DownloadError) as err:
        data.load_domain("mnist", data_dir=tmp_path / "tfds")
    text = str(err.value)
    assert "/m1/t10k-images-idx3-ubyte.gz: HTTP Error 404" in text
    assert "/m2/t10k-images-idx3-ubyte.gz: HTTP Error 404" in text


@pytest.mark.parametrize("honours_range", [True, False])
def test_http_interrupted_download_resumes_or_restarts(
    tmp_path, monkeypatch, http_files, honours_range
):
    splits = write_mnist_m_archive(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "mnist_m", tmp_path / "upstream")
    body = files["mnist_m.tar.gz"]
    http_files.routes = {
        "/m1/mnist_m.tar.gz": {"body": body, "range": honours_range, "cuts": [len(body) // 3]}
    }
    d = data.load_domain("mnist_m", data_dir=tmp_path / "tfds")
    assert_round_trip(d, splits, channels=3)
    ranges = [r for _, r in http_files.log]
    assert ranges == [None, f"bytes={len(body) // 3}-"]  # the second request resumes...
    assert (_dl_folder(tmp_path, "mnist_m") / "mnist_m.tar.gz").read_bytes() == body
    assert not (_dl_folder(tmp_path, "mnist_m") / "mnist_m.tar.gz.part").exists()


def test_http_part_file_of_an_earlier_run(tmp_path, monkeypatch, http_files):
    write_mnist_m_archive(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "mnist_m", tmp_path / "upstream")
    body = files["mnist_m.tar.gz"]
    http_files.routes = {"/m1/mnist_m.tar.gz": {"body": body}}
    folder = _dl_folder(tmp_path, "mnist_m")
    folder.mkdir(parents=True)
    part = folder / "mnist_m.tar.gz.part"
    part.write_bytes(body[:100])  # a killed run: resumed from byte 100
    root = download.download_domain("mnist_m", folder.parent)
    assert (root / "mnist_m" / "mnist_m.tar.gz").read_bytes() == body
    assert [r for _, r in http_files.log] == ["bytes=100-"]
    # A .part with junk in it fails verification, and the file is fetched again whole.
    (folder / "mnist_m.tar.gz").unlink()
    part.write_bytes(b"junk" * 50)
    http_files.log.clear()
    download.download_domain("mnist_m", folder.parent)
    assert (folder / "mnist_m.tar.gz").read_bytes() == body
    assert [r for _, r in http_files.log] == ["bytes=200-", None]
    assert not part.exists()
    # A verified file is not fetched again; one with other bytes is.
    http_files.log.clear()
    download.download_domain("mnist_m", folder.parent)
    assert http_files.log == []
    (folder / "mnist_m.tar.gz").write_bytes(b"truncated")
    download.download_domain("mnist_m", folder.parent)
    assert (folder / "mnist_m.tar.gz").read_bytes() == body


def test_mirror_env_replaces_the_urls(tmp_path, monkeypatch, http_files):
    splits = write_usps_libsvm(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "usps", tmp_path / "upstream")
    monkeypatch.setenv(download.MIRROR_ENV, f"{_closed_port_url()} {http_files.url}/local/")
    http_files.routes = {f"/local/usps/{n}": {"body": b} for n, b in files.items()}
    d = data.load_domain("usps", data_dir=tmp_path / "tfds")
    assert_round_trip(d, splits, channels=1)
    assert {p for p, _ in http_files.log} == {"/local/usps/usps.bz2", "/local/usps/usps.t.bz2"}


def test_download_table_has_the_documented_sources():
    mnist_m = download.SOURCES["mnist_m"]["mnist_m.tar.gz"]
    assert mnist_m.md5 == "859df31c91afe82e80e5012ba928f279"
    assert mnist_m.urls[0].startswith("https://cornell.box.com/")
    usps = download.SOURCES["usps"]
    assert usps["usps.bz2"].md5 == "ec16c51db3855ca6c91edd34d0e9b197"
    assert usps["usps.t.bz2"].md5 == "8ea070ee2aca1ac39742fdd1ef5ed118"
    assert all("csie.ntu.edu.tw" in s.urls[0] for s in usps.values())
    for files in download.SOURCES.values():
        for source in files.values():
            assert source.urls and (source.md5 or source.sha256)


# -------------------------------------------------------------- USPS in two formats


@pytest.mark.parametrize("compress", [True, False])
def test_usps_libsvm_and_h5_give_the_same_images(tmp_path, compress):
    splits = write_usps(tmp_path / "h5" / "usps")
    write_usps_libsvm(tmp_path / "svm" / "usps", compress=compress)
    from_h5 = raw.read_domain("usps", tmp_path / "h5")
    from_svm = raw.read_domain("usps", tmp_path / "svm")
    for split in ("train", "test"):
        np.testing.assert_array_equal(from_svm[split][0], from_h5[split][0])
        np.testing.assert_array_equal(from_svm[split][1], from_h5[split][1])
        np.testing.assert_array_equal(from_svm[split][0][..., 0], splits[split][0])
    d = data.load_domain("usps", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "svm")
    assert_round_trip(d, splits, channels=1)


def test_parse_libsvm_usps_sparse_labels_and_errors():
    images, labels = raw.parse_libsvm_usps("1 1:-1 3:1 256:0.5\n\n10 2:-1\n", "f")
    assert images.shape == (2, 16, 16, 1) and images.dtype == np.uint8
    assert labels.tolist() == [0, 9]  # labels 1..10 -> digits 0..9
    flat = images.reshape(2, 256)
    assert flat[0, :4].tolist() == [0, 128, 255, 128]  # absent index = value 0 = mid grey
    assert flat[0, 255] == round(0.75 * 255) and flat[1, 1] == 0
    x = fixture_rng(8).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    again, _ = raw.parse_libsvm_usps(usps_libsvm_text(x, np.array([0, 5, 9])), "f")
    np.testing.assert_array_equal(again[..., 0], x)
    for bad, match in [
        ("11 1:0", "label 11 is not in 1..10"),
        ("3 0:1", "indices must be integers in 1..256"),
        ("3 257:1", "indices must be"),
        ("3 1:0.5 2", "index:value"),
        ("x 1:0", "index:value"),
        ("", "no examples"),
    ]:
        with pytest.raises(DataError, match=match):
            raw.parse_libsvm_usps(bad, "f")


def test_usps_half_of_libsvm_pair_names_the_missing_file(tmp_path):
    write_usps_libsvm(tmp_path / "usps")
    (tmp_path / "usps" / "usps.t.bz2").unlink()
    with pytest.raises(data.MissingFilesError, match=r"Missing: usps\.t\.bz2"):
        raw.check_files("usps", tmp_path)
    (tmp_path / "usps" / "usps.t.bz2").write_bytes(bz2.compress(b"1 1:0\n")[:-5])
    with pytest.raises(DataError, match="corrupt bzip2"):
        raw.read_domain("usps", tmp_path)


# -------------------------------------------------------------- a given manual dir is checked


def _prepared_mnist(tmp_path: Path):
    """MNIST prepared from tmp_path/raw into tmp_path/tfds; returns the fixture arrays."""
    splits = write_mnist(tmp_path / "raw" / "mnist")
    d = data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert d.source_kind == "manual dir" and "(new; from manual dir" in d.origin
    return splits


def test_given_manual_dir_is_checked_when_records_are_prepared(tmp_path):
    splits = _prepared_mnist(tmp_path)
    d = data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    assert_round_trip(d, splits, channels=1)
    assert d.source_kind == "prepared records"
    assert "reused" in d.origin and "checked: same sizes and labels" in d.origin
    with pytest.raises(DataError, match="does not exist") as err:
        data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "typo")
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_truncated_manual_dir_is_an_error_when_records_are_prepared(tmp_path):
    _prepared_mnist(tmp_path)
    path = tmp_path / "raw" / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupt gzip"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")
    path.unlink()
    with pytest.raises(data.MissingFilesError, match=r"Missing: train-images-idx3-ubyte\.gz"):
        data.load_domain("mnist", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "raw")


def test_manual_dir_with_other_data_than_the_records_is_an_error(tmp_path):
    write_mnist_m_archive(tmp_path / "cut" / "mnist_m", n_listed={"train": 5})
    data.load_domain("mnist_m", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "cut")
    write_mnist_m_archive(tmp_path / "full" / "mnist_m")
    with pytest.raises(DataError, match=r"train: 12 images there, 5 prepared") as err:
        data.load_domain("mnist_m", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "full")
    assert "Delete" in str(err.value) and "dann_mnist_m" in str(err.value)


# -------------------------------------------------------------- npz


def _npz(tmp_path: Path, **overrides) -> Path:
    """Write a valid npz, with some arrays replaced or (value None) dropped."""
    arrays = {
        "x_train": np.zeros((6, 20, 20, 3), np.uint8),
        "y_train": np.arange(6),
        "x_test": np.ones((4, 20, 20, 3), np.uint8),
        "y_test": np.array([9, 0, 1, 2], np.uint8),
    }
    arrays.update(overrides)
    path = tmp_path / "custom.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_domain_loads(tmp_path):
    d = data.load_domain(str(_npz(tmp_path)))
    assert d.variant == "npz" and d.name.endswith("custom.npz")
    assert d.x_train.shape == (6, 20, 20, 3) and d.y_test.dtype == np.int32
    grey = data.load_domain(
        str(
            _npz(
                tmp_path,
                x_train=np.zeros((6, 9, 9), np.uint8),
                x_test=np.zeros((4, 9, 9), np.uint8),
            )
        )
    )
    assert grey.x_train.shape == (6, 9, 9, 1)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"y_test": None}, r"missing key\(s\) \['y_test'\]"),
        ({"x_train": np.zeros((6, 20, 20, 3), np.float32)}, "dtype float32, expected uint8"),
        ({"x_train": np.zeros((6, 400), np.uint8)}, "x_train has shape"),
        ({"x_test": np.zeros((4, 20, 20, 5), np.uint8)}, "x_test has shape"),
        ({"y_train": np.arange(5)}, "5 labels but x_train has 6"),
        ({"y_train": np.arange(6).reshape(6, 1)}, "expected \\(N,\\)"),
        ({"y_train": np.arange(6) * 3}, "labels in \\[0, 15\\]"),
        ({"y_test": np.zeros(4, np.float32)}, "integer dtype"),
        ({"x_test": np.zeros((4, 10, 10, 3), np.uint8)}, "x_train images are"),
    ],
)
def test_npz_validation_errors(tmp_path, overrides, match):
    with pytest.raises(DataError, match=match) as err:
        data.load_domain(str(_npz(tmp_path, **overrides)))
    assert "np.savez" in str(err.value)  # says how to fix it


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_domain(str(tmp_path / "absent.npz"))


# -------------------------------------------------------------- embedded pair and synthesis


def test_embedded_pair_shapes_and_sizes():
    src, tgt = data.embedded_pair(seed=0)
    assert (src.name, tgt.name) == ("embedded_mnist", "embedded_mnist_m")
    assert src.variant == tgt.variant == "embedded"
    assert src.x_train.shape == (2000, 28, 28, 1) and src.x_test.shape == (500, 28, 28, 1)
    assert tgt.x_train.shape == (2000, 28, 28, 3) and tgt.x_test.shape == (500, 28, 28, 3)
    for d in (src, tgt):
        assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int32
        assert np.bincount(d.y_train, minlength=10).tolist() == [200] * 10
        assert np.bincount(d.y_test, minlength=10).tolist() == [50] * 10
    # Colour: channels differ; and not a copy of the source.
    assert np.abs(tgt.x_train[..., 0].astype(int) - tgt.x_train[..., 1]).mean() > 5
    assert tgt.x_train.mean() > src.x_train.mean() + 20


def test_embedded_split_is_disjoint():
    from dann_jax.data import embedded

    _, y = embedded._mnist_5k()
    idx = embedded._split_indices(y, np.random.default_rng(0))
    all_idx = np.concatenate(list(idx.values()))
    assert len(all_idx) == 5000 and len(np.unique(all_idx)) == 5000
    src, _ = data.embedded_pair(seed=0)
    src_rows = {row.tobytes() for row in np.concatenate([src.x_train, src.x_test])}
    assert len(src_rows) == 2500  # train and test hold different digits


def test_embedded_pair_is_deterministic_per_seed():
    a_src, a_tgt = data.embedded_pair(seed=3)
    b_src, b_tgt = data.embedded_pair(seed=3)
    np.testing.assert_array_equal(a_src.x_train, b_src.x_train)
    np.testing.assert_array_equal(a_tgt.x_test, b_tgt.x_test)
    np.testing.assert_array_equal(a_tgt.y_train, b_tgt.y_train)
    c_src, c_tgt = data.embedded_pair(seed=4)
    assert not np.array_equal(a_tgt.x_train, c_tgt.x_train)
    assert not np.array_equal(a_src.y_train, c_src.y_train)


def test_synthesize_mnist_m_is_abs_difference():
    digits = fixture_rng(1).integers(0, 256, (5, 6, 7), dtype=np.uint8)
    photo = fixture_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)  # exactly one possible crop
    out = data.synthesize_mnist_m(digits, [photo], seed=0)
    expected = np.abs(digits[..., None].astype(int) - photo[None].astype(int)).astype(np.uint8)
    assert out.dtype == np.uint8 and out.shape == (5, 6, 7, 3)
    np.testing.assert_array_equal(out, expected)
    # A flat colour photo: every crop is the same colour.
    flat = np.broadcast_to(np.array([10, 200, 255], np.uint8), (40, 50, 3)).copy()
    out = data.synthesize_mnist_m(digits, [flat], seed=5)
    np.testing.assert_array_equal(out, np.abs(digits[..., None].astype(int) - [10, 200, 255]))


def test_synthesize_mnist_m_seed_and_errors():
    digits = fixture_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    photos = data.sample_photos()
    assert len(photos) == 2 and photos[0].dtype == np.uint8 and photos[0].shape[2] == 3
    a = data.synthesize_mnist_m(digits, photos, seed=1)
    np.testing.assert_array_equal(a, data.synthesize_mnist_m(digits, photos, seed=1))
    assert not np.array_equal(a, data.synthesize_mnist_m(digits, photos, seed=2))
    with pytest.raises(DataError, match="h >= 28"):
        data.synthesize_mnist_m(digits, [np.zeros((10, 40, 3), np.uint8)], seed=0)
    with pytest.raises(DataError, match="uint8"):
        data.synthesize_mnist_m(digits.astype(np.float32), photos, seed=0)


def test_load_photos_from_dir(tmp_path):
    a = fixture_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    g = fixture_rng(4).integers(0, 256, (35, 45), dtype=np.uint8)
    (tmp_path / "sub").mkdir()
    Image.fromarray(a).save(tmp_path / "b.png")
    Image.fromarray(g).save(tmp_path / "sub" / "c.PNG")
    (tmp_path / "notes.txt").write_text("not a photo")
    photos = data.load_photos_from_dir(tmp_path)
    assert len(photos) == 2
    np.testing.assert_array_equal(photos[0], a)
    np.testing.assert_array_equal(photos[1], np.repeat(g[..., None], 3, axis=-1))  # grey -> RGB
    with pytest.raises(DataError, match="does not exist"):
        data.load_photos_from_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"No \.jpg"):
        data.load_photos_from_dir(tmp_path / "empty")


# -------------------------------------------------------------- MNIST-M synthesised from BSDS500


def test_load_bsds_photos_accepts_archive_and_folders(tmp_path):
    archive = tmp_path / "dl" / "BSR_bsds500.tgz"
    photos = write_bsds_archive(archive)
    got = data.load_bsds_photos(archive)
    assert len(got) == 3  # train JPEGs only: not val/, not Thumbs.db
    for a, b in zip(got, photos, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(data.load_bsds_photos(tmp_path / "dl")[2], photos[2])
    shutil.unpack_archive(archive, tmp_path / "x")
    np.testing.assert_array_equal(data.load_bsds_photos(tmp_path / "x")[0], photos[0])
    train = tmp_path / "x" / "BSR" / "BSDS500" / "data" / "images" / "train"
    np.testing.assert_array_equal(data.load_bsds_photos(train)[1], photos[1])
    with pytest.raises(DataError, match=r"BSR_bsds500\.tgz"):
        data.load_bsds_photos(tmp_path / "absent")
    (tmp_path / "bad.tgz").write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataError, match="not a readable tar"):
        data.load_bsds_photos(tmp_path / "bad.tgz")


def _mnist_domain(seed: int = 0) -> Domain:
    rng = fixture_rng(seed)
    x = rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
    x[x < 128] = 0  # a background, as MNIST's
    y = rng.integers(0, 10, 20).astype(np.int32)
    return Domain("mnist", "full", x[:14], y[:14], x[14:], y[14:], "fixture", "manual dir")


def test_synthesised_mnist_m_recipe_determinism_and_label(tmp_path):
    mnist = _mnist_domain()
    flat = np.broadcast_to(np.array([10, 200, 255], np.uint8), (40, 50, 3)).copy()
    d = data.synthesised_mnist_m(mnist, [flat], seed=0)
    assert d.name == "mnist_m" and d.variant == d.source_kind == "synthesised"
    assert "synthesised MNIST-M" in d.origin and "not the released data set" in d.origin
    assert d.x_train.shape == (14, 28, 28, 3) and d.x_test.shape == (6, 28, 28, 3)
    np.testing.assert_array_equal(d.y_train, mnist.y_train)
    # Binarised digit on 3 channels: ink (> 0) gives 255 - patch, background the patch.
    ink = mnist.x_train[..., 0] > 0
    np.testing.assert_array_equal(d.x_train[ink], np.broadcast_to([245, 55, 0], (ink.sum(), 3)))
    background = np.broadcast_to([10, 200, 255], ((~ink).sum(), 3))
    np.testing.assert_array_equal(d.x_train[~ink], background)
    photos = write_bsds_archive(tmp_path / "BSR_bsds500.tgz")
    a = data.synthesised_mnist_m(mnist, photos, seed=3)
    b = data.synthesised_mnist_m(mnist, data.load_bsds_photos(tmp_path), seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, data.synthesised_mnist_m(mnist, photos, seed=4).x_train)


def test_missing_mnist_m_with_bsds_is_synthesised_loudly(tmp_path, capsys):
    write_mnist(tmp_path / "raw" / "mnist")  # no mnist_m/ in the manual dir
    write_bsds_archive(tmp_path / "BSR_bsds500.tgz")
    kwargs = {"data_dir": tmp_path / "tfds", "manual_dir": tmp_path / "raw"}
    d = data.load_domain("mnist_m", bsds_dir=tmp_path / "BSR_bsds500.tgz", **kwargs)
    assert "SYNTHESISED MNIST-M" in capsys.readouterr().err
    assert d.variant == d.source_kind == "synthesised" and "not the released" in d.origin
    assert d.x_train.shape == (N_TRAIN, 28, 28, 3) and d.x_test.shape == (N_TEST, 28, 28, 3)
    mnist = data.load_domain("mnist", **kwargs)
    np.testing.assert_array_equal(d.y_test, mnist.y_test)
    again = data.load_domain("mnist_m", bsds_dir=tmp_path, **kwargs)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    assert not (tmp_path / "tfds" / "dann_mnist_m").exists()  # never stored as the real one
    # Without bsds_dir the absence is an error, as before.
    with pytest.raises(data.MissingFilesError, match=r"mnist_m\.tar\.gz"):
        data.load_domain("mnist_m", **kwargs)


def test_corrupt_mnist_m_is_an_error_even_with_bsds(tmp_path):
    write_mnist(tmp_path / "raw" / "mnist")
    (tmp_path / "raw" / "mnist_m").mkdir()
    (tmp_path / "raw" / "mnist_m" / "mnist_m.tar.gz").write_bytes(b"\x1f\x8b junk")
    write_bsds_archive(tmp_path / "BSR_bsds500.tgz")
    with pytest.raises(DataError, match="not a readable tar"):
        data.load_domain(
            "mnist_m",
            data_dir=tmp_path / "tfds",
            manual_dir=tmp_path / "raw",
            bsds_dir=tmp_path / "BSR_bsds500.tgz",
        )


def test_failed_mnist_m_download_with_bsds_is_synthesised(tmp_path, monkeypatch, http_files):
    splits = write_mnist(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "mnist", tmp_path / "upstream")
    http_files.routes = {f"/m1/{n}": {"body": b} for n, b in files.items()}
    write_bsds_archive(tmp_path / "BSR_bsds500.tgz")  # mnist_m: only the dead default mirror
    monkeypatch.setitem(
        download.SOURCES,
        "mnist_m",
        {"mnist_m.tar.gz": download.Source((f"{_closed_port_url()}/m.tgz",), md5="0" * 32)},
    )
    d = data.load_domain("mnist_m", data_dir=tmp_path / "tfds", bsds_dir=tmp_path)
    assert d.source_kind == "synthesised" and "download into" in d.origin  # MNIST digits
    np.testing.assert_array_equal(d.y_train, splits["train"][1])


# -------------------------------------------------------------- preprocessing


def test_prepare_images_resizes_and_repeats_grey():
    x = fixture_rng(5).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    same = data.prepare_images(x, size=28)
    assert same.shape == (4, 28, 28, 3) and same.dtype == np.uint8
    np.testing.assert_array_equal(same, np.repeat(x[..., None], 3, axis=-1))
    up = data.prepare_images(x[..., None], size=32)
    assert up.shape == (4, 32, 32, 3) and up.dtype == np.uint8
    np.testing.assert_array_equal(up[..., 0], up[..., 2])
    flat = np.full((2, 32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(data.prepare_images(flat, size=28), np.full((2, 28, 28, 3), 77))
    grey = data.prepare_images(np.full((1, 8, 8, 3), [255, 0, 0], np.uint8), size=8, channels=1)
    assert grey.shape == (1, 8, 8, 1) and int(grey[0, 0, 0, 0]) == 76  # 0.299 * 255
    with pytest.raises(DataError, match="uint8"):
        data.prepare_images(x.astype(np.float32), size=28)


def test_prepare_images_crop_pad_keeps_pixels():
    x = fixture_rng(6).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    cropped = data.prepare_images(x, size=28, resize="crop_pad")
    np.testing.assert_array_equal(cropped, x[:, 2:30, 2:30])  # MNIST-M back to 28
    digits = fixture_rng(7).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    padded = data.prepare_images(digits, size=32, resize="crop_pad")
    assert padded.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(padded[:, 2:30, 2:30, 1], digits)
    assert padded.sum(dtype=np.int64) == 3 * digits.sum(dtype=np.int64)  # zeros around
    odd = data.prepare_images(np.ones((1, 16, 16), np.uint8), size=21, resize="crop_pad")
    assert odd.shape == (1, 21, 21, 3) and odd[0, 2:18, 2:18].all() and odd.sum() == 3 * 256
    with pytest.raises(DataError, match="resize must be one of"):
        data.prepare_images(x, size=28, resize="nearest")
    # mnist_box: a frame-filling 16 x 16 digit (USPS) scaled into MNIST's 20 x 20 box.
    usps = np.full((2, 16, 16), 200, np.uint8)
    boxed = data.prepare_images(usps, size=28, resize="mnist_box")[0, ..., 0]
    rows, cols = np.nonzero(boxed)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (4, 23, 4, 23)
    assert (boxed[4:24, 4:24] == 200).all()


def test_resize_method_auto_puts_digits_in_mnist_geometry():
    assert data.resize_method("mnist_m") == "crop_pad"
    assert data.resize_method("usps") == "mnist_box"
    assert [data.resize_method(d) for d in ("mnist", "svhn", "x.npz")] == ["bilinear"] * 3
    assert data.resize_method("mnist_m", "bilinear") == "bilinear"
    assert data.resize_method("usps", "crop_pad") == "crop_pad"
    with pytest.raises(DataError, match="resize must be"):
        data.resize_method("usps", "bicubic")


def test_channel_mean():
    x = np.zeros((2, 4, 4, 3), np.uint8)
    x[..., 1] = 255
    x[0, ..., 2] = 51
    np.testing.assert_allclose(data.channel_mean(x), [0.0, 1.0, 0.1], rtol=1e-6)
    assert data.channel_mean(x).dtype == np.float32
    assert data.channel_mean(x[..., 0]).shape == (1,)


def test_domain_repr_is_short():
    src, _ = data.embedded_pair(seed=0)
    assert "(2000, 28, 28, 1)" in repr(src) and len(repr(src)) < 300
    assert src.image_shape == (28, 28, 1)


def test_import_is_cheap():
    code = (
        "import sys, dann_jax.data; "
        "heavy = ('tensorflow_datasets', 'tensorflow', 'h5py', 'sklearn'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "assert not bad, bad"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# -------------------------------------------------------------- real offline data (skip if absent)


def _digits_dir() -> Path:
    """The offline digits copy: $DANN_DIGITS_DIR, else ../shared/data/digits from the repo root."""
    return Path(
        os.environ.get("DANN_DIGITS_DIR") or REPO_ROOT.parent / "shared" / "data" / "digits"
    )


@pytest.fixture(scope="session")
def real_tfds_dir(tmp_path_factory):
    """One TFDS data dir per test session, so the real data is prepared once."""
    if not _digits_dir().is_dir():
        pytest.skip(f"offline digits copy not found at {_digits_dir()} (set DANN_DIGITS_DIR)")
    path = tmp_path_factory.mktemp("real_tfds")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # ~200 MB; pytest would keep it for 3 runs


@pytest.mark.parametrize(
    ("domain", "n_train", "n_test", "shape"),
    [
        ("mnist", 60000, 10000, (28, 28, 1)),
        ("mnist_m", 59001, 9001, (32, 32, 3)),
        ("usps", 7291, 2007, (16, 16, 1)),
    ],
)
def test_real_domain_counts(real_tfds_dir, domain, n_train, n_test, shape):
    if not (_digits_dir() / domain).is_dir():
        pytest.skip(f"{domain} not in {_digits_dir()}")
    d = data.load_domain(domain, data_dir=real_tfds_dir, manual_dir=_digits_dir())
    if domain == "mnist_m" and len(d.x_train) == 12000:
        n_train = 12000  # the cut-down device bundle
    assert d.x_train.shape == (n_train, *shape) and d.x_test.shape == (n_test, *shape)
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    assert np.bincount(d.y_train, minlength=10).min() > 0
    assert "tensorflow" not in sys.modules


def test_real_mnist_m_labels_match_mnist(real_tfds_dir):
    if not all((_digits_dir() / d).is_dir() for d in ("mnist", "mnist_m")):
        pytest.skip(f"mnist and mnist_m not both in {_digits_dir()}")
    mnist = data.load_domain("mnist", data_dir=real_tfds_dir, manual_dir=_digits_dir())
    mnist_m = data.load_domain("mnist_m", data_dir=real_tfds_dir, manual_dir=_digits_dir())
    n = len(mnist_m.y_train)
    np.testing.assert_array_equal(mnist_m.y_train, mnist.y_train[:n])
    np.testing.assert_array_equal(mnist_m.y_test, mnist.y_test[: len(mnist_m.y_test)])
    assert "reused" in mnist.origin


def test_real_mnist_m_is_mnist_padded_by_two_pixels():
    # Why resize="auto" crops MNIST-M: its digit edges line up with MNIST's exactly at a
    # 2-pixel offset (a sharp peak), better than with a bilinear 28 -> 32 resize.
    from dann_jax.data import raw

    if not all((_digits_dir() / d).is_dir() for d in ("mnist", "mnist_m")):
        pytest.skip(f"mnist and mnist_m not both in {_digits_dir()}")
    n = 200
    mnist = raw.read_domain("mnist", _digits_dir())["train"][0]
    mnist_m = raw.read_domain("mnist_m", _digits_dir())["train"][0]
    digits = np.stack([mnist[i] for i in range(n)])[..., 0].astype(np.float32)
    target = np.stack([mnist_m[i] for i in range(n)]).astype(np.float32).mean(-1)

    def edges(x):
        gy, gx = np.gradient(x, axis=(-2, -1))
        return np.hypot(gx, gy)

    def agreement(candidate):
        a, b = edges(candidate), edges(target)
        return np.mean([np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(n)])

    def placed(dy, dx):
        canvas = np.zeros((n, 32, 32), np.float32)
        canvas[:, dy : dy + 28, dx : dx + 28] = digits
        return canvas

    at_two = agreement(placed(2, 2))
    assert at_two > 0.45
    for dy, dx in ((1, 1), (3, 3), (2, 1), (1, 2)):
        assert agreement(placed(dy, dx)) < at_two - 0.05
    resized = data.prepare_images(digits.astype(np.uint8), 32, channels=1)[..., 0]
    assert agreement(resized.astype(np.float32)) < at_two
    cropped = data.prepare_images(np.stack([mnist_m[i] for i in range(n)]), 28, resize="crop_pad")
    assert cropped.shape == (n, 28, 28, 3)
