"""Data layer of dann_jax: digit domains as uint8 numpy arrays.

Known domains (``mnist``, ``mnist_m``, ``usps``, ``svhn``) are TFDS data sets of
this package's own (builders ``dann_<name>``, array_record files, read through
the TFDS data source; TensorFlow is never needed), prepared once from the raw
upstream files in a manual dir or from a checksummed download (MNIST-M can also
be synthesised from MNIST and BSDS500 photos). ``embedded_pair`` gives an
offline MNIST -> MNIST-M-style pair from data shipped inside installed packages,
and any ``.npz`` file can be a domain. Importing this package is cheap:
tensorflow_datasets, PIL, h5py, scipy and sklearn are imported only when used.

Typical use::

    src = load_domain("mnist", manual_dir="path/to/digits")   # raw files there
    tgt = load_domain("mnist_m", manual_dir="path/to/digits")
    x = prepare_images(src.x_train, size=28)                   # (N, 28, 28, 3) uint8
    mean = channel_mean(x)                                     # (3,) float32 in [0, 1]
"""

from dann_jax.data.domain import (
    NUM_CLASSES,
    SOURCE_KINDS,
    DataError,
    Domain,
    DownloadError,
    MissingFilesError,
)
from dann_jax.data.embedded import (
    embedded_pair,
    load_bsds_photos,
    load_photos_from_dir,
    sample_photos,
    synthesised_mnist_m,
    synthesize_mnist_m,
)
from dann_jax.data.load import KNOWN_DOMAINS, default_data_dir, load_domain
from dann_jax.data.npz import load_npz
from dann_jax.data.preprocess import channel_mean, prepare_images, resize_method
from dann_jax.data.raw import LAYOUT

__all__ = [
    "KNOWN_DOMAINS",
    "LAYOUT",
    "NUM_CLASSES",
    "SOURCE_KINDS",
    "DataError",
    "Domain",
    "DownloadError",
    "MissingFilesError",
    "channel_mean",
    "default_data_dir",
    "embedded_pair",
    "load_bsds_photos",
    "load_domain",
    "load_npz",
    "load_photos_from_dir",
    "prepare_images",
    "resize_method",
    "sample_photos",
    "synthesised_mnist_m",
    "synthesize_mnist_m",
]
