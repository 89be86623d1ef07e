"""Gradient reversal layer (GRL) as a `jax.custom_vjp` primitive.

This module is self-contained: importing it loads JAX and nothing else (not the rest of
`dann_jax`, not optax; Flax only when ``GradientReversal`` is first used), so other JAX
code can use it on its own::

    from dann_jax.grl import grad_reverse

References:
  Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015,
  Sec. 3.2 ("gradient reversal layer"), https://arxiv.org/abs/1409.7495.
  Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["GradientReversal", "grad_reverse"]  # noqa: F822 (GradientReversal: __getattr__)


@jax.custom_vjp
def _reverse(x: Any, lambda_: jax.Array) -> Any:
    """Identity on the pytree `x`; see `grad_reverse`."""
    return x


def _reverse_fwd(x: Any, lambda_: jax.Array) -> tuple[Any, jax.Array]:
    """Forward pass: identity; keep only lambda_ (not x) as the residual."""
    return x, lambda_


def _scale_leaf(g: jax.Array, neg_lambda: jax.Array) -> jax.Array:
    """Multiply one cotangent leaf by -lambda in the leaf's own dtype."""
    # Integer / bool primal leaves have float0 cotangents: nothing to scale.
    if not jnp.issubdtype(g.dtype, jnp.inexact):
        return g
    # Cast -lambda to the cotangent's dtype instead of upcasting the cotangent, so a
    # bfloat16 gradient stays bfloat16 (Ganin & Lempitsky 2015, eq. 9: dR/dx = -lambda*I).
    return neg_lambda.astype(g.dtype) * g


def _reverse_bwd(lambda_: jax.Array, g: Any) -> tuple[Any, jax.Array]:
    """Backward pass: cotangent of x is -lambda * g; lambda_ gets a zero cotangent."""
    neg_lambda = -lambda_
    return jax.tree.map(lambda t: _scale_leaf(t, neg_lambda), g), jnp.zeros_like(lambda_)


_reverse.defvjp(_reverse_fwd, _reverse_bwd)


def grad_reverse(x: Any, lambda_: float | jax.Array = 1.0) -> Any:
    """Gradient reversal: identity forward, multiplies the gradient by ``-lambda_`` backward.

    The pseudo-function R_lambda of Ganin & Lempitsky (2015), eqs. (8)-(9):
    ``R(x) = x`` and ``dR/dx = -lambda * I``. Placed between a feature extractor and a
    domain discriminator, the discriminator minimises the domain loss while the
    extractor receives the reversed gradient and so maximises it.

    Works on any pytree of arrays, under ``jit``, ``vmap``, ``pmap``, ``grad`` and
    higher-order reverse-mode ``grad``. Each cotangent leaf keeps its dtype
    (``-lambda_`` is cast to the leaf's dtype: bfloat16 gradients stay bfloat16);
    non-float leaves pass through untouched.

    ``lambda_`` is an ordinary traced argument: a Python float or a scalar array. Under
    ``jax.jit`` pass it as an argument (not a static one) and a lambda schedule never
    triggers a recompile. Its own cotangent is zero: the GRL does not learn lambda.

    Second order: reverse-over-reverse (``grad`` of ``grad``, ``jacrev`` of ``grad``,
    Hessian-vector products that way) differentiates the GRL's forward pass as the plain
    identity and its backward rule ``-lambda * g`` as an ordinary linear function of the
    cotangent. So the reversal applies once: ``d2/dx2 L(R(x)) = -lambda * L''(x)`` (not
    ``lambda**2``), and a term that uses ``x`` outside the GRL is differentiated as usual.
    Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, forward-over-reverse
    Hessians) is not supported, because JAX's ``custom_vjp`` defines only the reverse
    rule; JAX raises ``TypeError: can't apply forward-mode autodiff (jvp) to a
    custom_vjp function.`` Use ``jax.jacrev`` or reverse-over-reverse instead.

    Args:
      x: a pytree of arrays (e.g. features, or a dict of feature maps).
      lambda_: the reversal coefficient, a Python float or a scalar array (may be a
        traced value such as the DANN schedule ``2/(1+exp(-10p)) - 1``).

    Returns:
      ``x`` unchanged (the same pytree, same values, same dtypes).

    References:
      Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation",
      ICML 2015, Sec. 3.2. https://arxiv.org/abs/1409.7495

    Example:
      >>> import jax, jax.numpy as jnp
      >>> g = jax.grad(lambda x, lam: grad_reverse(x, lam).sum())(jnp.ones(3), 0.5)
      >>> g.tolist()
      [-0.5, -0.5, -0.5]
    """
    # A Python float becomes a (weakly typed) scalar array; under jit a float argument is
    # already a tracer, so this never bakes the value into the compiled program.
    return _reverse(x, jnp.asarray(lambda_))


def _linen_module() -> type:
    """The Flax module class; built on first use so that this module imports JAX only."""
    import flax.linen as nn  # Flax is optional for users who only need the function.

    class GradientReversal(nn.Module):
        """Linen wrapper of `grad_reverse`: ``GradientReversal()(x, lambda_)``.

        Has no parameters. ``lambda_`` is a call argument (not a module attribute) so it
        can be a traced, scheduled value.

        References:
          Ganin & Lempitsky, ICML 2015, Sec. 3.2.
        """

        @nn.compact
        def __call__(self, x: Any, lambda_: float | jax.Array = 1.0) -> Any:
            return grad_reverse(x, lambda_)

    GradientReversal.__module__ = __name__
    return GradientReversal


def __getattr__(name: str) -> Any:
    """``GradientReversal`` is made (importing Flax) when first asked for."""
    if name == "GradientReversal":
        globals()[name] = cls = _linen_module()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
