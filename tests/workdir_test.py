"""A run knows its data: each domain's fingerprint is recorded in the workdir (data.json)
and checked on every resume, rerun, `fit` into the same workdir and `load_run`; a change
is refused naming what changed, unless the run saved no checkpoint or --restart is given."""

import json
from pathlib import Path

import numpy as np
import pytest

import dann_jax as dj
from dann_jax import experiment, workdir
from dann_jax.config import Config
from dann_jax.data import DataError
from dann_jax.data.arrays import pair_from_arrays
from dann_jax.data.fingerprint import pair_fingerprint
from tests.own_data_test import write_folder

QUIET = lambda _: None


def _pair(n_source=30, classes=("cat", "dog", "owl"), seed=0, target=None, labels=None):
    rng = np.random.default_rng(seed)
    xs = rng.integers(0, 255, (n_source, 16, 16, 3), dtype=np.uint8)
    xt = rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8) if target is None else target
    ys = np.arange(n_source) % len(classes) if labels is None else labels
    return pair_from_arrays(xs, ys, xt, class_names=tuple(classes))


def _pinned(tmp_path: Path, data) -> Path:
    """A workdir recorded for `data` whose run got as far as a checkpoint."""
    workdir.check_workdir(Config(), tmp_path, QUIET, data)
    (tmp_path / "seed_0" / "checkpoint" / "4").mkdir(parents=True)
    return tmp_path


def _refusal(tmp_path, data) -> str:
    with pytest.raises(experiment.RunError) as err:
        workdir.check_workdir(Config(), tmp_path, QUIET, data)
    message = str(err.value)
    assert "trained on other data" in message and "--restart" in message
    return message


def test_a_target_changed_between_stop_and_resume_is_refused(tmp_path):
    first = _pair()
    _pinned(tmp_path, first)
    target = first.target_train.copy()
    target[3, 0, 0, 0] ^= 1  # one pixel of one image
    message = _refusal(tmp_path, _pair(target=target))
    assert "the target changed (as many images, but other pixels, labels or file names)" in message
    assert "source changed" not in message
    more = np.concatenate([first.target_train, first.target_train[:1]])
    assert "20 images then, 21 now" in _refusal(tmp_path, _pair(target=more))


def test_a_renamed_or_reordered_source_class_is_refused(tmp_path):
    _pinned(tmp_path, _pair())
    message = _refusal(tmp_path, _pair(classes=("cat", "dogs", "owl")))
    assert "the source changed (classes dog gone, dogs new)" in message
    message = _refusal(tmp_path, _pair(classes=("dog", "cat", "owl")))
    assert "the same class names in another order: an index means" in message


def test_relabelled_source_images_are_refused(tmp_path):
    _pinned(tmp_path, _pair())
    labels = np.arange(30) % 3
    labels[:2] = labels[1::-1]  # two labels swapped, everything else the same
    assert "source changed (as many images" in _refusal(tmp_path, _pair(labels=labels))


def test_unchanged_data_resumes_and_a_run_without_checkpoint_is_replaced(tmp_path):
    _pinned(tmp_path / "a", _pair())
    workdir.check_workdir(Config(), tmp_path / "a", QUIET, _pair())  # same data: fine
    lines = []
    workdir.check_workdir(Config(), tmp_path / "b", QUIET, _pair())
    workdir.check_workdir(Config(), tmp_path / "b", lines.append, _pair(seed=1))
    assert any("saved no checkpoint; replacing its data record" in x for x in lines)
    recorded = json.loads((tmp_path / "b" / "data.json").read_text())
    assert recorded == json.loads(json.dumps(pair_fingerprint(_pair(seed=1))))


def test_a_missing_or_damaged_record_is_said_and_written_again(tmp_path):
    _pinned(tmp_path, _pair())
    (tmp_path / "data.json").unlink()
    lines = []
    workdir.check_workdir(Config(), tmp_path, lines.append, _pair(seed=1))
    assert any("has no record of its data" in x for x in lines)
    assert (tmp_path / "data.json").exists()
    (tmp_path / "data.json").write_text('{"source": ')
    lines = []
    workdir.check_workdir(Config(), tmp_path, lines.append, _pair(seed=1))
    assert any("data.json is damaged" in x and "cannot be checked" in x for x in lines)
    _refusal(tmp_path, _pair(seed=2))  # recorded again: the next change is seen


def test_a_finished_run_rerun_on_renamed_classes_rewrites_nothing(tmp_path):
    write_folder(tmp_path / "src", ["ant", "bee"], per_class=8, size=(16, 16))
    write_folder(tmp_path / "tgt", ["ant", "bee"], per_class=6, size=(16, 16), flat=True)
    config = Config(source=str(tmp_path / "src"), target=str(tmp_path / "tgt"), steps=2,
                    eval_every=2, batch_size=8, workdir=str(tmp_path / "w"),
                    tfds_dir=str(tmp_path / "cache"))  # fmt: skip
    experiment.run(config, log=QUIET)
    before = {p: (tmp_path / "w" / p).read_bytes() for p in ("results.json", "predictions.csv")}
    (tmp_path / "src" / "bee").rename(tmp_path / "src" / "wasp")
    with pytest.raises(experiment.RunError, match=r"classes bee gone, wasp new"):
        experiment.run(config, log=QUIET)
    assert {p: (tmp_path / "w" / p).read_bytes() for p in before} == before
    assert dj.load_run(tmp_path / "w").class_names == ("ant", "bee")  # still the old model
    results = experiment.run(config.replace(restart=True), log=QUIET)
    assert results["dataset"]["classes"] == ["ant", "wasp"]


def test_fit_into_a_workdir_with_other_arrays_is_refused_unless_restart(tmp_path):
    first = _pair()
    kw = dict(steps=2, eval_every=2, batch_size=8, workdir=tmp_path / "w", log=QUIET)
    dj.fit(first.source_train, first.source_labels, first.target_train, **kw)
    other = np.random.default_rng(5).integers(0, 255, first.target_train.shape, dtype=np.uint8)
    with pytest.raises(experiment.RunError, match="the target changed"):
        dj.fit(first.source_train, first.source_labels, other, **kw)
    model = dj.fit(first.source_train, first.source_labels, other, restart=True, **kw)
    assert model.config.restart  # and trained: the record is the new arrays'
    recorded = json.loads((tmp_path / "w" / "data.json").read_text())
    assert (
        recorded["target"]["sha256"]
        == pair_fingerprint(pair_from_arrays(first.source_train, first.source_labels, other))[
            "target"
        ]["sha256"]
    )


def test_load_run_refuses_files_of_two_runs(tmp_path):
    first = _pair()
    kw = dict(steps=2, eval_every=2, batch_size=8, workdir=tmp_path / "w", log=QUIET)
    dj.fit(first.source_train, first.source_labels, first.target_train,
           class_names=("cat", "dog", "owl"), **kw)  # fmt: skip
    run = json.loads((tmp_path / "w" / "run.json").read_text())
    (tmp_path / "w" / "run.json").write_text(json.dumps({**run, "classes": ["a", "b", "c"]}))
    with pytest.raises(DataError, match=r"run.json names the classes a, b, c, but the run was "):
        dj.load_run(tmp_path / "w")
