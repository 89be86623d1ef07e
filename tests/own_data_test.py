"""Your own domains: image folders, flat folders, image lists and label-free .npz files; an
unlabelled target end to end (adapt.py, predictions.csv, --predict); any class count and
image size; the Python API; and bad input that ends in one clear paragraph."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dann_jax as dj
from dann_jax.config import Config
from dann_jax.data import DataError, folders
from dann_jax.data.pair import load_pair
from tests.helpers import REPO_ROOT, paragraph

QUIET = lambda _: None


def _image(rng, size, cls, mode="RGB"):
    """A small image whose class is its brightest horizontal band (learnable)."""
    h, w = size
    x = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    band = max(1, h // 10)
    x[(cls % 10) * band : (cls % 10 + 1) * band] += 150
    return Image.fromarray(x).convert(mode)


def write_folder(root: Path, classes, per_class=6, size=(32, 32), seed=0, flat=False, mode="RGB"):
    """An ImageFolder (one subfolder per class) or, ``flat``, one folder; returns labels."""
    rng = np.random.default_rng(seed)
    labels = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            folder = root if flat else root / name
            folder.mkdir(parents=True, exist_ok=True)
            _image(rng, size, c, mode).save(folder / f"{name}_{i:03d}.png")
            labels.append(c)
    return labels


def _config(tmp_path, **kw):
    return Config(steps=4, eval_every=2, batch_size=8, tfds_dir=str(tmp_path / "cache"), **kw)


# ------------------------------------------------------------------ every input form


def test_an_image_folder_keeps_its_class_names_and_a_flat_folder_is_unlabelled(tmp_path):
    write_folder(tmp_path / "src", ["zebra", "ant", "moth"])
    write_folder(tmp_path / "tgt", ["zebra", "ant", "moth"], flat=True)
    src = folders.read_images(tmp_path / "src", log=QUIET)
    assert src.class_names == ("ant", "moth", "zebra")  # sorted names give the indices
    assert src.images.shape == (18, 32, 32, 3) and src.images.dtype == np.uint8
    assert src.paths[0] == os.path.join("ant", "ant_000.png") and src.labels[0] == 0
    tgt = folders.read_images(tmp_path / "tgt", log=QUIET)
    assert tgt.labels is None and tgt.class_names is None and len(tgt.paths) == 18


def test_image_lists_with_and_without_labels(tmp_path):
    write_folder(tmp_path / "imgs", ["a", "b"], per_class=5)
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "imgs").rglob("*.png"))
    lines = [f"{p} {0 if p.parent.name == 'a' else 1}" for p in files]
    (tmp_path / "labelled.txt").write_text("# comment\n" + "\n".join(lines) + "\n\n")
    (tmp_path / "plain.txt").write_text("\n".join(str(p) for p in files))
    labelled = folders.read_images(tmp_path / "labelled.txt", log=QUIET)
    assert labelled.class_names == ("0", "1") and labelled.labels.tolist() == [0] * 5 + [1] * 5
    plain = folders.read_images(tmp_path / "plain.txt", log=QUIET)
    assert plain.labels is None and len(plain.images) == 10


def test_grey_palette_and_rgba_images_become_rgb(tmp_path):
    for i, mode in enumerate(("L", "P", "RGBA", "RGB")):
        write_folder(tmp_path / "mixed", [f"c{i}"], per_class=2, seed=i, mode=mode)
    images = folders.read_images(tmp_path / "mixed", log=QUIET)
    assert images.images.shape == (8, 32, 32, 3)
    for x, rel in zip(images.images, images.paths, strict=True):
        with Image.open(tmp_path / "mixed" / rel) as im:
            np.testing.assert_array_equal(x, np.asarray(im.convert("RGB")))
            if im.mode == "L":
                assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()


def test_decoded_images_are_cached_by_content(tmp_path):
    write_folder(tmp_path / "src", ["a", "b"])
    first = folders.read_images(tmp_path / "src", cache_dir=tmp_path / "c", log=QUIET)
    again = folders.read_images(tmp_path / "src", cache_dir=tmp_path / "c", log=QUIET)
    assert not first.cached and again.cached
    np.testing.assert_array_equal(first.images, again.images)
    # A changed file is a changed folder: read again, and the new pixels are there.
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "src" / "a" / "a_000.png")
    changed = folders.read_images(tmp_path / "src", cache_dir=tmp_path / "c", log=QUIET)
    assert not changed.cached and int(changed.images[0].max()) == 7


def test_images_of_several_sizes_need_image_size_which_resizes_then_crops(tmp_path):
    write_folder(tmp_path / "src", ["a"], size=(30, 30))
    # A wide image: red, green and blue thirds; its centre crop is the green third.
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20, 0], wide[:, 20:40, 1], wide[:, 40:, 2] = 255, 255, 255
    (tmp_path / "src" / "b").mkdir()
    Image.fromarray(wide).save(tmp_path / "src" / "b" / "wide.png")
    with pytest.raises(DataError, match=r"2 different sizes .*--image-size"):
        folders.read_images(tmp_path / "src", log=QUIET)
    resized = folders.read_images(tmp_path / "src", image_size=16, log=QUIET)
    assert resized.images.shape == (7, 16, 16, 3)
    crop = resized.images[-1].astype(int)
    assert crop[:, 2:-2, 1].min() > 200 and crop[:, 2:-2, 0].max() < 60  # green, not stretched


def test_arrays_are_split_90_10_by_class_and_centred_on_both_domains_training_mean():
    # docs/own_data.md: the source is split 90/10, stratified, with a fixed seed; the
    # target is used whole; grey becomes RGB; the mean subtracted is that of the source
    # *training* images and the target images (docs/data.md), per channel.
    from dann_jax.data.arrays import pair_from_arrays

    labels = np.repeat(np.arange(5), 20)  # 5 classes of 20
    source = np.broadcast_to(np.arange(100, dtype=np.uint8)[:, None, None], (100, 8, 8))
    target = np.full((30, 8, 8), 250, np.uint8)  # 8 x 8: the smallest images a pair takes
    pair = pair_from_arrays(source, labels, target)
    assert pair.source_train.shape == (90, 8, 8, 3) and pair.source_test.shape == (10, 8, 8, 3)
    assert (pair.source_train == pair.source_train[..., :1]).all()  # grey repeated
    held = pair.source_test[:, 0, 0, 0].astype(int)  # each image's pixel is its index
    kept = pair.source_train[:, 0, 0, 0].astype(int)
    assert sorted([*held, *kept]) == list(range(100))
    np.testing.assert_array_equal(labels[held], pair.source_test_labels)
    np.testing.assert_array_equal(labels[kept], pair.source_labels)
    assert np.bincount(pair.source_test_labels).tolist() == [2] * 5  # 10% of each class
    assert np.array_equal(pair.target_train, pair.target_test) and len(pair.target_test) == 30
    mean = (kept.sum() + 30 * 250) / (90 + 30) / 255  # every pixel of an image is the same
    np.testing.assert_allclose(pair.mean, [mean] * 3, rtol=1e-6)
    # A fixed seed: the same split again.
    again = pair_from_arrays(source, labels, target)
    np.testing.assert_array_equal(again.source_test, pair.source_test)


def test_npz_target_without_labels_and_twenty_classes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", x_train=x, y_train=np.arange(200) % 20, x_test=x[:40],
             y_test=np.arange(40) % 20)  # fmt: skip
    np.savez(tmp_path / "t.npz", x_train=x[::-1], x_test=x[:30])
    data = load_pair(_config(tmp_path, source=str(tmp_path / "s.npz"),
                             target=str(tmp_path / "t.npz")), 28, QUIET)  # fmt: skip
    assert data.num_classes == 20 and not data.target_labelled
    assert data.source_train.shape[1:] == (16, 16, 3)  # native: nothing resized


def test_the_mean_is_both_domains_training_images_or_imagenets_mean_and_std(tmp_path):
    # docs/data.md: per-channel mean subtraction with the mean of the source and target
    # *training* images (not the test images); --normalize imagenet: (x - mean) / std
    # with ImageNet's statistics (torchvision's).
    import jax.numpy as jnp

    grey = lambda n, v: np.full((n, 16, 16), v, np.uint8)
    np.savez(tmp_path / "s.npz", x_train=grey(10, 40), y_train=np.arange(10) % 2,
             x_test=grey(4, 0), y_test=np.arange(4) % 2)  # fmt: skip
    np.savez(tmp_path / "t.npz", x_train=grey(30, 200), x_test=grey(5, 255))
    paths = {"source": str(tmp_path / "s.npz"), "target": str(tmp_path / "t.npz")}
    data = load_pair(_config(tmp_path, **paths), 28, QUIET)
    np.testing.assert_allclose(data.mean, [(10 * 40 + 30 * 200) / 40 / 255] * 3, rtol=1e-6)
    data = load_pair(_config(tmp_path, normalize="imagenet", **paths), 28, QUIET)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(data.mean, [mean, std], rtol=1e-6)
    pixel = np.array([124, 116, 104], np.uint8)
    got = dj.normalize(jnp.asarray(pixel.reshape(1, 1, 1, 3)), jnp.asarray(data.mean))
    np.testing.assert_allclose(got.reshape(3), (pixel / 255 - mean) / std, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda r: (r / "src").mkdir(), "is empty"),
        (
            lambda r: (
                (r / "src" / "a").mkdir(parents=True),
                (r / "src" / "b").mkdir(),
                write_folder(r / "src", ["a"]),
            ),
            "class folder",
        ),
        (lambda r: write_folder(r / "src", ["only"], per_class=12), "one class only"),
        (
            lambda r: (
                write_folder(r / "src", ["a", "b"]),
                _image(np.random.default_rng(0), (32, 32), 0).save(r / "src" / "x.png"),
            ),
            "both class subfolders",
        ),
        (lambda r: write_folder(r / "src", ["a", "b"], flat=True), "has no labels"),
        (
            lambda r: ((r / "src").mkdir(), (r / "src" / "notes.txt").write_text("x")),
            "holds no image files",
        ),
    ],
)
def test_bad_source_folders_name_the_fix(tmp_path, make, needle):
    make(tmp_path)
    write_folder(tmp_path / "tgt", ["a", "b"], flat=True)
    config = _config(tmp_path, source=str(tmp_path / "src"), target=str(tmp_path / "tgt"))
    with pytest.raises(DataError, match=needle):
        load_pair(config, 28, QUIET)


def test_target_classes_must_be_source_classes(tmp_path):
    write_folder(tmp_path / "src", ["cat", "dog"])
    write_folder(tmp_path / "tgt", ["cat", "cow"])
    config = _config(tmp_path, source=str(tmp_path / "src"), target=str(tmp_path / "tgt"))
    with pytest.raises(DataError, match=r"classes the source .* has not: cow"):
        load_pair(config, 28, QUIET)
    # A subset is fine: mapped by name onto the source's indices.
    write_folder(tmp_path / "sub", ["dog"], per_class=12)
    data = load_pair(config.replace(target=str(tmp_path / "sub")), 28, QUIET)
    assert set(data.target_test_labels.tolist()) == {1}


def test_corrupt_files_are_skipped_with_a_count_and_other_files_ignored(tmp_path):
    write_folder(tmp_path / "src", ["a", "b"])
    (tmp_path / "src" / "a" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "src" / "a" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 20)
    (tmp_path / "src" / "b" / "README.txt").write_text("notes")
    (tmp_path / "src" / "b" / ".DS_Store").write_bytes(b"\0")
    lines = []
    images = folders.read_images(tmp_path / "src", log=lines.append)
    assert len(images.images) == 12 and len(images.skipped) == 2 and images.ignored == 2
    assert any("2 files" in x and "could not be decoded" in x and "broken.png" in x for x in lines)
    assert any("2 files" in x and "ignored" in x for x in lines)


def test_a_folder_that_changes_while_it_is_read_is_refused(tmp_path, monkeypatch):
    write_folder(tmp_path / "src", ["a", "b"])
    decode = folders._decode

    def decode_and_change(data, image_size):  # another program writes to the folder
        (tmp_path / "src" / "b" / "b_005.png").write_bytes(b"changed")
        return decode(data, image_size)

    monkeypatch.setattr(folders, "_decode", decode_and_change)
    with pytest.raises(DataError, match="changed while they were being read"):
        folders.read_images(tmp_path / "src", cache_dir=tmp_path / "c", log=QUIET)
    assert not (tmp_path / "c" / "dann_images").exists() or not any(
        (tmp_path / "c" / "dann_images").iterdir()
    )  # nothing half-written left looking complete


# ------------------------------------------------------------------ end to end


def _adapt(*args, cwd):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(cwd / "cache"))
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "adapt.py"), *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )  # fmt: skip


def test_an_unlabelled_target_end_to_end_and_predict(tmp_path):
    write_folder(tmp_path / "src", ["bee", "fly", "wasp"], per_class=6, size=(64, 64))
    write_folder(tmp_path / "tgt", ["bee", "fly", "wasp"], per_class=4, size=(64, 64), flat=True,
                 seed=1)  # fmt: skip
    flags = ("--steps", "2", "--eval-every", "2", "--batch-size", "4", "--workdir", tmp_path / "w")
    proc = _adapt("--source", tmp_path / "src", "--target", tmp_path / "tgt", *flags, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "w" / "results.json").read_text())
    assert results["target_accuracy"] is None and results["seeds"][0]["target_accuracy"] is None
    assert set(results["validators"]) >= {"information_maximization", "bnm", "source_accuracy"}
    assert results["dataset"]["classes"] == ["bee", "fly", "wasp"]
    assert results["dataset"]["input_shape"] == [64, 64, 3]  # native size kept
    rows = list(csv.DictReader((tmp_path / "w" / "predictions.csv").open()))
    assert len(rows) == 12 and set(rows[0]) == {"path", "prediction", "probability"}
    assert rows[0]["path"] == "bee_000.png" and rows[0]["prediction"] in {"bee", "fly", "wasp"}
    # The file agrees with the finished run loaded in Python, image by image.
    target = dj.read_images(tmp_path / "tgt", cache_dir=tmp_path / "cache", log=QUIET)
    classes, probs = dj.load_run(tmp_path / "w").predict(target.images)
    assert [r["path"] for r in rows] == list(target.paths)
    assert [r["prediction"] for r in rows] == [results["dataset"]["classes"][k] for k in classes]
    np.testing.assert_allclose([float(r["probability"]) for r in rows], probs, rtol=1e-4)
    # --predict with the finished run: new images, subfolders included.
    write_folder(tmp_path / "new", ["x", "y"], per_class=2, size=(64, 64), seed=2)
    proc = _adapt("--workdir", tmp_path / "w", "--predict", tmp_path / "new", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "w" / "predictions_new.csv").open()))
    assert [r["path"] for r in rows][:2] == [
        os.path.join("x", "x_000.png"),
        os.path.join("x", "x_001.png"),
    ]


def test_adapt_refuses_bad_input_with_one_paragraph(tmp_path):
    (tmp_path / "empty").mkdir()
    write_folder(tmp_path / "tgt", ["a"], flat=True)
    proc = _adapt("--source", tmp_path / "empty", "--target", tmp_path / "tgt",
                  "--workdir", tmp_path / "w", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is empty" in paragraph(proc.stderr)
    proc = _adapt("--workdir", tmp_path / "nothing", "--predict", tmp_path / "tgt", cwd=tmp_path)
    assert proc.returncode == 2 and "no finished run" in paragraph(proc.stderr)


def _final_params(tmp_path, name, target_labels):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
    xt = rng.integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)
    model = dj.fit(xs, np.arange(60) % 3, xt, target_labels=target_labels, steps=3,
                   eval_every=3, batch_size=8, workdir=tmp_path / name, log=QUIET)  # fmt: skip
    return model


def test_target_labels_never_reach_training(tmp_path):
    labels = np.arange(40) % 3
    runs = [
        _final_params(tmp_path, "absent", None),
        _final_params(tmp_path, "present", labels),
        _final_params(tmp_path, "shuffled", np.random.default_rng(1).permutation(labels)),
    ]
    import jax

    leaves = [jax.tree.leaves((r.state.params, r.state.batch_stats)) for r in runs]
    for other in leaves[1:]:
        for a, b in zip(leaves[0], other, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_target_is_scored_and_predicted_with_the_targets_running_averages(tmp_path):
    # The recommended recipe keeps each domain's BatchNorm running averages; the run's
    # target test numbers (metrics.jsonl) and model.predict normalise target images with
    # the target's (docs/design.md, --bn-eval domain), checked against the model written
    # out by hand in float64. The shapes of `_final_params`: its compiled programs serve.
    import jax

    from tests.helpers import float64, reference_cross_entropy, reference_logits

    rng = np.random.default_rng(2)
    xs = rng.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8)
    xt = (rng.integers(0, 100, (40, 16, 16, 3)) + np.array([150, 60, 0])).astype(np.uint8)
    yt = np.arange(40) % 3
    model = dj.fit(xs, np.arange(60) % 3, xt, target_labels=yt, steps=3, eval_every=3,
                   batch_size=8, workdir=tmp_path / "w", log=QUIET, choose=False)  # fmt: skip
    assert model.config.bn_stats == "per_domain" and model.config.bn_eval == "domain"
    lines = (tmp_path / "w" / "seed_0" / "metrics.jsonl").read_text().splitlines()
    record = [r for r in map(json.loads, lines) if "target_loss" in r][-1]
    assert record["step"] == 3
    layers = model.state.batch_stats["extractor"]
    with jax.enable_x64(True):
        params = float64(model.state.params)
        x = jax.numpy.asarray(xt / 255.0 - np.asarray(model.mean, np.float64))
        logits = {}
        for row in (0, 1):
            stats = [float64((layers[f"BatchNorm_{i}"]["mean"][row],
                              layers[f"BatchNorm_{i}"]["var"][row])) for i in (0, 1)]  # fmt: skip
            logits[row] = reference_logits(params, x, stats)
        loss = float(reference_cross_entropy(logits[1][0], yt).mean())
        score = float(jax.nn.sigmoid(logits[1][1]).mean())
        z = np.asarray(logits[1][0])
    # The test can fail: the source's averages give other target logits.
    assert np.abs(np.asarray(logits[0][0]) - z).max() > 1e-2
    assert record["target_loss"] == pytest.approx(loss, rel=1e-6)
    assert record["target_domain_score"] == pytest.approx(score, rel=1e-6)
    np.testing.assert_allclose(model.logits(xt), z, rtol=1e-4, atol=1e-5)  # domain="target"
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(model.predict(xt)[1], (p / p.sum(1, keepdims=True)).max(1),
                               rtol=1e-4)  # fmt: skip


def test_the_api_trains_on_arrays_loads_a_workdir_and_takes_any_extractor(tmp_path):
    import flax.linen as nn

    rng = np.random.default_rng(0)
    xs = rng.integers(0, 255, (60, 16, 16), dtype=np.uint8)  # grey is fine
    xt = rng.integers(0, 255, (40, 16, 16), dtype=np.uint8)
    model = dj.fit(xs, np.arange(60) % 4, xt, class_names=["a", "b", "c", "d"], steps=2,
                   eval_every=2, batch_size=8, workdir=tmp_path / "w", log=QUIET)  # fmt: skip
    classes, probs = model.predict(xt)
    z = model.logits(xt).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert classes.shape == probs.shape == (40,)
    np.testing.assert_array_equal(classes, z.argmax(1))
    np.testing.assert_allclose(probs, p.max(1), rtol=1e-5)
    loaded = dj.load_run(tmp_path / "w")
    assert loaded.class_names == ("a", "b", "c", "d")
    np.testing.assert_allclose(loaded.logits(xt), model.logits(xt), rtol=1e-6, atol=1e-6)

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))

    custom = dj.fit(xs, np.arange(60) % 4, xt, extractor=Tiny(), steps=2, eval_every=2,
                    batch_size=8, log=QUIET)  # fmt: skip
    assert "Dense_0" in custom.state.params["extractor"]
    assert custom.predict(xt)[0].shape == (40,)


def test_folders_decode_straight_into_the_cache_file_and_skipped_rows_are_cut(
    tmp_path, monkeypatch
):
    write_folder(tmp_path / "src", ["a", "b"], per_class=3, size=(16, 16))
    (tmp_path / "src" / "a" / "broken.png").write_bytes(b"not a png at all")
    expected = folders.read_images(tmp_path / "src", cache_dir=tmp_path / "ref", log=print)

    def no_stack(*args, **kwargs):  # a list of images stacked would hold the domain twice
        raise AssertionError("np.stack")

    monkeypatch.setattr(np, "stack", no_stack)
    images = folders.read_images(tmp_path / "src", cache_dir=tmp_path / "c", log=print)
    np.testing.assert_array_equal(images.images, expected.images)
    assert images.images.shape == (6, 16, 16, 3) and images.skipped == ("a/broken.png",)
    (entry,) = (tmp_path / "c" / "dann_images").iterdir()  # no temporary folder left
    assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    assert np.load(entry / "images.npy", mmap_mode="r").shape == (6, 16, 16, 3)  # 7 rows cut
