"""A stand-in for Google Cloud Storage on this machine (tests only): ``gs://<bucket>/<key>``
lives at ``<root>/<bucket>/<key>``.

`installed(root)` routes the three ways a run reaches a bucket to the folder: epath's
(`etils.epath.testing.mock_epath`, every file operation of a ``gs://`` path mapped),
orbax's TensorStore kvstore (the GCS driver replaced by the file driver) and the two
clients orbax and `dann_jax.storage` look for (google-cloud-storage's bucket query, the
check that gcsfs imports). Everything else runs as it would on a bucket: the paths stay
``gs://`` URLs, so orbax takes its GCS branches (commit-file atomicity, GCS deletion) and
dann_jax its bucket ones (no lock, no fsync, metrics rewritten whole).

Objects need no folders: a write creates the local folders it needs, as a bucket would.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from unittest import mock

PREFIX = "gs://"


def _local(root: Path, path) -> str:
    text = os.fspath(path)
    return str(root / text[len(PREFIX) :]) if text.startswith(PREFIX) else text


def _remote(root: Path, path) -> str:
    text, base = os.fspath(path), str(root) + os.sep
    return PREFIX + text[len(base) :] if text.startswith(base) else text


@contextlib.contextmanager
def installed(root: str | os.PathLike):
    """Within the block, ``gs://`` paths are read and written under `root`."""
    from etils.epath import gpath, testing
    from orbax.checkpoint._src.path import gcs_utils

    from dann_jax import storage

    root = Path(root).absolute()
    local = lambda p: _local(root, p)

    def open_(orig, path, mode):
        if any(m in mode for m in "wa"):  # an object needs no folder: make it
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)
        return orig(local(path), mode)

    def glob(orig, pattern):
        return [_remote(root, p) for p in orig(local(pattern))]

    def walk(orig, top, **kw):
        for here, dirs, files in orig(local(top), **kw):
            yield _remote(root, here), dirs, files

    one = lambda orig, path, *a, **kw: orig(local(path), *a, **kw)
    two = lambda orig, src, dst, *a, **kw: orig(local(src), local(dst), *a, **kw)
    ops = {name: one for name in ("exists", "isdir", "listdir", "makedirs", "mkdir", "rmtree",
                                  "remove", "stat")}  # fmt: skip
    ops.update(rename=two, replace=two, copy=two, open=open_, glob=glob, walk=walk)
    with contextlib.ExitStack() as stack:
        stack.enter_context(testing.mock_epath(**ops))
        # With TensorFlow installed epath would take gfile's backend for gs://.
        stack.enter_context(mock.patch.object(gpath, "_is_tf_installed", lambda: False))
        kvstore = lambda path: {"driver": "file", "path": local(path).rstrip("/") + "/"}
        stack.enter_context(mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore))
        flat = lambda path: False  # a plain bucket (no hierarchical namespace)
        stack.enter_context(mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", flat))
        stack.enter_context(mock.patch.object(storage, "_missing_clients", lambda: []))
        yield root
