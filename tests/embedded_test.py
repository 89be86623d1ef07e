"""The embedded default pair, MNIST-M synthesised from BSDS500, and preprocessing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dann_jax import data
from dann_jax.data import DataError, Domain
from tests.helpers import (
    N_TEST,
    N_TRAIN,
    fixture_rng,
    write_bsds_archive,
    write_mnist,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("quiet_tfds", "no_internet")


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
    # scikit-learn's 2 photos and the 12 of scikit-image's wheel (embedded.SKIMAGE_PHOTOS)
    assert len(photos) == 14 and all(p.dtype == np.uint8 and p.shape[2] == 3 for p in photos)
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


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest() + str(image.shape)


def test_the_sample_photos_are_load_sample_images_and_import_no_sklearn_module():
    # Read from scikit-learn's wheel directly (importing sklearn.datasets took 0.9 s of
    # every run on the embedded default): the same arrays, no sklearn module loaded.
    code = (
        "import hashlib, json, sys; from dann_jax.data import embedded; "
        "p = embedded.sample_photos(); "  # the digests as _digest computes them:
        "print(json.dumps([[m for m in sys.modules if m.startswith('sklearn')], "
        "[hashlib.sha256(x.tobytes()).hexdigest() + str(x.shape) for x in p[:2]]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT,
                         capture_output=True, text=True).stdout  # fmt: skip
    loaded, digests = json.loads(out.strip().splitlines()[-1])
    assert loaded == []
    from sklearn.datasets import load_sample_images

    want = [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]
    assert digests == [_digest(x) for x in want]


def test_import_is_cheap():
    code = (
        "import sys, dann_jax.data; "
        "heavy = ('tensorflow_datasets', 'tensorflow', 'h5py', 'sklearn'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
