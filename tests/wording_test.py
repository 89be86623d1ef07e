"""Wording that misleads, found and fixed: an unlabelled target kept in subfolders (now
--target-unlabelled, and the refusal names it), selection.py advising a flag it lacked,
a comma or colon in a --pairs path, --predict advising --image-size, a folder given as
weights, and load_run naming the flag to give."""

import contextlib
import io

import numpy as np
import pytest

import dann_jax as dj
from dann_jax import cli, predicting, pretrained
from dann_jax.config import Config
from dann_jax.data import DataError
from dann_jax.data.pair import load_pair
from tests.config_test import _script
from tests.helpers import paragraph
from tests.own_data_test import write_folder

QUIET = lambda _: None
adapt, reproduce, selection = (_script(f"{n}.py") for n in ("adapt", "reproduce", "selection"))


def _config(tmp_path, **kw):
    return Config(source=str(tmp_path / "src"), target=str(tmp_path / "tgt"),
                  tfds_dir=str(tmp_path / "cache"), **kw)  # fmt: skip


def test_an_unlabelled_target_in_dated_subfolders_names_the_flag_that_reads_it(tmp_path):
    write_folder(tmp_path / "src", ["cat", "dog"], per_class=8, size=(16, 16))
    write_folder(tmp_path / "tgt", ["2024-01-01", "2024-01-02"], per_class=6, size=(16, 16))
    with pytest.raises(DataError) as err:
        load_pair(_config(tmp_path), 28, QUIET)
    message = str(err.value)
    assert "has classes the source" in message and "2024-01-01, 2024-01-02" in message
    assert "(its subfolders are taken as classes). If they are not classes" in message
    assert "add --target-unlabelled" in message
    data = load_pair(_config(tmp_path, target_unlabelled=True), 28, QUIET)
    assert not data.target_labelled and len(data.target_train) == 12
    assert data.target_paths[0].startswith("2024-01-01")  # every image, subfolders included
    flags = adapt.parser(["--target-unlabelled"]).parse_args(
        ["--source", "s", "--target", "t", "--target-unlabelled"]
    )
    assert cli.config_from_args(flags).target_unlabelled


def test_loose_images_beside_subfolders_name_the_flag_too(tmp_path):
    write_folder(tmp_path / "src", ["cat", "dog"], per_class=8, size=(16, 16))
    write_folder(tmp_path / "tgt", ["day1"], per_class=6, size=(16, 16))
    write_folder(tmp_path / "tgt", ["loose"], per_class=6, size=(16, 16), flat=True)
    with pytest.raises(DataError, match=r"add --target-unlabelled \(unlabelled=True\)"):
        load_pair(_config(tmp_path), 28, QUIET)
    data = load_pair(_config(tmp_path, target_unlabelled=True), 28, QUIET)
    assert len(data.target_train) == 12 and not data.target_labelled


def test_target_unlabelled_drops_an_npz_targets_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (20, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(20) % 2, x_test=x[:4],
             y_test=np.arange(4) % 2)  # fmt: skip
    config = Config(source=str(tmp_path / "s.npz"), target=str(tmp_path / "s.npz"),
                    tfds_dir=str(tmp_path / "c"))  # fmt: skip
    assert load_pair(config, 28, QUIET).target_labelled
    assert not load_pair(config.replace(target_unlabelled=True), 28, QUIET).target_labelled


def test_selection_has_the_flags_its_errors_advise():
    args = selection.parser().parse_args(["--image-size", "32", "--target-unlabelled"])
    assert args.image_size == 32 and args.target_unlabelled


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ("my,data:mnist", "'my' is not a source:target pair (e.g. mnist:usps)"),
        ("mnist", "'mnist' is not a source:target pair"),
        ("mnist:nowhere/x", "the target 'nowhere/x' of 'mnist:nowhere/x' is not a known domain"),
    ],
)
def test_a_bad_pairs_entry_says_why(tmp_path, pairs, needle):
    with pytest.raises(ValueError) as err:
        cli.parse_pairs(pairs)
    message = str(err.value)
    assert needle in message and "a path with a comma, or a source path with a colon" in message


@pytest.mark.parametrize("script", [selection, reproduce])
def test_selection_and_reproduce_refuse_a_comma_in_a_path_with_the_reason(tmp_path, script):
    (tmp_path / "my,data").mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = script.main(["--pairs", f"{tmp_path / 'my,data'}:mnist", "--out",
                            str(tmp_path / "o")])  # fmt: skip
    text = paragraph(err.getvalue())
    assert code == 2 and "is not a source:target pair" in text and "ln -s" in text
    assert "bad --pairs" not in text and not (tmp_path / "o").exists()


def test_predict_on_a_non_square_model_does_not_advise_image_size(tmp_path):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 255, (40, 16, 20, 3), dtype=np.uint8)
    dj.fit(xs, np.arange(40) % 2, xs, steps=2, eval_every=2, batch_size=8,
           workdir=tmp_path / "w", tfds_dir=str(tmp_path / "c"), log=QUIET)  # fmt: skip
    write_folder(tmp_path / "new", ["a"], per_class=2, size=(16, 20), flat=True)
    write_folder(tmp_path / "new", ["b"], per_class=2, size=(18, 18), flat=True)
    with pytest.raises(DataError) as err:
        predicting.predict_folder(tmp_path / "w", tmp_path / "new", log=QUIET)
    message = str(err.value)
    assert "have 2 different sizes (20x16: 2, 18x18: 2)." in message
    assert "takes 20x16 images" in message and "bring them to 20x16 first" in message
    assert "--image-size" not in message
    model = dj.load_run(tmp_path / "w")
    with pytest.raises(ValueError, match="the model is not square, so bring them to its size"):
        model.predict(np.zeros((1, 18, 18, 3), np.uint8))


def test_a_folder_given_as_weights_and_load_run_of_nothing_say_what_they_are(tmp_path):
    with pytest.raises(DataError, match=r"--pretrained .* is a folder, not a weights file"):
        pretrained.weights_file(str(tmp_path), "resnet18", None)
    with pytest.raises(DataError, match=r"Give --workdir \(workdir= in Python\) the folder"):
        dj.load_run(tmp_path / "nothing")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--predict", "d", "--image-size", "64", "--steps", "9"],
         "--predict classifies with the run in --workdir as it was trained, so --image-size, "
         "--steps would not be used. Drop them"),
        (["--source", "s", "--target", "t", "--predict-out", "x.csv"],
         "--predict-out needs --predict DIR."),
    ],
)  # fmt: skip
def test_flags_predict_would_ignore_are_refused(tmp_path, argv, needle):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = adapt.main(["--workdir", str(tmp_path / "w"), *argv])
    assert code == 2 and needle in paragraph(err.getvalue())
