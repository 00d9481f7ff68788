"""Multi-process data-parallel training with ``jax.distributed`` (one process per node).

Every process runs the same ``polmp train`` with the same config and data; JAX joins
them into one set of global devices (``jax.devices()`` lists every process's devices,
process 0's first), and the data-parallel mesh of ``polmp.training.sharding`` spans
them all, so the multi-process run takes the same code path as one process with D
devices: each optimiser step's global batch is cut into D device sub-batches, XLA
all-reduces the gradient (on CPU through the gloo collectives), and the parameters
stay replicated.  Every process plans the same batches from (seed, epoch) and places
only the sub-batches of its own devices.

Where the coordinates come from, first match wins:

1. ``training.coordinator_address``, ``training.num_processes``,
   ``training.process_id`` in the config;
2. the environment variables ``POLMP_COORDINATOR_ADDRESS``, ``POLMP_NUM_PROCESSES``,
   ``POLMP_PROCESS_ID``;
3. with ``training.distributed: true`` and neither of the above, JAX's own cluster
   detection (SLURM, Open MPI, ...: ``jax.distributed.initialize()`` without
   arguments).

Files: process 0 writes the run directory ``output_dir``; process k > 0 writes its own
copy under ``output_dir/process_k`` (its checkpoints and metrics are identical, since
the parameters are replicated), so processes never write the same file.

See docs/training.md ("Several processes / nodes") for launching under SLURM.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import jax

#: environment variables read when the config leaves a coordinate unset
ENV_COORDINATOR = "POLMP_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "POLMP_NUM_PROCESSES"
ENV_PROCESS_ID = "POLMP_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ProcessGrid:
    """Where this process sits: ``coordinator_address`` ``host:port`` of process 0,
    ``num_processes`` P and ``process_id`` in 0..P-1 (``None``: JAX detects them)."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def process_grid(training) -> ProcessGrid | None:
    """The process grid requested by a ``TrainingConfig`` and the environment.

    Returns:
        ``None`` for a single-process run (no coordinate anywhere and
        ``training.distributed`` false), else the ``ProcessGrid``.

    Raises:
        ValueError: an incomplete or inconsistent set of coordinates.
    """
    address = training.coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    count = training.num_processes
    count = _env_int(ENV_NUM_PROCESSES) if count is None else count
    pid = training.process_id
    pid = _env_int(ENV_PROCESS_ID) if pid is None else pid
    given = [x is not None for x in (address, count, pid)]
    if not any(given):
        return ProcessGrid(None, None, None) if training.distributed else None
    if not all(given):
        raise ValueError(
            "multi-process training needs all of coordinator_address, num_processes "
            f"and process_id (config or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, "
            f"{ENV_PROCESS_ID}); got address={address!r}, num_processes={count}, "
            f"process_id={pid}"
        )
    if count < 1 or not 0 <= pid < count:
        raise ValueError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
            f"num_processes={count}, process_id={pid}"
        )
    return ProcessGrid(address, count, pid)


def initialize(grid: ProcessGrid) -> None:
    """Join the process grid (``jax.distributed.initialize``); idempotent.

    On CPU the cross-process collectives are gloo's.  Must run before anything else
    touches a JAX device in this process.
    """
    if jax.distributed.is_initialized():
        return
    # the CPU client needs a cross-process collectives backend; harmless elsewhere
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=grid.coordinator_address,
        num_processes=grid.num_processes,
        process_id=grid.process_id,
    )


def setup_training(config):
    """Join the process grid a ``RunConfig`` asks for and check the run fits it.

    A single-process config is returned unchanged.  Otherwise: initialise
    ``jax.distributed``, check that the mesh spans every global device
    (``training.num_devices == jax.device_count()``) and give processes k > 0 their
    own output directory ``output_dir/process_k``.

    Returns:
        The ``RunConfig`` this process trains with.

    Raises:
        ValueError: inconsistent coordinates, a mesh that leaves out some process's
            devices, or parity plots (their data is spread over the processes).
    """
    grid = process_grid(config.training)
    if grid is None:
        return config
    initialize(grid)
    if jax.process_count() == 1:
        return config
    t = config.training
    if t.num_devices != jax.device_count():
        raise ValueError(
            f"multi-process training: training.num_devices = {t.num_devices} but the "
            f"{jax.process_count()} processes have {jax.device_count()} devices in "
            "all; set num_devices to that total (every process must hold a part of "
            "the mesh)"
        )
    if t.parity_plots:
        raise ValueError(
            "multi-process training: set training.parity_plots: false (the parity "
            "data is spread over the processes); plot from the saved model instead"
        )
    k = jax.process_index()
    if k > 0:
        out = str(pathlib.Path(config.output_dir) / f"process_{k}")
        config = dataclasses.replace(config, output_dir=out)
    return config
