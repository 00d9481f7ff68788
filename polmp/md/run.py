"""Chunked molecular-dynamics driver: K steps per jitted ``lax.scan``, host checks between.

Contract (jax-md style): ``step_fn(state, neighbor=nbrs) -> state`` is any jax-md
integrator step (``simulate.nve``, ``nvt_nose_hoover``, ``nvt_langevin``, ...);
``neighbor_fns`` is a ``jax_md.partition.NeighborListFns`` (``allocate``/``update``);
``record_fn(state, nbrs) -> pytree`` computes per-step observables *inside the same
scan* (e.g. Pdot = sum_i Z*_i v_i and alpha_sys), so an MD step and its observables
are one traced graph.

Overflow policy (never drop neighbours): the neighbour list is updated every step
inside the scan; jax-md sets a sticky overflow flag when its buffer is too small.
After each chunk the host reads the flag; on overflow it reallocates a larger list
from the positions at the *start* of the chunk and redoes the whole chunk, so the
returned trajectory never contains a step computed with a truncated list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


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
    step_fn, neighbor_update, record_fn=None, *, chunk_steps: int, record_every: int = 1
):
    """Jitted function running ``chunk_steps`` MD steps in one ``lax.scan``.

    ``neighbor_update(positions, nbrs)`` is the bundle's update (jax-md's
    ``NeighborListFns.update`` or polmp's, which converts Cartesian positions to the
    fractional coordinates its list was built with; ``nbrs.update`` would skip that).

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
        nbrs = neighbor_update(state.position, nbrs)
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

    Returns:
        ``MDResult``.
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
            if not bool(new_neighbor.did_buffer_overflow):
                break
            # Redo the chunk from its start with a list sized for the current positions;
            # if the system compresses further during the chunk this repeats.
            reallocations += 1
            neighbor = neighbor_fns.allocate(state.position)
        else:
            raise RuntimeError(
                f"neighbour list still overflows after {max_reallocations} reallocations "
                f"at step {start}; the system may be exploding"
            )
        state, neighbor = new_state, new_neighbor
        if record_fn is not None:
            chunks.append(jax.tree_util.tree_map(np.asarray, records))
        if on_chunk is not None:
            on_chunk(start + chunk_steps, state, records)
        if bar is not None:
            bar.update(chunk_steps)
    if bar is not None:
        bar.close()
    stacked = None
    if chunks:
        stacked = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *chunks)
    return MDResult(
        state=state, neighbor=neighbor, records=stacked, num_reallocations=reallocations
    )
