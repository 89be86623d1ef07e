"""Your own domains as image files: a folder of class subfolders, a flat folder, an image list.

Three forms, each one domain:

* a folder with one subfolder per class (torchvision's ``ImageFolder`` convention: class
  names sorted give the indices; the names are kept and used in every output);
* a flat folder of images: an unlabelled domain;
* an image-list file, one ``relative/path [label]`` per line (`dann_jax.data.image_list`).

Any format Pillow reads, decoded by `dann_jax.data.decode` (grey, palette and RGBA images
become RGB; 16-bit images are scaled, EXIF orientation applied; whatever that changes is
counted in the log). Files without an image extension and hidden files are ignored
(counted in the log); files that Pillow cannot decode are skipped, counted and named.
Links to folders are followed, each real folder once. Images keep their native size
unless ``image_size`` is given (shorter side resized to it, then a centre crop: both
said in the log).

Decoded images are cached (`dann_jax.data.image_cache`) under
``<cache_dir>/dann_images/<key>``, keyed by a SHA-256 of every file's path and bytes and
the decode settings: a changed folder is read again, an unchanged one is loaded in a
fraction of a second. Plain ``.npy`` rather than array_record (which the digits use
through TFDS): a domain is one dense uint8 array, decoded straight into the entry's
memory-mapped file (one copy of the domain at the peak, never a list of images and a
stacked copy). While decoding, the bytes are hashed again: a folder that changed during
the read is refused.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dann_jax.data import decode, image_cache, image_list
from dann_jax.data.decode import printable
from dann_jax.data.domain import DataError

__all__ = ["Images", "MixedSizes", "is_image_source", "read_images"]

_CACHE_VERSION = 2  # bump when the decoding changes: old entries are then never matched


class MixedSizes(DataError):
    """Images of several sizes without an image size to bring them to (``what``: that,
    without the fix, which depends on the caller)."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what} {fix}")
        self.what = what


@dataclasses.dataclass(frozen=True, eq=False)
class Images:
    """One domain's decoded images.

    Attributes:
      images: uint8 (N, H, W, 3).
      labels: int32 (N,) class indices into ``class_names``, or None (unlabelled).
      class_names: the classes (sorted folder names, or the list's labels), or None.
      paths: each image's path relative to the domain's root, in order.
      root: the folder (or the list file) the domain was read from.
      skipped: relative paths of files that could not be decoded.
      ignored: how many files were left out for not having an image extension.
      cached: whether the images came from the cache.
      notes: what decoding did to some images (16-bit scaled, turned upright, resized,
        cropped, ...), one phrase each with its count; said in the log.
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    paths: tuple[str, ...]
    root: str
    skipped: tuple[str, ...] = ()
    ignored: int = 0
    cached: bool = False
    notes: tuple[str, ...] = ()


def is_image_source(path: str | os.PathLike) -> bool:
    """Whether `path` names an image folder or an image-list file (not a digit name, .npz)."""
    p = Path(path).expanduser()
    return p.is_dir() or (p.is_file() and not p.name.lower().endswith(".npz"))


def _digest(entries, root: Path, settings: dict) -> str:
    """SHA-256 of the settings and of every file's relative path, label and bytes."""
    h = hashlib.sha256(json.dumps({**settings, "version": _CACHE_VERSION}).encode())
    for path, label in entries:
        h.update(_entry_key(path, root, label))
        h.update(_read(path, root))
    return h.hexdigest()


def _entry_key(path: Path, root: Path, label) -> bytes:
    """The bytes of a file's name and label that go into a digest (any name the OS
    gives: bytes that are not UTF-8 are kept as they are)."""
    return b"\0" + os.fsencode(_relative(path, root)) + f"\0{label}\0".encode()


def _read(path: Path, root: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        where = (
            f"is a link to {os.readlink(path)}, which does not exist. Remove the link"
            if path.is_symlink()
            else f"(listed in {root}) does not exist. Fix the path, or remove the line"
        )
        raise DataError(f"{printable(str(path))} {where}.") from None
    except OSError as e:
        raise DataError(f"{printable(str(path))} cannot be read ({e}).") from e


def _relative(path: Path, root: Path) -> str:
    base = root if root.is_dir() else root.parent
    return os.path.relpath(path, base)


def _decode(data: bytes, image_size: int | None):
    """`decode.decode`, looked up at each call (a test swaps it to change the folder)."""
    return decode.decode(data, image_size)


@dataclasses.dataclass
class _Decoded:
    """What decoding a domain's files gave: the images (written in order into one array
    with a row for every file, allocated at the first image; its first ``count`` rows
    filled) with their labels and paths, how many images had each size, the files
    skipped (undecodable) or refused (no faithful 8-bit form), how often each
    `decode.NOTES` applied."""

    files: int
    images: np.ndarray | None = None
    count: int = 0
    sizes: dict = dataclasses.field(default_factory=dict)
    labels: list = dataclasses.field(default_factory=list)
    paths: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    refused: list = dataclasses.field(default_factory=list)
    notes: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(decode.NOTES, 0))

    def add(self, image: np.ndarray, allocate: Callable) -> None:
        """One image into its row. The first image's size is the domain's; an image of
        another size is only counted (`_check_sizes` refuses the domain)."""
        self.sizes[image.shape[:2]] = self.sizes.get(image.shape[:2], 0) + 1
        if self.images is None:
            self.images = allocate((self.files, *image.shape))
        if image.shape == self.images.shape[1:]:
            self.images[self.count] = image
            self.count += 1


def _decode_all(entries, root: Path, settings: dict, digest: str, allocate) -> _Decoded:
    """Decode every file (in parallel threads) into one array that ``allocate(shape)``
    gives (no list of images, no stacked copy), hashing the bytes again as they are read."""
    h = hashlib.sha256(json.dumps({**settings, "version": _CACHE_VERSION}).encode())
    image_size = settings["image_size"]

    def one(entry):
        data = _read(entry[0], root)
        try:
            return data, _decode(data, image_size)
        except decode.Unsupported as e:
            return data, str(e)
        except Exception:  # Pillow raises many kinds on damaged files (OSError, SyntaxError...)
            return data, None

    out = _Decoded(len(entries))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        for (path, label), (data, got) in zip(entries, pool.map(one, entries), strict=True):
            h.update(_entry_key(path, root, label))
            h.update(data)
            rel = _relative(path, root)
            if got is None or isinstance(got, str):
                (out.skipped if got is None else out.refused).append((rel, got))
                continue
            image, notes = got
            out.add(image, allocate)
            out.labels.append(label)
            out.paths.append(rel)
            for key in notes:
                out.notes[key] += 1
    if h.hexdigest() != digest:
        raise DataError(
            f"The files in {root} changed while they were being read. Rerun once "
            "nothing writes to the folder any more."
        )
    if out.refused:
        (name, why), n = out.refused[0], len(out.refused)
        raise DataError(
            f"{n} image{'s' if n > 1 else ''} in {root} hold {why}, which have no one "
            f"conversion to 8-bit colour (e.g. {printable(name)}). Convert them to 8- or "
            "16-bit PNG or TIFF, scaled as they should be seen, or remove them."
        )
    return out


def _check_sizes(sizes: dict[tuple[int, int], int], root: Path) -> None:
    """Images of several sizes are an error naming the fix."""
    if len(sizes) > 1:
        common = sorted(sizes.items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{w}x{h}: {n}" for (h, w), n in common[:4])
        raise MixedSizes(
            f"The images in {root} have {len(sizes)} different sizes ({listed}"
            f"{', ...' if len(sizes) > 4 else ''}).",
            "Pass --image-size N (image_size=N) to resize every image's shorter side to N and "
            "centre-crop it to N x N.",
        )


def _meta(images: Images) -> dict:
    """What a cache entry keeps beside the images and labels."""
    return {k: getattr(images, k) for k in ("class_names", "paths", "skipped", "ignored", "notes")}


def _into_cache(entry: Path, decode_into, log, root: Path) -> Images:
    """``decode_into(allocate)``'s `Images`, decoded straight into the cache entry's
    memory-mapped images (`image_cache.decode_into`: never a list of images and a
    stacked copy, twice the domain in memory). A cache that cannot be written costs a
    decode next time (the images then go straight into memory)."""
    try:
        result = image_cache.decode_into(entry, decode_into, _meta)
    except OSError as e:
        log(f"warning: could not cache the decoded images of {root} in {entry.parent} ({e})")
        return decode_into(lambda shape: np.empty(shape, np.uint8))
    # Read back as a cached domain is (`image_cache.load`: into memory, or mapped when
    # large): the map's pages were the page cache's, so the peak is one copy, not two.
    return dataclasses.replace(result, images=image_cache.load(entry)[0])


def _cached(directory: Path, root: Path, log) -> Images | None:
    """The cache entry of the domain, checked; None when there is none, or when it was
    damaged (then it is said and deleted: the domain is decoded again)."""
    if not os.path.lexists(directory):
        return None
    try:
        if not directory.is_dir():
            raise image_cache.Damaged("not a folder")
        images, labels, meta = image_cache.load(directory)
    except image_cache.Damaged as e:
        log(f"note: the cached images of {printable(str(root))} ({directory}) were damaged "
            f"({e}); deleted, and decoded again")  # fmt: skip
        image_cache.remove(directory)
        return None
    names = None if meta["class_names"] is None else tuple(meta["class_names"])
    return Images(
        images, labels, names, tuple(meta["paths"]), str(root), tuple(meta["skipped"]),
        meta["ignored"], cached=True, notes=tuple(meta.get("notes", ())),
    )  # fmt: skip


def read_images(
    path: str | os.PathLike,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    unlabelled: bool = False,
) -> Images:
    """Read one domain from an image folder or an image-list file (see the module doc).

    Args:
      path: a folder (class subfolders: labelled; flat: unlabelled) or an image-list file.
      image_size: resize each image's shorter side to this and centre-crop it square;
        None keeps the native size (then every image must have the same size).
      cache_dir: where decoded domains are cached (``<cache_dir>/dann_images``); None:
        the TFDS data dir (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      log: where the counts of ignored and skipped files go.
      unlabelled: read every image under the folder (subfolders included) without labels.

    Raises:
      DataError: a missing or empty folder, a class folder without images, a list with
        missing files or mixed labels, no decodable image, images of several sizes
        without ``image_size``, or files that changed while being read.
    """
    from dann_jax.data.load import default_data_dir

    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{path} does not exist: give an image folder or an image-list file.")
    if root.is_dir():
        listing = image_list.Listing(*image_list.list_folder(root, unlabelled))
    else:
        listing = image_list.read_list(root)
        if unlabelled:  # labels, if any, unused (a list given to --predict)
            listing = image_list.Listing([(p, None) for p, _ in listing.entries], None)
    entries, class_names, ignored = listing.entries, listing.class_names, listing.ignored
    for note in listing.notes:
        log(f"note: {printable(str(root))}: {note}")
    settings = {"image_size": image_size, "unlabelled": unlabelled}
    digest = _digest(entries, root, settings)
    cache = Path(cache_dir).expanduser() if cache_dir else default_data_dir()
    entry_dir = cache / "dann_images" / digest
    result = _cached(entry_dir, root, log)
    if result is None:
        decode_into = functools.partial(
            _decoded_images, entries, root, class_names, ignored, settings, digest
        )
        result = _into_cache(entry_dir, decode_into, log, root)
    decode.report(result, log)
    if isinstance(result.images, np.memmap):
        gb = result.images.nbytes / 1e9
        log(f"note: {printable(str(root))}: {gb:.2f} GB of decoded images, read from the "
            "cache's file as training needs them (memory-mapped)")  # fmt: skip
    return result


def _decoded_images(
    entries, root: Path, class_names, ignored: int, settings, digest, allocate
) -> Images:
    """The domain's `Images`, decoded from its files into ``allocate(shape)``."""
    out = _decode_all(entries, root, settings, digest, allocate)
    if not out.count:
        raise DataError(
            f"None of the {len(entries)} image files in {root} could be "
            f"decoded (e.g. {printable(out.skipped[0][0])}): are they images?"
        )
    _check_sizes(out.sizes, root)
    return Images(
        out.images[: out.count],
        None if class_names is None else np.asarray(out.labels, np.int32),
        class_names,
        tuple(out.paths),
        str(root),
        tuple(name for name, _ in out.skipped),
        ignored,
        notes=tuple(decode.describe_notes(out.notes, settings["image_size"])),
    )
