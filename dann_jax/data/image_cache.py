"""The cache of decoded image domains: ``<cache>/dann_images/<key>/`` (see `folders`).

An entry is ``images.npy`` (uint8 (N, H, W, 3)), ``labels.npy`` (int (N,), labelled
domains only) and ``meta.json`` (class names, paths, skipped files, notes). It is written
to a temporary folder renamed when complete, so a kill leaves no half entry (the images
are decoded straight into that folder's memory-mapped ``images.npy``); and every
entry read is checked (each file there and readable, the lengths agreeing, the labels
within the classes), so a damaged one (an emptied ``meta.json``, a cut ``images.npy``, a
missing ``labels.npy``: a full disk, a copy cut short) is said, deleted and decoded
again, never trusted.

An entry's images up to `MAP_ABOVE` bytes are read into memory; larger ones are
memory-mapped read-only, so that a domain larger than the host's memory trains (the
host-fed path reads each chunk's rows; the pages are the page cache's, not the
process's). A mapped file cut or rewritten in place under a live map would kill the
process (SIGBUS), so small entries, the common case, are still copied; this project
never rewrites an entry in place (entries are renamed into place, damaged ones deleted,
and a deleted file stays readable through a map). A source's training and validation
rows are copied out of a mapped entry into private, already-deleted files
(`select_rows`), which nothing else can reach.
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
    "MAP_ABOVE",
    "Damaged",
    "decode_into",
    "images_file",
    "load",
    "remove",
    "save",
    "select_rows",
    "write_rest",
    "writing",
]


# Entries whose images take more bytes than this are memory-mapped, not read (256 MiB:
# 21,845 images of 64 x 64, 1,783 of 224 x 224; MNIST's 60,000 at 28 x 28 are 141 MB).
MAP_ABOVE = 2**28


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


def _reserve(fileno: int, size: int) -> None:
    """Reserve a file's disk space: a full disk is then an `OSError` here, not a crash
    at a write to a mapped page."""
    if hasattr(os, "posix_fallocate") and size:
        os.posix_fallocate(fileno, 0, size)


def images_file(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A writable memory-mapped ``.npy`` of uint8 ``shape`` at ``path``, its disk space
    reserved (`_reserve`)."""
    out = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    with open(path, "r+b") as f:
        _reserve(f.fileno(), out.offset + out.nbytes)
    return out


def select_rows(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``images[mask]``; from a memory-mapped entry, without reading it into memory: the
    rows are copied block by block into a file deleted as it is made (beside the entry,
    so on the cache's disk), memory-mapped: its pages are the page cache's, nothing
    else can open or cut it, and its disk is freed when the array is."""
    if not isinstance(images, np.memmap):
        return images[mask]
    shape = (int(np.count_nonzero(mask)), *images.shape[1:])
    with tempfile.TemporaryFile(dir=Path(images.filename).parent.parent) as f:
        _reserve(f.fileno(), int(np.prod(shape)))
        out = np.memmap(f, np.uint8, "w+", shape=shape) if shape[0] else np.empty(shape, np.uint8)
    at, block = 0, max(1, 2**26 // max(1, int(np.prod(images.shape[1:]))))  # 64 MB reads
    for i in range(0, len(images), block):
        part = images[i : i + block][mask[i : i + block]]
        out[at : at + len(part)] = part
        at += len(part)
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


def _array(path: Path, map_above: int | None = None) -> np.ndarray:
    """The array in ``path``; memory-mapped read-only when the file exceeds ``map_above``."""
    try:
        big = map_above is not None and path.stat().st_size > map_above
        return np.load(path, mmap_mode="r" if big else None, allow_pickle=False)
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


def load(
    directory: Path, map_above: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(images, labels or None, meta) of an entry, checked; `Damaged` says what is wrong.
    Images above ``map_above`` bytes (default `MAP_ABOVE`) come memory-mapped."""
    meta = _meta(directory)
    images = _array(directory / "images.npy", MAP_ABOVE if map_above is None else map_above)
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
