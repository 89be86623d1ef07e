"""The host-fed input path: batches gathered on the host when the pools do not fit.

The resident path (`dann_jax.pools`) keeps every training image on every device and
draws each step's indices there. The host path keeps the images in host memory (a
memory-mapped cache stays on disk until read) and, for each dispatch of K steps,

* draws the indices the resident path would draw, with the same function and keys
  (`dann_jax.pools.draw_indices` of the data key of ``fold_in(rng, step)``), on the host
  CPU: JAX's threefry keys give the same integers on every backend;
* gathers those rows with numpy (in sorted order: a memory map is read front to back)
  and sends them, with each step's positions in them, as a `dann_jax.pools.Fed`;
* leaves normalisation and augmentation to the device, with the resident path's keys.

So a seed trains on the same batches on either path (a test asserts bit-identical
parameters on CPU). On several hosts every process draws the same indices and gathers
the whole chunk, which each puts on its own devices (`dann_jax.sharding.put_replicated`):
every host needs the data, as on the resident path (tested with two processes). A
background thread prepares the next two chunks while the device runs the current one,
so the device never waits for the host unless gathering is slower than training
(``benchmarks/host_input.py`` measures both).
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from dann_jax import sharding
from dann_jax.build import O1_ON_CPU
from dann_jax.pools import Fed, TrainData, draw_indices
from dann_jax.train import _step_keys

__all__ = ["AHEAD", "chunk_bytes", "draw_chunk", "gather_chunk", "inputs"]

AHEAD = 2  # chunks prepared ahead of the one the device runs


# Always on the host CPU (`draw_chunk`), and integers only: -O1 compiles in half the time.
@functools.partial(jax.jit, static_argnums=(2, 3), compiler_options=O1_ON_CPU)
def _draw(rng: jax.Array, steps: jax.Array, sizes: tuple[int, int], batch_size: int):
    """(source, target) indices of each step (and stacked seed): ``(K, [S,] B)`` int32."""

    def one(key, step):
        data_key, _ = _step_keys(key, step)
        return draw_indices(data_key, sizes, batch_size)

    per_step = jax.vmap(one, (None, 0))
    if rng.ndim == 0:
        return per_step(rng, steps)
    i_s, i_t = jax.vmap(per_step, (0, None))(rng, steps)  # (S, K, B): step axis first
    return i_s.swapaxes(0, 1), i_t.swapaxes(0, 1)


def draw_chunk(rng, first: int, n: int, sizes: tuple[int, int], batch_size: int):
    """The indices steps ``first .. first + n - 1`` draw on the resident path, computed on
    the host CPU: numpy ``(n, B)``, or ``(n, S, B)`` for a stacked ``rng`` of S seeds."""
    cpu = jax.local_devices(backend="cpu")[0]  # this process's own (several hosts: each)
    steps = np.arange(first, first + n, dtype=np.int32)
    i_s, i_t = _draw(jax.device_put(rng, cpu), jax.device_put(steps, cpu), sizes, batch_size)
    return np.asarray(i_s), np.asarray(i_t)


def _gather(arrays, idx: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(the rows ``idx`` names of each array, read in increasing order, and each draw's
    position among them): sorted reads keep a memory map's page faults sequential."""
    flat = idx.reshape(-1)
    order = np.argsort(flat, kind="stable")
    position = np.empty(len(order), np.int32)
    position[order] = np.arange(len(order), dtype=np.int32)
    rows = [np.take(np.asarray(a) if a.ndim == 1 else a, flat[order], axis=0) for a in arrays]
    return rows, position.reshape(idx.shape)


def gather_chunk(pools: TrainData, i_s: np.ndarray, i_t: np.ndarray) -> Fed:
    """A `Fed` (host arrays) of one chunk: the drawn rows of both domains, and each
    step's positions in them."""
    (source, labels), p_s = _gather((pools.source_images, pools.source_labels), i_s)
    (target,), p_t = _gather((pools.target_images,), i_t)
    pool = TrainData(source, labels, target, np.asarray(pools.mean), pools.image_shape)
    return Fed(pool, p_s, p_t)


def chunk_bytes(pools: TrainData, steps: int, models: int, batch_size: int) -> int:
    """Device bytes of the host-fed chunks that can be alive at once: the one running,
    the one queued behind it and the `AHEAD` prepared."""
    row = pools.source_images.shape[1] * pools.source_images.dtype.itemsize
    per_chunk = steps * models * batch_size * (2 * row + 3 * 4)  # rows, a label, 2 positions
    return (AHEAD + 2) * per_chunk


def _prepare(pools: TrainData, rng, first: int, n: int, batch_size: int, put) -> Fed:
    """One chunk drawn, gathered and placed (on the background thread)."""
    sizes = (len(pools.source_images), len(pools.target_images))
    return put(gather_chunk(pools, *draw_chunk(rng, first, n, sizes, batch_size)))


def _placer(mesh, split: bool):
    """How a host `Fed` goes onto the mesh: all replicated, or (models split over the
    devices) each model's positions with it."""

    def put(fed: Fed) -> Fed:
        pool = sharding.put_replicated(fed.pool, mesh)
        if split:
            return Fed(pool, *sharding.put_sharded((fed.source_index, fed.target_index), mesh, 1))
        return Fed(pool, *sharding.put_replicated((fed.source_index, fed.target_index), mesh))

    return put


@contextlib.contextmanager
def inputs(
    how: str, pools, schedule: Iterable[tuple[int, int]], *, rng=None, batch_size: int = 0,
    mesh=None, split: bool = False,
) -> Iterator[Iterator[tuple[int, int, object]]]:  # fmt: skip
    """``(first step, steps, data)`` of each chunk of ``schedule``: on the ``"device"``
    path the placed pools every time; on the ``"host"`` path each chunk's `Fed`, prepared
    `AHEAD` chunks ahead on one background thread (``pools``: host arrays, ``rng``: the
    host state's key, stacked for stacked seeds). Leaving the block stops the thread."""
    if how == "device":
        yield ((first, n, pools) for first, n in schedule)
        return
    prepare = functools.partial(_prepare, pools, rng, batch_size=batch_size)
    put = _placer(mesh, split)
    with ThreadPoolExecutor(1, thread_name_prefix="dann-feed") as worker:
        pending: collections.deque = collections.deque()

        def chunks():
            todo = iter(schedule)
            for first, n in todo:
                pending.append((first, n, worker.submit(prepare, first, n, put=put)))
                if len(pending) > AHEAD:
                    first, n, future = pending.popleft()
                    yield first, n, future.result()
            while pending:
                first, n, future = pending.popleft()
                yield first, n, future.result()

        try:
            yield chunks()
        finally:
            for *_, future in pending:
                future.cancel()
