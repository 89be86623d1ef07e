"""Test set-up: 8 virtual CPU devices for pmap tests, strict dtype promotion.

XLA_FLAGS must be set before JAX initialises its backends, hence at import of this file.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Catch accidental dtype promotions (e.g. a bfloat16 gradient silently upcast).
jax.config.update("jax_numpy_dtype_promotion", "strict")
