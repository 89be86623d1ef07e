"""Folder domains larger than memory: memory-mapped cache entries, the source split into
private files, test sets evaluated a slab at a time; the same numbers as in memory."""

import os
import re

import jax
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import feed, loop, memory, outputs
from dann_jax.config import Config
from dann_jax.data import image_cache
from dann_jax.data.pair import load_pair
from dann_jax.data.preprocess import channel_mean
from dann_jax.evaluate import eval_slabs, make_eval_set
from tests.own_data_test import write_folder

QUIET = lambda _: None


def _map_of(x):
    """The memory map an array's data lie in (through views), or None."""
    while x is not None and not isinstance(x, np.memmap):
        x = getattr(x, "base", None)
    return x


@pytest.fixture
def pair(tmp_path):
    """A labelled source folder (3 classes) and an unlabelled flat target, 16 x 16."""
    write_folder(tmp_path / "src", ["a", "b", "c"], per_class=20, size=(16, 16))
    write_folder(tmp_path / "tgt", ["a", "b", "c"], per_class=20, size=(16, 16), seed=1, flat=True)
    return tmp_path


def _config(root, **kw):
    kw = {"steps": 6, "steps_per_call": 3, "eval_every": 3, "batch_size": 8, **kw}
    return Config(source=str(root / "src"), target=str(root / "tgt"), target_unlabelled=True,
                  tfds_dir=str(root / "cache"), **kw)  # fmt: skip


def test_a_large_entry_is_mapped_and_its_split_copied_out_privately(pair, monkeypatch):
    in_memory = load_pair(_config(pair), 28, QUIET)
    monkeypatch.setattr(image_cache, "MAP_ABOVE", 0)  # every entry counts as large
    lines = []
    mapped = load_pair(_config(pair), 28, lines.append)
    assert sum("memory-mapped" in x for x in lines) == 2  # both domains, said once each
    for name in ("source_train", "source_test", "target_train", "source_labels"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(in_memory, name))
    # The split's rows live in files nothing else can reach: the cache holds its entries.
    split = _map_of(mapped.source_train)
    assert split is not None and split.flags.writeable
    assert split.filename is None or not os.path.exists(split.filename)
    assert sorted(p.name for p in (pair / "cache" / "dann_images").iterdir()) == sorted(
        p.name for p in (pair / "cache" / "dann_images").iterdir() if p.is_dir()
    )
    entry = _map_of(mapped.target_train)  # the entry itself, read-only
    assert entry is not None and not entry.flags.writeable
    assert _map_of(in_memory.target_train) is None
    np.testing.assert_array_equal(mapped.mean, in_memory.mean)


def test_select_rows_of_a_mapped_array_equals_indexing(tmp_path):
    entry = tmp_path / "dann_images" / "e"
    entry.mkdir(parents=True)
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), np.uint8)
    np.save(entry / "images.npy", x)
    mapped = np.load(entry / "images.npy", mmap_mode="r")
    mask = np.random.default_rng(1).random(50) < 0.3
    rows = image_cache.select_rows(mapped, mask)
    np.testing.assert_array_equal(rows, x[mask])
    assert isinstance(rows, np.memmap) and rows.flags.writeable
    assert sorted(os.listdir(tmp_path / "dann_images")) == ["e"]  # nothing left beside it
    np.testing.assert_array_equal(image_cache.select_rows(x, mask), x[mask])  # in memory


def test_the_mean_of_two_arrays_is_the_mean_of_their_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (7, 5, 5, 3), np.uint8)
    b = rng.integers(0, 256, (3, 5, 5, 3), np.uint8)
    np.testing.assert_allclose(channel_mean(a, b), channel_mean(np.concatenate([a, b])), rtol=1e-7)
    assert channel_mean(a, b).dtype == np.float32


@pytest.mark.parametrize("n", [1, 9, 10, 23])
def test_slabs_hold_the_eval_sets_rows_in_order(n):
    x = np.random.default_rng(n).integers(0, 256, (n, 2, 2, 3), np.uint8)
    y = np.arange(n) % 4
    whole = make_eval_set(x, y, chunk=4, multiple_of=2)
    slabs = eval_slabs(x, y, chunk=4, multiple_of=2, max_bytes=2 * min(4, max(2, n)) * 12)
    sets = list(slabs)
    assert len(sets) == len(slabs) == -(-whole.images.shape[0] // 2)
    chunk = whole.images.shape[1]  # 4, or 2 for one image (a multiple of 2 devices)
    assert {es.images.shape for es in sets} == {(min(2, whole.images.shape[0]), chunk, 12)}
    assert slabs.nbytes == sets[0].nbytes
    cat = lambda k: np.concatenate([getattr(es, k).reshape(-1, *getattr(es, k).shape[2:])
                                    for es in sets])  # fmt: skip
    m = cat("mask")
    assert m.sum() == n and m[:n].all()
    np.testing.assert_array_equal(cat("images")[:n], x.reshape(n, -1))
    np.testing.assert_array_equal(cat("labels")[:n], y)


def test_outputs_computed_a_slab_at_a_time_equal_one_pass(monkeypatch):
    config = Config()
    model = dj.make_model(config)
    state = dj.create_train_state(jax.random.key(0), model, dj.make_optimizer(config), (28, 28, 3))
    x = np.random.default_rng(0).integers(0, 256, (37, 28, 28, 3), np.uint8)
    mean = np.full(3, 0.4, np.float32)
    whole = outputs.predict_host(model, state, x, mean, chunk=8)
    monkeypatch.setattr(outputs, "SLAB_BYTES", 2 * 8 * 28 * 28 * 3)  # two chunks a slab
    slabbed = outputs.predict_host(model, state, x, mean, chunk=8)
    for k in whole:
        assert slabbed[k].shape == whole[k].shape == (37, *whole[k].shape[1:])
        np.testing.assert_allclose(slabbed[k], whole[k], rtol=1e-6, atol=1e-6)


def test_a_mapped_folder_pair_trains_through_the_host_path_as_in_memory(pair, monkeypatch):
    """The host-fed path chosen by --input auto on folders: the device budget forced too
    small for the pools, the entries mapped, the test sets in slabs of four rows' worth.
    (The augmented host path's equality is feed_test's.)"""
    resident = loop.train_and_evaluate(
        _config(pair, input="device", steps_per_call=1), load_pair(_config(pair), 28, QUIET),
        pair / "a", (0,), log=QUIET,
    )  # fmt: skip
    monkeypatch.setattr(image_cache, "MAP_ABOVE", 0)
    monkeypatch.setattr(loop, "SLAB_BYTES", 4 * 16 * 16 * 3)
    data = load_pair(_config(pair), 28, QUIET)
    assert _map_of(data.target_train) is not None
    assert len(data.eval_sets(jax.device_count(), loop.SLAB_BYTES)["target"]) > 2
    config = _config(pair, steps_per_call=1)
    pools = data.train_data().nbytes
    fed = feed.chunk_bytes(data.train_data(), config.call_steps, 1, config.batch_size)
    model = dj.make_model(config, num_classes=3)
    state = dj.create_train_state(jax.random.key(0), model, dj.make_optimizer(config),
                                  (16, 16, 3))  # fmt: skip
    params = sum(x.nbytes for x in jax.tree.leaves(state.params))
    devices = jax.device_count()  # the whole test sets, as `check_memory` counts them
    tests = sum(s.nbytes for s in data.eval_sets(devices).values()) / devices
    rest = tests + 3 * params + 2 * 8 / devices * 16 * 16 * 3 * 4
    assert fed < pools
    monkeypatch.setattr(memory, "_device_memory", lambda: int((rest + (fed + pools) / 2) / 0.8))
    lines = []
    fed = loop.train_and_evaluate(config, data, pair / "b", (0,), log=lines.append)
    said = [line for line in lines if line.startswith("input:")]  # one line, naming why
    assert len(said) == 1 and re.match(r"input: host \(--input auto: .* do not fit", said[0])
    a, b = resident[0], fed[0]
    for u, v in zip(jax.tree.leaves(a["state"].params), jax.tree.leaves(b["state"].params),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    for ra, rb in zip(a["curves"], b["curves"], strict=True):
        for key in ("source_accuracy", "source_loss", "target_domain_score"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-7), key
    assert a["curves"][-1]["target_accuracy"] is None  # the target has no labels


def test_the_host_input_benchmark_times_the_host_alone_at_another_size(tmp_path):
    from benchmarks import host_input

    out = host_input.main(["--pool", "64", "--batch-size", "4", "--steps-per-call", "2",
                           "--chunks", "1", "--image-size", "32", "--prepare-only",
                           "--out", str(tmp_path / "h.json")])  # fmt: skip
    assert out["image_size"] == 32 and out["host_prepared_images_per_s"] > 0
    assert out["resident_steps_per_s"] is None and out["host_fed_steps_per_s"] is None


def test_the_host_memory_benchmark_writes_its_pair_once_and_reads_a_status(tmp_path):
    from benchmarks import host_memory

    source, target = host_memory.make_pair(tmp_path, 40, 16)
    assert sorted(p.name for p in source.iterdir()) == [f"class_{i}" for i in range(10)]
    assert sum(1 for _ in source.rglob("*.png")) == len(list(target.glob("*.png"))) == 20
    stamp = (target / "000000.png").stat().st_mtime_ns
    host_memory.make_pair(tmp_path, 40, 16)  # complete: nothing written again
    assert (target / "000000.png").stat().st_mtime_ns == stamp
    status = host_memory._status(os.getpid())
    assert set(status) == {"RssAnon", "RssFile", "VmHWM"} and status["RssAnon"] > 0
