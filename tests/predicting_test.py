"""--predict keeps every result and says what predicted: two folders of one name get two
files, the checkpoint's step is said (also of a run still training), every CSV cell a
reader could split is quoted and formula prefixes neutralised, a bad output path is
refused before any work, Ctrl-C writes nothing, and an .npz target's missing
predictions.csv is said."""

import contextlib
import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

import dann_jax as dj
from dann_jax import cli, experiment, predicting
from dann_jax.config import Config
from dann_jax.data import folders
from dann_jax.data.pair import load_pair
from dann_jax.outputs import csv_text
from tests.helpers import paragraph

RNG = np.random.default_rng(0)
XS = RNG.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
XT = RNG.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    dj.fit(XS, np.arange(60) % 3, XT, class_names=("a", "b", "c"), steps=4, eval_every=2,
           batch_size=8, workdir=root / "w", tfds_dir=str(root / "cache"), choose=False,
           log=lambda _: None)  # fmt: skip
    return root / "w"


def _folder(path, names):
    path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(XT[i]).save(path / name, "PNG")
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _predict(workdir, folder, out=None):
    lines = []
    path = predicting.predict_folder(workdir, folder, out, log=lines.append)
    return path, lines


def test_two_folders_of_one_name_keep_both_predictions(run, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(run, w)
    a = _folder(tmp_path / "a" / "new", ["x.png", "y.png"])
    b = _folder(tmp_path / "b" / "new", ["z.png"])
    first, _ = _predict(w, a)
    second, lines = _predict(w, b)
    assert (first.name, second.name) == ("predictions_new.csv", "predictions_new_2.csv")
    assert any(f"holds the predictions of {a}; these go to predictions_new_2.csv" in x
               for x in lines)  # fmt: skip
    assert [r["path"] for r in _rows(first)] == ["x.png", "y.png"]
    assert [r["path"] for r in _rows(second)] == ["z.png"]
    _folder(a, ["x.png", "y.png", "w.png"])  # the same folder again: its own file replaced
    again, _ = _predict(w, a)
    assert again == first and len(_rows(first)) == 3 and len(_rows(second)) == 1


def test_the_checkpoint_that_predicted_is_said(run, tmp_path):
    folder = _folder(tmp_path / "new", ["x.png"])
    _, lines = _predict(run, folder, tmp_path / "out.csv")
    assert any("predicted with the final checkpoint (step 4)" in x for x in lines)
    w = tmp_path / "w"
    shutil.copytree(run, w)
    shutil.rmtree(w / "seed_0" / "checkpoint" / "4")  # as if still training
    _, lines = _predict(w, folder, tmp_path / "out2.csv")
    assert any("the newest checkpoint, step 2 of 4: the run is not finished" in x for x in lines)


def test_every_cell_a_reader_could_split_is_quoted_and_formulas_neutralised(run, tmp_path):
    names = ["carriage\rreturn.png", "new\nline.png", "comma,quote\".png", "=HYPERLINK().png",
             "+1.png", "-2.png", "@sum.png", "plain.png"]  # fmt: skip
    folder = _folder(tmp_path / "odd", names)
    path, _ = _predict(run, folder, tmp_path / "odd.csv")
    rows = _rows(path)
    assert len(rows) == len(names)
    read = {r["path"] for r in rows}
    assert read == {("'" + n if n[0] in "=+-@" else n) for n in names}
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in rows)
    assert csv_text("=1+1") == "'=1+1" and csv_text("\tx") == "'\tx" and csv_text("a=b") == "a=b"


def _cli_predict(workdir, folder, out=None):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.run_predict(str(workdir), str(folder), None if out is None else str(out))
    return code, paragraph(err.getvalue())


def test_a_bad_output_path_is_refused_before_any_work_and_a_new_folder_made(run, tmp_path):
    folder = _folder(tmp_path / "new", ["x.png"])
    (tmp_path / "dir.csv").mkdir()
    code, err = _cli_predict(run, folder, tmp_path / "dir.csv")
    assert code == 2 and "--predict-out" in err and "is a folder; it needs a file name" in err
    code, _ = _cli_predict(run, folder, tmp_path / "made" / "for" / "it.csv")
    assert code == 0 and len(_rows(tmp_path / "made" / "for" / "it.csv")) == 1


def test_ctrl_c_while_predicting_writes_nothing(run, tmp_path, monkeypatch):
    folder = _folder(tmp_path / "new", ["x.png"])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(folders, "read_images", interrupted)
    code, err = _cli_predict(run, folder, tmp_path / "p.csv")
    assert code == 130 and "stopped by Ctrl-C: no predictions were written" in err
    assert not (tmp_path / "p.csv").exists()


def test_an_npz_target_says_why_it_has_no_predictions_csv(tmp_path):
    x = RNG.integers(0, 255, (20, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(20) % 2, x_test=x[:4],
             y_test=np.arange(4) % 2)  # fmt: skip
    config = Config(source=str(tmp_path / "s.npz"), target=str(tmp_path / "s.npz"),
                    tfds_dir=str(tmp_path / "c"))  # fmt: skip
    data = load_pair(config, 28, lambda _: None)
    lines = []
    experiment._target_outputs(config, data, [], tmp_path, lines.append)
    assert any("no predictions.csv: the target" in x and "is an .npz" in x for x in lines)
