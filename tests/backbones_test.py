"""ResNet backbones: parity with torchvision (random weights and BatchNorm statistics,
from .pth and .safetensors), shapes and parameter counts, per-domain BatchNorm in
training, synchronised BatchNorm under shard_map, state-dict errors.

The live torchvision tests skip where torch/torchvision (or safetensors) are not
installed; the frozen ones (`tests.torchvision_fixture`: torchvision's keys, shapes and
features, saved) and the rest need neither, so parity is checked without torch too.
"""

import functools
import hashlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dann_jax import backbones, pretrained
from dann_jax.models import DANN, with_axis
from tests import torchvision_fixture

WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnums=0)
def _features(module, variables, x):
    """Eval-mode features, one compilation per (module, shapes): the module is static."""
    return module.apply(variables, x, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _train_features(module, variables, x):
    """Training-mode features and the updated running statistics."""
    return module.apply(variables, x, train=True, mutable=["batch_stats"])


def _torch_resnet(name: str, seed: int):
    """torchvision's `name` with random weights *and* random BatchNorm affine parameters and
    running statistics (so a wrong mapping cannot hide behind mean 0 / var 1), without fc."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def torch_reference(tmp_path_factory):
    """name -> (.pth path, .safetensors path, NHWC input, torchvision's pooled features)."""
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    root = tmp_path_factory.mktemp("resnet_weights")
    out = {}
    for seed, (name, size) in enumerate((("resnet18", 96), ("resnet50", 64))):
        model = _torch_resnet(name, seed)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            body = torch.nn.Sequential(*list(model.children())[:-1])  # everything before fc
            want = torch.flatten(body(x), 1).numpy()
        state = model.state_dict()
        torch.save(state, root / f"{name}.pth")
        safetensors_torch.save_file(state, str(root / f"{name}.safetensors"))
        nhwc = x.permute(0, 2, 3, 1).numpy()
        out[name] = (root / f"{name}.pth", root / f"{name}.safetensors", nhwc, want)
    return out


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_matches_torchvision_from_pth_and_safetensors(torch_reference, name):
    pth, st, x, want = torch_reference[name]
    assert want.shape == (2, WIDTH[name])
    loaded = []
    for path in (pth, st):
        module, variables = pretrained.resnet(
            name, path, dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST
        )
        got = np.asarray(_features(module, variables, jnp.asarray(x)))
        scale = np.max(np.abs(want))
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.max(np.abs(got - want)) / scale < 1e-4, path.name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=path.name)
        loaded.append(variables)
    # Both formats give the same variables, bit for bit.
    jax.tree.map(np.testing.assert_array_equal, *loaded)


@pytest.mark.parametrize("name", sorted(torchvision_fixture.CASES))
def test_matches_frozen_torchvision_keys_and_features(name):
    frozen = torchvision_fixture.load()[name]
    shapes = pretrained.expected_state_dict_shapes(name)
    assert list(shapes.items()) == list(frozen["shapes"].items())  # keys in torch's order
    weights = torchvision_fixture.state_dict(frozen["shapes"], frozen["seed"])
    module, _ = pretrained.resnet(name, dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    variables = pretrained.variables_from_state_dict(weights, name)
    got = np.asarray(_features(module, variables, jnp.asarray(frozen["x"])))
    want = frozen["features"]
    assert got.dtype == np.float32 and got.shape == want.shape == (2, WIDTH[name])
    scale = np.max(np.abs(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", sorted(WIDTH))
def test_layout_and_parameter_counts_match_torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = getattr(torchvision.models, name)(weights=None)
    keep = lambda k: not (k.startswith("fc.") or k.endswith("num_batches_tracked"))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if keep(k)}
    got = pretrained.expected_state_dict_shapes(name)
    assert list(got) == list(want)  # same keys in torch's order
    assert got == want
    module = backbones.ResNet(arch=name)
    shapes = jax.eval_shape(
        functools.partial(module.init, train=False), jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
    n_torch = sum(p.numel() for k, p in model.named_parameters() if not k.startswith("fc."))
    assert _count(shapes["params"]) == n_torch
    n_stats = sum(b.numel() for k, b in model.named_buffers() if keep(k))
    assert _count(shapes["batch_stats"]) == n_stats


@pytest.mark.parametrize("name", sorted(WIDTH))
def test_pooled_feature_shapes_bfloat16_and_strict_promotion(name):
    # Under the suite's strict dtype promotion; eval_shape traces without computing.
    x = jax.ShapeDtypeStruct((4, 64, 64, 3), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        module = backbones.ResNet(arch=name, bn_groups=2, dtype=dtype)
        variables = jax.eval_shape(
            functools.partial(module.init, train=False), jax.random.key(0), x
        )
        for train in (False, True):
            out = jax.eval_shape(
                functools.partial(module.apply, train=train, mutable=["batch_stats"]),
                variables,
                x,
            )[0]
            assert out.shape == (4, WIDTH[name]) and out.dtype == dtype
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))


def test_fresh_variables_are_torchvision_initialisation():
    module, variables = pretrained.resnet("resnet50", rng=jax.random.key(3))
    assert module.arch == "resnet50" and module.bn_groups == 1 and module.axis_name is None
    shapes = jax.eval_shape(
        functools.partial(module.init, train=False), jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(
        lambda a: (a.shape, a.dtype), shapes
    )
    # kaiming-normal, fan_out = out channels * kernel area, zero-mean.
    k = np.asarray(variables["params"]["layer3_2"]["conv2"]["kernel"])  # 3x3x256x256
    assert abs(k.std() / np.sqrt(2 / (256 * 9)) - 1) < 0.01 and abs(k.mean()) < 1e-3
    bn = variables["params"]["layer4_0"]["downsample_1"]
    stats = variables["batch_stats"]["layer4_0"]["downsample_1"]
    assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)
    assert np.all(stats["mean"] == 0) and np.all(stats["var"] == 1)
    other = pretrained.resnet("resnet50", rng=jax.random.key(4))[1]
    assert not np.array_equal(k, other["params"]["layer3_2"]["conv2"]["kernel"])


def test_per_domain_batchnorm_in_training():
    module, variables = pretrained.resnet("resnet18", bn_groups=2)
    rng = np.random.default_rng(0)
    source = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    target = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    target2 = 3.0 * target + 1.0

    def run(m, t):
        x = jnp.asarray(np.concatenate([source, t]))
        return _train_features(m, variables, x)

    feats, updates = run(module, target)
    feats2, _ = run(module, target2)
    # Each half has its own statistics: the source half does not see the target half.
    np.testing.assert_allclose(feats2[:2], feats[:2], rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats2[2:], feats[2:], atol=1e-3)
    # Running averages updated once, in every BatchNorm (including the shortcuts').
    old, new = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(old) == jax.tree.structure(new)
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new), strict=True):
        assert np.all(np.isfinite(b)) and not np.allclose(a, b)
    # Joint statistics (bn_groups=1): the source half does depend on the target half.
    joint = module.clone(bn_groups=1)
    j1, j2 = run(joint, target)[0], run(joint, target2)[0]
    assert not np.allclose(j1[:2], j2[:2], atol=1e-3)


def test_with_axis_synchronises_batchnorm_over_devices():
    module, variables = pretrained.resnet("resnet18", bn_groups=2)
    model = with_axis(DANN(module), "batch")
    assert model.extractor.axis_name == "batch" and model.extractor.bn_groups == 2
    rng = np.random.default_rng(1)
    source = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
    target = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
    whole = _train_features(module, variables, jnp.asarray(np.concatenate([source, target])))[0]
    # Two devices, each with its own [source rows, target rows] block, as in a DANN step.
    local = np.concatenate([np.concatenate([source[2 * d : 2 * d + 2], target[2 * d : 2 * d + 2]])
                            for d in range(2)])  # fmt: skip
    mesh = Mesh(np.array(jax.devices()[:2]), ("batch",))
    per_device = lambda x: _train_features(model.extractor, variables, x)[0]
    step = jax.shard_map(per_device, mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))
    got = np.asarray(jax.jit(step)(jnp.asarray(local))).reshape(2, 2, 2, -1)  # dev, dom, row
    want = np.asarray(whole).reshape(2, 2, 2, -1).transpose(1, 0, 2, 3)  # dom, dev, row
    # Not bit-equal: the moments are summed in another order, and a one-pass float32
    # variance over 4 values per channel (layer3/4 are 1x1 at 16x16) amplifies rounding.
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.max(np.abs(want)))


def _zeros_state_dict(name: str) -> dict[str, np.ndarray]:
    shapes = pretrained.expected_state_dict_shapes(name)
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}


def test_mismatching_state_dicts_name_the_keys():
    r18 = _zeros_state_dict("resnet18")
    with pytest.raises(pretrained.StateDictError) as e:
        pretrained.variables_from_state_dict(r18, "resnet50")
    msg = str(e.value)
    assert "resnet50" in msg and "missing: layer1.0.conv3.weight" in msg
    assert "shape: layer1.0.conv1.weight (64, 64, 3, 3) (want (64, 64, 1, 1))" in msg
    broken = dict(r18)
    del broken["layer2.0.downsample.1.running_var"]
    broken["layer5.0.conv1.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(
        pretrained.StateDictError, match=r"1 missing: layer2\.0\.downsample\.1\.running_var"
    ):
        pretrained.variables_from_state_dict(broken, "resnet18")
    with pytest.raises(pretrained.StateDictError, match=r"1 unexpected: layer5\.0\.conv1\.weight"):
        pretrained.variables_from_state_dict(broken, "resnet18")
    # fc and num_batches_tracked are ignored; the rest maps (OIHW -> HWIO).
    r18["fc.weight"] = np.zeros((1000, 512), np.float32)
    r18["bn1.num_batches_tracked"] = np.zeros((), np.int64)
    r18["conv1.weight"] = np.arange(64 * 3 * 7 * 7, dtype=np.float32).reshape(64, 3, 7, 7)
    r18["layer1.1.bn2.running_var"] = np.full(64, 2.0, np.float32)
    v = pretrained.variables_from_state_dict(r18, "resnet18")
    np.testing.assert_array_equal(
        v["params"]["conv1"]["kernel"][2, 5, 1, 7], r18["conv1.weight"][7, 1, 2, 5]
    )
    np.testing.assert_array_equal(v["batch_stats"]["layer1_1"]["bn2"]["var"], 2.0)


def test_mismatching_torch_file_names_the_keys(torch_reference):
    pth = torch_reference["resnet18"][0]
    with pytest.raises(pretrained.StateDictError, match=r"does not match resnet50: \d+ missing"):
        pretrained.resnet("resnet50", pth)


def test_unknown_names_formats_and_missing_torch(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"resnet152.*'resnet101', 'resnet18'"):
        pretrained.resnet("resnet152")
    with pytest.raises(ValueError, match=r"unknown weights format '\.npz'"):
        pretrained.resnet("resnet18", tmp_path / "w.npz")
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
    with pytest.raises(ImportError, match=r"needs torch: pip install torch.*\.safetensors"):
        pretrained.resnet("resnet18", pth)


def test_weights_sha256_streams(tmp_path):
    path = tmp_path / "w.safetensors"
    data = np.random.default_rng(0).bytes(3 * 1000 + 7)
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert pretrained.weights_sha256(path) == want
    assert pretrained.weights_sha256(str(path), chunk_size=1000) == want
