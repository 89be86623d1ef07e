"""Data parallelism over a device mesh: the mesh, and moving pytrees onto it and back.

The training state and the device-resident data pools are replicated on every device;
the per-device step (`dann_jax.compiled`, a ``jax.shard_map`` over the mesh's ``batch``
axis) gathers each device's block of the global batch itself. Test sets are split
along the mesh (`put_sharded`), so evaluation too is 1/N of the work per device. The
same code runs on one device, on all local devices and across hosts (after
``jax.distributed.initialize()``): on N devices it computes what one device computes
on the whole batch, up to the order of floating-point sums.

References: the JAX guide "Distributed arrays and automatic parallelization" and its
``shard_map`` page; big_vision's train loop (one jitted update over a mesh, donated).
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
    "put_sharded",
    "replicate",
    "replicated",
    "shard",
    "unreplicate",
]

BATCH_AXIS = "batch"  # also `dann_jax.train.AXIS`, the pmap axis name (see `replicate`)


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``batch`` over `devices` (default: every device of every process).

    Built by ``jax.make_mesh``, which orders the devices along the interconnect (a ring
    on TPU), so the gradient all-reduce takes the fast path.
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (BATCH_AXIS,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Axis `axis` split over the mesh, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), BATCH_AXIS))


def _put_leaf(x: Any, sharding: NamedSharding) -> jax.Array:
    """One host value onto the devices of `sharding` (every process passes the same value).

    Each process supplies the pieces its own devices hold, so the same call works on one
    host and across hosts.
    """
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # Typed PRNG keys travel as their raw data and are wrapped again on the devices.
        impl = jax.random.key_impl(x)
        data = _put_leaf(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=impl)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of a host pytree replicated over the mesh (state, data pools, hparams)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _put_leaf(x, sharding), tree)


def put_sharded(tree: Any, mesh: Mesh, axis: int = 0) -> Any:
    """Every leaf of a host pytree split along `axis` over the mesh (e.g. a test set)."""
    sharding = batch_sharding(mesh, axis)
    return jax.tree.map(lambda x: _put_leaf(x, sharding), tree)


def fetch(tree: Any) -> Any:
    """A host (numpy) copy of a pytree of replicated or sharded arrays, also multi-host.

    A replicated array's local copy is the whole value, so it needs no cross-host
    transfer; an array split over several hosts is gathered from all of them
    (``multihost_utils.process_allgather``: every process must call `fetch` then).
    """

    def addressable(x):
        return not isinstance(x, jax.Array) or x.is_fully_addressable

    leaves = jax.tree.leaves(tree)
    if all(
        addressable(x)
        and not (isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
        for x in leaves
    ):
        return jax.device_get(tree)  # the usual case: one batched transfer

    def get(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                get(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        if addressable(x):
            return jax.device_get(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


# ---------------------------------------------------------------- the jax.pmap form
# `dann_jax.compile_train_step(parallel=True)` takes arguments with a leading device
# axis: these helpers make and undo it.


def replicate(tree: Any, devices: list | None = None) -> Any:
    """Copy every leaf once onto each local device, with a leading device axis (for pmap)."""
    devices = devices or jax.local_devices()
    # The mesh axis is named like the pmap axis: a pmapped step's outputs then carry the
    # same sharding as these inputs, and its second call does not compile again.
    mesh = jax.sharding.Mesh(np.array(devices), (BATCH_AXIS,))  # pmap's own device order
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
