"""Checkpoints: named keys, keep the last two, a damaged one is detected and skipped."""

from pathlib import Path

import jax
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import checkpoint
from tests.helpers import setup_run, synthetic_data


def _states(n: int, **overrides):
    """The initial state and the states after 1..n-1 more steps (host copies)."""
    config, model, tx, state = setup_run(**overrides)
    step = dj.compile_train_step(model, tx)
    data, hp = synthetic_data(32), dj.hyperparams(config)
    out = [jax.device_get(state)]
    for i in range(n - 1):
        state, _ = step(state, dj.sample_batch(jax.random.key(i), data, 8), hp)
        out.append(jax.device_get(state))
    return out


def _equal(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(a.step) == int(b.step)
    np.testing.assert_array_equal(jax.random.key_data(a.rng), jax.random.key_data(b.rng))


def _biggest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_save_and_restore_the_newest_keeping_two(tmp_path):
    states = _states(4)
    for i, s in enumerate(states[1:]):
        checkpoint.save(tmp_path, s, {"curves": [[{"step": i + 1}]]})
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]
    state, loop = checkpoint.restore_latest(tmp_path, states[0], log=lambda s: None)
    _equal(state, states[3])
    assert loop == {"curves": [[{"step": 3}]]}
    assert checkpoint.restore_latest(tmp_path / "none", states[0]) is None


def test_a_flipped_bit_falls_back_to_the_previous_checkpoint(tmp_path):
    states = _states(3)
    checkpoint.save(tmp_path, states[1], {"curves": []})
    checkpoint.save(tmp_path, states[2], {"curves": []})
    victim = _biggest_file(tmp_path / "2")
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    victim.write_bytes(bytes(raw))
    lines = []
    state, _ = checkpoint.restore_latest(tmp_path, states[0], log=lines.append)
    _equal(state, states[1])
    assert any("damaged" in x for x in lines) and any("step 1 instead" in x for x in lines)


def test_no_intact_checkpoint_stops_with_the_fix(tmp_path):
    states = _states(2)
    checkpoint.save(tmp_path, states[1], {"curves": []})
    for p in (tmp_path / "1").rglob("*"):
        if p.is_file() and "loop" not in p.parts:
            p.unlink()  # metadata and data files gone
    with pytest.raises(checkpoint.CheckpointError, match="--restart"):
        checkpoint.restore_latest(tmp_path, states[0], log=lambda s: None)


def test_a_differently_structured_state_is_refused(tmp_path):
    (state,) = _states(1)
    checkpoint.save(tmp_path, state, {"curves": []})
    (other,) = _states(1, batchnorm=True)  # more fields (BatchNorm statistics)
    with pytest.raises(checkpoint.CheckpointError, match=r"fields differ.*missing \[.*batch_stats"):
        checkpoint.restore_latest(tmp_path, other, log=lambda s: None)


def test_checkpoint_of_an_older_version_is_refused(tmp_path):
    (state,) = _states(1)
    (tmp_path / "loop.json").write_text("{}")
    with pytest.raises(checkpoint.CheckpointError, match="older dann_jax"):
        checkpoint.restore_latest(tmp_path, state)


def test_digest_sees_names_and_values():
    a = {"w": np.zeros(3, np.float32)}
    assert checkpoint.state_digest(a) == checkpoint.state_digest({"w": np.zeros(3, np.float32)})
    assert checkpoint.state_digest(a) != checkpoint.state_digest({"v": np.zeros(3, np.float32)})
    assert checkpoint.state_digest(a) != checkpoint.state_digest({"w": np.ones(3, np.float32)})
