"""Download of the upstream raw files (the fallback when no manual dir is given).

Files land in ``<download_root>/<domain>/`` with the same names as in a manual
dir, so the same readers serve both. Each file is fetched to a ``.part`` file,
verified (md5 or sha256, whichever is known) and only then renamed to its final
name: a file under its final name has always been verified. Mirrors are tried in
order (a dead one, or one serving other bytes, passes to the next); an
interrupted transfer keeps its ``.part`` and is resumed with an HTTP ``Range``
request where the server honours it, else restarted from the first byte.

``$DANN_DATA_MIRROR`` (one or more base URLs, space separated) replaces every
built-in URL by ``<base>/<domain>/<file name>``: for a local mirror, and for tests
that must not reach the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dann_jax.data.domain import DownloadError
from dann_jax.data.raw import LAYOUT

MIRROR_ENV = "DANN_DATA_MIRROR"
_ATTEMPTS = 3  # per mirror: one transfer and up to two resumptions after interruptions
_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one upstream file comes from and the checksum it must have.

    Attributes:
      urls: mirrors, tried in order.
      sha256: hex sha256 of the file, or its first characters (torchvision publishes its
        weights with the first 8 in the file name and checks only those), or None.
      md5: hex md5 of the file, or None (used when no sha256 is known).
    """

    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None


_MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_LIBSVM_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
# The authors' MNIST-M release, as mirrored by Cornell (pytorch-adapt downloads it there).
_MNIST_M_URL = "https://cornell.box.com/shared/static/jado7quprg6hzzdubvwzh9umr75damwi"

# domain -> file name -> Source. MNIST and SVHN sha256: those TFDS records for the same
# upstream files; MNIST-M md5: pytorch-adapt's; USPS md5: torchvision's.
SOURCES: dict[str, dict[str, Source]] = {
    "mnist": {
        name: Source(tuple(m + name for m in _MNIST_MIRRORS), sha256=sha)
        for name, sha in {
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        }.items()
    },
    "mnist_m": {
        "mnist_m.tar.gz": Source((_MNIST_M_URL,), md5="859df31c91afe82e80e5012ba928f279"),
    },
    "usps": {
        "usps.bz2": Source((_LIBSVM_URL + "usps.bz2",), md5="ec16c51db3855ca6c91edd34d0e9b197"),
        "usps.t.bz2": Source((_LIBSVM_URL + "usps.t.bz2",), md5="8ea070ee2aca1ac39742fdd1ef5ed118"),
    },
    "svhn": {
        "train_32x32.mat": Source(
            (_SVHN_URL + "train_32x32.mat",),
            sha256="435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
        ),
        "test_32x32.mat": Source(
            (_SVHN_URL + "test_32x32.mat",),
            sha256="cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
        ),
    },
}

# What else a user can do when a domain cannot be downloaded (appended to the error).
_HINTS = {
    "mnist_m": "Or pass bsds_dir (--bsds-dir, BSR_bsds500.tgz) to synthesise MNIST-M instead.",
}


class _Interrupted(OSError):
    """The transfer stopped before the end; the ``.part`` file holds what arrived."""


class _Stalled(OSError):
    """The mirror sends too little to finish (a trickle): the next mirror is tried."""


# A mirror that sends fewer than STALL_BYTES in STALL_SECONDS is given up (the socket
# timeout alone never trips while bytes trickle in); progress is said every PROGRESS_SECONDS.
STALL_SECONDS, STALL_BYTES, PROGRESS_SECONDS = 30.0, 64 * 1024, 10.0
_READ = 64 * 1024  # at most this much per socket read


def file_digest(path: str | os.PathLike, algorithm: str, chunk: int = _BLOCK) -> str:
    """Hex digest (``'sha256'``, ``'md5'``, ...) of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksum_problem(path: Path, source: Source) -> str | None:
    """None if `path` has `source`'s checksum (or none is known), else what differs."""
    for algorithm, expected in (("sha256", source.sha256), ("md5", source.md5)):
        if expected is not None:
            got = file_digest(path, algorithm)
            if not got.startswith(expected.lower()):
                return f"checksum mismatch (got {algorithm} {got}, expected {expected})"
            return None
    return None


def mirror_urls(domain: str, name: str, source: Source) -> tuple[str, ...]:
    """The URLs to try for one file: ``$DANN_DATA_MIRROR`` bases if set, else the built-in."""
    bases = os.environ.get(MIRROR_ENV, "").split()
    if bases:
        return tuple(f"{b.rstrip('/')}/{domain}/{name}" for b in bases)
    return source.urls


def _open(url: str, offset: int, timeout: float):
    """Open `url`, asking for the bytes from `offset` on when `offset` > 0."""
    headers = {"User-Agent": "dann_jax"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumes_at(resp, offset: int) -> bool:
    """Whether `resp` continues a file at byte `offset` (206 with a matching Content-Range)."""
    if not offset or getattr(resp, "status", None) != 206:
        return False  # 200 (Range ignored) or a file:// URL: the whole file follows
    answered = resp.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-", answered)
    if match is None or int(match[1]) != offset:
        raise OSError(f"asked for the bytes from {offset} on, got Content-Range {answered!r}")
    return True


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Transfer `url` into `part`, appending to it when the server resumes at its size.

    Raises:
      _Interrupted: the body ended before the announced length, or the connection
        broke midway (`part` keeps what arrived, for a resumption).
      urllib.error.URLError, OSError: the mirror cannot be reached or refuses the file.
    """
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            e.close()
            return  # "range not satisfiable": `part` is already whole (or junk: verified next)
        raise
    with resp:
        resumed = _resumes_at(resp, offset)
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        try:
            with open(part, "ab" if resumed else "wb") as out:
                got = _copy(resp, out, url, expected)
        except (_Stalled, _Interrupted):
            raise
        except (OSError, http.client.HTTPException) as e:
            raise _Interrupted(f"transfer broke ({e})") from e
    # urllib does not raise when a connection closes early: compare with the length.
    if expected is not None and got < expected:
        raise _Interrupted(f"connection closed after {got} of {expected} bytes")


def _copy(resp, out, url: str, expected: int | None) -> int:
    """Copy a response body to `out`, saying the progress and giving up on a stall."""
    read = getattr(resp, "read1", resp.read)  # what one socket read brings, not 1 MB
    got, start = 0, time.monotonic()
    window_start, window_bytes, said = start, 0, start
    name = url.rsplit("/", 1)[-1]
    while block := read(_READ):
        out.write(block)
        got += len(block)
        window_bytes += len(block)
        now = time.monotonic()
        if now - said >= PROGRESS_SECONDS:
            total = f" of {expected / 1e6:.1f}" if expected else ""
            rate = got / 1e6 / max(now - start, 1e-9)
            print(f"dann_jax: downloading {name}: {got / 1e6:.1f}{total} MB ({rate:.2f} MB/s)",
                  file=sys.stderr)  # fmt: skip
            said = now
        if now - window_start >= STALL_SECONDS:
            if window_bytes < STALL_BYTES:
                raise _Stalled(
                    f"stalled: {window_bytes} bytes in the last {now - window_start:.0f} s "
                    f"({got} in all)"
                )
            window_start, window_bytes = now, 0
    return got


def _fetch_verified(urls: tuple[str, ...], dest: Path, source: Source, timeout: float) -> list:
    """Fetch `dest` from the first mirror that gives the right bytes; [] or the failures.

    A ``.part`` left by an earlier run is resumed; if the result fails verification the
    ``.part`` is deleted and that mirror tried once more from the first byte (the old
    bytes may have been the bad ones). Nothing is renamed to `dest` unless verified.
    """
    part = dest.with_name(dest.name + ".part")
    errors: list[str] = []
    for url in urls:
        fresh_retry_done = False
        for _ in range(_ATTEMPTS):
            had_part = part.is_file() and part.stat().st_size > 0
            try:
                _fetch(url, part, timeout)
            except _Stalled as e:
                errors.append(f"{url}: {e}")
                break  # a trickle will not finish: the next mirror (the .part is kept)
            except _Interrupted as e:
                errors.append(f"{url}: {e}")
                continue  # resume from what arrived
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                errors.append(f"{url}: {e}")
                break  # dead mirror: the next one
            problem = checksum_problem(part, source)
            if problem is None:
                os.replace(part, dest)
                return []
            part.unlink()
            errors.append(f"{url}: {problem}")
            if not had_part or fresh_retry_done:
                break  # this mirror serves other bytes: the next one
            fresh_retry_done = True
    return errors


def set_aside(dest: Path, problem: str) -> str:
    """Move a file that fails its checksum (one put there by hand, say) to
    ``<name>.rejected`` instead of deleting it, say so, and return what was said."""
    rejected = dest.with_name(dest.name + ".rejected")
    os.replace(dest, rejected)
    said = f"{dest} failed its checksum ({problem}); kept aside as {rejected.name}"
    print(f"dann_jax: note: {said}, and fetched again", file=sys.stderr)
    return said


def download_file(
    folder: str | os.PathLike, name: str, source: Source, *, group: str, timeout: float = 20.0
) -> tuple[Path, list[str]]:
    """One verified file in `folder` (fetched once; ``$DANN_DATA_MIRROR/<group>/<name>`` if
    set): (its path, the failures, empty when it is there)."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    aside = []
    if dest.is_file():
        problem = checksum_problem(dest, source)
        if problem is None:
            return dest, []
        aside.append(set_aside(dest, problem))  # not what the checksum says: fetch again
    errors = _fetch_verified(mirror_urls(group, name, source), dest, source, timeout)
    return dest, aside + errors if errors else []


def download_domain(
    domain: str, download_root: str | os.PathLike, *, timeout: float = 20.0
) -> Path:
    """Fetch `domain`'s upstream files into ``download_root/<domain>/`` (once).

    Args:
      domain: one of the known domain names.
      download_root: folder that gets the per-domain subfolder, laid out like a manual dir.
      timeout: seconds before one connection attempt (or a stalled read) gives up.

    Returns:
      `download_root`, usable as the root for `raw.read_domain`.

    Raises:
      DownloadError: the domain has no download source, or every mirror of a file
        failed (no network, HTTP error, checksum mismatch); the message lists what
        was tried and how to supply the files through a manual dir instead.
    """
    if domain not in SOURCES:
        raise DownloadError(f"No download source for {domain!r}.\nLayout:\n{LAYOUT}")
    folder = Path(download_root).expanduser() / domain
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in SOURCES[domain].items():
        dest = folder / name
        aside = []
        if dest.is_file():
            problem = checksum_problem(dest, source)
            if problem is None:
                continue  # already fetched and verified
            aside.append(set_aside(dest, problem))  # e.g. an older release: fetch again
        errors = _fetch_verified(mirror_urls(domain, name, source), dest, source, timeout)
        errors = aside + errors if errors else []
        if errors:
            # "no network?" only when no mirror answered with bytes at all.
            why = "" if any("checksum mismatch" in e for e in errors) else " (no network?)"
            raise DownloadError(
                f"Could not download {name} for {domain}{why}. Tried:\n  "
                + "\n  ".join(errors)
                + "\nPut the upstream files in a manual dir instead and pass it as manual_dir "
                f"(e.g. --data-dir). {_HINTS.get(domain, '')}\nLayout:\n{LAYOUT}"
            )
    return Path(download_root).expanduser()
