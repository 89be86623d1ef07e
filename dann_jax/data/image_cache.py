"""The cache of decoded image domains: ``<cache>/dann_images/<key>/`` (see `folders`).

An entry is ``images.npy`` (uint8 (N, H, W, 3)), ``labels.npy`` (int (N,), labelled
domains only) and ``meta.json`` (class names, paths, skipped files, notes). It is written
to a temporary folder renamed when complete, so a kill leaves no half entry; and every
entry read is checked (each file there and readable, the lengths agreeing, the labels
within the classes), so a damaged one (an emptied ``meta.json``, a cut ``images.npy``, a
missing ``labels.npy``: a full disk, a copy cut short) is said, deleted and decoded
again, never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Damaged", "load", "remove", "save"]


class Damaged(Exception):
    """A cache entry that cannot be trusted; the message says what is wrong with it."""


def save(directory: Path, images: np.ndarray, labels: np.ndarray | None, meta: dict) -> None:
    """Write an entry atomically (a temporary folder renamed when complete); on any
    failure, also an interrupt, nothing is left but what was there."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
    try:
        np.save(tmp / "images.npy", images)
        if labels is not None:
            np.save(tmp / "labels.npy", labels)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not directory.is_dir():  # else another process stored the same entry first
            raise


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
