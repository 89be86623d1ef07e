"""Download of the upstream raw files (the fallback when no manual dir is given).

Files land in ``<download_root>/<domain>/`` with the same names as in a manual
dir, so the same readers serve both. Each file is fetched once, to a ``.part``
file that is verified (sha256, where known) and renamed only when complete.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from dann_jax.data.domain import DataError
from dann_jax.data.raw import LAYOUT

_MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"

# domain -> file name -> (candidate URLs, sha256 or None). The MNIST and SVHN
# checksums are those TFDS records for the same upstream files.
SOURCES: dict[str, dict[str, tuple[tuple[str, ...], str | None]]] = {
    "mnist": {
        name: (tuple(m + name for m in _MNIST_MIRRORS), sha)
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
    "svhn": {
        "train_32x32.mat": (
            (_SVHN_URL + "train_32x32.mat",),
            "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
        ),
        "test_32x32.mat": (
            (_SVHN_URL + "test_32x32.mat",),
            "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
        ),
    },
}

# Why some domains cannot be downloaded automatically.
NO_SOURCE = {
    "mnist_m": (
        "MNIST-M has no stable direct download URL (the authors' release, mnist_m.tar.gz, is "
        "shared through a web page, not a plain file URL). Get mnist_m.tar.gz from the "
        "DANN authors' page (Ganin et al.) and pass its folder as manual_dir."
    ),
    "usps": (
        "USPS (usps.h5) has no stable direct download URL known to this project (it is "
        "distributed through Kaggle, 'bistaumanga/usps-dataset', which needs a login). "
        "Download usps.h5 and pass its folder as manual_dir."
    ),
}


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path, sha256: str | None, timeout: float) -> None:
    """Stream `url` to ``dest.part``, verify it, then rename it to `dest`."""
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
        while block := resp.read(1 << 20):
            h.update(block)
            out.write(block)
    if sha256 is not None and h.hexdigest() != sha256:
        part.unlink()
        raise ValueError(f"checksum mismatch (got sha256 {h.hexdigest()}, expected {sha256})")
    os.replace(part, dest)


def download_domain(
    domain: str, download_root: str | os.PathLike, *, timeout: float = 20.0
) -> Path:
    """Fetch `domain`'s upstream files into ``download_root/<domain>/`` (once).

    Args:
      domain: one of the known domain names.
      download_root: folder that gets the per-domain subfolder, laid out like a manual dir.
      timeout: seconds before one connection attempt gives up.

    Returns:
      `download_root`, usable as the root for `raw.read_domain`.

    Raises:
      DataError: the domain has no download source, or every URL of a file failed
        (no network, HTTP error, checksum mismatch); the message lists what was
        tried and how to supply the files through a manual dir instead.
    """
    if domain not in SOURCES:
        raise DataError(f"Cannot download {domain}: {NO_SOURCE[domain]}\nLayout:\n{LAYOUT}")
    folder = Path(download_root).expanduser() / domain
    folder.mkdir(parents=True, exist_ok=True)
    for name, (urls, sha) in SOURCES[domain].items():
        dest = folder / name
        if dest.is_file() and (sha is None or sha256_of(dest) == sha):
            continue  # already fetched and verified
        errors = []
        for url in urls:
            try:
                _fetch(url, dest, sha, timeout)
                break
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{url}: {e}")
        else:
            raise DataError(
                f"Could not download {name} for {domain} (no network?). Tried:\n  "
                + "\n  ".join(errors)
                + f"\nPut the upstream files in a manual dir instead and pass it as manual_dir "
                f"(e.g. --data-dir). Layout:\n{LAYOUT}"
            )
    return Path(download_root).expanduser()
