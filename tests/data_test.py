"""dann_jax.data: TFDS builders on tiny upstream-format fixtures, and their errors.

Every TFDS data dir is a tmp dir; no test reaches the internet (downloads go to a closed
local port).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from dann_jax import data
from dann_jax.data import DataError, download
from tests.helpers import (
    N_TEST,
    N_TRAIN,
    assert_round_trip,
    write_mnist,
    write_mnist_m_archive,
    write_mnist_m_folder,
    write_svhn,
    write_usps,
)

pytestmark = pytest.mark.usefixtures("quiet_tfds", "no_internet")


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
