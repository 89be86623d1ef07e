"""The main job end to end on the embedded default: outputs, resume, vmapped seeds."""

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest

from dann_jax import checkpoint, experiment, train
from dann_jax.config import Config
from tests.helpers import paragraph
from tests.helpers import run_digits_cli as _cli

FAST = ["--steps-per-call", "5", "--eval-every", "10"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """A 20-step run of the main command on the embedded default."""
    tmp = tmp_path_factory.mktemp("main_job")
    workdir = tmp / "run"
    proc = _cli("--lambda2", "1.0", "--steps", "20", *FAST, "--workdir", workdir, cwd=tmp)
    return proc, workdir


def test_main_job_writes_results_and_curves(default_run):
    proc, workdir = default_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "EMBEDDED DEFAULT" in out  # said loudly...
    results = json.loads((workdir / "results.json").read_text())
    assert "EMBEDDED" in results["warning"]  # ...and in the results file
    for key in (
        "config",
        "device",
        "dataset",
        "target_accuracy",
        "source_accuracy",
        "domain_accuracy",
        "wall_seconds",
        "seeds",
    ):
        assert key in results
    assert results["dataset"]["variant"] == "embedded"
    assert results["dataset"]["source"]["train_size"] == 2000
    assert results["device"]["kind"] and results["device"]["local_count"] == 1
    assert results["config"]["lambda2"] == 1.0 and results["config"]["steps"] == 20
    assert results["precision"] == {"setting": "auto", "used": "fp32"}  # on this CPU
    curve = results["seeds"][0]["curves"]
    assert [c["step"] for c in curve] == [10, 20]
    for key in ("target_accuracy", "source_accuracy"):
        assert results[key] == curve[-1][key]  # the last step, never a chosen one
    assert results["wall_seconds"] > 0
    png = (workdir / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10, 15, 20]
    # The discriminator's accuracy: over the last training chunk.
    assert results["domain_accuracy"] == lines[-1]["train_domain_accuracy"]
    # What the run says of its own adaptation (dann_jax.diagnose), in the log too.
    kinds = {"no_alignment", "collapse", "pad_not_lower"}
    for w in results["warnings"]:
        assert w["kind"] in kinds and w["seed"] == 0
        assert f"warning (seed 0): {w['message'][:60]}" in out.replace("\n", " ")


def test_rerun_of_a_finished_run_resumes_at_the_end(default_run):
    _, workdir = default_run
    first = json.loads((workdir / "results.json").read_text())
    again = _cli(
        "--lambda2", "1.0", "--steps", "20", *FAST, "--workdir", workdir, cwd=workdir.parent
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 20" in again.stdout + again.stderr
    second = json.loads((workdir / "results.json").read_text())
    assert second["target_accuracy"] == first["target_accuracy"]
    assert second["seeds"][0]["curves"] == first["seeds"][0]["curves"]


def test_workdir_with_a_different_config_is_refused(default_run):
    _, workdir = default_run
    before = (workdir / "results.json").read_text()
    proc = _cli(
        "--lambda2", "0.5", "--steps", "20", *FAST, "--workdir", workdir, cwd=workdir.parent
    )
    assert proc.returncode == 2
    assert "different config" in paragraph(proc.stderr) and "lambda2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (workdir / "results.json").read_text() == before


def test_workdir_written_before_a_field_existed(tmp_path):
    # config.json of an older version: no resize (then always bilinear), no vmap_seeds.
    old = dataclasses.asdict(Config(steps=10))
    del old["resize"], old["vmap_seeds"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "seed_0" / "checkpoint" / "10").mkdir(parents=True)  # it got as far as a save
    with pytest.raises(experiment.RunError, match="resize: 'bilinear' there, 'auto' now"):
        experiment.check_workdir(Config(steps=10), tmp_path)
    experiment.check_workdir(Config(steps=10, resize="bilinear"), tmp_path)  # resumable


def _interrupt_at(step):
    """A log callback that raises KeyboardInterrupt when training reaches `step`."""

    def log(line):
        if f" step {step}/" in line:
            raise KeyboardInterrupt

    return log


def test_interrupted_run_resumes_to_the_same_state(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    # In-process, so on the 8 virtual CPU devices of conftest: the pmapped path.
    config = Config(steps=12, steps_per_call=2, eval_every=4, batch_size=8)
    full = config.replace(workdir=str(tmp_path / "full"))
    experiment.run(full, log=lambda s: None)

    part = config.replace(workdir=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        experiment.run(part, log=_interrupt_at(8))
    assert not (tmp_path / "part" / "results.json").exists()
    lines = []
    experiment.run(part, log=lines.append)
    assert any("resuming from step 4" in x for x in lines)

    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "part" / "results.json").read_text())
    assert a["seeds"][0]["curves"] == b["seeds"][0]["curves"]
    assert a["target_accuracy"] == b["target_accuracy"]
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert full_log == (tmp_path / "part" / "metrics.jsonl").read_text()
    like = train.create_train_state(
        jax.random.key(0),
        train.make_model(config),
        train.make_optimizer(config),
        (28, 28, 3),
    )
    sa, _ = checkpoint.restore_latest(tmp_path / "full" / "seed_0" / "checkpoint", like)
    sb, _ = checkpoint.restore_latest(tmp_path / "part" / "seed_0" / "checkpoint", like)
    assert int(sa.step) == int(sb.step) == 12
    for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_source_only_and_seeds(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    config = Config(
        mode="source_only",
        steps=4,
        steps_per_call=2,
        eval_every=2,
        seeds=2,
        batch_size=8,
        workdir=str(tmp_path / "so"),
    )
    results = experiment.run(config, log=lambda s: None)
    assert [s["seed"] for s in results["seeds"]] == [0, 1]
    accs = [s["target_accuracy"] for s in results["seeds"]]
    assert results["target_accuracy"] == pytest.approx(np.mean(accs))
    assert results["target_accuracy_std"] == pytest.approx(np.std(accs))
    losses = [[c["train_loss"] for c in s["curves"]] for s in results["seeds"]]
    assert losses[0] != losses[1]  # two seeds, two runs
    # source_only: the GRL coefficient is 0 at every step
    assert all(c["train_lambda2"] == 0.0 for c in results["seeds"][0]["curves"])


def test_vmapped_seeds_run_and_resume(tmp_path, monkeypatch):
    # The numerics of vmapped seeds against separate runs are tested in train_test; here
    # the bookkeeping: per-seed records, the shared checkpoint and resumption.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    # In-process: 8 virtual CPU devices, so the seeds are vmapped inside the pmap.
    config = Config(steps=8, steps_per_call=2, eval_every=4, batch_size=8, seeds=2)
    config = config.replace(vmap_seeds=True)
    vm = experiment.run(config.replace(workdir=str(tmp_path / "vm")), log=lambda s: None)
    assert (tmp_path / "vm" / "seeds_0-1" / "checkpoint").is_dir()
    assert [s["seed"] for s in vm["seeds"]] == [0, 1]
    for s in vm["seeds"]:
        assert s["vmapped_with"] == [0, 1]
        assert [c["step"] for c in s["curves"]] == [4, 8]
        assert s["target_accuracy"] == s["curves"][-1]["target_accuracy"]
        lines = (tmp_path / "vm" / f"seed_{s['seed']}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [2, 4, 6, 8]
    seed_losses = [s["curves"][-1]["train_loss"] for s in vm["seeds"]]
    assert seed_losses[0] != seed_losses[1]
    accs = [s["target_accuracy"] for s in vm["seeds"]]
    assert vm["target_accuracy"] == pytest.approx(np.mean(accs))

    part = config.replace(workdir=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        experiment.run(part, log=_interrupt_at(8))
    lines = []
    resumed = experiment.run(part, log=lines.append)
    assert any("seeds_0-1: resuming from step 4" in x for x in lines)
    assert [s["curves"] for s in resumed["seeds"]] == [s["curves"] for s in vm["seeds"]]
    vm_log = (tmp_path / "vm" / "metrics.jsonl").read_text()
    assert vm_log == (tmp_path / "part" / "metrics.jsonl").read_text()


def test_without_tfds_the_raw_files_are_read_directly(tmp_path, monkeypatch):
    # Accelerator images may lack tensorflow_datasets: --data-dir must still work.
    from tests.helpers import write_mnist, write_usps

    mnist = write_mnist(tmp_path / "digits" / "mnist")
    write_usps(tmp_path / "digits" / "usps")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    data = experiment.load_data(
        Config(source="usps", target="mnist", data_dir=str(tmp_path / "digits"), steps=1),
        log=lambda s: None,
    )
    assert "without TFDS" in data.info["source"]["origin"]
    assert data.source_train.shape[1:] == data.target_train.shape[1:] == (28, 28, 3)
    assert data.source_train.dtype == np.uint8
    # MNIST keeps its 28 x 28: the target's pixels are the files', grey in all channels.
    for c in range(3):
        np.testing.assert_array_equal(data.target_train[..., c], mnist["train"][0])


def test_curves_title_names_lambda_only_where_it_acts(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dann_jax import plots

    titles = []
    monkeypatch.setattr(plots, "plot_curves", lambda path, seeds, title: titles.append(title))
    info = {"source": {"name": "mnist"}, "target": {"name": "data/photos"}, "variant": "full"}
    data = SimpleNamespace(info=info)
    for mode in ("dann", "source_only"):
        config = Config(mode=mode, lambda2=0.3, steps=1)
        experiment._plot(tmp_path / "curves.png", config, data, [{"seed": 0}], print)
    assert titles == [
        "dann: mnist → photos (full data), lambda2 = 0.3 (the paper's ramp)",
        "source_only: mnist → photos (full data)",  # lambda is 0 there: not named
    ]


def test_sigterm_saves_the_step_reached_and_the_same_command_resumes(tmp_path, monkeypatch):
    # A preempted VM's SIGTERM: the loop finishes its chunk, saves that step (not only
    # the last evaluation's) and stops with 143; the same command resumes from there and
    # ends where an uninterrupted run ends.
    import os
    import signal

    from dann_jax.cli import run_cli

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_tfds_here"))
    config = Config(steps=12, steps_per_call=1, eval_every=6, batch_size=8)
    full = config.replace(workdir=str(tmp_path / "full"))
    experiment.run(full, log=lambda s: None)

    def term_at_step_6(line):
        if " step 6/" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    part = config.replace(workdir=str(tmp_path / "part"))
    monkeypatch.setattr(experiment, "run", lambda c, log=print: _real_run(c, term_at_step_6))
    assert run_cli(part) == 143
    saved = sorted(int(p.name) for p in (tmp_path / "part" / "seed_0" / "checkpoint").iterdir()
                   if p.name.isdigit())  # fmt: skip
    assert saved[-1] == 7  # the chunk after the signal, past the step-6 evaluation
    monkeypatch.setattr(experiment, "run", _real_run)
    lines = []
    _real_run(part, lines.append)
    assert any("resuming from step 7" in x for x in lines)
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "part" / "results.json").read_text())
    assert a["target_accuracy"] == b["target_accuracy"]
    assert a["seeds"][0]["curves"] == b["seeds"][0]["curves"]
    assert (tmp_path / "full" / "metrics.jsonl").read_text() == (
        tmp_path / "part" / "metrics.jsonl"
    ).read_text()


_real_run = experiment.run
