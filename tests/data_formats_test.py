"""USPS in its two formats, a given manual dir always checked, and .npz domains."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import pytest

from dann_jax import data
from dann_jax.data import DataError, raw
from tests.helpers import (
    assert_round_trip,
    fixture_rng,
    usps_libsvm_text,
    write_mnist,
    write_mnist_m_archive,
    write_usps,
    write_usps_libsvm,
)

pytestmark = pytest.mark.usefixtures("quiet_tfds", "no_internet")


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
        ({"y_train": np.arange(6) - 2}, "labels in \\[-2, 3\\]; labels must be >= 0"),
        ({"class_names": np.array(["a", "b"])}, "labels go up to 9 but class_names has 2"),
        ({"y_test": np.zeros(4, np.float32)}, "integer dtype"),
        ({"x_test": np.zeros((4, 10, 10, 3), np.uint8)}, "x_train images are"),
    ],
)
def test_npz_validation_errors(tmp_path, overrides, match):
    with pytest.raises(DataError, match=match) as err:
        data.load_domain(str(_npz(tmp_path, **overrides)))
    assert "np.savez" in str(err.value)  # says how to fix it


def test_npz_without_labels_is_an_unlabelled_domain_and_any_class_count(tmp_path):
    unlabelled = data.load_domain(str(_npz(tmp_path, y_train=None, y_test=None)))
    assert unlabelled.y_train is None and unlabelled.y_test is None and not unlabelled.labelled
    many = data.load_domain(str(_npz(tmp_path, y_train=np.arange(6) * 3)))  # labels up to 15
    assert many.y_train.max() == 15 and many.class_names is None


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_domain(str(tmp_path / "absent.npz"))
