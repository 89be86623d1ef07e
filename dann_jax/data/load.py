"""`load_domain`: one entry point for the known domains and bring-your-own ``.npz`` files."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from dann_jax.data import raw
from dann_jax.data.domain import DataError, Domain
from dann_jax.data.npz import NPZ_HOWTO, load_npz

KNOWN_DOMAINS: tuple[str, ...] = ("mnist", "mnist_m", "usps", "svhn")


def default_data_dir() -> Path:
    """TFDS's default data dir: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


@contextlib.contextmanager
def _preparation_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` while one process downloads and prepares."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): concurrent first runs may still clash
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"dann_jax: waiting for another process preparing {path.stem}", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_domain(
    name_or_npz: str,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Domain:
    """Load a digit domain (prepared once as a TFDS data set) or a bring-your-own ``.npz``.

    Two folders, two roles:

    - ``data_dir`` is the TFDS data dir that holds the *prepared* array_record
      files (``<data_dir>/dann_<name>/1.0.0/``). Default: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``.
    - ``manual_dir`` is where the *raw upstream files* live, laid out as
      ``<manual_dir>/{mnist,mnist_m,usps,svhn}/`` (see `raw.LAYOUT`), or a single
      domain's folder. This is what a ``--data-dir`` flag pointing at the
      upstream files should be passed as.

    For a known name: if ``data_dir`` already holds the prepared version, it is
    read back as is (raw files are not touched). Otherwise the raw files come
    from ``manual_dir`` if given (a missing file is an error, never a silent
    fallback), else from the upstream URLs if ``download`` (into
    ``<data_dir>/downloads/dann_digits/``), and the data set is prepared once.
    To re-prepare (e.g. after using a cut-down bundle), delete
    ``<data_dir>/dann_<name>`` or use another ``data_dir``.

    Args:
      name_or_npz: one of `KNOWN_DOMAINS`, or a path ending in ``.npz``.
      data_dir: TFDS data dir for the prepared data (ignored for ``.npz``).
      manual_dir: root of the raw upstream files (ignored for ``.npz``).
      download: allow downloading when nothing is prepared and no manual_dir is given.

    Returns:
      `Domain` with uint8 NHWC images at native size and int32 labels; ``origin``
      tells where they came from.

    Raises:
      DataError: unknown name, missing/invalid raw files (the message names the
        expected files and layout), failed download, or invalid ``.npz``.

    References:
      TFDS array_record data sources: https://www.tensorflow.org/datasets/tfless_tfds
    """
    name = os.fspath(name_or_npz)
    if name.lower().endswith(".npz"):
        return load_npz(name)
    if name not in KNOWN_DOMAINS:
        raise DataError(
            f"Unknown domain {name!r}. Known domains: {', '.join(KNOWN_DOMAINS)}; "
            f"or give a path to an .npz file. {NPZ_HOWTO}"
        )
    from dann_jax.data import builders  # lazy: imports tensorflow_datasets

    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    builder = builders.make_builder(name, data_dir)
    fresh = False
    if not builders.is_prepared(builder):
        # Runs started together on a fresh data dir (a seed sweep, parallel jobs) would
        # all prepare, and TFDS's final rename then fails in the slower ones. One
        # prepares under a lock; the others wait and find the data prepared.
        with _preparation_lock(data_dir / f"{builder.name}.lock"):
            builder = builders.make_builder(name, data_dir)
            if not builders.is_prepared(builder):
                _download_and_prepare(builder, name, data_dir, manual_dir, download)
                fresh = True
    how = "new" if fresh else "reused"
    origin = f"prepared TFDS data {builder.data_path} ({how}; from {builders.raw_source(builder)})"
    x_train, y_train = builders.read_split(builder, "train")
    x_test, y_test = builders.read_split(builder, "test")
    return Domain(name, "full", x_train, y_train, x_test, y_test, origin)


def _download_and_prepare(builder, name: str, data_dir: Path, manual_dir, download: bool) -> None:
    """Point `builder` at the raw files (manual dir or download) and prepare it."""
    from dann_jax.data import builders
    from dann_jax.data import download as dl

    if manual_dir is not None:
        raw.check_files(name, manual_dir)  # fail before TFDS creates anything
        root = Path(manual_dir).expanduser()
        builder.raw_label = f"manual dir {root}"
    elif download:
        root = dl.download_domain(name, builders.download_root(data_dir))
        builder.raw_label = f"download into {root}"
    else:
        raise DataError(
            f"{name} is not prepared in {data_dir}, no manual_dir was given "
            "and download=False. "
            f"Pass manual_dir=<folder with the upstream files>; layout:\n{raw.LAYOUT}"
        )
    builder.raw_root = root
    builders.prepare(builder)
