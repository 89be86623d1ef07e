"""Where a run's files live: a folder on this machine, or a bucket (``gs://bucket/run``).

A workdir and everything under it is an `etils.epath.Path`: ``pathlib.Path("gs://b/run")``
would quietly become the local folder ``gs:/b/run``, while epath keeps the URL and
reaches the bucket through its client (gcsfs, or TensorFlow's gfile when TensorFlow is
installed). orbax takes the same paths and writes a checkpoint's arrays to the bucket
through TensorStore's own GCS driver. A local workdir behaves as it always did (atomic
renames, fsync, a lock); this module holds what differs on a bucket:

* `check_url`: refuse, before any data is loaded, a URL that cannot hold a run (a
  scheme orbax cannot write, a missing client library, an object where the folder goes).
* `write_atomically`: an object is written under a temporary name beside the target and
  then moved onto it (a copy and a delete on GCS), so nothing half-written ever carries
  the final name (``results.json`` means a finished run, as on a disk).
* `ObjectLog`: ``metrics.jsonl``. Objects cannot be appended to, so the file is
  rewritten whole: at most every `REWRITE_SECONDS` while training, at every checkpoint
  (``sync``) and when closed.
"""

from __future__ import annotations

import importlib.util
import io as _io
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import IO

from etils import epath

__all__ = ["REWRITE_SECONDS", "ObjectLog", "as_path", "check_url", "is_url", "write_atomically"]

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# The extra that brings the clients a gs:// workdir needs (pyproject.toml).
INSTALL = "pip install 'dann_jax[gcs]' (gcsfs and google-cloud-storage)"

# Longest time metrics.jsonl on a bucket lags behind training (GCS allows about one
# write a second to one object; a chunk of steps can take less).
REWRITE_SECONDS = 10.0


class UnusableURL(RuntimeError):
    """A URL workdir that cannot hold a run; the message names the fix."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL (``gs://...``) rather than a path on this machine."""
    return bool(_URL.match(os.fspath(path)))


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `epath.Path`, which keeps the ``//`` of a URL."""
    return epath.Path(os.fspath(path))


def _missing_clients() -> list[str]:
    """The client libraries a gs:// workdir needs that do not import here: epath's
    (gcsfs, unless TensorFlow's gfile is there) and orbax's (google-cloud-storage, with
    which it lists a bucket's checkpoints)."""
    found = lambda name: importlib.util.find_spec(name) is not None
    missing = []
    if not (found("gcsfs") or found("tensorflow")):
        missing.append("gcsfs")
    if not (found("google") and found("google.cloud") and found("google.cloud.storage")):
        missing.append("google-cloud-storage")
    return missing


def check_url(url: str | os.PathLike, flag: str) -> None:
    """Refuse a URL `flag` (``--workdir``) that cannot hold a run, before any work.

    Only ``gs://`` buckets: orbax writes a checkpoint's arrays through TensorStore, whose
    cloud driver is the GCS one (another scheme would land in a local folder named after
    it). Reaching the bucket once here turns missing credentials into an error now
    rather than after the data is loaded.
    """
    text = os.fspath(url)
    if not text.startswith("gs://"):
        raise UnusableURL(
            f"{flag} {text}: a run can be kept in a Google Cloud Storage bucket (gs://...) "
            "or a local folder; orbax writes checkpoints to no other kind of URL. Mount the "
            "bucket (e.g. s3fs-fuse or mountpoint-s3 for S3) and give the mounted path."
        )
    lacking = _missing_clients()
    if lacking:
        raise UnusableURL(
            f"{flag} {text} needs {' and '.join(lacking)}, which do not import here "
            f"(epath reaches the bucket with gcsfs, orbax lists its checkpoints with "
            f"google-cloud-storage). {INSTALL}, or use a local {flag}."
        )
    path = as_path(text)
    try:
        is_file = path.exists() and not path.is_dir()
    except Exception as e:  # no credentials, no such bucket, no network: said at once
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UnusableURL(
            f"{flag} {text} cannot be reached ({why}). Check the bucket's name and this "
            "machine's credentials (gcloud auth application-default login, or the VM's "
            f"service account), or use a local {flag}."
        ) from None
    if is_file:
        raise UnusableURL(f"{flag} {text} is a file, not a folder. Choose another {flag}.")


def write_atomically(
    path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool, make_parents: bool
) -> str:
    """`dann_jax.io`'s atomic write for a URL: ``write(f)`` fills a buffer in memory, which
    is stored under a temporary name beside `path` and then moved onto it.

    The content is complete before anything is sent (a failing ``write`` sends nothing),
    and the final name only ever holds a whole object: the move is a server-side copy,
    then the temporary object is deleted (also when the move fails).
    """
    target = as_path(path)
    buffer = _io.BytesIO() if binary else _io.StringIO()
    write(buffer)
    data = buffer.getvalue()
    data = data if binary else data.encode("utf-8")
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(target)
    except BaseException:
        try:
            if tmp.exists():
                tmp.unlink()
        except Exception:  # the error that brought us here is the one to report
            pass
        raise
    return os.fspath(target)


class ObjectLog:
    """``metrics.jsonl`` on a bucket: a file object whose lines are kept in memory and
    written (whole, atomically) at most every `REWRITE_SECONDS`, on ``sync`` and on close.

    A run killed outright loses at most the lines since the last write; the loop syncs at
    every checkpoint, so a resumed run (which cuts the file back to its checkpoint) never
    leaves a gap.
    """

    def __init__(self, path: epath.Path, text: str, clock: Callable[[], float] = time.monotonic):
        self.path, self.text, self.clock = path, text, clock
        self.written, self.last = text, clock()

    def write(self, line: str) -> int:
        self.text += line
        return len(line)

    def flush(self) -> None:
        if self.clock() - self.last >= REWRITE_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Write what is not yet in the bucket."""
        if self.text != self.written:
            write_atomically(self.path, lambda f: f.write(self.text), binary=False,
                             make_parents=True)  # fmt: skip
            self.written = self.text
        self.last = self.clock()

    def close(self) -> None:
        self.sync()

    def __enter__(self) -> ObjectLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
