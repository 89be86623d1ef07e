"""Benchmarks of dann_jax: step time (vs a hand-written JAX step and PyTorch), time to accuracy."""

from __future__ import annotations

import datetime
import os
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
        **machine_load(),
    }


def machine_load() -> dict[str, Any]:
    """Load average, usable cores and thread settings: whether timings can be trusted.

    A CPU timing taken while other jobs run is not publishable: a busy machine hurts a
    thread-pool runtime (PyTorch's) far more than XLA's, so ratios drift by several
    times. ``busy`` is True when the 1-minute load average exceeds the usable cores.
    """
    try:
        load = os.getloadavg()
    except OSError:  # not on every platform
        load = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "load_average": None if load is None else [round(x, 2) for x in load],
        "usable_cores": cores,
        "busy": bool(load is not None and cores and load[0] > cores),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    if "torch" in sys.modules:  # never import it just to ask
        info["torch_num_threads"] = sys.modules["torch"].get_num_threads()
    return info


def describe_load(info: dict[str, Any]) -> str:
    """One line for a report's header; says loudly when the machine was busy."""
    load = info.get("load_average")
    shown = "unknown" if load is None else ", ".join(f"{x:.2f}" for x in load)
    line = f"load average {shown} on {info.get('usable_cores')} usable cores"
    if "torch_num_threads" in info:
        line += f"; torch threads {info['torch_num_threads']}"
    if info.get("busy"):
        line += (
            " -- BUSY: load above the core count, timings are NOT publishable"
            " (rerun on an idle machine)"
        )
    return line
