"""Readers for the upstream raw files of the digit domains.

Pure numpy/PIL/h5py/scipy code: no TFDS and no TensorFlow, so the readers can be
tested (and reused) on their own. Every reader returns
``{split: (images, labels)}`` where ``images[i]`` is a uint8 ``(H, W, C)`` array
(a numpy array, or a lazy sequence that decodes on access) and ``labels`` an
int64 array. Manual files are never checksum-checked: offline copies may be
recompressed (other bytes, same content), so content is validated instead
(IDX magic numbers, shapes, label ranges).

MNIST and MNIST-M are read here; USPS (`raw_usps`) and SVHN (`raw_svhn`) have
modules of their own, re-exported here, as are the shared `LAYOUT` and friends
(`raw_common`).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dann_jax.data.domain import NUM_CLASSES, DataError
from dann_jax.data.raw_common import (
    EXPECTED_FILES,
    IMAGE_SHAPES,
    LAYOUT,
    SPLITS,
    check_labels,
    missing_error,
    missing_message,
)
from dann_jax.data.raw_svhn import SVHN_FILES, locate_svhn, read_svhn, svhn_from_mat
from dann_jax.data.raw_usps import (
    USPS_FILE,
    USPS_LIBSVM_FILES,
    locate_usps,
    parse_libsvm_usps,
    read_usps,
    usps_to_uint8,
)

__all__ = [
    "EXPECTED_FILES",
    "IMAGE_SHAPES",
    "LAYOUT",
    "MNIST_M_ARCHIVES",
    "MNIST_STEMS",
    "SPLITS",
    "SVHN_FILES",
    "USPS_FILE",
    "USPS_LIBSVM_FILES",
    "PngSequence",
    "check_files",
    "check_labels",
    "domain_folder",
    "has_files",
    "missing_message",
    "parse_libsvm_usps",
    "parse_mnist_m_labels",
    "read_domain",
    "read_idx",
    "svhn_from_mat",
    "usps_to_uint8",
]

MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_M_ARCHIVES = ("mnist_m.tar.gz", "mnist_m.tgz", "mnist_m.tar")


def domain_folder(root: str | os.PathLike, domain: str) -> Path:
    """The folder of `domain` under `root`: ``root/<domain>``, or `root` itself if it holds them."""
    root = Path(root).expanduser()
    sub = root / domain
    if sub.is_dir() or not _LOCATORS[domain](root, strict=False):
        return sub
    return root


def has_files(domain: str, root: str | os.PathLike) -> bool:
    """Whether `domain`'s raw files are under `root` (False, not an error, when they are not)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return False
    return _LOCATORS[domain](domain_folder(root, domain), strict=False) is not None


def check_files(domain: str, root: str | os.PathLike) -> Path:
    """Raise DataError (naming the expected files) unless `domain`'s raw files are under `root`.

    Files absent from an existing folder raise the subclass `MissingFilesError`; a
    `root` that does not exist raises a plain `DataError` (a mistyped path, not
    missing data).
    """
    if not Path(root).expanduser().is_dir():
        folder = Path(root).expanduser() / domain
        raise DataError(missing_message(domain, folder, f"(manual_dir {root} does not exist.)"))
    folder = domain_folder(root, domain)
    _LOCATORS[domain](folder, strict=True)
    return folder


def read_domain(domain: str, root: str | os.PathLike) -> dict[str, tuple[Sequence, np.ndarray]]:
    """Read `domain`'s raw files under `root` into ``{split: (images, labels)}``."""
    folder = check_files(domain, root)
    return _READERS[domain](folder)


# -------------------------------------------------------------- MNIST (IDX)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _idx_candidates(folder: Path, stem: str) -> list[Path]:
    """Accepted names of one IDX file: gzipped, plain, and the dotted variant of some unzippers."""
    dotted = stem.replace("-idx", ".idx")
    return [folder / n for n in (f"{stem}.gz", stem, f"{dotted}.gz", dotted)]


def _locate_mnist(folder: Path, strict: bool) -> dict[str, Path] | None:
    """Map each IDX stem to its file; None (or DataError if strict) when any is missing."""
    found, missing = {}, []
    for stems in MNIST_STEMS.values():
        for stem in stems:
            hits = [p for p in _idx_candidates(folder, stem) if p.is_file()]
            if hits:
                found[stem] = hits[0]
            else:
                missing.append(f"{stem}.gz")
    if missing:
        if strict:
            raise missing_error("mnist", folder, f"Missing: {', '.join(missing)}.")
        return None
    return found


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (gzipped or not, detected from its content) into a numpy array."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic: decide by content, not by file name
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); fetch the file again.") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4]!r}).")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header != count * dtype.itemsize:
        raise DataError(
            f"{path}: IDX header says shape {dims} but the file holds "
            f"{len(data) - header} data bytes; the file is truncated or corrupt."
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def _read_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the four MNIST IDX files into uint8 ``(N, 28, 28, 1)`` images and labels."""
    files = _locate_mnist(folder, strict=True)
    out = {}
    for split, (img_stem, lbl_stem) in MNIST_STEMS.items():
        x, y = read_idx(files[img_stem]), read_idx(files[lbl_stem])
        if x.dtype != np.uint8 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{files[img_stem].name}/{files[lbl_stem].name}: expected uint8 images "
                f"(N, 28, 28) and N labels, got images {x.dtype}{x.shape}, labels {y.shape}."
            )
        out[split] = (x[..., None], check_labels(y.astype(np.int64), files[lbl_stem]))
    return out


# -------------------------------------------------------------- MNIST-M (PNG + labels)

_PNG_RE = re.compile(r"(?:^|/)mnist_m_(train|test)/([^/]+\.png)$")
_LABELS_RE = re.compile(r"(?:^|/)mnist_m_(train|test)_labels\.txt$")


def _mnist_m_tree(folder: Path) -> Path | None:
    """The extracted release folder (holding both labels files), if there is one."""
    for base in (folder / "mnist_m", folder):
        if all((base / f"mnist_m_{s}_labels.txt").is_file() for s in SPLITS):
            return base
    return None


def _locate_mnist_m(folder: Path, strict: bool) -> Path | None:
    """The extracted folder (preferred: no decompression) or else the archive."""
    tree = _mnist_m_tree(folder)
    if tree is not None:
        return tree
    for name in MNIST_M_ARCHIVES:
        if (folder / name).is_file():
            return folder / name
    if strict:
        raise missing_error("mnist_m", folder)
    return None


def parse_mnist_m_labels(text: str, source: str) -> list[tuple[str, int]]:
    """Parse a labels list with lines ``00000000.png 5`` into ``[(file name, label)]``."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= NUM_CLASSES:
            raise DataError(
                f"{source}, line {lineno}: expected '<name>.png <label 0-9>', got {line!r}."
            )
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DataError(f"{source} lists no images.")
    return entries


class PngSequence(Sequence):
    """Images decoded from PNG on access (keeps only the compressed bytes in memory)."""

    def __init__(self, sources: list[bytes | Path], names: list[str], shape: tuple[int, ...]):
        self._sources, self._names, self._shape = sources, names, shape

    def __len__(self) -> int:
        return len(self._sources)

    def __getitem__(self, i: int) -> np.ndarray:
        from PIL import Image  # lazy: keeps `import dann_jax.data` cheap

        src = self._sources[i]
        raw = src.read_bytes() if isinstance(src, Path) else src
        try:
            with Image.open(io.BytesIO(raw)) as im:
                arr = np.asarray(im.convert("RGB"))
        except OSError as e:
            raise DataError(f"MNIST-M image {self._names[i]} is not a readable PNG: {e}") from e
        if arr.shape != self._shape:
            raise DataError(
                f"MNIST-M image {self._names[i]} has shape {arr.shape}, not {self._shape}."
            )
        return arr


def _missing_png_error(split: str, missing: list[str], where: str) -> DataError:
    """DataError for listed-but-absent PNGs."""
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return DataError(
        f"mnist_m_{split}_labels.txt lists {len(missing)} image(s) missing from {where}: {shown}. "
        "Re-fetch or re-extract mnist_m.tar.gz, or cut the labels file down to the images present."
    )


def _scan_mnist_m_archive(path: Path) -> tuple[dict[str, dict[str, bytes]], dict[str, str]]:
    """Stream the tar once, keeping PNG bytes and label texts in memory (nothing extracted)."""
    pngs: dict[str, dict[str, bytes]] = {s: {} for s in SPLITS}
    labels: dict[str, str] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:  # "r|": sequential stream, one pass
            for member in tar:
                if not member.isfile():
                    continue
                if m := _PNG_RE.search(member.name):
                    pngs[m[1]][m[2]] = tar.extractfile(member).read()
                elif m := _LABELS_RE.search(member.name):
                    labels[m[1]] = tar.extractfile(member).read().decode("utf-8")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable tar archive ({e}); fetch it again.") from e
    return pngs, labels


def _read_mnist_m(folder: Path) -> dict[str, tuple[PngSequence, np.ndarray]]:
    """Read MNIST-M in the order of its labels files (which may list a subset of the images)."""
    found = _locate_mnist_m(folder, strict=True)
    shape = IMAGE_SHAPES["mnist_m"]
    out = {}
    if found.is_dir():
        for split in SPLITS:
            labels_file = found / f"mnist_m_{split}_labels.txt"
            entries = parse_mnist_m_labels(labels_file.read_text("utf-8"), str(labels_file))
            paths = [found / f"mnist_m_{split}" / name for name, _ in entries]
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise _missing_png_error(split, missing, str(found / f"mnist_m_{split}"))
            names = [name for name, _ in entries]
            out[split] = (PngSequence(paths, names, shape), _labels_of(entries))
        return out
    pngs, texts = _scan_mnist_m_archive(found)
    for split in SPLITS:
        if split not in texts:
            raise DataError(
                f"{found} has no mnist_m_{split}_labels.txt; expected the authors' layout "
                f"({EXPECTED_FILES['mnist_m']})."
            )
        entries = parse_mnist_m_labels(texts[split], f"{found}:mnist_m_{split}_labels.txt")
        missing = [name for name, _ in entries if name not in pngs[split]]
        if missing:
            raise _missing_png_error(split, missing, f"{found} (mnist_m_{split}/)")
        names = [name for name, _ in entries]
        out[split] = (
            PngSequence([pngs[split][n] for n in names], names, shape),
            _labels_of(entries),
        )
    return out


def _labels_of(entries: list[tuple[str, int]]) -> np.ndarray:
    """The label column of parsed labels-file entries."""
    return np.array([label for _, label in entries], dtype=np.int64)


# -------------------------------------------------------------- dispatch

_LOCATORS = {
    "mnist": _locate_mnist,
    "mnist_m": _locate_mnist_m,
    "usps": locate_usps,
    "svhn": locate_svhn,
}
_READERS = {
    "mnist": _read_mnist,
    "mnist_m": _read_mnist_m,
    "usps": read_usps,
    "svhn": read_svhn,
}
