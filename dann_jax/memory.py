"""What the run's data take in device memory: reported before training, refused if too much.

The training pools are replicated on every device (or, on the host-fed path, only the
chunks of batches in flight) and the test sets split over them (`dann_jax.sharding`), so
both are known before anything is placed; a data set that cannot fit stops at once with
the numbers and the fix, not in an allocation failure minutes later. With ``--input
auto`` the same numbers choose the input path.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from dann_jax.data.pair import PairData
from dann_jax.evaluate import SLAB_BYTES

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


def check_memory(
    data: PairData, state, devices: int, batch_size: int = 0, input: str = "device",
    fed_bytes: int = 0,
) -> tuple[str, str]:  # fmt: skip
    """Refuse, before anything is placed or compiled, a run that cannot fit in memory;
    return the input path it takes (``input``, or for ``"auto"`` the resident pools when
    they fit and the host-fed path otherwise) and one line that says why.

    Every device holds the training pools (``"device"``; ``"host"``: ``fed_bytes``, the
    host-fed chunks in flight instead), its share of the test sets, the state
    (parameters, optimizer state and the gradients of a step: about 3x the parameters)
    and its share of each step's float32 input batch (``batch_size`` images a domain);
    activations need room too, so more than 80% of the device is refused.
    """
    limit = _device_memory()
    pools = data.train_data().nbytes
    tests = _test_bytes(data, devices, None)
    params = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state.params))
    batch = 2 * batch_size / devices * int(np.prod(data.source_train.shape[1:])) * 4
    rest = tests + 3 * params + batch
    gb = lambda n: f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
    if limit is None:
        chosen = "device" if input == "auto" else input
        return chosen, f"input: {chosen} (the device's memory is unknown; --input {input})"
    fits = pools + rest <= 0.8 * limit
    chosen = input if input != "auto" else ("device" if fits else "host")
    if chosen == "host":  # the test sets go to the device a slab at a time
        tests = _test_bytes(data, devices, SLAB_BYTES)
        rest = tests + 3 * params + batch
    need = rest + (pools if chosen == "device" else fed_bytes)
    if need > 0.8 * limit:
        _refuse(data, batch_size, limit, pools, tests, params, batch, need, chosen)
    why = "fit" if fits else "do not fit"
    how = "the device draws every batch" if chosen == "device" else "the host feeds each chunk"
    return chosen, (
        f"input: {chosen} (--input {input}: the training pools, {gb(pools)}, {why} beside "
        f"the rest, {gb(pools + rest)} of the device's {gb(limit)}; {how})"
    )


def _test_bytes(data: PairData, devices: int, max_bytes: int | None) -> float:
    """Bytes of the test sets a device holds at once: its share of them whole, or of a
    slab of each (`dann_jax.evaluate.Slabs`)."""
    return sum(s.nbytes for s in data.eval_sets(devices, max_bytes).values()) / devices


def _refuse(data, batch_size, limit, pools, tests, params, batch, need, chosen) -> None:
    """The `DataError` of a run that does not fit: the batch, or the data, and the fix."""
    from dann_jax.data.domain import DataError

    h, w, c = data.source_train.shape[1:]
    gb = lambda n: f"{n / 1e9:.2f} GB"
    if batch > 0.5 * need or batch > 0.4 * limit:  # the batch alone, whichever the path
        raise DataError(
            f"--batch-size {batch_size} does not fit in memory: its float32 images alone "
            f"take {gb(batch)} on every device (of its {gb(limit)}), before any "
            f"activation. Lower --batch-size (the domains have {len(data.source_train)} "
            f"and {len(data.target_train)} training images)."
        )
    if chosen == "host":
        raise DataError(
            f"The run does not fit in device memory even with the training images on the "
            f"host (--input {chosen}): every device would hold {gb(tests)} of test-set slabs "
            f"(of {len(data.source_test)} + {len(data.target_test)} images of {h}x{w}x{c}), "
            f"about {gb(3 * params)} of model state and the batches in flight, {gb(need)} of "
            f"its {gb(limit)}. Lower --image-size or --steps-per-call, or test on fewer images."
        )
    raise DataError(
        f"The data do not fit in device memory: every device would hold {gb(pools)} of "
        f"training pools ({len(data.source_train)} + {len(data.target_train)} images of "
        f"{h}x{w}x{c}), {gb(tests)} of test sets and about {gb(3 * params)} of model state, "
        f"{gb(need)} of its {gb(limit)}. Lower --image-size (the pools shrink with its "
        "square) or train on fewer images, or add --input host (or --input auto): the "
        "training images then stay in host memory and each dispatch's batches are sent."
    )


def describe_memory(data: PairData, devices: int) -> str:
    """What every device holds of the data: the replicated pools and its share of the tests."""
    pools = data.train_data().nbytes
    tests = _test_bytes(data, devices, None) * devices
    return (
        f"memory for the data: {pools / 1e6:.1f} MB of training pools ({pools} bytes: flat "
        f"uint8 rows; on every device on the resident input path, in host memory on the "
        f"host-fed one: the input line says which), {tests / devices / 1e6:.1f} MB of test "
        f"sets per device (split over {devices})"
    )
