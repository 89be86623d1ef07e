"""A domain's files: an image-list file (tllib's convention: one ``relative/path [label]``
per line, `read_list`) or a folder's images (`list_folder`, `dann_jax.data.folders`' forms).

Parsed strictly, each problem named with its line:

* paths are relative to the list's folder (absolute ones are kept), may hold spaces, and
  must exist; blank lines and lines starting with ``#`` (after any indent) are skipped;
  a byte-order mark is ignored, and names in another encoding than UTF-8 keep their bytes;
* a label is a class index written with the digits 0-9 (``3``, not ``3.0``, ``-1``,
  ``²`` or ``cat``), on every line or on none, and below `MAX_LABEL` (a typo such as
  ``12345678901`` would otherwise make that many classes);
* a path listed twice with two labels is refused; twice with one label, it is kept (and
  counted in the log).

Whether every class has images (a source) or names a source class (a target) depends on
the domain's role: `dann_jax.data.checks` decides, naming the lines (`lines_with_labels`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from dann_jax.data.decode import printable
from dann_jax.data.domain import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_LABEL",
    "Listing",
    "lines_with_labels",
    "list_folder",
    "read_list",
]

# What Pillow reads without plugins; anything else in a folder is not an image.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)  # fmt: skip

# Above any classification data set's class count (ImageNet-21k has 21,841): a larger
# label is a typo, and would make as many class names.
MAX_LABEL = 1 << 20
_INDEX = re.compile(r"[0-9]+")  # ASCII digits only: "²".isdigit() is True, int("²") fails
# Files that are images (or arrays), never lists: given as a domain, a mistake.
_IMAGE_SUFFIXES = (*IMAGE_EXTENSIONS, ".npy")


@dataclasses.dataclass
class Listing:
    """A domain's files: (path, label or None) each, the class names (None: unlabelled),
    how many files were left out, and notes for the log."""

    entries: list
    class_names: tuple[str, ...] | None
    ignored: int = 0
    notes: tuple[str, ...] = ()


def _text(path: Path) -> str:
    """The list's text: UTF-8 with or without a byte-order mark; bytes that are not
    UTF-8 kept (as the OS keeps them in file names)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: not a readable image-list file ({e}).") from e
    if b"\0" in raw[:8192] or path.suffix.lower() in _IMAGE_SUFFIXES:
        raise DataError(
            f"{path} is a file that is not an image list (an image, or another binary "
            "file). Give the folder the images are in, or a text file with one "
            "'relative/path [label]' per line."
        )
    return raw.decode("utf-8-sig", "surrogateescape")


def _rows(text: str) -> list[tuple[int, str]]:
    """(line number, stripped line) of every line that names an image."""
    return [
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _bad_label(path: Path, n: int, token: str) -> DataError:
    """The error for a label that is not a class index, saying what it looks like."""
    where = f"{path}, line {n}: the label {token!r}"
    if re.fullmatch(r"[+-]?[0-9]*\.?[0-9]+([eE][+-]?[0-9]+)?", token):
        why = "is not a whole number of 0 or more"
        if re.fullmatch(r"[+-]?[0-9]+\.0*", token) and not token.startswith("-"):
            why += f" (write {int(float(token))})"
    elif token.isdigit() or token.isdecimal():
        why = "is not written with the digits 0-9"
    else:
        why = (
            "is a name; image lists take class indices 0, 1, 2, ... (number the classes), "
            "or give the domain as a folder with one subfolder per class"
        )
    return DataError(f"{where} {why}. Labels are class indices 0..K-1 for K classes.")


def _parse(path: Path, n: int, line: str) -> tuple[str, int | None]:
    """(relative path, label or None) of one line."""
    base = path.parent
    parts = line.rsplit(maxsplit=1)
    head, token = (parts[0], parts[1]) if len(parts) == 2 else (line, "")
    if token and _INDEX.fullmatch(token):
        label = int(token)
        if label >= MAX_LABEL:
            raise DataError(
                f"{path}, line {n}: the label {token} is larger than any class count "
                f"({MAX_LABEL:,} at most). Labels are class indices 0..K-1: fix the line."
            )
        return head, label
    if token and not os.path.lexists(base / line) and os.path.lexists(base / head):
        raise _bad_label(path, n, token)  # an existing file and something else after it
    return line, None


def read_list(path: Path) -> Listing:
    """The images and labels an image-list file names (see the module doc)."""
    rows = _rows(_text(path))
    if not rows:
        raise DataError(f"{path} lists no images; write one 'relative/path [label]' per line.")
    parsed = [(n, *_parse(path, n, line)) for n, line in rows]
    labelled = [label is not None for _, _, label in parsed]
    if any(labelled) and not all(labelled):
        minority = not (sum(labelled) * 2 >= len(parsed))
        n = next(n for (n, _, _), has in zip(parsed, labelled, strict=True) if has == minority)
        raise DataError(
            f"{path}: line {n} {'has a' if minority else 'has no'} label, unlike "
            f"{sum(x != minority for x in labelled)} other lines; give every line a "
            "label (a class index 0..K-1), or none."
        )
    seen: dict[str, tuple[int, int | None]] = {}
    twice = 0
    for n, rel, label in parsed:
        if rel in seen and seen[rel][1] != label:
            raise DataError(
                f"{path}: {printable(rel)} is listed on line {seen[rel][0]} with label "
                f"{seen[rel][1]} and on line {n} with label {label}; an image has one class: "
                "remove one of the lines."
            )
        twice += rel in seen
        seen.setdefault(rel, (n, label))
        _exists(path, n, rel)
    entries = [(path.parent / rel, label) for _, rel, label in parsed]
    notes = (f"{twice} lines name an image listed before (kept: it counts twice)",) * bool(twice)
    if not all(labelled):
        return Listing(entries, None, 0, notes)
    names = tuple(str(i) for i in range(max(label for _, _, label in parsed) + 1))
    return Listing(entries, names, 0, notes)


def _exists(path: Path, n: int, rel: str) -> None:
    """Refuse a line naming a file that is not there, with what could have gone wrong."""
    target = path.parent / rel
    if target.is_file():
        return
    if target.is_dir():
        why = "is a folder, not an image"
    elif os.path.islink(target):
        why = f"is a link to {os.readlink(target)}, which does not exist"
    else:
        why = "does not exist"
    hint = (
        " (its '\\' are not folder separators here: write the path with '/')"
        if "\\" in rel and os.sep == "/"
        else ""
    )
    raise DataError(
        f"{path}, line {n}: {printable(str(target))} {why}{hint}. Paths are relative to the "
        "list's folder: fix the path, or remove the line."
    )


def lines_with_labels(path: str | os.PathLike, labels) -> list[int]:
    """The numbers of the lines of an image list whose label is in `labels` (for errors
    that concern some classes)."""
    wanted = {int(x) for x in labels}
    out = []
    for n, line in _rows(_text(Path(path))):
        token = line.rsplit(maxsplit=1)[-1]
        if _INDEX.fullmatch(token) and int(token) in wanted:
            out.append(n)
    return out


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _files_under(folder: Path) -> tuple[list[Path], int]:
    """(image files under `folder`, recursively, sorted; count of other files).

    Links to folders are followed, each real folder once (by device and inode): a link
    loop, or two links to one folder, would otherwise list the same images many times.
    """
    files, other, seen = [], 0, set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if _is_image(p):
                files.append(p)
            else:
                other += 1
    return files, other


def list_folder(
    root: Path, unlabelled: bool = False
) -> tuple[list[tuple[Path, int | None]], tuple[str, ...] | None, int]:
    """(files with class index or None, class names or None, ignored count) of a folder.

    ``unlabelled``: every image under the folder, subfolders or not, without labels.
    """
    if not any(root.iterdir()):
        raise DataError(
            f"{root} is empty. Put images in it (a flat folder: an unlabelled "
            "domain), or one subfolder of images per class (a labelled domain)."
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [] if unlabelled else classes
    loose = [p for p in root.iterdir() if p.is_file() and _is_image(p)]
    if classes and loose:
        raise DataError(
            f"{root} holds both class subfolders ({', '.join(classes[:3])}, ...) and "
            f"{len(loose)} images directly in it (e.g. {loose[0].name}). A labelled domain "
            "has its images in one subfolder per class only; an unlabelled domain is a "
            "flat folder: move the loose images into their class folders, or out. (An "
            "unlabelled target whose subfolders are not classes: add --target-unlabelled "
            "(unlabelled=True), which reads every image under it.)"
        )
    if not classes:
        files, other = _files_under(root)
        if not files:
            raise DataError(
                f"{root} holds no image files ({other} other files); images "
                f"need one of the extensions {', '.join(IMAGE_EXTENSIONS)}."
            )
        return [(p, None) for p in files], None, other
    entries, ignored = [], 0
    for index, name in enumerate(classes):
        files, other = _files_under(root / name)
        ignored += other
        if not files:
            raise DataError(
                f"The class folder {root / name} holds no images. Every subfolder of a "
                "labelled domain is a class: add its images, or remove the folder."
            )
        entries += [(p, index) for p in files]
    return entries, tuple(classes), ignored
