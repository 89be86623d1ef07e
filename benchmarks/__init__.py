"""Benchmarks of dann_jax: step time (vs a hand-written JAX step and PyTorch), time to accuracy."""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
from typing import Any


def environment(benchmark: str) -> dict[str, Any]:
    """Device, versions, date and command line shared by every benchmark's JSON report."""
    import flax  # local: time_to_accuracy counts these imports in its wall time
    import jax
    import optax

    device = jax.devices()[0]
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "num_local_devices": jax.local_device_count(),
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "optax_version": optax.__version__,
        "python": platform.python_version(),
        "host": platform.machine(),
    }
