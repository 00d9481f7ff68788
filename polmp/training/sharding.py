"""Data-parallel placement over a 1-D device mesh (axis ``"data"``).

Batches reach the jitted step *device-stacked*: every leaf of the ``Batch`` has a
leading axis D (the number of devices), entry d being a complete padded sub-batch of
its own (its own padding atom and graph).  The leading axis is sharded over the mesh
axis ``"data"`` (so each device holds whole graphs and computes its own edges without
communication), while parameters, optimiser state and loss weights are replicated.
The loss sums errors over D before dividing (``polmp.training.losses``), so the
gradient all-reduce that XLA inserts gives exactly the gradient of the whole batch.
With D = 1 the same code runs on one device.

Several processes (``polmp.training.distributed``): the mesh spans the global devices
of every process, each process holds the same host batch and places only the
sub-batches of its own devices (``jax.make_array_from_callback``); the jitted step is
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: the mesh axis the batch is split over
DATA_AXIS = "data"


def make_mesh(num_devices: int = 1) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all processes' devices).

    Args:
        num_devices: D.

    Returns:
        ``Mesh`` with axis ``"data"``.

    Raises:
        ValueError: fewer devices available than requested, or (several processes) a
            mesh that leaves out some process's devices.
    """
    devices = jax.devices()
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"num_devices = {num_devices} but {jax.process_count()} processes hold "
            f"{len(devices)} devices; the mesh must span all of them"
        )
    if num_devices > len(devices):
        raise ValueError(
            f"num_devices = {num_devices} but only {len(devices)} device(s) are "
            "available (on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=D "
            "before jax starts)"
        )
    return Mesh(np.array(devices[:num_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading axis over ``"data"``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def stack_batches(batches: Sequence):
    """Stack D host batches of identical structure into one with a leading axis D.

    Not jittable (numpy on the host).

    Raises:
        ValueError: the batches differ in structure or leaf shapes (e.g. long-range
            data prepared without pinned capacities).
    """
    structures = {jax.tree.structure(b) for b in batches}
    shapes = {tuple(np.shape(x) for x in jax.tree.leaves(b)) for b in batches}
    if len(structures) != 1 or len(shapes) != 1:
        raise ValueError(
            "per-device sub-batches differ in structure or shapes; pin the capacities "
            "(atoms, edges, graphs, and long-range slots/k-vectors) of every sub-batch"
        )
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


def _place(tree, sharding: NamedSharding):
    """``jax.device_put`` for one process; across processes every process passes the
    same full host value and contributes the pieces of its own devices."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def one(x):
        x = np.asarray(x)  # the full value (host, local or replicated global array)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def put_batch(batch, mesh: Mesh):
    """Place a device-stacked batch with its leading axis split over the mesh."""
    return _place(batch, data_sharded(mesh))


def put_replicated(tree, mesh: Mesh):
    """Place a pytree replicated on every device of the mesh."""
    return _place(tree, replicated(mesh))
