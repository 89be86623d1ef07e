"""Data parallelism by sharding: one jitted program over a device mesh.

The training state and the device-resident data pools are replicated on every device;
each step draws the *global* batch exactly as a single-device run does and constrains it
to be split along the mesh's ``batch`` axis, so XLA partitions the step and inserts the
gradient all-reduce itself. The same code runs on one device, on all local devices and
across hosts (after ``jax.distributed.initialize()``): on N devices it computes what
one device computes on the whole batch, up to the order of floating-point sums.

References: the JAX guide "Distributed arrays and automatic parallelization"; big_vision's
train loop (one jitted update over a mesh, state donated).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXIS",
    "batch_sharding",
    "fetch",
    "make_mesh",
    "put_replicated",
    "replicate",
    "replicated",
    "shard",
    "unreplicate",
]

BATCH_AXIS = "batch"  # also `dann_jax.train.AXIS`, the pmap axis name (see `replicate`)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``batch`` over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def _put_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    """One host value onto every device of `sharding` (every process passes the same value)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # Typed PRNG keys travel as their raw data and are wrapped again on the devices.
        impl = jax.random.key_impl(x)
        data = _put_leaf(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Several processes: each holds the whole (replicated) value and supplies its own
    # devices' copies.
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of a host pytree replicated over the mesh (state, data pools, hparams)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _put_leaf(x, sharding), tree)


def fetch(tree: Any) -> Any:
    """A host (numpy) copy of a replicated pytree; works on multi-host arrays too.

    A replicated array's local copy is the whole value, so no cross-host transfer is
    needed.
    """

    leaves = jax.tree.leaves(tree)
    if all(
        not isinstance(x, jax.Array)
        or (x.is_fully_addressable and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
        for x in leaves
    ):
        return jax.device_get(tree)  # the usual case: one batched transfer

    def get(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                get(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return jax.device_get(x)

    return jax.tree.map(get, tree)


# ---------------------------------------------------------------- the jax.pmap form
# `dann_jax.compile_train_step(parallel=True)` takes arguments with a leading device
# axis: these helpers make and undo it.


def replicate(tree: Any, devices: list | None = None) -> Any:
    """Copy every leaf once onto each local device, with a leading device axis (for pmap)."""
    devices = devices or jax.local_devices()
    # The mesh axis is named like the pmap axis: a pmapped step's outputs then carry the
    # same sharding as these inputs, and its second call does not compile again.
    mesh = jax.sharding.Mesh(np.array(devices), (BATCH_AXIS,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(BATCH_AXIS))

    def put(x):
        x = jnp.asarray(x) if not isinstance(x, np.ndarray) else x
        shards = [jax.device_put(x[None], d) for d in devices]
        return jax.make_array_from_single_device_arrays((len(devices), *x.shape), sharding, shards)

    return jax.tree.map(put, tree)


def shard(tree: Any, num_devices: int | None = None) -> Any:
    """Split each leaf's leading (batch) axis into (num_devices, batch / num_devices, ...)."""
    n = num_devices or jax.local_device_count()

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} does not split evenly over {n} devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, tree)


def unreplicate(tree: Any) -> Any:
    """The first local replica of a replicated pytree (also on multi-host pmap outputs)."""
    return jax.tree.map(
        lambda x: x.addressable_data(0)[0] if isinstance(x, jax.Array) else x[0], tree
    )
