"""`load_domain`: one entry point for the known domains and bring-your-own ``.npz`` files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dann_jax.data import embedded, raw
from dann_jax.data.domain import DataError, Domain, DownloadError, MissingFilesError
from dann_jax.data.npz import NPZ_HOWTO, load_npz

KNOWN_DOMAINS: tuple[str, ...] = ("mnist", "mnist_m", "usps", "svhn")

SYNTHESISED_BANNER = (
    "!" * 78 + "\n"
    "! MNIST-M NOT AVAILABLE ({why}).\n"
    "! Using SYNTHESISED MNIST-M instead: MNIST digits blended with photo patches\n"
    "! from {bsds}, built here. It is NOT the released MNIST-M data set;\n"
    "! numbers from it are not comparable with the paper's.\n" + "!" * 78
)


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
    bsds_dir: str | os.PathLike | None = None,
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

    A given ``manual_dir`` is never ignored: it must exist and hold the domain's
    files, prepared records or not. For a known name: if ``data_dir`` already
    holds the prepared version, it is read back; with a ``manual_dir`` its files
    are then read too (a truncated or corrupt file is an error) and must have the
    prepared sizes and labels, else a DataError says to delete the prepared data or
    use another ``data_dir``. If nothing is prepared, the raw files come from
    ``manual_dir`` if given, else from the upstream mirrors if ``download`` (into
    ``<data_dir>/downloads/dann_digits/``, checksummed), and the data set is
    prepared once. To re-prepare, delete ``<data_dir>/dann_<name>``.

    MNIST-M only: when it cannot be had (no MNIST-M in ``manual_dir``, nothing
    prepared and no download) and ``bsds_dir`` is given, it is synthesised from
    MNIST and the BSDS500 train photos (`embedded.synthesised_mnist_m`), said loudly
    on stderr and in ``variant``/``origin``: it is not the released data set.

    Args:
      name_or_npz: one of `KNOWN_DOMAINS`, or a path ending in ``.npz``.
      data_dir: TFDS data dir for the prepared data (ignored for ``.npz``).
      manual_dir: root of the raw upstream files (ignored for ``.npz``).
      download: allow downloading when nothing is prepared and no manual_dir is given.
      bsds_dir: ``BSR_bsds500.tgz`` or its folder (see `embedded.load_bsds_photos`),
        the MNIST-M fallback; ignored for other domains.

    Returns:
      `Domain` with uint8 NHWC images at native size and int32 labels; ``origin``
      tells where they came from and ``source_kind`` which kind of source it was.

    Raises:
      DataError: unknown name, missing/invalid raw files (the message names the
        expected files and layout), prepared records that differ from
        ``manual_dir``, failed download, or invalid ``.npz``.

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
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if manual_dir is not None and not Path(manual_dir).expanduser().is_dir():
        raw.check_files(name, manual_dir)  # raises, naming the expected files
    if name == "mnist_m" and bsds_dir is not None:
        return _mnist_m_or_synthesised(data_dir, manual_dir, download, bsds_dir)
    return _load_known(name, data_dir, manual_dir, download)


class _Damaged(Exception):
    """Prepared records that exist but cannot be read."""


def _damage(folder: Path) -> str | None:
    """Why a prepared version folder is unusable (a missing or unreadable
    dataset_info.json), or None when it looks whole or is absent."""
    if not folder.is_dir():
        return None
    info = folder / "dataset_info.json"
    try:
        json.loads(info.read_text())
    except FileNotFoundError:
        return f"{info.name} is missing"
    except (OSError, ValueError) as e:
        return f"{info.name} cannot be read ({e})"
    return None


def _load_known(name: str, data_dir: Path, manual_dir, download: bool) -> Domain:
    """A known domain from prepared records, preparing them first if needed.

    Damaged records (a truncated or corrupt array_record, a missing or broken
    dataset_info.json) are prepared again from ``manual_dir`` when there is one, said on
    stderr; otherwise the error names the folder to delete.
    """
    try:
        return _load_prepared(name, data_dir, manual_dir, download)
    except _Damaged as e:
        folder = e.args[1]
        if manual_dir is None:
            raise DataError(
                f"The prepared {name} records in {folder} are damaged ({e.args[0]}). Delete "
                f"{folder} and rerun: they are prepared again from a download, or from "
                "--data-dir if you pass the upstream files."
            ) from None
        print(f"dann_jax: the prepared {name} records in {folder} are damaged ({e.args[0]}); "
              f"preparing them again from {manual_dir}", file=sys.stderr)  # fmt: skip
        shutil.rmtree(folder)
        return _load_prepared(name, data_dir, manual_dir, download)


def _load_prepared(name: str, data_dir: Path, manual_dir, download: bool) -> Domain:
    """`_load_known`'s work; raises `_Damaged` for records that exist but cannot be read."""
    from dann_jax.data import builders  # lazy: imports tensorflow_datasets

    if manual_dir is not None:
        raw.check_files(name, manual_dir)  # fail before TFDS creates (or reuses) anything
    folder = data_dir / f"dann_{name}" / builders.VERSION_STR
    why = _damage(folder)
    if why is not None:
        raise _Damaged(why, folder)
    _check_writable(data_dir, folder)
    try:
        return _read_known(name, data_dir, manual_dir, download)
    except (DataError, KeyboardInterrupt):
        raise
    except Exception as e:  # array_record / riegeli / TFDS raise many kinds on damaged files
        if not folder.is_dir():
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise _Damaged(first, folder) from e


def _check_writable(data_dir: Path, folder: Path) -> None:
    """Refuse a TFDS data dir that nothing can be prepared in, before TFDS tries."""
    if folder.is_dir():
        return  # prepared already: reading needs no write access
    existing = data_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is a file" if not existing.is_dir() else "cannot be written"
        raise DataError(
            f"The digit domains are prepared once under the TFDS data dir {data_dir}, but "
            f"{existing} {what}. Pass --tfds-dir a writable folder (or set TFDS_DATA_DIR)."
        )


def _read_known(name: str, data_dir: Path, manual_dir, download: bool) -> Domain:
    """Read (after preparing, if needed) one known domain's records."""
    from dann_jax.data import builders

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
    x_train, y_train = builders.read_split(builder, "train")
    x_test, y_test = builders.read_split(builder, "test")
    source = builders.raw_source(builder)
    origin = f"prepared records {builder.data_path} ({'new' if fresh else 'reused'}; from {source})"
    if fresh:  # the raw files were just read in full by the preparation
        kind = "download" if source.startswith("download") else "manual dir"
    else:
        kind = "prepared records"
        if manual_dir is not None:
            origin += "; " + _check_against_records(
                name, manual_dir, builder, source, (y_train, y_test)
            )
    return Domain(name, "full", x_train, y_train, x_test, y_test, origin, source_kind=kind)


def _check_against_records(name: str, manual_dir, builder, source: str, prepared_labels) -> str:
    """Read every raw file in `manual_dir`; DataError unless it is the prepared data.

    Sizes and labels are compared (images are not: decoding all of MNIST-M's PNGs
    would take longer than the check is worth; a different image set with the same
    labels in the same order is not a realistic mix-up).
    """
    root = Path(manual_dir).expanduser()
    splits = raw.read_domain(name, root)  # a truncated or corrupt file raises here
    problems = []
    for split, prepared in zip(raw.SPLITS, prepared_labels, strict=True):
        labels = np.asarray(splits[split][1])
        if len(labels) != len(prepared):
            problems.append(f"{split}: {len(labels)} images there, {len(prepared)} prepared")
        elif not np.array_equal(labels, prepared):
            problems.append(f"{split}: same size but other labels")
    if problems:
        raise DataError(
            f"The prepared {name} records in {builder.data_path} (from "
            f"{source}) are not the data in manual dir {root}: "
            f"{'; '.join(problems)}. Delete {Path(builder.data_path).parent} to prepare "
            f"them again from {root}, or use another TFDS data dir (--tfds-dir)."
        )
    return f"manual dir {root} checked: same sizes and labels"


def _mnist_m_or_synthesised(data_dir: Path, manual_dir, download: bool, bsds_dir) -> Domain:
    """MNIST-M as usual, else (files absent, download failed) synthesised from BSDS500."""
    if manual_dir is not None and not raw.has_files("mnist_m", manual_dir):
        why = f"no MNIST-M files in manual dir {manual_dir}"
    else:
        try:
            return _load_known("mnist_m", data_dir, manual_dir, download)
        except (MissingFilesError, DownloadError) as e:  # not: present but corrupt files
            why = str(e).splitlines()[0]
    print(SYNTHESISED_BANNER.format(why=why[:150], bsds=bsds_dir), file=sys.stderr)
    mnist = load_domain("mnist", data_dir=data_dir, manual_dir=manual_dir, download=download)
    photos = embedded.load_bsds_photos(bsds_dir)
    return embedded.synthesised_mnist_m(
        mnist, photos, seed=0, photos_from=f"BSDS500 photos from {bsds_dir}"
    )


def _download_and_prepare(builder, name: str, data_dir: Path, manual_dir, download: bool) -> None:
    """Point `builder` at the raw files (manual dir or download) and prepare it."""
    from dann_jax.data import builders
    from dann_jax.data import download as dl

    if manual_dir is not None:
        root = Path(manual_dir).expanduser()
        builder.raw_label = f"manual dir {root}"
    elif download:
        root = dl.download_domain(name, builders.download_root(data_dir))
        builder.raw_label = f"download into {root}"
    else:
        raise MissingFilesError(
            f"{name} is not prepared in {data_dir}, no manual_dir was given "
            "and download=False. "
            f"Pass manual_dir=<folder with the upstream files>; layout:\n{raw.LAYOUT}"
        )
    builder.raw_root = root
    builders.prepare(builder)
