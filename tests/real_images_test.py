"""Real images: the backbone learns at 0.1x the heads' rate, pretrained weights from a file
or torchvision's (over a local server only), on-device augmentation that equals one device
on the whole batch, the office recipe's flags, the memory check, and a tiny ResNet-18 run
through adapt.py's settings, resumed bit-identically."""

import hashlib
import http.server
import sys
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dann_jax as dj
from dann_jax import augment, experiment, memory, pretrained
from dann_jax.cli import config_from_args
from dann_jax.data import DataError
from tests.helpers import REPO_ROOT, setup_run, synthetic_data
from tests.own_data_test import write_folder

QUIET = lambda _: None


def _one_step(config, batch):
    """The change one step makes to every parameter (the same initial parameters)."""
    model, tx = dj.make_model(config), dj.make_optimizer(config)
    state = dj.create_train_state(jax.random.key(0), model, tx, (28, 28, 3))
    before = jax.tree.map(np.asarray, state.params)
    step = dj.compile_train_step(model, tx, lambda2_schedule="constant")
    new, _ = step(state, batch, dj.hyperparams(config))
    return jax.tree.map(lambda a, b: np.asarray(a) - b, new.params, before)


@pytest.mark.parametrize("extra", [{}, {"nesterov": True, "weight_decay": 1e-3}])
def test_the_backbone_moves_a_tenth_of_what_the_same_gradient_moves_the_heads(extra):
    config = dj.Config(steps=100, lambda2_schedule="constant", lambda2=0.5, **extra)
    batch = dj.sample_batch(jax.random.key(0), synthetic_data(64), 16)
    full = _one_step(config, batch)
    slow = _one_step(config.replace(backbone_lr_mult=0.1), batch)
    tenth = jax.tree.map(lambda d: 0.1 * d, full["extractor"])
    # Deltas of float32 parameters: exact up to the parameters' own rounding (|p| < 0.5:
    # an ulp is under 3e-8), against updates of about 1e-5.
    chex.assert_trees_all_close(slow["extractor"], tenth, atol=3e-8, rtol=1e-5)
    for head in ("classifier", "discriminator"):
        chex.assert_trees_all_close(slow[head], full[head], atol=0, rtol=0)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(full["extractor"])) > 1e-6


def test_the_office_recipe_sets_every_part_and_a_flag_still_wins():
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    import adapt

    argv = ["--recipe", "office", "--source", "s", "--target", "t", "--steps", "7"]
    config = config_from_args(adapt.parser(argv).parse_args(argv))
    assert (config.arch, config.pretrained, config.bottleneck) == ("resnet50", "imagenet", 256)
    assert (config.backbone_lr_mult, config.nesterov, config.weight_decay) == (0.1, True, 1e-3)
    assert (config.augment, config.normalize, config.image_size) == (True, "imagenet", 224)
    assert (config.batch_size, config.bn_stats, config.steps) == (32, "per_domain", 7)
    assert config.dropout == 0.0  # adapt.py's own default recipe (improved) is replaced
    as_paper = [*argv[2:], "--recipe", "paper"]
    paper = config_from_args(adapt.parser(as_paper).parse_args(as_paper))
    assert (paper.batchnorm, paper.bn_stats, paper.dropout) == (False, "joint", 0.0)
    plain = config_from_args(adapt.parser(argv[2:]).parse_args(argv[2:]))
    assert (plain.batchnorm, plain.bn_stats, plain.dropout) == (True, "per_domain", 0.5)
    model = dj.make_model(config, num_classes=31)
    assert model.domain_head == (1024, 1024) and model.label_head == () and model.bottleneck == 256


def test_augmentation_is_per_example_and_equal_over_a_mesh():
    data = synthetic_data(64)
    a = dj.sample_batch(jax.random.key(3), data, 16, augment=True)
    b = dj.sample_batch(jax.random.key(3), data, 16, augment=True)
    plain = dj.sample_batch(jax.random.key(3), data, 16)
    np.testing.assert_array_equal(a["source_images"], b["source_images"])  # deterministic
    assert a["source_images"].shape == plain["source_images"].shape
    assert not np.allclose(a["source_images"], plain["source_images"])
    np.testing.assert_array_equal(a["source_labels"], plain["source_labels"])  # same draw
    mesh = dj.make_mesh()
    from jax.sharding import PartitionSpec as P

    per_device = jax.shard_map(
        lambda d: dj.sample_batch(jax.random.key(3), d, 16, "batch", augment=True),
        mesh=mesh, in_specs=P(), out_specs=P("batch"),
    )  # fmt: skip
    split = jax.jit(per_device)(dj.put_replicated(data, mesh))
    for k in a:
        np.testing.assert_allclose(np.asarray(split[k]), np.asarray(a[k]), atol=1e-5)


def test_a_crop_is_a_resized_part_of_the_image_and_a_flip_mirrors_it():
    image = jnp.tile(jnp.linspace(0, 1, 32)[None, :, None], (32, 1, 3))  # brighter rightwards
    crop_and_flip = jax.jit(augment.crop_and_flip)  # as in training (op by op: seconds)
    out = crop_and_flip(jax.random.key(0), jnp.stack([image] * 64), jnp.arange(64))
    assert out.shape == (64, 32, 32, 3)
    out = np.asarray(out)
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    # The ramp does not vary along y: neither does a crop of it, resized.
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1], out.shape), atol=1e-5)
    steps = np.diff(out[:, 0, :, 0], axis=1)
    rising, falling = (steps >= -1e-5).all(1), (steps <= 1e-5).all(1)
    assert (rising | falling).all()  # a part of the ramp, kept in order or mirrored
    assert rising.any() and falling.any()  # some flipped, some not
    spans = out[:, 0, :, 0].max(1) - out[:, 0, :, 0].min(1)
    assert (spans >= 0.15).all() and (spans < 1.0).any()  # at least ~8% of the area; zoomed
    flat = crop_and_flip(jax.random.key(1), jnp.full((8, 32, 32, 3), 0.25), jnp.arange(8))
    np.testing.assert_allclose(np.asarray(flat), 0.25, atol=1e-6)


def _fake_state_dict(name: str) -> dict[str, np.ndarray]:
    """Random weights with torchvision's keys and shapes (positive running variances)."""
    rng = np.random.default_rng(0)
    out = {}
    for key, shape in pretrained.expected_state_dict_shapes(name).items():
        value = rng.normal(0, 0.05, shape).astype(np.float32)
        out[key] = np.abs(value) + 0.5 if key.endswith("running_var") else value
    return out


def test_a_tiny_resnet18_run_with_weights_from_a_file_resumes_bit_identically(tmp_path):
    from safetensors.numpy import save_file

    weights = tmp_path / "r18.safetensors"
    save_file(_fake_state_dict("resnet18"), str(weights))
    write_folder(tmp_path / "src", ["a", "b"], per_class=8, size=(16, 16))
    write_folder(tmp_path / "tgt", ["a", "b"], per_class=6, size=(16, 16), seed=1)
    sys.path.insert(0, str(REPO_ROOT / "experiments"))
    import adapt

    argv = ["--recipe", "office", "--arch", "resnet18", "--pretrained", str(weights),
            "--image-size", "16", "--batch-size", "8", "--steps", "4", "--eval-every", "2",
            "--bn-eval", "mean", "--no-choose",  # one model: the choice's resume is choose_test's
            "--bottleneck", "16", "--source", str(tmp_path / "src"),
            "--target", str(tmp_path / "tgt"), "--tfds-dir", str(tmp_path / "cache")]  # fmt: skip
    config = config_from_args(adapt.parser(argv).parse_args(argv))
    full = experiment.run(config.replace(workdir=str(tmp_path / "full")), log=QUIET)
    assert full["pretrained"]["file"] == str(weights)
    assert full["pretrained"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    def stop_at_step_4(line):
        if " step 4/" in line:
            raise KeyboardInterrupt

    part = config.replace(workdir=str(tmp_path / "part"))
    with pytest.raises(KeyboardInterrupt):
        experiment.run(part, log=stop_at_step_4)
    lines = []
    resumed = experiment.run(part, log=lines.append)
    assert any("resuming from step 2" in x for x in lines)
    assert resumed["seeds"][0]["curves"] == full["seeds"][0]["curves"]
    a, b = dj.load_run(tmp_path / "full"), dj.load_run(tmp_path / "part")
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The weights really were loaded: the trained extractor started from them.
    conv1 = np.asarray(a.state.params["extractor"]["conv1"]["kernel"])
    start = _fake_state_dict("resnet18")["conv1.weight"].transpose(2, 3, 1, 0)
    assert np.abs(conv1 - start).max() < 0.1 * np.abs(start).max()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.hits = {}, []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("DANN_DATA_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    yield httpd
    httpd.shutdown()


def test_imagenet_weights_are_downloaded_once_and_checked_like_torchvision(tmp_path, server,
                                                                         monkeypatch):  # fmt: skip
    body = b"pretend weights" * 1000
    name = f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    monkeypatch.setitem(pretrained.IMAGENET, "resnet18", name)
    server.files[f"/weights/{name}"] = body
    path = pretrained.weights_file("imagenet", "resnet18", str(tmp_path))
    assert path == tmp_path / "dann_weights" / name and path.read_bytes() == body
    assert pretrained.weights_file("imagenet", "resnet18", str(tmp_path)) == path
    assert server.hits == [f"/weights/{name}"]  # the second call used the cached file
    # Other bytes than the name's hash prefix promises: refused, the fix named.
    bad = f"resnet34-{'0' * 8}.pth"
    monkeypatch.setitem(pretrained.IMAGENET, "resnet34", bad)
    server.files[f"/weights/{bad}"] = body
    with pytest.raises(DataError, match=r"checksum mismatch.*--pretrained FILE"):
        pretrained.weights_file("imagenet", "resnet34", str(tmp_path))


def test_offline_imagenet_says_to_pass_the_file(tmp_path):
    with pytest.raises(DataError, match="pass it as --pretrained FILE"):
        pretrained.weights_file("imagenet", "resnet50", str(tmp_path))
    with pytest.raises(DataError, match="no such file"):
        pretrained.weights_file(str(tmp_path / "absent.pth"), "resnet50", None)


def test_data_that_cannot_fit_in_device_memory_stop_at_once_with_the_numbers(monkeypatch):
    from tests.loop_test import _pair

    data = _pair(64)
    _, _, _, state = setup_run()
    monkeypatch.setattr(memory, "_device_memory", lambda: 1_000_000)
    with pytest.raises(DataError, match=r"do not fit in device memory.*64 \+ 64 images of 28x28x3"
                       r".*GB of its 0.00 GB\. Lower --image-size"):  # fmt: skip
        memory.check_memory(data, state, 8)
    monkeypatch.setattr(memory, "_device_memory", lambda: 16e9)
    memory.check_memory(data, state, 8)  # fits: no error
