"""Image lists parsed strictly: every bad line named with its number and what is wrong
(a label that is a name, a decimal, a superscript or a typo of millions; 1-based labels;
two labels for one image; a missing file), a byte-order mark and indented comments
understood, paths with spaces and in any encoding read."""

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dann_jax import cli
from dann_jax.config import Config
from dann_jax.data import DataError, folders
from dann_jax.data.pair import load_pair
from tests.helpers import paragraph

QUIET = lambda _: None


def _images(folder: Path, n: int, prefix="img") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        x = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(x).save(folder / f"{prefix}{i:02d}.png")
    return [f"{folder.name}/{prefix}{i:02d}.png" for i in range(n)]


def _list(tmp_path: Path, lines, name="l.txt", encoding="utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


def _read(path, tmp_path, **kw):
    return folders.read_images(path, cache_dir=tmp_path / "cache", log=QUIET, **kw)


@pytest.mark.parametrize(
    ("label", "needle"),
    [
        ("123456789012", "the label 123456789012 is larger than any class count"),
        ("²", "the label '²' is not written with the digits 0-9"),
        ("３", "the label '３' is not written with the digits 0-9"),
        ("cat", "the label 'cat' is a name; image lists take class indices 0, 1, 2"),
        ("3.0", "the label '3.0' is not a whole number of 0 or more (write 3)"),
        ("1e3", "the label '1e3' is not a whole number of 0 or more."),
        ("-1", "the label '-1' is not a whole number of 0 or more."),
    ],
)
def test_a_bad_label_is_named_with_its_line(tmp_path, label, needle):
    paths = _images(tmp_path / "im", 4)
    lines = [f"{p} {i % 2}" for i, p in enumerate(paths)]
    lines[2] = f"{paths[2]} {label}"
    with pytest.raises(DataError) as err:
        _read(_list(tmp_path, lines), tmp_path)
    assert f"l.txt, line 3: {needle}" in str(err.value)


def test_a_byte_order_mark_and_indented_comments_are_understood(tmp_path):
    paths = _images(tmp_path / "im", 4)
    lines = ["# images and classes", *[f"{p} {i % 2}" for i, p in enumerate(paths)], "  # end"]
    path = _list(tmp_path, lines, encoding="utf-8-sig")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    images = _read(path, tmp_path)
    assert images.labels.tolist() == [0, 1, 0, 1] and images.paths[0] == paths[0]


def test_paths_with_spaces_and_in_another_encoding_are_read(tmp_path):
    paths = _images(tmp_path / "my images", 3)
    raw = os.fsencode(tmp_path / "my images") + b"/caf\xe9.png"
    with open(raw, "wb") as f:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(f, "PNG")
    text = "\n".join(paths).encode() + b"\nmy images/caf\xe9.png\n"
    (tmp_path / "l.txt").write_bytes(text)
    images = _read(tmp_path / "l.txt", tmp_path)
    assert images.labels is None and images.paths[-1] == "my images/caf\udce9.png"
    labelled = _list(tmp_path, [f"{p} {i}" for i, p in enumerate(paths)], "m.txt")
    assert _read(labelled, tmp_path).labels.tolist() == [0, 1, 2]


def test_mixed_lines_name_the_odd_one(tmp_path):
    paths = _images(tmp_path / "im", 5)
    lines = [f"{p} 0" for p in paths]
    lines[3] = paths[3]
    with pytest.raises(DataError, match=r"l.txt: line 4 has no label, unlike 4 other lines"):
        _read(_list(tmp_path, lines), tmp_path)


def test_one_image_with_two_labels_is_refused_and_a_repeat_is_said(tmp_path):
    paths = _images(tmp_path / "im", 3)
    lines = [f"{paths[0]} 0", f"{paths[1]} 1", f"{paths[0]} 1"]
    with pytest.raises(
        DataError, match=r"listed on line 1 with label 0 and on line 3 with label 1"
    ):
        _read(_list(tmp_path, lines), tmp_path)
    said = []
    folders.read_images(_list(tmp_path, [*lines[:2], f"{paths[0]} 0"], "r.txt"),
                        cache_dir=tmp_path / "cache", log=said.append)  # fmt: skip
    assert any("1 lines name an image listed before (kept: it counts twice)" in x for x in said)


def test_a_missing_file_names_its_line_and_backslashes(tmp_path):
    paths = _images(tmp_path / "im", 3)
    with pytest.raises(DataError, match=r"l.txt, line 2: .*gone.png does not exist\. Paths are"):
        _read(_list(tmp_path, [f"{paths[0]} 0", "im/gone.png 1"]), tmp_path)
    with pytest.raises(DataError, match=r"its '\\' are not folder separators here"):
        _read(_list(tmp_path, [paths[0], "im\\img01.png"]), tmp_path)
    with pytest.raises(DataError, match=r"line 1: .*im is a folder, not an image"):
        _read(_list(tmp_path, ["im"]), tmp_path)


def test_an_image_given_as_a_list_is_named(tmp_path):
    _images(tmp_path / "im", 1)
    with pytest.raises(DataError, match=r"img00.png is a file that is not an image list"):
        _read(tmp_path / "im" / "img00.png", tmp_path)


def _pair_error(tmp_path, source_lines, target_lines=None) -> str:
    source = _list(tmp_path, source_lines, "s.txt")
    target = _list(tmp_path, target_lines or source_lines, "t.txt")
    config = Config(source=str(source), target=str(target), tfds_dir=str(tmp_path / "c"))
    with pytest.raises(DataError) as err:
        load_pair(config, 28, QUIET)
    return str(err.value)


def test_one_based_labels_leave_no_class_silently_empty(tmp_path):
    paths = _images(tmp_path / "im", 16)
    message = _pair_error(tmp_path, [f"{p} {1 + i % 3}" for i, p in enumerate(paths)])
    assert "has no images of class 0: its labels run from 1 to 3." in message
    assert "subtract 1 from every label" in message


def test_a_typo_label_in_a_source_list_names_its_line(tmp_path):
    paths = _images(tmp_path / "im", 16)
    lines = [f"{p} {i % 2}" for i, p in enumerate(paths)]
    lines[6] = f"{paths[6]} 40"
    message = _pair_error(tmp_path, lines)
    assert "has no images of classes 2, 3, 4, 5, 6 and 33 more; its labels run to 40 " in message
    assert "(line 7 of " in message


def test_a_target_label_the_source_lacks_names_its_lines(tmp_path):
    paths = _images(tmp_path / "im", 16)
    source = [f"{p} {i % 2}" for i, p in enumerate(paths)]
    target = [f"{p} {i % 2}" for i, p in enumerate(paths)]
    target[4], target[9] = f"{paths[4]} 2", f"{paths[9]} 2"
    message = _pair_error(tmp_path, source, target)
    assert "has classes the source" in message and "2 (lines 5, 10 of " in message
    assert "fix or remove those lines" in message


def test_a_list_given_to_predict_drops_its_labels(tmp_path):
    paths = _images(tmp_path / "im", 3)
    images = _read(_list(tmp_path, [f"{p} {i}" for i, p in enumerate(paths)]), tmp_path,
                   unlabelled=True)  # fmt: skip
    assert images.labels is None and images.class_names is None and len(images.paths) == 3


def test_an_empty_memory_error_still_gives_the_out_of_memory_paragraph():
    def runner(config):
        raise MemoryError()

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_cli(Config(steps=10, batch_size=64), runner=runner)
    assert code == 2 and "out of memory (MemoryError). Lower --batch-size (now 64" in paragraph(
        err.getvalue()
    )
