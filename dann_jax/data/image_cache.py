"""The cache of decoded image domains: ``<cache>/dann_images/<key>/`` (see `folders`).

An entry is ``images.npy`` (uint8 (N, H, W, 3)), ``labels.npy`` (int (N,), labelled
domains only) and ``meta.json`` (class names, paths, skipped files, notes). It is written
to a temporary folder renamed when complete, so a kill leaves no half entry (the images
are decoded straight into that folder's memory-mapped ``images.npy``); and every
entry read is checked (each file there and readable, the lengths agreeing, the labels
within the classes), so a damaged one (an emptied ``meta.json``, a cut ``images.npy``, a
missing ``labels.npy``: a full disk, a copy cut short) is said, deleted and decoded
again, never trusted. Entries are read into memory, not memory-mapped: a cache file cut
or rewritten under a live memory map kills the process that reads it (SIGBUS; a test
damages an entry whose images are still in use).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Damaged",
    "decode_into",
    "images_file",
    "load",
    "remove",
    "save",
    "write_rest",
    "writing",
]


class Damaged(Exception):
    """A cache entry that cannot be trusted; the message says what is wrong with it."""


@contextlib.contextmanager
def writing(directory: Path) -> Iterator[Path]:
    """A temporary folder beside ``directory`` to write an entry into, renamed to it when
    the block completes; on any failure, also an interrupt, it is removed and nothing is
    left but what was there."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not directory.is_dir():  # else another process stored the same entry first
            raise


def write_rest(folder: Path, labels: np.ndarray | None, meta: dict) -> None:
    """An entry's labels (labelled domains) and ``meta.json``, beside its images."""
    if labels is not None:
        np.save(folder / "labels.npy", labels)
    (folder / "meta.json").write_text(json.dumps(meta))


def save(directory: Path, images: np.ndarray, labels: np.ndarray | None, meta: dict) -> None:
    """Write an entry atomically (`writing`)."""
    with writing(directory) as tmp:
        np.save(tmp / "images.npy", images)
        write_rest(tmp, labels, meta)


def images_file(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A writable memory-mapped ``.npy`` of uint8 ``shape`` at ``path``, its disk space
    reserved (a full disk is an `OSError` here, not a crash at a write to a page)."""
    out = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, out.offset + out.nbytes)
    return out


def decode_into(directory: Path, decode: Callable, meta: Callable[[Any], dict]) -> Any:
    """Store what ``decode(allocate)`` decodes as an entry, atomically (`writing`).

    ``decode`` writes its images into ``allocate(shape)``: this entry's ``images.npy``,
    memory-mapped, of room for every file; it returns a result whose ``images`` are the
    rows it filled, ``labels`` its labels, and ``meta(result)`` the entry's meta. Rows
    left by skipped files are cut off before the entry is renamed into place.
    """
    with writing(directory) as tmp:
        path, mapped = tmp / "images.npy", []

        def allocate(shape):
            mapped.append(images_file(path, shape))
            return mapped[0]

        result = decode(allocate)
        mapped[0].flush()
        if len(result.images) < len(mapped[0]):
            _truncate(path, result.images)
        write_rest(tmp, result.labels, meta(result))
    return result


def _truncate(path: Path, images: np.ndarray) -> None:
    """Rewrite ``path`` as ``images`` (the filled rows of its memory map), block by block."""
    part = path.with_name("images.part.npy")
    out = images_file(part, images.shape)
    for i in range(0, len(images), 1024):
        out[i : i + 1024] = images[i : i + 1024]
    out.flush()
    del out
    os.replace(part, path)


def _array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise Damaged(f"no {path.name}") from None
    except Exception as e:  # EOFError (empty), ValueError (cut short), OSError, ...
        raise Damaged(f"{path.name} unreadable: {str(e).strip() or type(e).__name__}") from None


def _meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / "meta.json").read_text())
    except FileNotFoundError:
        raise Damaged("no meta.json") from None
    except (OSError, ValueError) as e:
        raise Damaged(f"meta.json unreadable: {e}") from None
    kinds = {"class_names": (list, type(None)), "paths": list, "skipped": list, "ignored": int}
    wrong = [k for k, kind in kinds.items() if not isinstance(meta, dict) or not isinstance(
        meta.get(k, ...), kind)]  # fmt: skip
    if wrong:
        raise Damaged(f"meta.json lacks {', '.join(wrong)}")
    return meta


def load(directory: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(images, labels or None, meta) of an entry, checked; `Damaged` says what is wrong."""
    meta = _meta(directory)
    images = _array(directory / "images.npy")
    n = len(meta["paths"])
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise Damaged(f"images.npy holds {images.dtype} {images.shape}, not RGB images")
    if len(images) != n or n == 0:
        raise Damaged(f"images.npy holds {len(images)} images, meta.json names {n}")
    names = meta["class_names"]
    if names is None:
        if (directory / "labels.npy").exists():
            raise Damaged("labels.npy beside an unlabelled domain's images")
        return images, None, meta
    labels = _array(directory / "labels.npy")
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise Damaged(f"labels.npy holds {labels.dtype} {labels.shape}, not {n} labels")
    if n and (labels.min() < 0 or labels.max() >= len(names)):
        raise Damaged(f"labels.npy holds labels outside the {len(names)} classes")
    return images, labels, meta


def remove(directory: Path) -> None:
    """Delete an entry (or whatever stands at its name)."""
    if directory.is_dir() and not directory.is_symlink():
        shutil.rmtree(directory, ignore_errors=True)
    else:
        directory.unlink(missing_ok=True)
