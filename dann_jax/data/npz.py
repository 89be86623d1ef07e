"""Your own domain as a validated ``.npz`` file (labels optional: an unlabelled target)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dann_jax.data.domain import DataError, Domain

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_KEYS, LABEL_KEYS = ("x_train", "x_test"), ("y_train", "y_test")
NPZ_HOWTO = (
    "Write it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...): "
    "x_* uint8 images (N, H, W) or (N, H, W, C) with C in (1, 3), "
    "y_* integer class indices (N,) >= 0 (leave both y_* out for an unlabelled target), "
    "optionally class_names=[...] (one name per index)."
)


def _bad(path: object, problem: str) -> DataError:
    """A DataError naming the file, the problem and the expected format."""
    return DataError(f"{path}: {problem}\n{NPZ_HOWTO}")


def _check_images(path: object, key: str, x: np.ndarray) -> np.ndarray:
    """Validate one image array and return it as NHWC."""
    if x.dtype != np.uint8:
        hint = " (for floats in [0, 1] use np.rint(x * 255).astype(np.uint8))"
        raise _bad(
            path, f"{key} has dtype {x.dtype}, expected uint8{hint if x.dtype.kind == 'f' else ''}."
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise _bad(
            path, f"{key} has shape {x.shape}, expected (N, H, W) or (N, H, W, C), C in (1, 3)."
        )
    if x.shape[0] == 0:
        raise _bad(path, f"{key} holds no images.")
    return x


def _check_labels(path: object, key: str, y: np.ndarray, n: int) -> np.ndarray:
    """Validate one label array against its image count and return it as int32."""
    if y.dtype.kind not in "iu":
        raise _bad(path, f"{key} has dtype {y.dtype}, expected an integer dtype.")
    if y.ndim != 1:
        raise _bad(path, f"{key} has shape {y.shape}, expected (N,) (use y.reshape(-1)).")
    if len(y) != n:
        raise _bad(path, f"{key} has {len(y)} labels but x_{key[2:]} has {n} images.")
    if len(y) and y.min() < 0:
        raise _bad(path, f"{key} has labels in [{y.min()}, {y.max()}]; labels must be >= 0.")
    return y.astype(np.int32)


def _class_names(path: object, names: np.ndarray | None, labels) -> tuple[str, ...] | None:
    """The optional ``class_names`` array, checked against the labels."""
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise _bad(
            path, f"class_names must be a 1-D array of strings, got {names.dtype}{names.shape}."
        )
    top = max((int(y.max()) for y in labels if y is not None and len(y)), default=-1)
    if top >= len(names):
        raise _bad(path, f"labels go up to {top} but class_names has {len(names)} names.")
    return tuple(str(n) for n in names)


def load_npz(path: str | os.PathLike) -> Domain:
    """Load and validate your own domain from an ``.npz`` file.

    Args:
      path: file with arrays ``x_train``, ``x_test`` and, for a labelled domain,
        ``y_train``, ``y_test`` (both or neither); images uint8 (N, H, W) or (N, H, W, C)
        with C in (1, 3) and the same (H, W, C) in both splits, labels integer class
        indices (N,) >= 0; optionally ``class_names`` (strings, one per index).

    Returns:
      `Domain` with variant ``'npz'`` and name `path` (grey images get C = 1).

    Raises:
      DataError: missing or unreadable file, missing keys, or wrong dtype, rank,
        length or label range; the message names the problem and the format.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise _bad(path, "is a folder, not an .npz file (a folder of images needs no .npz name).")
    if p.exists() and not p.is_file():
        raise _bad(path, "is not a regular file (a pipe or a device?), so it cannot be an .npz.")
    if not p.is_file():
        raise _bad(path, "no such file.")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise _bad(path, f"not a readable .npz file ({e}).") from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        # np.save writes one bare array (.npy format), whatever the file is called.
        raise _bad(
            path,
            f"it holds a single array of shape {getattr(loaded, 'shape', '?')} (written by "
            "np.save?), not named arrays; write it with np.savez(path, x_train=..., "
            "y_train=..., x_test=..., y_test=...).",
        )
    try:
        with loaded as f:
            missing = [k for k in IMAGE_KEYS if k not in f.files]
            labels = [k for k in LABEL_KEYS if k in f.files]
            if missing or len(labels) == 1:
                missing += [k for k in LABEL_KEYS if k not in f.files] if labels else []
                raise _bad(path, f"missing key(s) {missing}; found {sorted(f.files)}.")
            arrays = {k: f[k] for k in (*IMAGE_KEYS, *labels, "class_names") if k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise _bad(path, f"not a readable .npz file ({e}).") from e
    x_train = _check_images(path, "x_train", arrays["x_train"])
    x_test = _check_images(path, "x_test", arrays["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise _bad(
            path, f"x_train images are {x_train.shape[1:]} but x_test are {x_test.shape[1:]}."
        )
    y = {k: _check_labels(path, k, arrays[k], len(x)) if k in arrays else None
         for k, x in (("y_train", x_train), ("y_test", x_test))}  # fmt: skip
    return Domain(
        name=str(path),
        variant="npz",
        x_train=x_train,
        y_train=y["y_train"],
        x_test=x_test,
        y_test=y["y_test"],
        origin=f"npz file {path}",
        class_names=_class_names(path, arrays.get("class_names"), y.values()),
    )
