"""Chunked molecular-dynamics driver: K steps per jitted ``lax.scan``, host checks between.

Contract (jax-md style): ``step_fn(state, neighbor=nbrs) -> state`` is any jax-md
integrator step (``simulate.nve``, ``nvt_nose_hoover``, ``nvt_langevin``, ...);
``neighbor_fns`` is a ``jax_md.partition.NeighborListFns`` (``allocate``/``update``);
``record_fn(state, nbrs) -> pytree`` computes per-step observables *inside the same
scan* (e.g. Pdot = sum_i Z*_i v_i and alpha_sys), so an MD step and its observables
are one traced graph.

Overflow policy (never drop neighbours): the neighbour list is updated every step
inside the scan; jax-md sets a sticky overflow flag when its buffer is too small (or
its cells became too small for a shrinking box).  After each chunk the host reads
the flag; on overflow it reallocates a larger list from the positions at the *start*
of the chunk and redoes the whole chunk, so the returned trajectory never contains a
step computed with a truncated list.

Blow-ups are never silent: after each accepted chunk the host checks that the
positions (and the recorded observables) are finite; if not it raises
``MDBlowUp`` naming the step, carrying the records of the chunks before it.

A changing box (NPT): pass ``box_fn(state) -> box`` (e.g. ``jax_md.simulate.npt_box``);
the list is then updated and reallocated with ``box=`` the current box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from polmp.geometry.neighbors import list_overflowed


class MDBlowUp(RuntimeError):
    """The MD state became non-finite.

    Attributes:
        step: the first step known to be non-finite (a record's step, or the end of
            the chunk).
        last_good_step: the step of the last finite state that was kept.
        records: the stacked records of the accepted chunks before the blow-up, plus
            the finite records of the failing chunk (or None).
    """

    def __init__(self, message, step, last_good_step, records):
        super().__init__(message)
        self.step = step
        self.last_good_step = last_good_step
        self.records = records


@dataclasses.dataclass(frozen=True)
class MDResult:
    """Outcome of ``run_chunked``.

    Attributes:
        state: the final integrator state (a jax-md dataclass).
        neighbor: the final neighbour list.
        records: the recorded observables, each stacked along a leading time axis of
            length num_steps // record_every (numpy arrays), or None.
        num_reallocations: how many times the neighbour list had to be reallocated.
    """

    state: Any
    neighbor: Any
    records: Any
    num_reallocations: int


def make_chunk_fn(
    step_fn,
    neighbor_update,
    record_fn=None,
    *,
    chunk_steps: int,
    record_every: int = 1,
    box_fn=None,
):
    """Jitted function running ``chunk_steps`` MD steps in one ``lax.scan``.

    ``neighbor_update(positions, nbrs[, box=])`` is the bundle's update (jax-md's
    ``NeighborListFns.update`` or polmp's); with ``box_fn`` the current box is passed.

    Returns:
        ``chunk_fn(state, nbrs) -> (state, nbrs, records)`` where records has a leading
        axis of length chunk_steps // record_every (None without record_fn).
    """
    if chunk_steps % record_every:
        raise ValueError(
            f"chunk_steps ({chunk_steps}) must be a multiple of record_every ({record_every})"
        )

    def one_step(carry, _):
        state, nbrs = carry
        state = step_fn(state, neighbor=nbrs)
        kw = {} if box_fn is None else {"box": box_fn(state)}
        nbrs = neighbor_update(state.position, nbrs, **kw)
        return (state, nbrs), None

    def recorded_block(carry, _):
        carry, _ = jax.lax.scan(one_step, carry, None, length=record_every)
        record = None if record_fn is None else record_fn(*carry)
        return carry, record

    @jax.jit
    def chunk_fn(state, nbrs):
        (state, nbrs), records = jax.lax.scan(
            recorded_block, (state, nbrs), None, length=chunk_steps // record_every
        )
        return state, nbrs, records

    return chunk_fn


def run_chunked(
    step_fn: Callable,
    state,
    neighbor_fns,
    neighbor,
    *,
    num_steps: int,
    chunk_steps: int = 100,
    record_fn: Callable | None = None,
    record_every: int = 1,
    max_reallocations: int = 10,
    progress: bool = False,
    on_chunk: Callable | None = None,
    box_fn: Callable | None = None,
    first_step: int = 0,
) -> MDResult:
    """Run ``num_steps`` of MD in jitted chunks, reallocating the neighbour list on overflow.

    Args:
        step_fn: jax-md step function ``step_fn(state, neighbor=...)``.
        state: initial integrator state.
        neighbor_fns: ``jax_md.partition.NeighborListFns`` or
            ``polmp.geometry.neighbors.NeighborListFns`` (update inside the scan,
            allocate on overflow).
        neighbor: neighbour list allocated for ``state.position``.
        num_steps: total steps (a multiple of ``chunk_steps``).
        chunk_steps: steps per jitted chunk (one compile for all chunks).
        record_fn: optional ``(state, nbrs) -> pytree`` recorded every ``record_every`` steps.
        record_every: recording interval in steps.
        max_reallocations: give up (RuntimeError) after this many reallocations of one chunk.
        progress: show a tqdm progress bar.
        on_chunk: optional host callback ``on_chunk(step, state, records)`` after each
            accepted chunk (e.g. to write a trajectory).
        box_fn: ``box_fn(state) -> box`` (jax-md convention) for a changing box.
        first_step: step number of ``state`` (for messages).

    Returns:
        ``MDResult``.

    Raises:
        MDBlowUp: non-finite positions or records after a chunk.
    """
    if num_steps % chunk_steps:
        raise ValueError(
            f"num_steps ({num_steps}) must be a multiple of chunk_steps ({chunk_steps})"
        )
    chunk_fn = make_chunk_fn(
        step_fn,
        neighbor_fns.update,
        record_fn,
        chunk_steps=chunk_steps,
        record_every=record_every,
        box_fn=box_fn,
    )
    chunks = []
    reallocations = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, unit="step")
    for start in range(0, num_steps, chunk_steps):
        for _ in range(max_reallocations + 1):
            new_state, new_neighbor, records = chunk_fn(state, neighbor)
            if not bool(list_overflowed(new_neighbor)):
                break
            # Redo the chunk from its start with a list sized for the current positions;
            # if the system compresses further during the chunk this repeats.
            reallocations += 1
            kw = {} if box_fn is None else {"box": box_fn(state)}
            neighbor = neighbor_fns.allocate(state.position, **kw)
        else:
            raise RuntimeError(
                f"neighbour list still overflows after {max_reallocations} reallocations "
                f"at step {start}; the system may be exploding"
            )
        host_records = (
            None if record_fn is None else jax.tree_util.tree_map(np.asarray, records)
        )
        if not np.all(np.isfinite(np.asarray(new_state.position))):
            _blow_up(
                first_step + start, chunk_steps, record_every, chunks, host_records
            )
        state, neighbor = new_state, new_neighbor
        if record_fn is not None:
            chunks.append(host_records)
        if on_chunk is not None:
            on_chunk(start + chunk_steps, state, records)
        if bar is not None:
            bar.update(chunk_steps)
    if bar is not None:
        bar.close()
    return MDResult(
        state=state,
        neighbor=neighbor,
        records=_stack(chunks),
        num_reallocations=reallocations,
    )


def _stack(chunks):
    if not chunks:
        return None
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *chunks)


def _blow_up(start, chunk_steps, record_every, chunks, records):
    """Raise ``MDBlowUp`` for the chunk starting at step ``start``."""
    step = start + chunk_steps
    kept = list(chunks)
    if records is not None:
        leaves = jax.tree_util.tree_leaves(records)
        finite = np.ones(leaves[0].shape[0], bool)
        for leaf in leaves:
            finite &= np.isfinite(leaf.reshape(leaf.shape[0], -1)).all(axis=1)
        bad = np.flatnonzero(~finite)
        if bad.size:
            step = start + (int(bad[0]) + 1) * record_every
            good = int(bad[0])
            if good:
                kept.append(jax.tree_util.tree_map(lambda x: x[:good], records))
    last_good = start if records is None else step - record_every
    raise MDBlowUp(
        f"MD blew up: the state is non-finite (NaN/inf) at step {step} (last finite "
        f"state kept: step {max(last_good, start)}); the time step may be too large, "
        "the structure unphysical, or (NPT) the box left the range the model was "
        "prepared for",
        step,
        max(last_good, start),
        _stack(kept),
    )
