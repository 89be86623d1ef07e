"""The training loop: chunks are queued before the previous one is read, a NaN stops the
run before any checkpoint of it, and the resident data are flat rows whose size the job
reports."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dann_jax import checkpoint, compiled, loop, memory, run_log, train
from dann_jax.config import Config
from dann_jax.data.pair import PairData
from tests.helpers import synthetic_images


def _pair(n=64) -> PairData:
    xs, ys, xt, yt = synthetic_images(n)
    mean = np.full((3,), 0.5, np.float32)
    return PairData(xs, ys, xt, xs[:20], ys[:20], xt[:20], yt[:20], mean, {"variant": "test"})


CONFIG = Config(steps=12, steps_per_call=2, eval_every=6, batch_size=8)


def test_each_chunk_is_read_after_the_next_is_queued(tmp_path, monkeypatch):
    events = []
    dispatch, read = compiled.TrainSteps.__call__, run_log.read_chunk

    def traced_dispatch(self, state, data, hparams):
        events.append(("dispatch", int(np.asarray(state.step).reshape(-1)[0])))
        return dispatch(self, state, data, hparams)

    def traced_read(metrics, seeds, first_step):
        events.append(("read", first_step))
        return read(metrics, seeds, first_step)

    def traced_save(directory, state, bookkeeping):
        events.append(("save", int(state.step)))
        return save(directory, state, bookkeeping)

    save = checkpoint.save
    monkeypatch.setattr(compiled.TrainSteps, "__call__", traced_dispatch)
    monkeypatch.setattr(run_log, "read_chunk", traced_read)
    monkeypatch.setattr(checkpoint, "save", traced_save)
    loop.train_and_evaluate(CONFIG, _pair(), tmp_path, (0,), log=lambda _: None)
    # Within an evaluation interval chunk i is read once chunk i+1 is queued; at an
    # evaluation the last chunk is read (NaN check) before its checkpoint is saved.
    assert events == [
        ("dispatch", 0), ("dispatch", 2), ("read", 0), ("dispatch", 4), ("read", 2),
        ("read", 4), ("save", 6),
        ("dispatch", 6), ("dispatch", 8), ("read", 6), ("dispatch", 10), ("read", 8),
        ("read", 10), ("save", 12),
    ]  # fmt: skip


def test_a_nan_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    # The NaN comes in the chunk of steps 5-6, the one read last before the checkpoint of
    # step 6: a save before that chunk's check would leave checkpoint/6 behind.
    dispatch = compiled.TrainSteps.__call__

    def poisoned(self, state, data, hparams):
        first = int(np.asarray(state.step).reshape(-1)[0])
        state, metrics = dispatch(self, state, data, hparams)
        if first == 4:
            metrics = {**metrics, "loss": metrics["loss"] * np.float32(np.nan)}
        return state, metrics

    monkeypatch.setattr(compiled.TrainSteps, "__call__", poisoned)
    with pytest.raises(train.NonFiniteLossError, match=r"seed 0: non-finite.* step 5\b"):
        loop.train_and_evaluate(CONFIG, _pair(), tmp_path, (0,), log=lambda _: None)
    assert not (tmp_path / "seed_0" / "checkpoint").exists()
    # Unpoisoned, the same run saves that checkpoint (so its absence above is the check's).
    monkeypatch.setattr(compiled.TrainSteps, "__call__", dispatch)
    loop.train_and_evaluate(
        CONFIG.replace(steps=6), _pair(), tmp_path / "ok", (0,), log=lambda _: None
    )
    assert (tmp_path / "ok" / "seed_0" / "checkpoint" / "6").exists()


def test_a_failed_run_waits_for_the_chunk_it_queued(tmp_path, monkeypatch):
    # The NaN of steps 3-4 is read once the chunk of steps 5-6 is queued. Made slow here
    # (about a second of matrix products), that chunk is still running when the error is
    # raised, unless the loop waits for it: a process that exits with a program still
    # running under its backend may crash (exit -11) after the paragraph, not exit 2.
    dispatch, queued = compiled.TrainSteps.__call__, []

    @jax.jit
    def slow(state):
        x = jax.lax.fori_loop(0, 600, lambda i, x: jnp.tanh(x @ x), jnp.full((256, 256), 0.01))
        return jax.lax.optimization_barrier((x, state))[1]

    def poisoned(self, state, data, hparams):
        first = int(np.asarray(state.step).reshape(-1)[0])
        state, metrics = dispatch(self, state, data, hparams)
        if first == 2:
            metrics = {**metrics, "loss": metrics["loss"] * np.float32(np.nan)}
        if first == 4:
            state = slow(state)
        queued.append(state)
        return state, metrics

    monkeypatch.setattr(compiled.TrainSteps, "__call__", poisoned)
    with pytest.raises(train.NonFiniteLossError, match=r"step 3\b"):
        loop.train_and_evaluate(CONFIG, _pair(), tmp_path, (0,), log=lambda _: None)
    assert len(queued) == 3
    leaves = jax.tree.leaves(queued[-1])  # a key array has no is_ready; one program made all
    arrays = [a for a in leaves if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)]
    assert arrays and all(a.is_ready() for a in arrays)


def test_pools_are_flat_rows_and_the_reported_bytes_are_theirs():
    data = _pair(64)
    pools = data.train_data()
    assert pools.source_images.shape == (64, 28 * 28 * 3) and pools.source_images.dtype == np.uint8
    assert pools.target_images.ndim == 2 and pools.image_shape == (28, 28, 3)
    tests = [next(iter(slabs)) for slabs in data.eval_sets(8).values()]  # one slab each
    assert all(es.images.ndim == 3 for es in tests)  # (chunks, chunk, H*W*C)
    line = memory.describe_memory(data, 8)
    expected = 2 * 64 * 28 * 28 * 3 + 64 * 4 + 3 * 4  # two pools, the labels, the mean
    assert pools.nbytes == expected
    assert f"({expected} bytes" in line
    per_device = sum(es.nbytes for es in tests) / 8 / 1e6
    assert re.search(rf"{per_device:.1f} MB of test sets per device", line)


def _events(folder):
    """(tag, step, value) of every scalar in the event files under `folder` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, i = path.read_bytes(), 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i : i + 8])
            event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_tensorboard_gets_the_scalars_of_every_record(tmp_path):
    config = CONFIG.replace(tensorboard=True)
    loop.train_and_evaluate(config, _pair(), tmp_path, (0,), log=lambda _: None)
    events = _events(tmp_path / "seed_0" / "tensorboard")
    loss = [(s, v) for t, s, v in events if t == "train/loss"]
    assert [s for s, _ in loss] == [2, 4, 6, 8, 10, 12]  # a record a dispatch
    metrics = (tmp_path / "seed_0" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in metrics]
    np.testing.assert_allclose([v for _, v in loss], [r["train_loss"] for r in records], rtol=1e-6)
    assert {s for t, s, _ in events if t == "target/accuracy"} == {6, 12}  # the evaluations
