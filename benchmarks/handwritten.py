"""A minimal hand-written JAX/optax DANN step: the floor dann_jax's abstractions must not add to.

Plain functions only (no Flax, nothing from dann_jax): ``lax.conv_general_dilated``,
``jnp.dot``, reshape-max / ``lax.reduce_window`` pooling, a gradient reversal of its own
(``jax.custom_vjp``), ``optax.sgd`` with momentum and the paper's annealed learning rate,
the same losses (source cross-entropy + 0.5 * (BCE(D_s, 0) + BCE(D_t, 1))), jitted with the
state donated. Parameter shapes are those of dann_jax's paper models, and `from_flax` maps a
dann_jax parameter tree onto this layout, so tests can check both compute the same numbers.

State is ``(step, params, opt_state)``; the schedules' constants are closed over (the
simplest thing a hand-written step would do), unlike dann_jax, which passes them as traced
arguments so that sweeps never recompile.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

# name -> conv layers (features, kernel, padding, pool window, pool stride, pool padding),
# label head hidden widths, domain head hidden widths, input side. Mirrors the DANN paper.
ARCHS: dict[str, dict[str, Any]] = {
    "mnist": {
        "convs": ((32, 5, "VALID", 2, 2, "VALID"), (48, 5, "VALID", 2, 2, "VALID")),
        "label": (100, 100),
        "domain": (100,),
        "size": 28,
    },
    "svhn": {
        "convs": (
            (64, 5, "SAME", 3, 2, "SAME"),
            (64, 5, "SAME", 3, 2, "SAME"),
            (128, 5, "SAME", None, None, None),
        ),
        "label": (3072, 2048),
        "domain": (1024, 1024),
        "size": 32,
    },
}
NUM_CLASSES = 10


# -------------------------------------------------------------- gradient reversal


@jax.custom_vjp
def grad_reverse(x: jax.Array, lam: jax.Array) -> jax.Array:
    """Identity forward; multiplies the gradient by -lam backward."""
    return x


def _grl_fwd(x, lam):
    """Forward: identity, keeping only lam for the backward pass."""
    return x, lam


def _grl_bwd(lam, g):
    """Backward: -lam * g (in g's dtype) for x; lam itself gets no gradient."""
    return (-lam.astype(g.dtype) * g, jnp.zeros_like(lam))


grad_reverse.defvjp(_grl_fwd, _grl_bwd)


# -------------------------------------------------------------- parameters


def feature_dim(arch: str) -> int:
    """Length of the flattened extractor output."""
    spec = ARCHS[arch]
    side = spec["size"]
    for _, kernel, padding, window, stride, pool_padding in spec["convs"]:
        side = side - kernel + 1 if padding == "VALID" else side
        if window is not None:
            side = (side - window) // stride + 1 if pool_padding == "VALID" else -(-side // stride)
    return side * side * spec["convs"][-1][0]


def _lecun(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """LeCun-normal (truncated) weights, Flax's default for Dense and Conv kernels."""
    # 0.8796 is the standard deviation of a unit normal truncated to [-2, 2].
    return jax.random.truncated_normal(key, -2.0, 2.0, shape) / (0.87962566 * fan_in**0.5)


def _dense_stack(key: jax.Array, widths: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    """(w, b) for each consecutive pair of widths; zero biases."""
    keys = jax.random.split(key, len(widths) - 1)
    return [
        (_lecun(k, (n_in, n_out), n_in), jnp.zeros((n_out,), jnp.float32))
        for k, (n_in, n_out) in zip(keys, itertools.pairwise(widths), strict=True)
    ]


def init_params(key: jax.Array, arch: str) -> dict[str, list[tuple[jax.Array, jax.Array]]]:
    """Fresh parameters: ``{"convs", "label", "domain"}``, each a list of (weight, bias)."""
    spec = ARCHS[arch]
    k_conv, k_label, k_domain = jax.random.split(key, 3)
    convs, channels = [], 3
    for k, (features, kernel, *_) in zip(
        jax.random.split(k_conv, len(spec["convs"])), spec["convs"], strict=True
    ):
        shape = (kernel, kernel, channels, features)  # HWIO, as Flax stores it
        convs.append((_lecun(k, shape, kernel * kernel * channels), jnp.zeros((features,))))
        channels = features
    d = feature_dim(arch)
    return {
        "convs": convs,
        "label": _dense_stack(k_label, [d, *spec["label"], NUM_CLASSES]),
        "domain": _dense_stack(k_domain, [d, *spec["domain"], 1]),
    }


def from_flax(params: dict) -> dict[str, list[tuple[jax.Array, jax.Array]]]:
    """Map a dann_jax (Flax) parameter tree onto this module's layout (same arrays)."""

    def layers(tree: dict, prefix: str) -> list[tuple[jax.Array, jax.Array]]:
        names = sorted(
            (n for n in tree if n.startswith(prefix)), key=lambda n: int(n.rsplit("_")[-1])
        )
        return [(tree[n]["kernel"], tree[n]["bias"]) for n in names]

    return {
        "convs": layers(params["extractor"], "Conv_"),
        "label": layers(params["classifier"]["_MLP_0"], "Dense_"),
        "domain": layers(params["discriminator"]["_MLP_0"], "Dense_"),
    }


# -------------------------------------------------------------- forward and loss


def _pool(x: jax.Array, window: int, stride: int, padding: str) -> jax.Array:
    """Max pooling: reshape + max for non-overlapping windows, else reduce_window."""
    n, h, w, c = x.shape
    if window == stride and padding == "VALID" and h % window == 0 and w % window == 0:
        return x.reshape(n, h // window, window, w // window, window, c).max(axis=(2, 4))
    # A Python -inf init (not an array) lets JAX recognise the max monoid, which has a
    # gradient rule; a generic reduce_window has none.
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), padding
    )


def _mlp(
    layers: list[tuple[jax.Array, jax.Array]], x: jax.Array, dtype: Any, precision: Any = None
) -> jax.Array:
    """Dense-ReLU stack; the last layer is linear."""
    for i, (w, b) in enumerate(layers):
        x = jnp.dot(x, w.astype(dtype), precision=precision) + b.astype(dtype)
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


def features(
    params: dict, x: jax.Array, arch: str, dtype: Any = jnp.float32, precision: Any = None
) -> jax.Array:
    """Extractor: convolutions, ReLU, pooling, flatten (NHWC order)."""
    x = x.astype(dtype)
    for (w, b), (_, _, padding, window, stride, pool_padding) in zip(
        params["convs"], ARCHS[arch]["convs"], strict=True
    ):
        x = lax.conv_general_dilated(
            x, w.astype(dtype), (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )  # fmt: skip
        x = jax.nn.relu(x + b.astype(dtype))
        if window is not None:
            x = _pool(x, window, stride, pool_padding)
    return x.reshape(x.shape[0], -1)


def loss_fn(
    params: dict,
    batch: dict,
    lam: jax.Array,
    arch: str,
    dtype: Any = jnp.float32,
    precision: Any = None,
) -> jax.Array:
    """CE(source labels) + 0.5 * (BCE(D(GRL(f_s)), 0) + BCE(D(GRL(f_t)), 1)), in float32."""
    n = batch["source_images"].shape[0]
    x = jnp.concatenate([batch["source_images"], batch["target_images"]])
    f = features(params, x, arch, dtype, precision)
    logits = _mlp(params["label"], f[:n], dtype, precision).astype(jnp.float32)
    d = _mlp(params["domain"], grad_reverse(f, lam), dtype, precision)[:, 0].astype(jnp.float32)
    log_p = jax.nn.log_softmax(logits)
    ce = -jnp.mean(jnp.take_along_axis(log_p, batch["source_labels"][:, None], axis=1))
    # BCE with logits: softplus(x) - x * z, z = 0 for source and 1 for target.
    bce_s = jnp.mean(jax.nn.softplus(d[:n]))
    bce_t = jnp.mean(jax.nn.softplus(d[n:]) - d[n:])
    return ce + 0.5 * (bce_s + bce_t)


# -------------------------------------------------------------- train step


def grl_lambda(step: jax.Array, total_steps: int, gamma: float = 10.0) -> jax.Array:
    """The paper's GRL ramp 2 / (1 + exp(-gamma p)) - 1 at progress p = step / total_steps."""
    p = jnp.clip(step.astype(jnp.float32) / total_steps, 0.0, 1.0)
    return 2.0 / (1.0 + jnp.exp(-gamma * p)) - 1.0


def make_optimizer(
    total_steps: int,
    lr0: float = 0.01,
    alpha: float = 10.0,
    beta: float = 0.75,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """optax.sgd with momentum and the paper's annealing lr0 / (1 + alpha p) ** beta."""

    def lr_schedule(count):
        p = jnp.clip(count.astype(jnp.float32) / total_steps, 0.0, 1.0)
        return lr0 / (1.0 + alpha * p) ** beta

    return optax.sgd(lr_schedule, momentum=momentum)


def init_state(params: dict, tx: optax.GradientTransformation, step: int = 0) -> tuple:
    """(step, params, opt_state); a nonzero `step` starts mid-schedule (used by tests)."""

    def set_count(s):
        is_count = isinstance(s, optax.ScaleByScheduleState)
        return s._replace(count=jnp.asarray(step, s.count.dtype)) if is_count else s

    opt_state = jax.tree.map(
        set_count, tx.init(params), is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState)
    )
    return jnp.asarray(step, jnp.int32), params, opt_state


def make_step(
    arch: str,
    tx: optax.GradientTransformation,
    total_steps: int,
    gamma: float = 10.0,
    dtype: Any = jnp.float32,
    precision: Any = None,
):
    """Jitted ``(state, batch) -> (state, loss)`` with the state donated.

    ``precision`` is every convolution's and matmul's ``lax.Precision`` (None: the
    backend's default, TF32 on recent NVIDIA GPUs).
    """

    def step_fn(state, batch):
        step, params, opt_state = state
        lam = grl_lambda(step, total_steps, gamma)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, lam, arch, dtype, precision)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (step + 1, optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step_fn, donate_argnums=(0,))
