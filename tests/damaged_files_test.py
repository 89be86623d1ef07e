"""Damaged files the project made or was given: a damaged image-cache entry is said, deleted
and decoded again (never trusted); a damaged, empty or hostile weights file ends in one
paragraph naming it, never torch's advice to load with weights_only=False; a file that
fails its checksum is kept aside, not deleted."""

import contextlib
import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from dann_jax import pretrained
from dann_jax.config import Config
from dann_jax.data import DataError, download, folders
from tests.own_data_test import write_folder


@pytest.fixture
def cached(tmp_path):
    """A labelled folder read once: (folder, its cache entry, the images read)."""
    write_folder(tmp_path / "src", ["a", "b"], per_class=3, size=(16, 16))
    first = folders.read_images(tmp_path / "src", cache_dir=tmp_path / "c", log=lambda _: None)
    (entry,) = (tmp_path / "c" / "dann_images").iterdir()
    return tmp_path / "src", entry, first


def _cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda e: (e / "meta.json").write_text(""), "meta.json unreadable"),
        (lambda e: (e / "images.npy").write_bytes(b""), "images.npy unreadable"),
        (lambda e: _cut(e / "images.npy"), "images.npy unreadable"),
        (lambda e: (e / "labels.npy").unlink(), "no labels.npy"),
        (lambda e: np.save(e / "labels.npy", np.full(6, 7)), "labels outside the 2 classes"),
        (
            lambda e: (e / "meta.json").write_text(
                json.dumps({**json.loads((e / "meta.json").read_text()), "paths": ["x"]})
            ),
            "images.npy holds 6 images, meta.json names 1",
        ),
        (lambda e: (shutil.rmtree(e), e.write_text("x")), "not a folder"),
    ],
)
def test_a_damaged_cache_entry_is_said_deleted_and_decoded_again(cached, damage, needle):
    folder, entry, first = cached
    damage(entry)
    lines = []
    again = folders.read_images(folder, cache_dir=entry.parent.parent, log=lines.append)
    assert not again.cached and any(
        "were damaged" in x and needle in x and "decoded again" in x for x in lines
    )
    np.testing.assert_array_equal(again.images, first.images)
    assert again.labels.tolist() == first.labels.tolist()
    third = folders.read_images(folder, cache_dir=entry.parent.parent, log=lambda _: None)
    assert third.cached  # the entry was written anew


def test_an_interrupted_cache_write_leaves_nothing(cached, monkeypatch):
    folder, entry, _ = cached
    shutil.rmtree(entry)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        folders.read_images(folder, cache_dir=entry.parent.parent, log=lambda _: None)
    assert list(entry.parent.iterdir()) == []  # no .tmp- folder, no half entry


class _Runs:
    """Unpickling this runs a command: a hostile weights file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _weights(tmp_path, name, kind):
    torch = pytest.importorskip("torch")
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({"conv1.weight": np.ones((2, 3), np.float32)}, str(path))
    else:
        torch.save({"conv1.weight": torch.ones(2, 3)}, path)
    if kind == "cut":
        _cut(path)
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "code":
        path.write_bytes(pickle.dumps({"conv1.weight": _Runs(tmp_path / "ran")}))
    return path


@pytest.mark.parametrize(
    ("name", "kind", "needle"),
    [
        ("w.safetensors", "cut", "is not a readable .safetensors file"),
        ("w.safetensors", "random", "is not a readable .safetensors file"),
        ("w.safetensors", "empty", "is not a readable .safetensors file"),
        ("w.pth", "cut", "it ends early or is not a complete torch archive"),
        ("w.pth", "random", "it is damaged, or holds Python objects other than tensors"),
        ("w.pth", "empty", "the file is empty"),
        ("w.pth", "code", "it is damaged, or holds Python objects other than tensors"),
    ],
)
def test_a_damaged_or_hostile_weights_file_is_one_paragraph(tmp_path, name, kind, needle):
    path = _weights(tmp_path, name, kind)
    config = Config(arch="resnet18", pretrained=str(path))
    err = io.StringIO()
    with pytest.raises(DataError) as raised, contextlib.redirect_stderr(err):
        pretrained.load(config, log=lambda _: None)
    message = str(raised.value)
    assert message.startswith(f"--pretrained {path}: cannot use it as resnet18 weights")
    assert needle in message and "\n" not in message
    assert "weights_only" not in message + err.getvalue()  # never the advice to run its code
    assert not (tmp_path / "ran").exists()  # the hostile file's command never ran


def test_a_hand_placed_file_failing_its_checksum_is_kept_aside(tmp_path, monkeypatch):
    monkeypatch.setenv(download.MIRROR_ENV, "http://127.0.0.1:9")  # offline
    name = pretrained.IMAGENET["resnet18"]
    folder = tmp_path / "dann_weights"
    folder.mkdir()
    (folder / name).write_bytes(b"not torchvision's file")
    err = io.StringIO()
    with pytest.raises(DataError) as raised, contextlib.redirect_stderr(err):
        pretrained.weights_file("imagenet", "resnet18", str(tmp_path))
    kept = folder / (name + ".rejected")
    assert kept.read_bytes() == b"not torchvision's file" and not (folder / name).exists()
    assert "failed its checksum (checksum mismatch" in " ".join(err.getvalue().split())
    assert f"kept aside as {kept.name}" in str(raised.value)
