"""The real digits in ../shared/data/digits (``DANN_DIGITS_DIR`` overrides); every test
skips when they are absent."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from dann_jax import data
from dann_jax.data import raw

REPO_ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("quiet_tfds", "no_internet")


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
