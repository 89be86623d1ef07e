"""USPS readers: the LIBSVM files (``usps.bz2``, ``usps.t.bz2``) and ``usps.h5``.

Both formats hold the same 16x16 grey digits as floats, LIBSVM in [-1, 1] and the
HDF5 copy in [0, 1]; both are mapped to uint8 by one rule, ``round(u * 255)`` of
the value ``u`` in [0, 1] (``u = (v + 1) / 2`` for LIBSVM), so the two give the
same images.
"""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np

from dann_jax.data.domain import DataError
from dann_jax.data.raw_common import SPLITS, check_labels, missing_error

USPS_FILE = "usps.h5"
USPS_LIBSVM_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}
_PIXELS = 256  # 16 x 16


def locate_usps(folder: Path, strict: bool) -> dict[str, Path] | None:
    """``{'h5': path}`` or ``{'train': path, 'test': path}`` (LIBSVM); usps.h5 wins if both.

    Returns None (or raises `MissingFilesError` if `strict`) when neither format is complete.
    """
    if (folder / USPS_FILE).is_file():
        return {"h5": folder / USPS_FILE}
    paths = {s: folder / n for s, n in USPS_LIBSVM_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if not missing:
        return paths
    if strict:
        detail = f"Missing: {', '.join(missing)}." if len(missing) == 1 else ""
        raise missing_error("usps", folder, detail)
    return None


def usps_to_uint8(data: np.ndarray) -> np.ndarray:
    """Float (N, 256) pixels in [0, 1] -> uint8 (N, 16, 16, 1) via round(x * 255)."""
    scaled = np.rint(np.clip(np.asarray(data, dtype=np.float64), 0.0, 1.0) * 255.0)
    return scaled.astype(np.uint8).reshape(-1, 16, 16, 1)


def _parse_libsvm_line(line: str) -> tuple[float, np.ndarray, np.ndarray]:
    """``'label i:v i:v ...'`` -> (label, 1-based indices, values); ValueError if malformed."""
    label, _, rest = line.strip().partition(" ")
    # One float conversion per line, not per item (USPS has 2.4 million items).
    flat = np.array(rest.replace(":", " ").split(), dtype=np.float64)
    n_items = len(rest.split())
    if rest.count(":") != n_items or len(flat) != 2 * n_items:
        raise ValueError("an item is not 'index:value'")
    return float(label), flat[0::2], flat[1::2]


def parse_libsvm_usps(text: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse LIBSVM USPS lines into uint8 (N, 16, 16, 1) images and int64 labels 0..9.

    Lines are ``label index:value ...`` with labels 1..10 (digit = label - 1) and
    sparse 1-based indices 1..256; an absent index means the value 0 (the LIBSVM
    convention), i.e. mid grey. Values in [-1, 1] become ``round((v + 1) / 2 * 255)``.
    """
    rows, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            label, idx, values = _parse_libsvm_line(line)
        except ValueError as e:
            raise DataError(
                f"{source}, line {lineno}: expected 'label index:value ...' ({e})."
            ) from e
        if label != int(label) or not 1 <= label <= 10:
            raise DataError(f"{source}, line {lineno}: label {label:g} is not in 1..10.")
        if idx.size and (idx.min() < 1 or idx.max() > _PIXELS or (idx != np.rint(idx)).any()):
            raise DataError(f"{source}, line {lineno}: indices must be integers in 1..256.")
        row = np.zeros(_PIXELS)
        row[idx.astype(np.int64) - 1] = values
        rows.append(row)
        labels.append(int(label) - 1)
    if not rows:
        raise DataError(f"{source} holds no examples.")
    images = usps_to_uint8((np.stack(rows) + 1.0) / 2.0)
    return images, np.array(labels, dtype=np.int64)


def _read_libsvm(paths: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read usps.bz2 / usps.t.bz2 (bzip2-compressed, or plain text under the same name)."""
    out = {}
    for split in SPLITS:
        path = paths[split]
        raw = path.read_bytes()
        if raw[:3] == b"BZh":  # bzip2 magic: decide by content, not by file name
            try:
                raw = bz2.decompress(raw)
            except (OSError, ValueError, EOFError) as e:
                raise DataError(f"{path}: corrupt bzip2 data ({e}); fetch the file again.") from e
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not a LIBSVM text file ({e}).") from e
        out[split] = parse_libsvm_usps(text, str(path))
    return out


def _read_h5(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read usps.h5 (groups train/test with data (N, 256) float in [0, 1] and target (N,))."""
    import h5py  # lazy: only needed for this format

    out = {}
    try:
        with h5py.File(path, "r") as f:
            for split in SPLITS:
                if split not in f or "data" not in f[split] or "target" not in f[split]:
                    raise DataError(f"{path}: missing dataset {split}/data or {split}/target.")
                data, target = f[split]["data"][()], f[split]["target"][()]
                if data.ndim != 2 or data.shape[1] != _PIXELS or target.shape != (len(data),):
                    raise DataError(
                        f"{path}: {split}/data must be (N, 256) and {split}/target (N,), "
                        f"got {data.shape} and {target.shape}."
                    )
                labels = check_labels(target.astype(np.int64), f"{path}:{split}/target")
                out[split] = (usps_to_uint8(data), labels)
    except OSError as e:
        raise DataError(f"{path} is not a readable HDF5 file ({e}); fetch it again.") from e
    return out


def read_usps(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read USPS from `folder` in whichever format it holds (see `locate_usps`)."""
    found = locate_usps(folder, strict=True)
    return _read_h5(found["h5"]) if "h5" in found else _read_libsvm(found)
