"""Output files, written atomically: text, strict JSON, matplotlib figures.

Every file a run writes goes through here, so that a reader (a person, a resumed run, a
table builder) sees either the old file or the complete new one, never a partial one,
and so that JSON files are strict JSON that any parser reads.

* `write_text`: text, atomically (temporary file beside the target, then ``os.replace``).
* `write_json`: strict JSON (``allow_nan=False``): numpy and JAX values become JSON
  numbers and lists; every NaN/inf becomes ``null`` and, when the top level is a dict,
  is listed under its ``"non_finite"`` key, so a replaced value is never silent.
* `dumps` / `to_jsonable` / `non_finite_paths`: the same conversion without a file (for
  one JSON line of a ``.jsonl`` log, say).
* `save_figure`: a matplotlib ``Figure``, atomically.

Parent folders are not created unless ``make_parents=True``: a wrong path then fails at
once instead of leaving files in an unexpected new folder.

The module itself imports only the standard library and numpy (matplotlib is never
imported here: `save_figure` only calls the figure's own ``savefig``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "NON_FINITE_KEY",
    "Busy",
    "dumps",
    "exclusive",
    "non_finite_paths",
    "save_figure",
    "to_jsonable",
    "write_json",
    "write_text",
]

# Top-level key of a JSON dict that lists the paths of the NaN/inf values written as null.
NON_FINITE_KEY = "non_finite"


# ------------------------------------------------------------------------ atomic files


def _temp_path(path: Path) -> Path:
    """A fresh hidden name beside `path` for the file to be moved into place."""
    # Same folder, so os.replace is a rename within one file system (atomic on POSIX and
    # Windows). The random part keeps concurrent writers (threads, processes, seeds) of
    # the same target apart; the leading dot hides it from globs like "*.json".
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _write_atomically(
    path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool, make_parents: bool
) -> str:
    """Call ``write(f)`` on a temporary file beside `path`, then move it onto `path`.

    On any error (also KeyboardInterrupt) the temporary file is removed and `path` keeps
    its previous content, or stays absent. A URL (a bucket) is written by
    `dann_jax.storage.write_atomically`: the same rule, without fsync or ``os.replace``.
    """
    from dann_jax import storage

    if storage.is_url(path):
        return storage.write_atomically(path, write, binary=binary, make_parents=make_parents)
    target = Path(path)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target)
    try:
        # open(..., "x") rather than mkstemp: the file gets the usual umask permissions
        # (mkstemp's are 0600), and "x" still refuses to reuse an existing name.
        with open(tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            # Data on disk before the rename: otherwise a crash right after it can leave
            # an empty file under the final name on some file systems.
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return str(target)


class NotWritable(RuntimeError):
    """An output path that cannot be written; the message names the flag and the fix."""


def check_writable(path: str | os.PathLike, flag: str, *, is_file: bool = False) -> None:
    """Refuse an output folder (or file) that cannot be created or written, before any work.

    Checked up front so that a run never computes for minutes and then loses its output:
    a folder that is a file, lies under a file, is a dangling symbolic link, or sits in a
    folder this process may not write; a file path that is a folder.
    """
    p = Path(path).expanduser()
    fix = f"Choose another {flag}."
    if p.is_symlink() and not p.exists():
        raise NotWritable(
            f"{flag} {p} is a symbolic link to {os.readlink(p)}, which does not exist. "
            f"Create that folder, or choose another {flag}."
        )
    if is_file and p.is_dir():
        raise NotWritable(f"{flag} {p} is a folder; it needs a file name. {fix}")
    if not is_file and p.exists() and not p.is_dir():
        raise NotWritable(f"{flag} {p} is a file, not a folder. {fix}")
    if is_file and p.exists() and not os.access(p, os.W_OK):
        raise NotWritable(f"{flag} {p} cannot be written (it is read-only). {fix}")
    existing = p.parent if is_file else p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotWritable(f"{flag} {p} cannot be created: {existing} is a file. {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NotWritable(f"{flag} {p} cannot be written ({existing} is not writable). {fix}")


class Busy(RuntimeError):
    """Another process holds the folder (see `exclusive`); the message names it."""


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, flag: str = "the folder"):
    """Hold an exclusive lock on `folder` (a ``.lock`` file in it, created with it) while
    this process writes there; a second process asking for it gets `Busy` at once.

    An advisory ``fcntl`` lock: the kernel drops it when the process ends, however it
    ends, so a killed run never leaves its folder locked. A bucket (a URL) has no such
    locks: two runs started in one ``gs://`` workdir are not told apart.
    """
    from dann_jax import storage

    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): not guarded
        fcntl = None
    if fcntl is None or storage.is_url(folder):
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise Busy(
                f"{flag} {folder} is in use by {holder}: two runs writing one folder would "
                f"corrupt each other. Wait for it to finish, or use another {flag}."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def write_text(path: str | os.PathLike, text: str, *, make_parents: bool = False) -> str:
    """Write `text` to `path` (UTF-8) atomically.

    The text goes to a temporary file in the same folder, which then replaces `path`
    with ``os.replace``: a reader sees the old file or the whole new one, never part of
    it. On error nothing is left behind and an existing `path` is unchanged.

    Args:
      path: the file to write; its folder must exist unless `make_parents`.
      text: the content, written as is (no newline is added).
      make_parents: create missing parent folders first.

    Returns:
      `path` as a string.

    Raises:
      FileNotFoundError: the parent folder does not exist (and not `make_parents`).
      UnicodeEncodeError: `text` cannot be encoded as UTF-8 (e.g. a lone surrogate).
    """
    return _write_atomically(path, lambda f: f.write(text), binary=False, make_parents=make_parents)


def save_figure(
    fig: Any, path: str | os.PathLike, dpi: float = 100, *, make_parents: bool = False
) -> str:
    """Save a matplotlib figure to `path` atomically.

    The format comes from the suffix of `path` (``.png``, ``.pdf``, ``.svg``, ...) as
    with ``fig.savefig(path)``; it is passed explicitly because the temporary file has
    a different name. Works with a bare ``matplotlib.figure.Figure`` (no pyplot needed).

    Args:
      fig: a ``matplotlib.figure.Figure``.
      path: the image file; its folder must exist unless `make_parents`.
      dpi: resolution of raster formats.
      make_parents: create missing parent folders first.

    Returns:
      `path` as a string.

    Raises:
      ValueError: `path` has no suffix to tell the format.
    """
    fmt = Path(path).suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"{path}: no suffix to tell the image format (e.g. .png)")
    return _write_atomically(
        path,
        lambda f: fig.savefig(f, format=fmt, dpi=dpi),
        binary=True,
        make_parents=make_parents,
    )


# ------------------------------------------------------------------------------- JSON


def _pointer_part(key: str | int) -> str:
    """One step of a JSON-pointer path (RFC 6901 escapes "~" and "/")."""
    return str(key).replace("~", "~0").replace("/", "~1")


def _json_key(key: Any) -> str:
    """A dict key as the string JSON will use."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (bool, int, float)):
        # json.dumps would write True as "true"; str() keeps the Python spelling that
        # earlier files of this project used ("True", "7", "0.5").
        return str(key)
    raise TypeError(f"cannot use a {type(key).__name__} as a JSON key")


def _convert_array(a: np.ndarray, path: str, found: list[str]) -> Any:
    """A numpy array as nested lists; non-finite floats become None and are recorded."""
    if a.dtype.kind in "biu":
        return a.tolist()
    if a.dtype.kind == "f":
        # Vectorised: large float arrays (curves, embeddings) need no per-element Python.
        bad = ~np.isfinite(a)
        if not bad.any():
            return a.tolist()
        found.extend("/".join([path, *map(str, idx)]) for idx in np.argwhere(bad).tolist())
        if a.ndim == 0:
            return None
        out = a.astype(object)
        out[bad] = None
        return out.tolist()
    # Object, string, ... arrays: element by element, so each gets the usual checks.
    return _convert(a.tolist(), path, found)


def _convert(obj: Any, path: str, found: list[str]) -> Any:
    """`to_jsonable` of `obj` at JSON-pointer `path`; non-finite paths go to `found`."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            key = _json_key(k)
            if key in out:
                raise ValueError(f"{path or '/'}: two keys both written as {key!r}")
            out[key] = _convert(v, f"{path}/{_pointer_part(key)}", found)
        return out
    if isinstance(obj, (list, tuple)):
        return [_convert(v, f"{path}/{i}", found) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        # First: np.float64 subclasses float, and the result should be a plain float.
        return _convert(obj.item(), path, found)
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        found.append(path)
        return None
    if isinstance(obj, np.ndarray):
        return _convert_array(obj, path, found)
    if hasattr(obj, "__array__"):  # JAX arrays and other array-likes
        return _convert_array(np.asarray(obj), path, found)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{path or '/'}: cannot convert a {type(obj).__name__} to JSON")


def _strip(path: str) -> str:
    """Internal path ("/seeds/0/x") -> the reported form ("seeds/0/x"; "" = the whole)."""
    return path[1:]


def to_jsonable(obj: Any) -> Any:
    """`obj` as plain JSON types: dict (str keys), list, str, int, float, bool, None.

    Conversions: mappings -> dicts (keys via ``str``: ``7`` -> ``"7"``; two keys that
    become the same string raise), tuples -> lists, numpy scalars -> Python scalars,
    numpy/JAX arrays -> nested lists, ``os.PathLike`` -> str, and every NaN/inf float
    (also inside arrays) -> None. The input is not modified.

    Args:
      obj: the value to convert.

    Returns:
      The converted value, which ``json.dumps(..., allow_nan=False)`` accepts.

    Raises:
      TypeError: a value of another type (sets, complex numbers, arbitrary objects).
      ValueError: two keys of one mapping convert to the same string.
    """
    return _convert(obj, "", [])


def non_finite_paths(obj: Any) -> list[str]:
    """Where `obj` holds NaN or inf floats, as JSON-pointer-like paths.

    A path joins dict keys and list/array indices with "/" (``"seeds/0/target_accuracy"``,
    ``"confusion/1/0"``), with "~" and "/" inside keys escaped as in RFC 6901 ("~0",
    "~1"); ``""`` means `obj` itself. Paths come in the order `to_jsonable` visits them.

    Raises:
      TypeError, ValueError: as `to_jsonable`.
    """
    found: list[str] = []
    _convert(obj, "", found)
    return [_strip(p) for p in found]


def _with_note(value: Any, paths: list[str]) -> Any:
    """Add (or extend) the top-level NON_FINITE_KEY list of a converted dict."""
    if not paths or not isinstance(value, dict):
        return value
    earlier = value.get(NON_FINITE_KEY, [])
    if not isinstance(earlier, list):
        raise ValueError(f"the key {NON_FINITE_KEY!r} is taken by a non-list value")
    # Extending keeps the record of a file that is read, updated and written again.
    merged = earlier + [p for p in paths if p not in earlier]
    return {**value, NON_FINITE_KEY: merged}


def dumps(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """`obj` as strict JSON text, converted as by `to_jsonable`.

    NaN/inf values are written as ``null``; when `obj` is a mapping and any were
    replaced, the text also has a top-level ``"non_finite"`` list of their paths (see
    `non_finite_paths`), so that a reader can tell "was NaN" from "was missing". With
    ``indent=None`` the text is one line (for ``.jsonl`` logs). The output is ASCII
    (other characters are escaped), so it reads the same under any locale.

    Raises:
      TypeError, ValueError: as `to_jsonable`; ValueError also when the mapping has a
      ``"non_finite"`` key that is not a list and a value had to be replaced.
    """
    found: list[str] = []
    value = _with_note(_convert(obj, "", found), [_strip(p) for p in found])
    return json.dumps(value, indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    make_parents: bool = False,
) -> str:
    """Write `obj` as strict JSON (see `dumps`) plus a newline to `path`, atomically.

    The text is built before the file is opened, so an object that cannot be converted
    leaves `path` untouched; the write itself is atomic as in `write_text`.

    Args:
      path: the ``.json`` file; its folder must exist unless `make_parents`.
      obj: the value (nested dicts/lists of numbers, strings, numpy/JAX values).
      indent: as for ``json.dumps``; None for one line.
      sort_keys: sort the keys of every dict.
      make_parents: create missing parent folders first.

    Returns:
      `path` as a string.
    """
    text = dumps(obj, indent=indent, sort_keys=sort_keys) + "\n"
    return write_text(path, text, make_parents=make_parents)
