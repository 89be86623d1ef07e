"""Choosing without target labels inside a run: the rule by hand, the run end to end."""

import json
import math

import jax
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import choose, predicting
from dann_jax.data.arrays import pair_from_arrays
from tests.helpers import synthetic_images


def _scores(source_accuracy, top_share, ensv):
    return {"source_accuracy": source_accuracy, "top_class_share": top_share, "ensv": ensv}


def test_preferences_exclude_candidates_that_look_harmful():
    names = ["source_only", "lambda2_0.3", "lambda2_1"]
    scores = [_scores(0.95, 0.12, 0.80), _scores(0.93, 0.15, 0.90), _scores(0.85, 0.11, 0.95)]
    prefs = choose.preferences(names, scores, "ensv", margin=0.05)
    assert [p for p, _ in prefs] == [0.80, 0.90, -math.inf]
    assert prefs[1][1] is None and "0.100 below source-only" in prefs[2][1]
    # A collapse on the target also excludes; source-only itself never is.
    scores[1] = _scores(0.95, 0.60, 0.99)
    prefs = choose.preferences(names, scores, "ensv", margin=0.05)
    assert prefs[1][0] == -math.inf and "collapsed" in prefs[1][1]
    assert int(np.argmax([p for p, _ in prefs])) == 0  # every adapted one excluded: fallback
    # A validator that failed (NaN) cannot pick its candidate.
    scores = [_scores(0.95, 0.1, 0.5), _scores(0.95, 0.1, float("nan")), _scores(0.95, 0.1, 0.4)]
    assert choose.preferences(names, scores, "ensv", 0.05)[1][0] == -math.inf


@pytest.mark.parametrize("rule", ["last", "any"])
def test_a_choosing_run_keeps_the_best_candidate_and_checkpoint(tmp_path, rule):
    xs, ys, xt, yt = synthetic_images(96, size=28, seed=3)
    workdir = tmp_path / "run"
    fitted = dj.fit(
        xs, ys, xt, target_labels=yt, steps=4, eval_every=2, batch_size=8,
        choose_lambdas="0.3,1", choose_checkpoint=rule, workdir=workdir,
    )  # fmt: skip
    assert fitted.config.choose  # fit chooses by default
    # The rule again, from the scores every candidate recorded at every evaluation: the
    # highest preference at the last evaluation ("last"), or over (evaluation,
    # candidate) ("any"); the earliest on a tie.
    best = None
    for step in (2, 4):
        if rule == "last":
            best = None  # a later evaluation's choice replaces an earlier one
        for name in ("source_only", "lambda2_0.3", "lambda2_1"):
            path = workdir / "seed_0" / "candidates" / name / "metrics.jsonl"
            (record,) = [r for r in map(json.loads, path.read_text().splitlines())
                         if r["step"] == step and "choice" in r]  # fmt: skip
            value = record["choice"]["preference"]
            value = -math.inf if value is None else value
            if best is None or value > best[0]:
                best = (value, name, step, record["target_accuracy"])
    kept = json.loads((workdir / "seed_0" / "choice.json").read_text())
    assert (kept["member"], kept["step"]) == best[1:3]
    # --predict says what predicts: the kept checkpoint, and that it was chosen.
    loaded = dj.load_run(workdir)
    assert predicting.which_checkpoint(loaded) == (
        f"the checkpoint the run kept without target labels (candidate {best[1]} at step "
        f"{best[2]}, by information_maximization)"
    )
    # The model fit returns, and the one load_run (and --predict) reads, is the kept one.
    target = pair_from_arrays(xs, ys, xt, yt).target_test
    for model in (fitted, dj.load_run(workdir)):
        predicted, _ = model.predict(target)
        assert np.mean(predicted == yt) == pytest.approx(best[3], abs=1e-6)


def test_an_interrupted_choosing_run_resumes_to_the_same_choice(tmp_path):
    xs, ys, xt, _ = synthetic_images(64, size=28, seed=4)
    settings = dict(steps=6, eval_every=2, batch_size=8, choose_lambdas="1")

    def stop_at_step_4(line):
        if "/candidates/lambda2_1 step 4/" in line:
            raise KeyboardInterrupt

    dj.fit(xs, ys, xt, workdir=tmp_path / "full", log=lambda s: None, **settings)
    with pytest.raises(KeyboardInterrupt):  # after step 4's choice, before its checkpoint
        dj.fit(xs, ys, xt, workdir=tmp_path / "part", log=stop_at_step_4, **settings)
    lines = []
    resumed = dj.fit(xs, ys, xt, workdir=tmp_path / "part", log=lines.append, **settings)
    assert any("resuming from step 2" in x for x in lines)
    read = lambda run: json.loads((tmp_path / run / "seed_0" / "choice.json").read_text())
    assert read("full") == read("part")
    full = dj.load_run(tmp_path / "full")
    leaves = lambda m: jax.tree.leaves((m.state.params, m.state.batch_stats, m.state.step))
    for a, b in zip(leaves(full), leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_eight_candidates_on_eight_devices_train_whole_models_per_device(tmp_path):
    # The tests' 8 CPU devices: 8 candidates split over them whole (no gradient crosses
    # devices), a batch of 12 that could not be split over 8 devices.
    assert jax.device_count() == 8
    xs, ys, xt, _ = synthetic_images(64, size=28, seed=5)
    lines = []
    dj.fit(xs, ys, xt, steps=2, eval_every=2, batch_size=12, workdir=tmp_path / "w",
           choose_lambdas="0.05,0.1,0.2,0.3,0.5,0.7,1", log=lines.append)  # fmt: skip
    kept = json.loads((tmp_path / "w" / "seed_0" / "choice.json").read_text())
    assert kept["step"] == 2 and any("training 8 candidates together" in x for x in lines)


def test_a_run_whose_adapted_candidates_all_look_harmful_says_it_falls_back(tmp_path, monkeypatch):
    xs, ys, xt, _ = synthetic_images(48, size=28, seed=6)
    monkeypatch.setattr(choose, "harmful", lambda s, ref, margin: "made harmful by the test")
    lines = []
    fitted = dj.fit(xs, ys, xt, steps=2, eval_every=2, batch_size=8, workdir=tmp_path / "w",
                    log=lines.append)  # fmt: skip
    assert fitted.choice["member"] == "source_only"
    assert fitted.choice["excluded"] == {"lambda2_1": "made harmful by the test"}
    assert any("adaptation did not help here by information_maximization, so this run falls "
               "back to the source-only model" in x for x in lines)  # fmt: skip
