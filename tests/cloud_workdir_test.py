"""Workdirs in a bucket (``--workdir gs://bucket/run``), on a stand-in for Google Cloud
Storage that keeps the bucket in a local folder (`tests.fake_bucket`): a run trains,
is stopped by SIGTERM (a preempted VM), resumes with the same command and ends as a
run on a local disk ends; what it leaves in the bucket is complete; the URLs that cannot
hold a run are refused before anything is written."""

import json
import os
import signal

import numpy as np
import pytest

import dann_jax
from dann_jax import experiment, io, predicting, storage, workdir
from dann_jax.config import Config
from tests import fake_bucket
from tests.own_data_test import write_folder


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_run_in_a_bucket_survives_sigterm_resumes_and_loads(tmp_path, monkeypatch):
    from dann_jax.cli import run_cli

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    monkeypatch.chdir(tmp_path)  # a gs:// path taken for a local one would land here
    config = Config(steps=8, steps_per_call=1, eval_every=4, batch_size=8)
    experiment.run(config.replace(workdir=str(tmp_path / "local")), log=lambda s: None)

    def term_at_step_4(line):
        if " step 4/" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    real_run = experiment.run
    cloud = config.replace(workdir="gs://bucket/run")
    with fake_bucket.installed(tmp_path / "gcs") as root:
        monkeypatch.setattr(experiment, "run", lambda c, log=print: real_run(c, term_at_step_4))
        assert run_cli(cloud) == 143
        run = root / "bucket" / "run"
        assert sorted(int(p.name) for p in (run / "seed_0" / "checkpoint").iterdir()) == [4, 5]
        assert not (run / "results.json").exists()
        monkeypatch.setattr(experiment, "run", real_run)
        lines = []
        experiment.run(cloud, log=lines.append)
        assert any("resuming from step 5 (gs://bucket/run/seed_0/checkpoint)" in x for x in lines)
        loaded = dann_jax.load_run("gs://bucket/run")
        assert loaded.step == 8
        new = tmp_path / "new"  # --predict with the run in the bucket: the CSV beside it
        write_folder(new, ["x"], per_class=3, size=(28, 28), flat=True)
        said = []
        wrote = predicting.predict_folder("gs://bucket/run", new, log=said.append)
        assert os.fspath(wrote) == "gs://bucket/run/predictions_new.csv"
        assert (run / "predictions_new.csv").read_text().count("\n") == 4  # header + 3
        index = json.loads((run / predicting.INDEX).read_text())
        assert index["predictions_new.csv"]["count"] == 3
        assert any("predicted with the final checkpoint (step 8)" in x for x in said)
    assert not (tmp_path / "gs:").exists()

    a = json.loads((tmp_path / "local" / "results.json").read_text())
    b = json.loads((run / "results.json").read_text())
    assert a["seeds"][0]["curves"] == b["seeds"][0]["curves"]
    assert a["target_accuracy"] == b["target_accuracy"]
    for name in ("metrics.jsonl", "seed_0/metrics.jsonl"):
        assert (tmp_path / "local" / name).read_text() == (run / name).read_text()
    files = _files(run)
    for name in ("config.json", "data.json", "run.json", "curves.png", "results.json"):
        assert name in files
    # orbax's GCS way of marking a finished checkpoint; the two newest are kept.
    assert "seed_0/checkpoint/8/commit_success.txt" in files
    assert sorted(int(p.name) for p in (run / "seed_0" / "checkpoint").iterdir()) == [5, 8]
    assert not [f for f in files if f.endswith(".tmp")]  # no temporary object left
    classes, _ = loaded.predict(np.zeros((2, 28, 28, 3), np.uint8))
    assert classes.shape == (2,)


def test_an_object_is_replaced_whole_or_not_at_all(tmp_path):
    with fake_bucket.installed(tmp_path) as root:
        io.write_json("gs://b/run/results.json", {"a": 1})
        assert json.loads((root / "b" / "run" / "results.json").read_text()) == {"a": 1}

        def fails_midway(f):
            f.write("{\n")
            raise RuntimeError("disk gone")

        with pytest.raises(RuntimeError, match="disk gone"):
            storage.write_atomically(
                "gs://b/run/results.json", fails_midway, binary=False, make_parents=False
            )
        assert json.loads((root / "b" / "run" / "results.json").read_text()) == {"a": 1}
        assert _files(root) == ["b/run/results.json"]


def test_metrics_in_a_bucket_are_rewritten_at_most_every_few_seconds(tmp_path):
    now = [0.0]
    with fake_bucket.installed(tmp_path) as root:
        log = storage.ObjectLog(storage.as_path("gs://b/m.jsonl"), "0\n", clock=lambda: now[0])
        log.write("1\n")
        log.flush()  # too soon after the last write: kept in memory
        assert not (root / "b" / "m.jsonl").exists()
        now[0] = storage.REWRITE_SECONDS
        log.flush()
        assert (root / "b" / "m.jsonl").read_text() == "0\n1\n"
        log.write("2\n")
        log.sync()  # a checkpoint was saved: written at once
        assert (root / "b" / "m.jsonl").read_text() == "0\n1\n2\n"
        with log:
            log.write("3\n")
        assert (root / "b" / "m.jsonl").read_text() == "0\n1\n2\n3\n"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("s3://bucket/run", "Mount the bucket"),
        ("az://container/run", "Mount the bucket"),
    ],
)
def test_urls_orbax_cannot_write_are_refused(url, needle):
    with pytest.raises(workdir.RunError, match=needle):
        workdir.usable_workdir(url)


def test_a_bucket_without_its_clients_names_the_install(monkeypatch):
    monkeypatch.setattr(storage, "_missing_clients", lambda: ["gcsfs", "google-cloud-storage"])
    with pytest.raises(workdir.RunError) as e:
        workdir.usable_workdir("gs://bucket/run")
    assert "pip install 'dann_jax[gcs]'" in str(e.value)
    assert "gcsfs and google-cloud-storage" in str(e.value)


def test_an_object_where_the_workdir_goes_is_refused(tmp_path):
    with fake_bucket.installed(tmp_path) as root:
        (root / "b").mkdir()
        (root / "b" / "run").write_text("an object")
        with pytest.raises(workdir.RunError, match="is a file, not a folder"):
            workdir.usable_workdir("gs://b/run")
        workdir.usable_workdir("gs://b/other")  # nothing there yet: fine
