"""dann_jax.io: atomic writes, strict JSON with non-finite values noted, figures."""

import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dann_jax import io as dio


def _strict_loads(text):
    """json.loads that refuses NaN / Infinity / -Infinity (Python's json accepts them)."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _names(folder):
    """Every entry of a folder, hidden temporary files included."""
    return sorted(p.name for p in Path(folder).iterdir())


# ---------------------------------------------------------------- atomic text


def test_write_text_writes_replaces_and_leaves_no_temp(tmp_path):
    path = dio.write_text(tmp_path / "a.txt", "héllo\n")
    assert path == str(tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    dio.write_text(str(tmp_path / "a.txt"), "second")
    assert (tmp_path / "a.txt").read_text() == "second"
    assert _names(tmp_path) == ["a.txt"]


def test_write_text_needs_the_folder_unless_make_parents(tmp_path):
    with pytest.raises(FileNotFoundError):
        dio.write_text(tmp_path / "missing" / "a.txt", "x")
    assert _names(tmp_path) == []
    dio.write_text(tmp_path / "made" / "deep" / "a.txt", "x", make_parents=True)
    assert (tmp_path / "made" / "deep" / "a.txt").read_text() == "x"


def test_failing_write_leaves_no_file_and_no_temp(tmp_path):
    # A lone surrogate cannot be encoded as UTF-8: the write fails half-way.
    with pytest.raises(UnicodeEncodeError):
        dio.write_text(tmp_path / "a.txt", "ok so far \udc80")
    assert _names(tmp_path) == []
    # An existing file keeps its old content.
    dio.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(UnicodeEncodeError):
        dio.write_text(tmp_path / "a.txt", "new \udc80")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]


def test_failing_replace_or_interrupt_removes_the_temp(tmp_path, monkeypatch):
    dio.write_text(tmp_path / "a.txt", "old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(dio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        dio.write_text(tmp_path / "a.txt", "new")
    monkeypatch.undo()
    assert _names(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"

    class Interrupted:
        def savefig(self, f, **kwargs):
            f.write(b"partial")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dio.save_figure(Interrupted(), tmp_path / "fig.png")
    assert _names(tmp_path) == ["a.txt"]


# ---------------------------------------------------------------- conversion


def test_to_jsonable_converts_numpy_jax_and_paths():
    obj = {
        "f32": np.float32(1.5),
        "i64": np.int64(3),
        "b": np.bool_(True),
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
        "farr": np.array([0.5, 1.0], np.float32),
        "jax": jnp.array([1.0, 2.0]),
        "zero_d": np.array(2.5),
        "tuple": (1, "a", None),
        "path": Path("runs") / "x",
        7: "int key",
    }
    out = dio.to_jsonable(obj)
    assert out == {
        "f32": 1.5,
        "i64": 3,
        "b": True,
        "arr": [[0, 1, 2], [3, 4, 5]],
        "farr": [0.5, 1.0],
        "jax": [1.0, 2.0],
        "zero_d": 2.5,
        "tuple": [1, "a", None],
        "path": os.path.join("runs", "x"),
        "7": "int key",
    }
    # Plain Python types, not numpy subclasses (np.float64 is a float subclass).
    assert type(dio.to_jsonable(np.float64(0.25))) is float
    assert type(out["i64"]) is int and type(out["b"]) is bool
    assert json.dumps(out, allow_nan=False)


def test_to_jsonable_non_finite_become_none_and_input_is_untouched():
    arr = np.array([[1.0, np.nan], [np.inf, 2.0]])
    obj = {"a": [float("nan"), 1.0], "arr": arr, "x": -math.inf}
    assert dio.to_jsonable(obj) == {"a": [None, 1.0], "arr": [[1.0, None], [None, 2.0]], "x": None}
    assert np.isnan(arr[0, 1]) and math.isnan(obj["a"][0])  # not modified in place
    assert dio.to_jsonable(float("nan")) is None
    assert dio.to_jsonable(np.array(np.inf)) is None


def test_to_jsonable_rejects_what_json_cannot_hold():
    for bad in ({1, 2}, 1 + 2j, np.array([1 + 1j]), object()):
        with pytest.raises(TypeError):
            dio.to_jsonable({"k": bad})
    with pytest.raises(TypeError, match="k/0"):  # the error names where
        dio.to_jsonable({"k": [object()]})
    with pytest.raises(ValueError, match="'1'"):  # 1 and "1" would both be written as "1"
        dio.to_jsonable({1: "a", "1": "b"})


def test_non_finite_paths_are_json_pointer_like():
    obj = {
        "seeds": [{"target_accuracy": float("nan"), "source_accuracy": 0.9}],
        "confusion": np.array([[1.0, np.inf], [-np.inf, 0.0]], np.float32),
        "a/b~c": [np.float64("nan")],
        "scalar": np.array(np.nan),
        "fine": [1, 2.0, "nan"],
    }
    assert dio.non_finite_paths(obj) == [
        "seeds/0/target_accuracy",
        "confusion/0/1",
        "confusion/1/0",
        "a~1b~0c/0",  # "/" and "~" escaped as in RFC 6901
        "scalar",
    ]
    assert dio.non_finite_paths({"ok": [1.0, np.ones(3)]}) == []
    assert dio.non_finite_paths(float("inf")) == [""]


# ---------------------------------------------------------------- JSON files


def test_write_json_strict_with_null_and_note(tmp_path):
    results = {
        "target_accuracy": np.float32(0.75),
        "seeds": [{"seed": 0, "target_accuracy": float("nan")}, {"seed": 1, "loss": np.inf}],
        "curve": np.array([0.1, np.nan]),
    }
    path = dio.write_json(tmp_path / "results.json", results)
    text = Path(path).read_text()
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    data = _strict_loads(text)
    assert data["target_accuracy"] == 0.75
    assert data["seeds"][0]["target_accuracy"] is None and data["seeds"][1]["loss"] is None
    assert data["curve"] == [0.1, None]
    assert data["non_finite"] == ["seeds/0/target_accuracy", "seeds/1/loss", "curve/1"]
    assert "non_finite" not in results  # the caller's dict is not changed
    assert _names(tmp_path) == ["results.json"]


def test_write_json_without_non_finite_has_no_note_and_keeps_order(tmp_path):
    dio.write_json(tmp_path / "a.json", {"b": 1, "a": [1.5, None]})
    text = (tmp_path / "a.json").read_text()
    assert _strict_loads(text) == {"b": 1, "a": [1.5, None]}
    assert text.index('"b"') < text.index('"a"')
    dio.write_json(tmp_path / "s.json", {"b": 1, "a": 2}, sort_keys=True)
    s = (tmp_path / "s.json").read_text()
    assert s.index('"a"') < s.index('"b"')


def test_write_json_non_dict_top_level_and_existing_note(tmp_path):
    dio.write_json(tmp_path / "l.json", [1.0, float("nan")])
    assert _strict_loads((tmp_path / "l.json").read_text()) == [1.0, None]  # nowhere to note
    # A file read back and written again keeps its note, extended by new replacements.
    dio.write_json(tmp_path / "r.json", {"non_finite": ["x"], "x": None, "y": float("inf")})
    assert _strict_loads((tmp_path / "r.json").read_text())["non_finite"] == ["x", "y"]
    with pytest.raises(ValueError, match="non_finite"):
        dio.write_json(tmp_path / "bad.json", {"non_finite": 3, "y": float("nan")})
    assert not (tmp_path / "bad.json").exists()


def test_write_json_unconvertible_leaves_old_file(tmp_path):
    dio.write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(TypeError):
        dio.write_json(tmp_path / "a.json", {"v": object()})
    assert _strict_loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert _names(tmp_path) == ["a.json"]


def test_dumps_one_line_for_jsonl_and_ascii_only():
    line = dio.dumps({"step": np.int64(5), "acc": float("nan"), "s": "±"}, indent=None)
    assert "\n" not in line and line.isascii()
    assert _strict_loads(line) == {"step": 5, "acc": None, "s": "±", "non_finite": ["acc"]}


# ---------------------------------------------------------------- figures


@pytest.mark.parametrize(
    ("name", "magic"), [("f.png", b"\x89PNG"), ("f.pdf", b"%PDF"), ("f.svg", b"<?xml")]
)
def test_save_figure_format_from_suffix(tmp_path, name, magic):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    path = dio.save_figure(fig, tmp_path / "sub" / name, dpi=50, make_parents=True)
    assert Path(path).read_bytes().startswith(magic)
    assert _names(tmp_path / "sub") == [name]


def test_save_figure_needs_a_suffix(tmp_path):
    from matplotlib.figure import Figure

    with pytest.raises(ValueError, match="suffix"):
        dio.save_figure(Figure(), tmp_path / "figure")
    assert _names(tmp_path) == []
