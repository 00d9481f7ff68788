"""Orbax checkpoints of a training run, verified on load (host side).

A checkpoint directory ``<run>/checkpoints/<step>/`` holds two items:

* ``state``: the ``TrainState`` as a pytree (params, EMA params, optimiser state,
  step, PRNG key), written with ``orbax.checkpoint.args.StandardSave``;
* ``meta``: JSON with the ``LoopState`` (epoch, position in the epoch's batch order,
  early-stopping record) and anything else the loop needs to resume exactly.

Restoring needs a template state of the same structure (``TrainState`` built from the
config), so optax's namedtuples and flax's dicts come back with their types; arrays
come back with the template's dtypes and shapes, bit for bit.  The best EMA
parameters (lowest validation loss) are kept separately under ``<run>/best/``.

Verification: after orbax has committed a checkpoint, ``MANIFEST`` (``polmp-sha256.json``)
is written into its directory with the SHA-256 of every file.  Loading checks every
file against it and every restored array for NaN/inf, and raises
``CorruptCheckpointError`` naming the bad file (or array).  A checkpoint without a
manifest (written by an older polmp, or killed between orbax's commit and the
manifest) is checked for finite values only.  ``restore_checkpoint(...,
fallback=True)`` (what ``train(resume=True)`` uses) skips a corrupted newest
checkpoint with a warning and restores the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from polmp.training.state import LoopState, TrainState

#: file, inside every checkpoint directory, of the SHA-256 of its other files
MANIFEST = "polmp-sha256.json"


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files or values are damaged (the message names which)."""


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory) -> None:
    """Write ``MANIFEST`` (SHA-256 of every file) into a committed checkpoint dir."""
    directory = pathlib.Path(directory)
    sums = {str(p.relative_to(directory)): _sha256(p) for p in _files(directory)}
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(sums, handle, indent=0, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / MANIFEST)


def verify_files(directory) -> bool:
    """Check every file of a checkpoint directory against its ``MANIFEST``.

    Returns:
        True when a manifest exists and every file matches; False when there is no
        manifest (nothing to check against).

    Raises:
        CorruptCheckpointError: a missing file or a checksum mismatch (named).
    """
    directory = pathlib.Path(directory)
    manifest = directory / MANIFEST
    if not manifest.exists():
        return False
    try:
        sums = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(
            f"{manifest}: unreadable manifest ({err})"
        ) from err
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise CorruptCheckpointError(f"{path}: file missing from the checkpoint")
        if _sha256(path) != expected:
            raise CorruptCheckpointError(
                f"{path}: checksum mismatch, the file was damaged or changed after "
                "the checkpoint was written"
            )
    return True


def check_finite(tree, where) -> None:
    """Raise ``CorruptCheckpointError`` naming the first array with NaN or inf."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
            raise CorruptCheckpointError(
                f"{where}: array {jax.tree_util.keystr(path)} holds NaN or inf"
            )


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
    write_manifest(_step_dir(manager, step))
    return step


def _step_dir(manager: ocp.CheckpointManager, step: int) -> pathlib.Path:
    return pathlib.Path(manager.directory) / str(step)


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest step in ``manager``, or None."""
    return manager.latest_step()


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    template: TrainState,
    step: int | None = None,
    *,
    fallback: bool = False,
) -> tuple[TrainState, LoopState, dict]:
    """Read and verify a checkpoint into the structure of ``template``.

    Args:
        manager: from ``make_manager``.
        template: a ``TrainState`` of the same structure (e.g. freshly initialised).
        step: which step (default: the latest).
        fallback: when ``step`` is None and the newest checkpoint is corrupted, warn
            and restore the newest intact one instead.

    Returns:
        (state, loop, extra).

    Raises:
        FileNotFoundError: no checkpoint in the directory.
        CorruptCheckpointError: the checkpoint (or, with ``fallback``, every one) is
            damaged; the message names the bad file.
    """
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    errors = []
    for candidate in steps if fallback else steps[:1]:
        try:
            result = _restore_step(manager, template, candidate)
        except CorruptCheckpointError as err:
            errors.append(str(err))
            if fallback:
                warnings.warn(
                    f"skipping corrupted checkpoint: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
            continue
        if errors:
            warnings.warn(
                f"resuming from step {candidate}, the newest intact checkpoint",
                RuntimeWarning,
                stacklevel=2,
            )
        return result
    raise CorruptCheckpointError("; ".join(errors))


def _restore_step(manager, template: TrainState, step: int):
    directory = _step_dir(manager, step)
    verify_files(directory)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(template.as_dict())),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = TrainState.from_dict(dict(restored["state"]))
        meta = restored["meta"]
        loop = LoopState.from_json(meta["loop"])
    except Exception as err:  # orbax/tensorstore raise many types on damaged files
        raise CorruptCheckpointError(
            f"{directory}: cannot be read ({type(err).__name__}: {err})"
        ) from err
    check_finite(state.as_dict(), directory)
    return state, loop, meta.get("extra", {})


def save_params(path, params) -> None:
    """Write a parameter tree (e.g. the best EMA params) to ``path`` (overwrites)."""
    path = pathlib.Path(path).resolve()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, _host(params), force=True)
        checkpointer.wait_until_finished()
    write_manifest(path)


def load_params(path, template):
    """Read and verify a parameter tree written by ``save_params``.

    Raises:
        CorruptCheckpointError: a file that does not match the manifest, an
            unreadable checkpoint or a NaN/inf parameter (the message names it).
    """
    path = pathlib.Path(path).resolve()
    verify_files(path)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(path, _abstract(template))
    except Exception as err:  # orbax/tensorstore raise many types on damaged files
        raise CorruptCheckpointError(
            f"{path}: cannot be read ({type(err).__name__}: {err})"
        ) from err
    check_finite(params, path)
    return params
