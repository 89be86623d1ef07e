"""SVHN reader: the cropped-digits ``train_32x32.mat`` and ``test_32x32.mat``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dann_jax.data.domain import DataError
from dann_jax.data.raw_common import check_labels, missing_error

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def locate_svhn(folder: Path, strict: bool) -> dict[str, Path] | None:
    """The two SVHN .mat files, if both are present."""
    paths = {s: folder / n for s, n in SVHN_FILES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if not missing:
        return paths
    if strict:
        raise missing_error("svhn", folder, f"Missing: {', '.join(missing)}.")
    return None


def svhn_from_mat(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's X (32, 32, 3, N), y (N, 1) in 1..10 -> images (N, 32, 32, 3), labels (10 -> 0)."""
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DataError(
            f"{source}: expected X (32, 32, 3, N) and y (N, 1), got {x.shape}, {y.shape}."
        )
    images = np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2)), dtype=np.uint8)
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    labels = np.where(labels == 10, 0, labels)  # SVHN stores digit 0 as class 10
    return images, check_labels(labels, source)


def read_svhn(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read train_32x32.mat and test_32x32.mat."""
    import scipy.io  # lazy: only needed for SVHN
    from scipy.io.matlab import MatReadError

    out = {}
    for split, path in locate_svhn(folder, strict=True).items():
        try:
            mat = scipy.io.loadmat(path, variable_names=["X", "y"])
        except (MatReadError, ValueError, OSError, NotImplementedError) as e:
            raise DataError(f"{path} is not a readable .mat file ({e}); fetch it again.") from e
        if "X" not in mat or "y" not in mat:
            raise DataError(f"{path}: expected variables X and y, found {sorted(mat)}.")
        out[split] = svhn_from_mat(mat["X"], mat["y"], str(path))
    return out
