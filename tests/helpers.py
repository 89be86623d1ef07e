"""Helpers shared by the tests: tiny digit data sets in the upstream file formats, and
small learnable in-memory data with a model to train on it.

Each writer puts a small random data set where a user would put the real files
(``DIR/mnist/``, ``DIR/mnist_m/``, ``DIR/usps/``, ``DIR/svhn/``) and returns the arrays it
wrote, so that a test can check a loader against them pixel for pixel.
``write_bsds_archive`` writes a tiny ``BSR_bsds500.tgz`` (a few JPEGs in its layout).
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import h5py
import jax
import numpy as np
import scipy.io
from PIL import Image

import dann_jax as dj
from dann_jax.data import Domain

N_TRAIN, N_TEST = 12, 7  # tiny fixtures: a TFDS build of each takes well under a second


def fixture_rng(seed: int = 0) -> np.random.Generator:
    """Fixed-seed generator for fixture content."""
    return np.random.default_rng(seed)


def _fake_split(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and 0..9 labels."""
    rng = fixture_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n)


def _idx_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format (magic 0x0800 | ndim, big-endian dims)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_mnist(folder: Path, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the four MNIST IDX files (gzipped or not); return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": _fake_split(N_TRAIN, (28, 28), 1), "test": _fake_split(N_TEST, (28, 28), 2)}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = splits[split]
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            payload = _idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return splits


def _png(arr: np.ndarray) -> bytes:
    """PNG bytes of one RGB image."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _mnist_m_members(n_listed: dict[str, int] | None = None):
    """(relative path, bytes) of an MNIST-M release, and the arrays; labels may list a prefix."""
    splits = {
        "train": _fake_split(N_TRAIN, (32, 32, 3), 3),
        "test": _fake_split(N_TEST, (32, 32, 3), 4),
    }
    members = []
    for split, (x, y) in splits.items():
        members += [(f"mnist_m/mnist_m_{split}/{i:08d}.png", _png(img)) for i, img in enumerate(x)]
        listed = (n_listed or {}).get(split, len(x))
        text = "".join(f"{i:08d}.png {y[i]}\n" for i in range(listed))
        members.append((f"mnist_m/mnist_m_{split}_labels.txt", text.encode()))
    return members, splits


def write_mnist_m_archive(folder: Path, n_listed: dict[str, int] | None = None):
    """Write mnist_m.tar.gz in the authors' layout; return the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    members, splits = _mnist_m_members(n_listed)
    with tarfile.open(folder / "mnist_m.tar.gz", "w:gz") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return splits


def write_mnist_m_folder(folder: Path, nested: bool = True):
    """Write the extracted release under folder/mnist_m/ (nested) or folder/ (flat)."""
    members, splits = _mnist_m_members()
    for name, payload in members:
        path = folder / (name if nested else name.split("/", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return splits


def _usps_splits():
    """The USPS fixture arrays (the same for both file formats)."""
    return {"train": _fake_split(N_TRAIN, (16, 16), 5), "test": _fake_split(N_TEST, (16, 16), 6)}


def write_usps(folder: Path):
    """Write usps.h5 with float pixels k/255 (so round(x*255) recovers k exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = _usps_splits()
    with h5py.File(folder / "usps.h5", "w") as f:
        for split, (x, y) in splits.items():
            g = f.create_group(split)
            g["data"] = (x.reshape(len(x), 256) / np.float32(255)).astype(np.float32)
            g["target"] = y.astype(np.int64)
    return splits


def usps_libsvm_text(x: np.ndarray, y: np.ndarray) -> str:
    """LIBSVM lines of uint8 (N, 16, 16) images: labels y + 1, values k/255*2-1 in [-1, 1]."""
    lines = []
    for img, label in zip(x.reshape(len(x), 256), y, strict=True):
        values = img.astype(np.float64) / 255.0 * 2.0 - 1.0
        lines.append(f"{label + 1} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(values)))
    return "\n".join(lines) + "\n"


def write_usps_libsvm(folder: Path, compress: bool = True):
    """Write usps.bz2 and usps.t.bz2 holding the same images and labels as `write_usps`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = _usps_splits()
    for split, name in (("train", "usps.bz2"), ("test", "usps.t.bz2")):
        text = usps_libsvm_text(*splits[split]).encode()
        (folder / name).write_bytes(bz2.compress(text) if compress else text)
    return splits


def write_bsds_archive(path: Path, n_train: int = 3) -> list[np.ndarray]:
    """Write a tiny BSR_bsds500.tgz: `n_train` 40x50 train JPEGs, one val JPEG, a Thumbs.db.

    Returns the train photos as decoded back from the JPEGs, in name order.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    base = "BSR/BSDS500/data/images"
    rng = fixture_rng(9)
    members, photos = [], []
    for i in range(n_train):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(buf, "JPEG")
        members.append((f"{base}/train/{1000 + i}.jpg", buf.getvalue()))
        photos.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(buf, "JPEG")
    members += [(f"{base}/val/2000.jpg", buf.getvalue()), (f"{base}/train/Thumbs.db", b"x")]
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return photos


def write_svhn(folder: Path):
    """Write train/test_32x32.mat (X (32, 32, 3, N), y (N, 1) in 1..10 with 10 for digit 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        "train": _fake_split(N_TRAIN, (32, 32, 3), 7),
        "test": _fake_split(N_TEST, (32, 32, 3), 8),
    }
    for split, (x, y) in splits.items():
        y = y.copy()
        y[:2] = 0  # make sure digit 0 (stored as 10) is present
        splits[split] = (x, y)
        mat_y = np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)
        scipy.io.savemat(
            folder / f"{split}_32x32.mat", {"X": np.transpose(x, (1, 2, 3, 0)), "y": mat_y}
        )
    return splits


WRITERS = {
    "mnist": write_mnist,
    "mnist_m": write_mnist_m_archive,
    "usps": write_usps,
    "svhn": write_svhn,
}


# -------------------------------------------------------------- in-memory training data


def synthetic_images(n=256, size=28, seed=0):
    """Two domains with learnable labels: class = brightest of 10 horizontal bands.

    Returns (source images, source labels, target images, target labels), uint8 NHWC.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=(2, n))
    images = rng.integers(0, 60, size=(2, n, size, size, 3)).astype(np.uint8)
    band = size // 10
    for d in range(2):
        for i, y in enumerate(labels[d]):
            images[d, i, y * band : (y + 1) * band] += 150
    images[1] = 255 - images[1]  # the target domain: inverted contrast
    return images[0], labels[0].astype(np.int32), images[1], labels[1].astype(np.int32)


def synthetic_data(n=256, size=28, seed=0) -> dj.TrainData:
    """`synthetic_images` as training pools (flat uint8 rows, mean 0.5) on the device."""
    xs, ys, xt, _ = synthetic_images(n, size, seed)
    host = dj.make_train_data(xs, ys, xt, mean=np.full((3,), 0.5, np.float32))
    return jax.device_put(host)


def unflat(pool: jax.Array, data: dj.TrainData) -> np.ndarray:
    """A flat pool of `data` back as host images (N, H, W, C)."""
    return np.asarray(pool).reshape(len(pool), *data.image_shape)


RECIPES = {"paper": {}, "improved": {"batchnorm": True, "bn_stats": "per_domain", "dropout": 0.5}}


# XLA options for a program compiled only to read its optimized HLO, never run: the
# backend's (LLVM's) optimisation level acts after the HLO passes, so the text, its
# collectives and the cost analysis are those of the default level (every program of
# hlo_test was compared; `test_mesh_evaluation_has_no_gather_and_one_reduction` keeps
# checking it), and the compile takes about half the time.
HLO_ONLY = {"xla_backend_optimization_level": 0}


def setup_run(backend=None, **overrides):
    """(config, model, optimizer, initial state) of a 100-step run with `overrides`.

    ``backend="gpu"`` builds the accelerator model (plain XLA convolutions and pools) on
    this CPU machine; the default is the model this backend would run.
    """
    config = dj.Config(**{"steps": 100, **overrides}).validate()
    model = dj.make_model(config, backend=backend)
    tx = dj.make_optimizer(config)
    state = dj.create_train_state(jax.random.key(config.seed), model, tx, (28, 28, 3))
    return config, model, tx, state


# -------------------------------------------------------------- benchmark scripts

REPO_ROOT = Path(__file__).resolve().parent.parent

ROW_FIELDS = {
    "arch", "batch_size", "impl", "label", "status", "precision", "step_ms_median",
    "step_ms_min", "images_per_s", "speedup_vs_torch_eager", "flops_per_step", "flops_source",
    "achieved_tflops", "peak_tflops", "peak_name", "fraction_of_peak", "compile_s",
    "kernels_per_step", "repeats", "steps_per_repeat", "note",
}  # fmt: skip


def run_script(args: list[str], tmp_path: Path, timeout: int = 300):
    """Run a benchmark script from the repo root with torch hidden; return the process."""
    stub = tmp_path / "no_torch" / "torch"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text('raise ImportError("torch hidden by benchmarks_test")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(stub.parent), str(REPO_ROOT)]))
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_digits(root: Path, n_train: int = 192, n_test: int = 64) -> None:
    """MNIST IDX .gz files and an MNIST-M tar.gz in the upstream layouts, random content."""
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            payload = gzip.compress(_idx_bytes(arr))
            (root / "mnist" / f"{prefix}-{kind}-ubyte.gz").write_bytes(payload)
    (root / "mnist_m").mkdir()
    with tarfile.open(root / "mnist_m" / "mnist_m.tar.gz", "w:gz") as tar:

        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for split, n in (("train", n_train), ("test", n_test)):
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, n)
            for i in range(n):
                add(f"mnist_m/mnist_m_{split}/{i:08d}.png", _png(images[i]))
            text = "".join(f"{i:08d}.png {labels[i]}\n" for i in range(n))
            add(f"mnist_m/mnist_m_{split}_labels.txt", text.encode())


def assert_round_trip(domain: Domain, splits, channels: int) -> None:
    """Pixel-exact images and exact labels, in upstream order."""
    for split in ("train", "test"):
        x, y = splits[split]
        got_x, got_y = getattr(domain, f"x_{split}"), getattr(domain, f"y_{split}")
        assert got_x.dtype == np.uint8 and got_y.dtype == np.int32
        assert got_x.shape == (*x.shape[:3], channels)
        np.testing.assert_array_equal(got_x, x.reshape(got_x.shape))
        np.testing.assert_array_equal(got_y, y)
    assert domain.variant == "full"


def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on (connections are refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run_digits_cli(*args, cwd, timeout=300):
    """Run experiments/digits.py in `cwd` on one CPU device with no network access to data."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one device, as a user's CPU run
    env["JAX_PLATFORMS"] = "cpu"
    env["TFDS_DATA_DIR"] = str(Path(cwd) / "no_tfds_here")  # never inside the checkout
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "digits.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def paragraph(text: str) -> str:
    """An error message with its line wrapping undone (the CLI wraps at 100 columns)."""
    return " ".join(text.split())


def heavy_imports(module: str) -> list[str]:
    """The heavy optional libraries that importing `module` loads (in a fresh interpreter).

    `dann_jax.analysis` and `dann_jax.validators` import scikit-learn, SciPy and
    matplotlib only inside the functions that need them, so the main job never pays
    for them.
    """
    code = (
        f"import sys, {module}; "
        "print(' '.join(m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.split()


# -------------------------------------------------------------- an independent DANN step
#
# The paper's MNIST model (optionally with per-domain BatchNorm), the DANN objective and
# SGD with momentum written out from their definitions with plain lax / jax.numpy ops and
# jax.grad, evaluated in float64: a reference for the train step and the evaluation that
# shares no code with dann_jax (only the parameter names of its pytrees).


def float64(tree):
    """Every leaf of `tree` as a float64 jax array (call under ``jax.enable_x64``)."""
    return jax.tree.map(lambda a: jax.numpy.asarray(np.asarray(a, np.float64)), tree)


def reference_features(params, x, stats=None):
    """The extractor: (conv 5x5 VALID -> [BatchNorm] -> ReLU -> 2x2 max-pool) x 2, flat.

    ``stats=None``: training mode, the first and second half of the batch (source, target)
    each normalised with its own batch mean and biased variance; else ``stats[i]`` =
    ``(mean, var)`` of layer i, the running averages used at test time. Returns the
    features and each layer's per-half batch (mean, var), shaped (2, C).
    """
    jnp, lax = jax.numpy, jax.lax
    moments = []
    for i in range(2):
        conv, bn = params["extractor"][f"Conv_{i}"], params["extractor"].get(f"BatchNorm_{i}")
        x = lax.conv_general_dilated(
            x, conv["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        ) + conv["bias"]  # fmt: skip
        if bn is not None:
            if stats is None:
                halves = x.reshape(2, -1, *x.shape[1:])
                mu = halves.mean((1, 2, 3), keepdims=True)
                var = jnp.square(halves - mu).mean((1, 2, 3), keepdims=True)
                x = ((halves - mu) / jnp.sqrt(var + 1e-5)).reshape(x.shape)
                moments.append((mu.reshape(2, -1), var.reshape(2, -1)))
            else:
                mean, var = stats[i]
                x = (x - mean) / jnp.sqrt(var + 1e-5)
            x = x * bn["scale"] + bn["bias"]
        x = jnp.maximum(x, 0.0)
        n, h, w, c = x.shape
        x = x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
    return x.reshape(len(x), -1), moments


def reference_mlp(head, x):
    """A head (``params["classifier"]`` or ``["discriminator"]``): Dense-ReLU ..., Dense."""
    layers = head["_MLP_0"]
    names = sorted(layers, key=lambda name: int(name.split("_")[1]))
    for name in names[:-1]:
        x = jax.numpy.maximum(x @ layers[name]["kernel"] + layers[name]["bias"], 0.0)
    return x @ layers[names[-1]]["kernel"] + layers[names[-1]]["bias"]


def reference_logits(params, x, stats=None):
    """(class logits, domain logits) at test time with the running averages `stats`."""
    features, _ = reference_features(params, x, stats)
    return reference_mlp(params["classifier"], features), reference_mlp(
        params["discriminator"], features
    )[:, 0]


def reference_cross_entropy(logits, labels, smoothing=0.0):
    """Per-example cross-entropy against ``(1 - a) * onehot + a / K`` (Szegedy et al.)."""
    jnp = jax.numpy
    k, labels = logits.shape[1], jnp.asarray(labels)
    onehot = (labels[:, None] == jnp.arange(k, dtype=labels.dtype)).astype(logits.dtype)
    target = (1.0 - smoothing) * onehot + smoothing / k
    log_p = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
    return -(target * log_p).sum(1)


def reference_dann_step(params, stats, trace, step, batch, h):
    """One DANN update (Ganin et al. 2016, Algorithm 1 and Sec. 5.2.2) in float64.

    ``loss = CE_a(G_y(f_s), y_s) + lambda3 * 0.5 * (BCE(D(f_s), 0) + BCE(D(f_t), 1))``;
    the discriminator and label classifier descend their own gradients, the extractor the
    label gradient minus ``lambda_p = lambda2 * (2 / (1 + exp(-gamma p)) - 1)`` times the
    adversarial one (the reversal), with ``p = step / steps``; SGD with momentum at
    ``mu_p = lr / (1 + alpha p)^beta``; each domain's BatchNorm running averages move as
    ``0.9 ra + 0.1 stat``. `h` holds the Config fields by name. Jittable (`h` and
    `step` may be traced).

    Returns new (params, stats, trace) and the metrics (loss terms, lambda_p, mu_p).
    """
    jnp = jax.numpy
    p = jnp.minimum(step / h["steps"], 1.0)
    lam = h["lambda2"] * (2.0 / (1.0 + jnp.exp(-h["gamma"] * p)) - 1.0)
    lr = h["lr"] / (1.0 + h["lr_alpha"] * p) ** h["lr_beta"]
    xs, ys, xt = batch
    n = len(xs)

    def terms(q):
        f, moments = reference_features(q, jnp.concatenate([xs, xt]))
        label = reference_cross_entropy(
            reference_mlp(q["classifier"], f[:n]), ys, h["label_smoothing"]
        ).mean()
        d = reference_mlp(q["discriminator"], f)[:, 0]
        softplus = lambda z: jnp.logaddexp(0.0, z)  # BCE(z, 0); BCE(z, 1) = softplus(-z)
        domain = 0.5 * (softplus(d[:n]).mean() + softplus(-d[n:]).mean())
        return label, domain, moments

    label, domain, moments = terms(params)
    g_label = jax.grad(lambda q: terms(q)[0])(params)
    g_domain = jax.grad(lambda q: terms(q)[1])(params)
    # The reversal: the extractor gets -lambda_p times the adversarial gradient.
    sign = {"extractor": -lam, "classifier": 1.0, "discriminator": 1.0}
    adversarial = {part: jax.tree.map(lambda g, s=s: s * h["lambda3"] * g, g_domain[part])
                   for part, s in sign.items()}  # fmt: skip
    grads = jax.tree.map(jnp.add, g_label, adversarial)
    trace = jax.tree.map(lambda g, t: g + h["momentum"] * t, grads, trace)
    params = jax.tree.map(lambda w, t: w - lr * t, params, trace)
    moved = zip(stats, moments, strict=True)
    stats = [(0.9 * m + 0.1 * mu, 0.9 * v + 0.1 * var) for (m, v), (mu, var) in moved]
    metrics = {
        "loss": label + h["lambda3"] * domain, "label_loss": label, "domain_loss": domain,
        "lambda2": lam, "learning_rate": lr,
    }  # fmt: skip
    return params, stats, trace, metrics
