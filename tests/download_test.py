"""dann_jax.data.download over a local HTTP server on 127.0.0.1: checksums, mirrors,
resumed downloads; no test reaches the internet."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from dann_jax import data
from dann_jax.data import download
from tests.helpers import (
    assert_round_trip,
    closed_port_url,
    write_bsds_archive,
    write_mnist,
    write_mnist_m_archive,
    write_usps_libsvm,
)

pytestmark = pytest.mark.usefixtures("quiet_tfds", "no_internet")


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
        dead = closed_port_url()
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
    monkeypatch.setenv(download.MIRROR_ENV, f"{closed_port_url()} {http_files.url}/local/")
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


def test_failed_mnist_m_download_with_bsds_is_synthesised(tmp_path, monkeypatch, http_files):
    splits = write_mnist(tmp_path / "upstream")
    files = _serve_domain(monkeypatch, http_files, "mnist", tmp_path / "upstream")
    http_files.routes = {f"/m1/{n}": {"body": b} for n, b in files.items()}
    write_bsds_archive(tmp_path / "BSR_bsds500.tgz")  # mnist_m: only the dead default mirror
    monkeypatch.setitem(
        download.SOURCES,
        "mnist_m",
        {"mnist_m.tar.gz": download.Source((f"{closed_port_url()}/m.tgz",), md5="0" * 32)},
    )
    d = data.load_domain("mnist_m", data_dir=tmp_path / "tfds", bsds_dir=tmp_path)
    assert d.source_kind == "synthesised" and "download into" in d.origin  # MNIST digits
    np.testing.assert_array_equal(d.y_train, splits["train"][1])
