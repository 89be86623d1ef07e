"""What the raw-file readers share: splits, native shapes, the expected layout, label checks.

A module of its own so that the per-format readers (`raw`, `raw_usps`, `raw_svhn`)
can use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dann_jax.data.domain import NUM_CLASSES, DataError, MissingFilesError

SPLITS = ("train", "test")

# Native image shape of each domain; the TFDS features are fixed to these.
IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "mnist_m": (32, 32, 3),
    "usps": (16, 16, 1),
    "svhn": (32, 32, 3),
}

# Human-readable list of what each domain folder must hold (for error messages).
EXPECTED_FILES = {
    "mnist": (
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (the IDX files, gzipped or not)"
    ),
    "mnist_m": (
        "mnist_m.tar.gz (the authors' release) or its extracted folder: "
        "mnist_m/mnist_m_train/NNNNNNNN.png, mnist_m/mnist_m_test/NNNNNNNN.png, "
        "mnist_m/mnist_m_train_labels.txt, mnist_m/mnist_m_test_labels.txt"
    ),
    "usps": (
        "usps.bz2 and usps.t.bz2 (the LIBSVM files: lines 'label index:value ...', "
        "labels 1-10, 256 values in [-1, 1]) or usps.h5 (HDF5 groups train/ and test/, "
        "each with data (N, 256) in [0, 1] and target (N,))"
    ),
    "svhn": "train_32x32.mat, test_32x32.mat (the SVHN cropped-digits .mat files)",
}

LAYOUT = """\
<manual_dir>/
  mnist/    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
            t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz   (un-gzipped IDX also accepted)
  mnist_m/  mnist_m.tar.gz   (or extracted: mnist_m/mnist_m_{train,test}/NNNNNNNN.png
                              and mnist_m/mnist_m_{train,test}_labels.txt)
  usps/     usps.bz2  usps.t.bz2   (the LIBSVM files; or usps.h5)
  svhn/     train_32x32.mat  test_32x32.mat
A manual_dir may also point straight at one domain's folder."""


def missing_message(domain: str, folder: Path, detail: str = "") -> str:
    """The DataError text for a domain folder that lacks its files."""
    text = f"No usable {domain} files in {folder}. Expected there: {EXPECTED_FILES[domain]}."
    if detail:
        text += f" {detail}"
    return f"{text}\nExpected layout of the manual dir:\n{LAYOUT}"


def missing_error(domain: str, folder: Path, detail: str = "") -> MissingFilesError:
    """A `MissingFilesError` (files absent, as opposed to present but unreadable)."""
    return MissingFilesError(missing_message(domain, folder, detail))


def check_labels(labels: np.ndarray, source: object) -> np.ndarray:
    """Raise DataError unless every label is a digit class 0..9."""
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{source}: labels must lie in [0, {NUM_CLASSES}), "
            f"found range [{labels.min()}, {labels.max()}]."
        )
    return labels
