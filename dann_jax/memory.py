"""What the run's data take in device memory: reported before training, refused if too much.

The training pools are replicated on every device and the test sets split over them
(`dann_jax.sharding`), so both are known before anything is placed; a data set that
cannot fit stops at once with the numbers and the fix, not in an allocation failure
minutes later.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from dann_jax.data.pair import PairData

__all__ = ["check_memory", "describe_memory"]


def _device_memory() -> int | None:
    """Bytes of memory of one device, where the backend says (GPU, TPU); on CPU the
    machine's physical memory; None when neither is known."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # not every backend implements memory_stats
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:  # CPU devices (several virtual ones, too) share the machine's memory
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return ram // jax.local_device_count()


def check_memory(data: PairData, state, devices: int, batch_size: int = 0) -> None:
    """Refuse, before anything is placed or compiled, a run that cannot fit in memory.

    Every device holds the training pools, its share of the test sets, the state
    (parameters, optimizer state and the gradients of a step: about 3x the parameters)
    and its share of each step's float32 input batch (``batch_size`` images a domain);
    activations need room too, so more than 80% of the device is refused.
    """
    from dann_jax.data.domain import DataError

    limit = _device_memory()
    if limit is None:
        return
    pools = data.train_data().nbytes
    tests = sum(es.nbytes for es in data.eval_sets(devices).values()) / devices
    params = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state.params))
    batch = 2 * batch_size / devices * int(np.prod(data.source_train.shape[1:])) * 4
    need = pools + tests + 3 * params + batch
    if need <= 0.8 * limit:
        return
    h, w, c = data.source_train.shape[1:]
    gb = lambda n: f"{n / 1e9:.2f} GB"
    if batch > 0.5 * need:
        raise DataError(
            f"--batch-size {batch_size} does not fit in memory: its float32 images alone "
            f"take {gb(batch)} on every device (of its {gb(limit)}), before any "
            f"activation. Lower --batch-size (the domains have {len(data.source_train)} "
            f"and {len(data.target_train)} training images)."
        )
    raise DataError(
        f"The data do not fit in device memory: every device would hold {gb(pools)} of "
        f"training pools ({len(data.source_train)} + {len(data.target_train)} images of "
        f"{h}x{w}x{c}), {gb(tests)} of test sets and about {gb(3 * params)} of model state, "
        f"{gb(need)} of its {gb(limit)}. Lower --image-size (the pools shrink with its "
        "square) or train on fewer images; data sets larger than device memory are not "
        "supported (the images live on the device, there is no host-fed input path)."
    )


def describe_memory(data: PairData, devices: int) -> str:
    """What every device holds of the data: the replicated pools and its share of the tests."""
    pools = data.train_data().nbytes
    tests = sum(es.nbytes for es in data.eval_sets(devices).values())
    return (
        f"device memory for the data: {pools / 1e6:.1f} MB of training pools on every device "
        f"({pools} bytes: flat uint8 rows), {tests / devices / 1e6:.1f} MB of test sets per "
        f"device (split over {devices})"
    )
