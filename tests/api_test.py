"""The Python API checks what the command line checks: `fit`'s arrays and labels, `predict`'s
images and domain, `load_run`'s files, each refused with the command line's paragraph (a
`DataError`, or a `ValueError` for a bad argument), never a raw traceback."""

import json
import shutil

import flax.linen as nn
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import io, workdir
from dann_jax.checkpoint import CheckpointError
from dann_jax.data import DataError

QUIET = lambda _: None
RNG = np.random.default_rng(0)
XS = RNG.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
XT = RNG.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
YS = np.arange(60) % 3
SMALL = dict(steps=2, eval_every=2, batch_size=8, log=QUIET)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "w"
    model = dj.fit(XS, YS, XT, class_names=("a", "b", "c"), workdir=folder, **SMALL)
    return model, folder


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (dict(class_names=("a", "b")), "has labels up to 2, but 2 class names"),
        (dict(class_names=("a", "b", "c", "d")), "has no images of class d"),
        (dict(class_names=("a", "b", "a")), "class_names must be distinct; a appear twice"),
        (dict(class_names="abc"), "class_names must be a sequence of names"),
        (dict(source_labels=YS - 1), "source_labels must be class indices 0..K-1 (K < "),
        (dict(source_labels=np.eye(3)[YS]), "source_labels are (60, 3): one-hot rows"),
        (dict(source_labels=YS.astype(float)), "got dtype float64: they are whole numbers, pass"),
        (dict(source_labels=YS[:59]), "shape (60,); got (59,)"),
        (dict(source_images=XS[:0], source_labels=YS[:0]), "too small to train on: 0 training"),
        (dict(target_images=XT[:0]), "target domain target_images is too small to train on"),
        (dict(target_labels=np.arange(39) % 3), "target_labels must be one class index per image"),
        (dict(target_labels=np.arange(40) % 5), "The target target_images has labels 3, 4, but"),
        (dict(source_images=XS / 255.0), "must be uint8 images (0..255), got dtype float64 (fl"),
        (dict(source_images=XS[:, :8, :8], target_images=XT[:, :8, :8]),
         "The images are 8x8, but --arch mnist needs images of at least 16x16"),
    ],
)  # fmt: skip
def test_fit_refuses_what_the_command_line_refuses(tmp_path, change, needle):
    args = {"source_images": XS, "source_labels": YS, "target_images": XT, **change}
    with pytest.raises(DataError) as err:
        dj.fit(args.pop("source_images"), args.pop("source_labels"), args.pop("target_images"),
               workdir=tmp_path / "w", **args, **SMALL)  # fmt: skip
    assert needle in str(err.value)
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_fit_refuses_a_workdir_in_use_or_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(workdir.RunError, match="is a file, not a folder"):
        dj.fit(XS, YS, XT, workdir=tmp_path / "file", **SMALL)
    with io.exclusive(tmp_path / "busy", "the workdir"):  # another process training there
        with pytest.raises(io.Busy, match=r"the workdir .*busy is in use by process"):
            dj.fit(XS, YS, XT, workdir=tmp_path / "busy", **SMALL)


def test_predict_takes_no_images_and_refuses_a_bad_domain_or_size(trained):
    model, _ = trained
    classes, probabilities = model.predict(XT[:0])
    assert classes.shape == probabilities.shape == (0,)
    assert model.logits(XT[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match=r"domain must be 'target' or 'source'.*got 'tgt'"):
        model.predict(XT, domain="tgt")
    with pytest.raises(ValueError, match=r"the images are 20x12, the model takes 16x16 .* "
                       r"dann_jax.read_images\(folder, image_size=16\)"):  # fmt: skip
        model.predict(np.zeros((2, 12, 20, 3), np.uint8))


def _broken(trained, tmp_path, name, text):
    folder = tmp_path / "w"
    shutil.copytree(trained[1], folder)
    if text is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("config.json", None, "holds no finished run to load: it has no config.json"),
        ("config.json", '{"lr": 0.', "config.json is damaged (Expecting"),
        ("config.json", '{"lr_typo": 1}', "has settings this version of dann_jax does not know"),
        ("run.json", None, "holds no finished run to load: it has no run.json yet"),
        ("run.json", "[1, 2]", "run.json is damaged (not a JSON object). Rerun what trained it"),
        ("run.json", '{"classes": ["a"]}', "run.json is damaged (no input_shape, mean)"),
        ("results.json", "{", "results.json is damaged ("),
    ],
)
def test_load_run_names_a_missing_or_damaged_file(trained, tmp_path, name, text, needle):
    folder = _broken(trained, tmp_path, name, text)
    with pytest.raises(DataError) as err:
        dj.load_run(folder)
    assert needle in str(err.value)


def test_load_run_of_nothing_a_file_or_another_seed(trained, tmp_path):
    with pytest.raises(DataError, match="no finished run to load: it does not exist"):
        dj.load_run(tmp_path / "nowhere")
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="no finished run to load: it is a file"):
        dj.load_run(tmp_path / "f")
    with pytest.raises(DataError, match=r"seed 4 has no checkpoint .*seeds with checkpoints: 0\."):
        dj.load_run(trained[1], seed=4)
    loaded = dj.load_run(trained[1])
    assert loaded.step == 2 and loaded.results is None  # fit writes no results.json


def test_load_run_of_a_custom_extractor_says_to_pass_it(tmp_path):
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))

    dj.fit(XS, YS, XT, extractor=Tiny(), workdir=tmp_path / "w", **SMALL)
    # run.json records the extractor: the message names it before any restore is tried.
    with pytest.raises(DataError) as err:
        dj.load_run(tmp_path / "w")
    message = str(err.value)
    assert "your own extractor (linen module " in message and "Tiny" in message
    assert "extractor=...)" in message and "--restart" not in message
    # A run from before the record (run.json without it): the restore's mismatch says it.
    meta = json.loads((tmp_path / "w" / "run.json").read_text())
    del meta["extractor"]
    (tmp_path / "w" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        dj.load_run(tmp_path / "w")
    message = str(err.value)
    assert "does not fit the model of its config.json (--arch mnist)" in message
    assert "dann_jax.load_run(workdir, extractor=...)" in message and "--restart" not in message
    assert dj.load_run(tmp_path / "w", extractor=Tiny()).predict(XT)[0].shape == (40,)


def test_fit_and_load_run_agree_on_the_classes(trained):
    model, folder = trained
    assert json.loads((folder / "run.json").read_text())["classes"] == ["a", "b", "c"]
    np.testing.assert_allclose(dj.load_run(folder).logits(XT), model.logits(XT), atol=1e-6)
