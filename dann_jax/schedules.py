"""The DANN paper's schedules: the GRL coefficient ramp and learning-rate annealing.

Both are functions of the training progress ``p = step / total_steps`` in [0, 1], computed
from the global step held in the train state, so they continue correctly after a resume
and are identical on every data-parallel replica. Every argument may be a traced array:
changing a value never recompiles the train step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "LAMBDA_SCHEDULES",
    "annealed_learning_rate",
    "dann_lambda",
    "grl_lambda",
    "learning_rate_schedule",
    "progress",
]

# The lambda2 schedules by name (`dann_jax.Config.lambda2_schedule` takes one).
LAMBDA_SCHEDULES = ("dann", "constant")


def progress(step: jax.Array | int, total_steps: jax.Array | int) -> jax.Array:
    """Training progress ``p = step / total_steps``, clipped to [0, 1], float32."""
    p = jnp.asarray(step, jnp.float32) / jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    return jnp.clip(p, 0.0, 1.0)


def dann_lambda(
    p: jax.Array | float, lambda2: jax.Array | float = 1.0, gamma: jax.Array | float = 10.0
) -> jax.Array:
    """GRL coefficient ramp ``lambda2 * (2 / (1 + exp(-gamma * p)) - 1)``.

    Starts at 0 (the discriminator's early, noisy gradient does not disturb the
    extractor) and rises to almost ``lambda2`` (0.99991 * lambda2 at p = 1, gamma = 10).

    Args:
      p: training progress in [0, 1].
      lambda2: final GRL coefficient (the reference code's ``lambda2``).
      gamma: steepness; the paper uses 10.

    Returns:
      float32 scalar lambda_p.

    References:
      Ganin et al., JMLR 2016, Sec. 5.2.2: "lambda_p = 2 / (1 + exp(-gamma p)) - 1,
      where gamma was set to 10".
    """
    p = jnp.asarray(p, jnp.float32)
    # Paper, Sec. 5.2.2: lambda_p = 2 / (1 + exp(-gamma * p)) - 1, scaled by lambda2.
    return jnp.asarray(lambda2, jnp.float32) * (2.0 / (1.0 + jnp.exp(-gamma * p)) - 1.0)


def grl_lambda(
    kind: str, p: jax.Array | float, lambda2: jax.Array | float, gamma: jax.Array | float = 10.0
) -> jax.Array:
    """GRL coefficient at progress `p`: the paper's ramp (``"dann"``) or ``"constant"`` lambda2.

    Args:
      kind: one of `LAMBDA_SCHEDULES` (a Python string: it selects code, not a value).
      p: training progress in [0, 1].
      lambda2: final (ramp) or constant coefficient.
      gamma: ramp steepness.

    Returns:
      float32 scalar.
    """
    if kind == "dann":
        return dann_lambda(p, lambda2, gamma)
    if kind == "constant":
        return jnp.asarray(lambda2, jnp.float32)
    raise ValueError(f"unknown lambda2 schedule {kind!r}; choose one of {LAMBDA_SCHEDULES}")


def annealed_learning_rate(
    p: jax.Array | float,
    lr0: jax.Array | float = 0.01,
    alpha: jax.Array | float = 10.0,
    beta: jax.Array | float = 0.75,
) -> jax.Array:
    """Learning-rate annealing ``mu_p = mu0 / (1 + alpha * p) ** beta``.

    Args:
      p: training progress in [0, 1].
      lr0: initial learning rate mu0 (paper: 0.01).
      alpha: paper: 10.
      beta: paper: 0.75.

    Returns:
      float32 scalar learning rate (lr0 at p = 0, lr0 / 11**0.75 at p = 1).

    References:
      Ganin et al., JMLR 2016, Sec. 5.2.2: "mu_p = mu0 / (1 + alpha p)^beta, where
      mu0 = 0.01, alpha = 10 and beta = 0.75".
    """
    p = jnp.asarray(p, jnp.float32)
    # Paper, Sec. 5.2.2: mu_p = mu0 / (1 + alpha * p) ** beta.
    return jnp.asarray(lr0, jnp.float32) / (1.0 + alpha * p) ** beta


def learning_rate_schedule(
    lr0: float | jax.Array,
    total_steps: int | jax.Array,
    alpha: float | jax.Array = 10.0,
    beta: float | jax.Array = 0.75,
) -> Callable[[jax.Array], jax.Array]:
    """The annealing `annealed_learning_rate` as an optax schedule ``count -> lr``.

    For use with any optax optimizer, e.g. ``optax.sgd(learning_rate_schedule(0.01,
    10_000), momentum=0.9)``. (`dann_jax.train` instead feeds the same formula through
    ``optax.inject_hyperparams`` so that lr0 and total_steps are traced arguments.)

    Args:
      lr0: initial learning rate.
      total_steps: number of steps at which p reaches 1.
      alpha: annealing alpha.
      beta: annealing beta.

    Returns:
      An ``optax.Schedule``.
    """

    def schedule(count: jax.Array) -> jax.Array:
        return annealed_learning_rate(progress(count, total_steps), lr0, alpha, beta)

    return schedule
