"""The reproduction table: cells, references, and a table that survives an interruption."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dann_jax import reproduce
from dann_jax.config import Config
from tests.helpers import REPO_ROOT


def _fake_run(fail_at=None):
    """A cell runner returning fixed numbers (no training), failing at cell `fail_at`."""
    calls = []

    def run(config):
        calls.append(config)
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        acc = {"source_only": 0.5, "dann": 0.7, "target_only": 0.9}[config.mode]
        return {
            "target_accuracy": acc,
            "target_accuracy_std": 0.01,
            "seeds": [{"target_accuracy": acc - 0.01}, {"target_accuracy": acc + 0.01}],
            "source_accuracy": 0.99,
            "config": {"steps": config.steps, "seeds": config.seeds, "vmap_seeds": True},
            "dataset": {"variant": "full", "target": {"train_size": 123}},
            "wall_seconds": 1.0,
            "device": {"kind": "cpu"},
        }

    return run, calls


def test_cells_recipes_and_references(tmp_path):
    run, calls = _fake_run()
    base = Config(steps=10, seeds=2)
    pairs = [("mnist", "mnist_m"), ("usps", "mnist")]
    table = reproduce.reproduce(
        base, pairs, reproduce.MODES, ["paper", "improved"], tmp_path, run=run, log=lambda s: None
    )
    assert table["complete"] is True and len(table["rows"]) == len(calls) == 12
    improved = [c for c in calls if c.workdir.endswith("-improved")]
    assert len(improved) == 6
    for c in improved:
        assert (c.optimizer, c.lr, c.batchnorm, c.bn_stats, c.dropout) == (
            "sgd", 0.01, True, "per_domain", 0.5,
        )  # fmt: skip
    paper = [c for c in calls if c not in improved]
    assert all(
        (c.optimizer, c.lr, c.batchnorm, c.dropout) == ("sgd", 0.01, False, 0.0) for c in paper
    )
    row = next(r for r in table["rows"] if (r["target"], r["mode"]) == ("mnist_m", "dann"))
    assert row["reference"] == 0.7666 and row["reference_source"] == "paper"
    assert row["per_seed"] == [0.69, 0.71]
    usps = next(r for r in table["rows"] if (r["source"], r["mode"]) == ("usps", "dann"))
    assert usps["reference"] == 0.952 and usps["reference_source"] == "tllib"
    md = (tmp_path / "table.md").read_text()
    assert "INCOMPLETE" not in md and "0.7000 ± 0.0100" in md
    assert "resize='auto' (MNIST-M centre-cropped to 28" in md.splitlines()[0]
    assert json.loads((tmp_path / "table.json").read_text()) == table


def test_a_run_cut_short_leaves_the_finished_cells_marked_incomplete(tmp_path):
    run, _ = _fake_run(fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        reproduce.reproduce(
            Config(steps=10), [("mnist", "usps")], reproduce.MODES, ["paper"], tmp_path,
            run=run, log=lambda s: None,
        )  # fmt: skip
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["complete"] is False and len(table["rows"]) == 2 and table["cells"] == 3
    assert (tmp_path / "table.md").read_text().startswith("INCOMPLETE: 2 of 3 cells finished.")


def test_cells_run_most_wanted_mode_first():
    cells = reproduce.cell_order([("a", "b"), ("c", "d")], ["dann", "target_only"], ["p", "i"])
    assert [m for _, _, m in cells] == ["dann"] * 4 + ["target_only"] * 4
    assert cells[:2] == [(("a", "b"), "p", "dann"), (("a", "b"), "i", "dann")]


def test_each_pair_is_loaded_once_per_process(tmp_path, monkeypatch):
    """Recipes and source-only / DANN share a pair's data; the oracle loads its own."""
    from dann_jax import experiment

    loads, runs = [], []
    monkeypatch.setattr(
        experiment, "load_data", lambda config, log: loads.append(config) or object()
    )
    fake, _ = _fake_run()

    def run(config, log, data):
        runs.append(data)
        return fake(config)

    monkeypatch.setattr(experiment, "run", run)
    pairs = [("mnist", "mnist_m"), ("usps", "mnist")]
    table = reproduce.reproduce(
        Config(steps=10, seeds=2), pairs, reproduce.MODES, ["paper", "improved"], tmp_path,
        log=lambda s: None,
    )  # fmt: skip
    assert table["complete"] and len(runs) == 12
    assert sorted((c.source, c.target, c.mode == "target_only") for c in loads) == [
        ("mnist", "mnist_m", False), ("mnist", "mnist_m", True),
        ("usps", "mnist", False), ("usps", "mnist", True),
    ]  # fmt: skip
    assert len({id(d) for d in runs}) == 4  # each loaded pair object reused by its cells


def test_expected_seconds_counts_cells_steps_and_loads():
    cells = reproduce.cell_order([("mnist", "usps")], reproduce.MODES, ["paper"])
    gpu = reproduce.expected_seconds(Config(steps=1000, seeds=3, vmap_seeds=True), cells, "gpu")
    cpu = reproduce.expected_seconds(Config(steps=1000, seeds=3), cells, "cpu")
    assert 0 < gpu < cpu
    longer = reproduce.expected_seconds(Config(steps=2000, seeds=3), cells, "cpu")
    assert longer > cpu


def test_reproduce_table_on_the_embedded_default(tmp_path):
    env_out = tmp_path / "table"
    script = REPO_ROOT / "experiments" / "reproduce.py"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    env["TFDS_DATA_DIR"] = str(tmp_path / "no_tfds_here")
    proc = subprocess.run(
        [sys.executable, str(script), "--steps", "4", "--seeds", "2", "--steps-per-call", "2",
         "--eval-every", "2", "--batch-size", "8", "--out", str(env_out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((env_out / "table.json").read_text())
    assert [r["mode"] for r in table["rows"]] == ["source_only", "dann", "target_only"]
    for r in table["rows"]:
        assert len(r["per_seed"]) == 2
        assert r["target_accuracy"] == pytest.approx(np.mean(r["per_seed"]))
        assert r["data_variant"] == "embedded"
        assert r["vmap_seeds"] is False  # auto: seeds one after another on CPU
    # The persistent compilation cache holds the programs the cells share.
    assert any((env_out / "jax_cache").iterdir())
    md = (env_out / "table.md").read_text().splitlines()
    assert md[2].startswith("| pair | recipe | mode |")
    assert len([x for x in md if x.startswith("| mnist → mnist_m |")]) == 3
    assert "0.7666 (paper)" in (env_out / "table.md").read_text()
    assert (env_out / "mnist-mnist_m" / "dann" / "results.json").exists()
