"""Label-free selection: scoring on constructed candidates, and a tiny end-to-end run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dann_jax import select, validators
from tests.helpers import paragraph

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "selection.py"
TINY = [
    "--steps", "10", "--eval-every", "5", "--steps-per-call", "5", "--batch-size", "16",
    "--lambda2-grid", "1.0", "--recipes", "paper", "--seeds", "1", "--val-size", "60",
    "--reverse-steps", "5",
]  # fmt: skip


def _cli(*args, cwd, timeout=300):
    """Run experiments/selection.py on one CPU device, with no data to find."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one device, as a user's CPU run
    env["JAX_PLATFORMS"] = "cpu"
    env["TFDS_DATA_DIR"] = str(Path(cwd) / "no_tfds_here")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
    )  # fmt: skip


def test_grid_and_default_arm():
    arms = select.grid(["paper", "improved"], [0.3, 1.0])
    assert [(a.recipe, a.name) for a in arms] == [
        ("paper", "source_only"), ("paper", "dann_l0.3"), ("paper", "dann_l1"),
        ("improved", "source_only"), ("improved", "dann_l0.3"), ("improved", "dann_l1"),
    ]  # fmt: skip
    assert select.default_arm(arms) == select.Arm("paper", "dann", 1.0)
    assert select.default_arm(select.grid(["improved"], [0.1, 0.5])).lambda2 == 0.5


def _candidate(arm, step, acc, **scores):
    return {
        "id": f"{arm.recipe}/{arm.name}@{step}", "recipe": arm.recipe, "mode": arm.mode,
        "lambda2": arm.lambda2, "step": step, "target_accuracy": acc, "source_accuracy": 0.9,
        "scores": scores,
    }  # fmt: skip


def test_score_cell_spearman_regret_and_baselines():
    so, dann = select.grid(["paper"], [1.0])
    candidates = [
        _candidate(so, 5, 0.50, snd=1.0, dev=0.1),
        _candidate(so, 10, 0.55, snd=2.0, dev=0.4),
        _candidate(dann, 5, 0.60, snd=3.0, dev=0.3),
        _candidate(dann, 10, 0.70, snd=4.0, dev=0.2),
    ]
    out = select.score_cell(candidates, [so, dann], "dev", None)
    snd, dev = out["validators"]["snd"], out["validators"]["dev"]
    assert snd["spearman"] == pytest.approx(1.0) and snd["regret"] == pytest.approx(0.0)
    assert snd["picked_id"] == "paper/dann_l1@10"
    # DEV (lower is better) picks the source-only model at step 5: regret 0.70 - 0.50.
    assert dev["picked_id"] == "paper/source_only@5"
    assert dev["regret"] == pytest.approx(0.20)
    assert out["picked"]["id"] == "paper/source_only@5" and out["picked"]["validator"] == "dev"
    assert out["oracle"] == {"target_accuracy": 0.70, "id": "paper/dann_l1@10"}
    assert out["baselines"]["default_last_step"] == {
        "id": "paper/dann_l1@10", "regret": 0.0, "harmful_pick": False,
    }  # fmt: skip
    assert out["baselines"]["source_only_last_step"]["regret"] == pytest.approx(0.15)
    assert out["guard"]["harmful"] is False  # snd prefers adapting
    assert out["guard"]["prefers_source_only"] == {"snd": False, "dev": True}


def test_score_cell_without_target_labels_picks_and_guards_only(tmp_path):
    so, dann = select.grid(["paper"], [1.0])
    candidates = [
        _candidate(so, 5, None, snd=1.0, dev=0.1),
        _candidate(dann, 5, None, snd=3.0, dev=0.3),
        _candidate(dann, 10, None, snd=4.0, dev=0.2),
    ]
    out = select.score_cell(candidates, [so, dann], "snd", None)
    assert out["picked"]["id"] == "paper/dann_l1@10" and out["oracle"] is None
    assert out["validators"]["dev"]["picked_id"] == "paper/source_only@5"
    assert out["validators"]["snd"]["spearman"] is None and out["harmful"] == []
    assert out["baselines"]["default_last_step"]["id"] == "paper/dann_l1@10"
    cell = {"pair": "a→b", "seed": 0, "candidates": candidates, "score": out}
    result = {"date": "d", "protocol": "p", "complete": True, "cells": [cell],
              "rows": select.summarize([cell]), "picker": "snd"}  # fmt: skip
    select.write_outputs(tmp_path, result)
    md = (tmp_path / "selection.md").read_text()
    assert "snd picked paper/dann_l1@10; no target labels." in md
    assert "| snd | higher | — | — |" in md  # no Spearman, no regret without labels
    # ...and so every candidate's scores, the pick in bold.
    assert "(better: dev lower, snd higher)" in md
    assert "| paper/source_only@5 | 0.1000 | 1.0000 |" in md
    assert "| **paper/dann_l1@10** | 0.2000 | 4.0000 |" in md


def test_a_tie_is_reported_with_every_tied_candidate(tmp_path):
    so, dann = select.grid(["paper"], [1.0])
    candidates = [  # reverse validation at a resolution of 1/50: three equal scores
        _candidate(so, 5, None, reverse_validation=0.6),
        _candidate(dann, 5, None, reverse_validation=0.6),
        _candidate(dann, 10, None, reverse_validation=0.6),
    ]
    out = select.score_cell(candidates, [so, dann], "reverse_validation", None)
    assert out["picked"]["id"] == "paper/source_only@5"
    assert out["validators"]["reverse_validation"]["tied_ids"] == [c["id"] for c in candidates]
    cell = {"pair": "a→b", "seed": 0, "candidates": candidates, "score": out}
    result = {"date": "d", "protocol": "p", "complete": True, "cells": [cell],
              "rows": select.summarize([cell]), "picker": "reverse_validation"}  # fmt: skip
    select.write_outputs(tmp_path, result)
    md = (tmp_path / "selection.md").read_text()
    assert ("picked paper/source_only@5, tied with paper/dann_l1@5, paper/dann_l1@10 (the "
            "first in grid order is taken)") in md  # fmt: skip


def test_guard_in_the_table_when_every_validator_prefers_source_only(tmp_path):
    so, dann = select.grid(["paper"], [1.0])
    candidates = [
        _candidate(so, 10, 0.80, snd=5.0, mean_entropy=0.1),
        _candidate(dann, 5, 0.60, snd=3.0, mean_entropy=0.5),
        _candidate(dann, 10, 0.70, snd=4.0, mean_entropy=0.4),
    ]
    score = select.score_cell(candidates, [so, dann], "snd", None)
    assert score["guard"]["harmful"] is True
    cells = [{"pair": "a→b", "seed": 0, "candidates": candidates, "score": score}]
    result = {
        "date": "today", "protocol": select.PROTOCOL, "picker": "snd", "complete": True,
        "cells": cells, "rows": select.summarize(cells),
    }  # fmt: skip
    select.write_outputs(tmp_path, result)
    md = (tmp_path / "selection.md").read_text()
    assert validators.HARMFUL_MESSAGE in md
    assert "| snd | higher | 1.00 ± 0.00 | 0.000 ± 0.000 |" in md
    rows = json.loads((tmp_path / "selection.json").read_text())["rows"]
    assert [r["validator"] for r in rows] == [
        "mean_entropy", "snd", "default_last_step", "source_only_last_step",
    ]  # fmt: skip
    assert rows[2]["pairs"]["all"]["regret"]["mean"] == pytest.approx(0.10)
    # Both DANN candidates are >= 3 points below source-only: the default's last step is a
    # harmful pick, the validators' (source-only) picks are not.
    assert score["harmful"] == ["paper/dann_l1@5", "paper/dann_l1@10"]
    assert rows[1]["pairs"]["all"]["harmful"] == {"picks": 0, "cells": 1}
    assert rows[2]["pairs"]["all"]["harmful"] == {"picks": 1, "cells": 1}
    assert "| default_last_step | - | — | 0.100 ± 0.000 | — | 0.100 ± 0.000 | 1 of 1 |" in md


def test_harmful_candidates_against_their_own_recipes_source_only_last_step():
    so_p, dann_p, so_i, dann_i = select.grid(["paper", "improved"], [1.0])
    candidates = [
        _candidate(so_p, 5, 0.90),  # an early source-only step is not the floor
        _candidate(so_p, 10, 0.60),
        _candidate(dann_p, 5, 0.57),  # exactly 3 points below: harmful
        _candidate(dann_p, 10, 0.58),  # 2 points below: not
        _candidate(so_i, 10, 0.80),
        _candidate(dann_i, 10, 0.70),  # below improved's source-only, not paper's
        _candidate(dann_i, 5, 0.795),
    ]
    assert select.harmful_candidates(candidates) == ["paper/dann_l1@5", "improved/dann_l1@10"]
    assert select.harmful_candidates(candidates, margin=0.25) == []
    assert select.harmful_candidates(candidates[:4] + candidates[5:6]) == ["paper/dann_l1@5"]


def _written_result(tmp_path):
    """A one-cell selection.json, as `select.select` writes it, picked by snd."""
    so, dann = select.grid(["paper"], [1.0])
    candidates = [
        _candidate(so, 10, 0.60, snd=1.0, dev=0.5),
        _candidate(dann, 5, 0.50, snd=3.0, dev=0.3),  # harmful; snd's pick
        _candidate(dann, 10, 0.70, snd=2.0, dev=0.1),  # DEV's pick (lowest risk)
    ]
    cells = [{"pair": "a→b", "seed": 0, "candidates": candidates,
              "score": select.score_cell(candidates, [so, dann], "snd", None)}]  # fmt: skip
    result = {
        "date": "today", "protocol": select.PROTOCOL, "picker": "snd", "complete": True,
        "grid": {"recipes": ["paper"], "lambda2": [1.0], "seeds": [0]}, "cells": cells,
        "rows": select.summarize(cells),
    }  # fmt: skip
    select.write_outputs(tmp_path, result)
    return result


def test_rescore_changes_the_pick_not_the_candidates(tmp_path):
    result = _written_result(tmp_path)
    assert result["cells"][0]["score"]["picked"]["id"] == "paper/dann_l1@5"
    assert result["cells"][0]["score"]["validators"]["snd"]["harmful_pick"] is True
    again = select.rescore(result, "dev", ["snd"])
    (cell,) = again["cells"]
    assert cell["candidates"] == result["cells"][0]["candidates"]
    assert cell["score"]["picked"]["id"] == "paper/dann_l1@10"
    assert again["picker"] == "dev" and again["guard_use"] == ["snd"]
    assert cell["score"]["guard"]["used"] == ["snd"]
    assert again["rows"] == select.summarize(again["cells"])
    by_name = {r["validator"]: r["pairs"]["all"] for r in again["rows"]}
    assert by_name["snd"]["harmful"] == {"picks": 1, "cells": 1}
    assert by_name["default_last_step"]["harmful"] == {"picks": 0, "cells": 1}
    assert by_name["snd"]["regret"]["mean"] == pytest.approx(0.20)
    assert by_name["dev"]["regret"]["mean"] == 0.0  # dev's pick, paper/dann_l1@10, is the best


def test_cli_rescore_without_training(tmp_path):
    _written_result(tmp_path / "sel")
    proc = _cli("--rescore", "--out", tmp_path / "sel", "--select", "dev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert written["picker"] == "dev"
    assert "dev picked paper/dann_l1@10" in proc.stdout
    proc = _cli("--rescore", "--out", tmp_path / "sel", "--select", "bnm", cwd=tmp_path)
    assert proc.returncode == 2 and "bnm was not computed" in paragraph(proc.stderr)
    proc = _cli("--rescore", "--out", tmp_path / "none", cwd=tmp_path)
    assert proc.returncode == 2 and "--rescore needs a selection.json" in paragraph(proc.stderr)


def test_cli_rejects_bad_flags(tmp_path):
    proc = _cli("--recipes", "nope", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "unknown --recipes" in paragraph(proc.stderr)
    proc = _cli("--select", "reverse_dann", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "--reverse-steps" in proc.stderr


def test_tiny_selection_run_on_the_embedded_default(tmp_path):
    out = tmp_path / "sel"
    proc = _cli(*TINY, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "selection.json").read_text())
    assert result["complete"] and result["data_variant"] == "embedded"
    (cell,) = result["cells"]
    # Two arms (source-only, DANN lambda2 = 1) x two checkpoints (steps 5 and 10).
    assert sorted(c["id"] for c in cell["candidates"]) == [
        "paper/dann_l1@10", "paper/dann_l1@5", "paper/source_only@10", "paper/source_only@5",
    ]  # fmt: skip
    computed = set(validators.VALIDATORS)  # reverse_dann too: --reverse-steps 5
    for c in cell["candidates"]:
        assert set(c["scores"]) == computed
        assert all(math.isfinite(v) for v in c["scores"].values()), c
        assert 0.0 <= c["target_accuracy"] <= 1.0
    score = cell["score"]
    assert set(score["validators"]) == computed
    assert score["picked"]["validator"] == "reverse_validation"
    assert set(score["guard"]) >= {"harmful", "used", "broken", "prefers_source_only"}
    rows = {r["validator"]: r for r in result["rows"]}
    assert set(rows) == computed | {"default_last_step", "source_only_last_step"}
    assert "picked paper/" in proc.stdout + proc.stderr
    assert "reverse DANN (5 steps)" in proc.stdout + proc.stderr
    # The pick's checkpoint is kept as a workdir to load and predict with.
    picked = out / "mnist-mnist_m" / "seed_0" / "picked"
    assert json.loads((picked / "pick.json").read_text())["id"] == score["picked"]["id"]
    assert f"its checkpoint: {picked}" in proc.stdout
    import dann_jax as dj

    model = dj.load_run(picked)
    step = int(score["picked"]["id"].rsplit("@", 1)[1])
    assert int(model.state.step) == step and model.config.mode == score["picked"]["mode"]
    md = (out / "selection.md").read_text()
    assert "| reverse_validation | higher |" in md and "default_last_step" in md
    # Rerun: every arm resumes from its last checkpoint, and the validator values come
    # back with the checkpoint's records.
    again = _cli(*TINY, "--out", out, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (resumed,) = json.loads((out / "selection.json").read_text())["cells"]
    assert resumed["candidates"] == cell["candidates"] and resumed["score"] == cell["score"]


def test_selection_takes_the_model_and_input_flags_adapt_takes():
    from dann_jax.cli import config_from_args
    from experiments import selection

    argv = ["--recipe", "office", "--arch", "resnet18", "--image-size", "64", "--rotate"]
    config = config_from_args(selection.parser(argv).parse_args(argv))
    assert (config.arch, config.image_size, config.rotate) == ("resnet18", 64, True)
    assert config.pretrained == "imagenet" and config.augment  # the office recipe's
    assert config.steps == selection.SELECT_DEFAULTS["steps"]  # the grid's own length
    arm = select.grid(["office"], [1.0])[1]
    arm_config = select.arm_config(config, ("a", "b"), 0, arm, "w")
    assert arm_config.bottleneck == 256 and not arm_config.choose


def test_reverse_dann_known_value_from_a_forward_model_that_labels_by_brightness(tmp_path):
    # The paper's reverse validation: the forward model labels the target training
    # images (normalised with the target's BatchNorm averages), a fresh DANN learns from
    # them (as its source) towards the source training images, and its accuracy on the
    # labelled source validation set is the score. Here the forward model's one feature
    # is the mean pixel g (dark target images -0.31, bright source images +0.31, after
    # the pools' mean 0.5) through a per-domain BatchNorm with set averages (source +1.1,
    # target -0.3, variance 1), and its head says class 8 above 0.5, class 5 below -0.5,
    # class 2 between. So every target image is a 2 (g - (-0.3) = 0), the reverse DANN
    # learns "always 2", and its accuracy is the share of 2s among the source validation
    # labels: 7 of 20. The source's averages (-1.41) or both domains' mean (-0.71) would
    # make them 5s (4 of 20), and the source images pseudo-labelled instead would be 8s
    # (+0.61: 2 of 20).
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    import dann_jax as dj
    from dann_jax.data.pair import PairData
    from dann_jax.models import DomainBatchNorm

    class Brightness(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return DomainBatchNorm(groups=2)(x.mean((1, 2, 3))[:, None], train)

    rng = np.random.default_rng(0)
    bright = lambda n: rng.integers(156, 256, (n, 16, 16, 3), dtype=np.uint8)
    dark = lambda n: rng.integers(0, 100, (n, 16, 16, 3), dtype=np.uint8)
    cycle = lambda n: (np.arange(n) % 10).astype(np.int32)
    data = PairData(
        source_train=bright(64), source_labels=cycle(64), target_train=dark(64),
        source_test=bright(20), source_test_labels=cycle(20), target_test=dark(20),
        target_test_labels=cycle(20), mean=np.full(3, 0.5, np.float32), info={},
    )  # fmt: skip
    val_labels = np.array([2] * 7 + [5] * 4 + [8] * 2 + [0, 1, 3, 4, 6, 7, 9], np.int32)
    sets = {"source_val": (rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8), val_labels)}
    forward = dj.DANN(Brightness(), num_classes=10, label_head=(), domain_head=())
    # Per-domain statistics (chosen at test time by --bn-eval domain) for a model of the
    # paper's CNN without BatchNorm in the reverse run.
    config = dj.Config(steps=5, batch_size=8, lr=0.05, eval_every=5, bn_stats="per_domain")
    assert config.bn_domain("target") == 1
    tx = dj.make_optimizer(config)
    state = dj.create_train_state(jax.random.key(0), forward, tx, (16, 16, 3))
    w = jnp.zeros((1, 10)).at[0, 8].set(10.0).at[0, 5].set(-10.0)
    head = {"_MLP_0": {"Dense_0": {"kernel": w, "bias": jnp.zeros(10).at[2].set(5.0)}}}
    averages = {"mean": jnp.array([[1.1], [-0.3]]), "var": jnp.full((2, 1), 1.0 - 1e-5)}
    stats = {"extractor": {"DomainBatchNorm_0": averages}}
    state = state.replace(params={**state.params, "classifier": head}, batch_stats=stats)
    state = jax.device_get(state)
    accuracy = select.reverse_dann_accuracy(
        config, data, state, forward, sets, 5, tmp_path / "reverse", lambda _: None
    )
    assert accuracy == pytest.approx(7 / 20)
