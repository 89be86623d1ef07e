"""The `Domain` container and the `DataError` exception shared by the data package."""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_CLASSES = 10  # Every digit domain has the ten classes 0..9.
DIGIT_CLASSES = tuple(str(i) for i in range(NUM_CLASSES))


class DataError(Exception):
    """Bad or missing data; the message says what is wrong and how to fix it."""


class MissingFilesError(DataError):
    """A domain's raw files are absent from a folder that exists (not: present but corrupt)."""


class DownloadError(DataError):
    """Every mirror of an upstream file failed (network, HTTP error or checksum mismatch)."""


# Where a domain's arrays came from, as `Domain.source_kind` and results.json say it.
SOURCE_KINDS = (
    "prepared records", "manual dir", "download", "synthesised", "embedded", "npz file",
    "image files",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Domain:
    """One domain's train and test splits as host numpy arrays.

    Images keep their native size and channel count (MNIST and USPS are grey,
    ``C == 1``); use `prepare_images` to resize them and repeat grey to RGB for a
    model. ``eq=False`` keeps identity comparison: comparing arrays field-wise is
    neither cheap nor meaningful.

    Attributes:
      name: ``'mnist'``, ``'mnist_m'``, ``'usps'``, ``'svhn'``, ``'embedded_mnist'``,
        ``'embedded_mnist_m'``, or the path of your own domain (an ``.npz`` file, an
        image folder or an image-list file).
      variant: ``'full'`` (the upstream data set), ``'embedded'`` (the small set
        built from data shipped inside installed packages), ``'synthesised'`` (MNIST-M
        built here from MNIST and BSDS500 photos, not the released set), ``'npz'`` or
        ``'images'`` (an image folder or list).
      x_train: uint8 images, shape ``(N, H, W, C)``.
      y_train: int32 labels, indices into `class_names`, shape ``(N,)``; None when the domain
        has no labels (an unlabelled target).
      x_test: uint8 images, shape ``(M, H, W, C)`` (for image folders used as the
        target: every image, as in training: the transductive protocol).
      y_test: int32 labels, shape ``(M,)``, or None.
      origin: human-readable description of where the arrays came from.
      source_kind: one of `SOURCE_KINDS` (``''`` when the maker did not say): reused
        prepared records, raw files from a manual dir or a download (prepared in this
        call), synthesised, embedded, an npz file, or image files.
      class_names: the name of each class index (None: the labels' numbers, 0..K-1).
      test_paths: the path of each test image relative to the domain's root (image
        folders and lists), for predictions.csv; None otherwise.
    """

    name: str
    variant: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    origin: str
    source_kind: str = ""
    class_names: tuple[str, ...] | None = None
    test_paths: tuple[str, ...] | None = None

    @property
    def labelled(self) -> bool:
        """Whether the domain has labels (a source always does; a target may not)."""
        return self.y_train is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The ``(H, W, C)`` shape of one image."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Domain(name={self.name!r}, variant={self.variant!r}, "
            f"train={self.x_train.shape}, test={self.x_test.shape}, origin={self.origin!r})"
        )
