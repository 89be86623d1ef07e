"""Test set-up: 8 virtual CPU devices for pmap tests, strict dtype promotion.

XLA_FLAGS must be set before JAX initialises its backends, hence at import of this file.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# No test reaches the internet: every download (dann_jax.data.download) goes to a closed
# port on this machine instead, and fails at once, unless a test serves files itself.
os.environ["DANN_DATA_MIRROR"] = "http://127.0.0.1:9"

import jax

# Catch accidental dtype promotions (e.g. a bfloat16 gradient silently upcast).
jax.config.update("jax_numpy_dtype_promotion", "strict")
