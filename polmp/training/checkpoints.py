"""Orbax checkpoints of a training run (host side).

A checkpoint directory ``<run>/checkpoints/<step>/`` holds two items:

* ``state``: the ``TrainState`` as a pytree (params, EMA params, optimiser state,
  step, PRNG key), written with ``orbax.checkpoint.args.StandardSave``;
* ``meta``: JSON with the ``LoopState`` (epoch, position in the epoch's batch order,
  early-stopping record) and anything else the loop needs to resume exactly.

Restoring needs a template state of the same structure (``TrainState`` built from the
config), so optax's namedtuples and flax's dicts come back with their types; arrays
come back with the template's dtypes and shapes, bit for bit.  The best EMA
parameters (lowest validation loss) are kept separately under ``<run>/best/``.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from polmp.training.state import LoopState, TrainState


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _host(tree):
    # numpy copies on the host: orbax then writes replicated/sharded arrays alike
    return jax.tree.map(np.asarray, tree)


def make_manager(directory, *, max_to_keep: int | None = 2) -> ocp.CheckpointManager:
    """A synchronous ``CheckpointManager`` over ``directory`` (created if needed)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(
        pathlib.Path(directory).resolve(), options=options, item_names=("state", "meta")
    )


def save_checkpoint(
    manager: ocp.CheckpointManager,
    state: TrainState,
    loop: LoopState,
    extra: dict | None = None,
) -> int:
    """Write ``state`` and ``loop`` at step ``state.step``; returns the step.

    Args:
        manager: from ``make_manager``.
        state: the training state (any sharding; gathered to host numpy first).
        loop: host bookkeeping.
        extra: more JSON-able metadata stored under ``meta["extra"]``.

    Returns:
        the step number the checkpoint is filed under.
    """
    step = int(np.asarray(state.step))
    meta = {"loop": loop.to_json(), "extra": extra or {}}
    if step in manager.all_steps():
        # same step saved again (e.g. end of run right after an epoch checkpoint):
        # the newer loop state wins
        manager.delete(step)
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_host(state.as_dict())),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    manager.wait_until_finished()
    return step


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest step in ``manager``, or None."""
    return manager.latest_step()


def restore_checkpoint(
    manager: ocp.CheckpointManager, template: TrainState, step: int | None = None
) -> tuple[TrainState, LoopState, dict]:
    """Read a checkpoint into the structure of ``template``.

    Args:
        manager: from ``make_manager``.
        template: a ``TrainState`` of the same structure (e.g. freshly initialised).
        step: which step (default: the latest).

    Returns:
        (state, loop, extra).

    Raises:
        FileNotFoundError: no checkpoint in the directory.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(template.as_dict())),
            meta=ocp.args.JsonRestore(),
        ),
    )
    state = TrainState.from_dict(dict(restored["state"]))
    meta = restored["meta"]
    return state, LoopState.from_json(meta["loop"]), meta.get("extra", {})


def save_params(path, params) -> None:
    """Write a parameter tree (e.g. the best EMA params) to ``path`` (overwrites)."""
    path = pathlib.Path(path).resolve()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, _host(params), force=True)
        checkpointer.wait_until_finished()


def load_params(path, template):
    """Read a parameter tree written by ``save_params`` into ``template``'s shape."""
    path = pathlib.Path(path).resolve()
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, _abstract(template))
