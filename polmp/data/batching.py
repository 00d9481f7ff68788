"""Padded batching of frames into ``Graph``/``Batch`` pytrees (host side, not jittable).

Everything here runs in numpy on the host and decides the static shapes that the
jitted code sees:

* ``frames_to_graph`` concatenates frames along the atom axis, builds their full
  neighbour lists (``polmp.geometry.neighbors.neighbor_pairs``) and pads atoms, edges
  and graphs to given capacities, following the padding rules of
  ``polmp.geometry.graph`` (>= 1 padding atom and >= 1 padding graph; padded atoms
  have species 0, position 0 and belong to the first padding graph; padded edges are
  self-edges of that padding atom with zero shift; padded and non-periodic cells are
  the identity with pbc False).
* ``frames_to_batch`` adds the padded labels (``Batch``) with masks for labels a frame
  does not carry, and optionally the static long-range data of the batch
  (``long_range=``, a host function of the padded graph such as
  ``functools.partial(polmp.models.long_range.prepare_long_range, accuracy=1e-6)``).
* ``plan_buckets`` groups a data set into batches and rounds their capacities onto a
  coarse ladder (``round_capacity``), then merges shapes until at most ``max_shapes``
  remain, so that a data set of mixed sizes compiles a handful of shapes instead of
  one per batch.

Typical use::

    plans = plan_buckets(frames, cutoff, batch_size=4)
    for plan in plans:
        batch = frames_to_batch([frames[k] for k in plan.indices], cutoff,
                                plan.num_atoms, plan.num_edges, plan.num_graphs)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from polmp.data.schema import Frame
from polmp.geometry.cell import validate_cell, validate_positions
from polmp.geometry.graph import Graph
from polmp.geometry.neighbors import neighbor_pairs

#: Relative cost of one padded atom versus one padded edge when merging shapes in
#: ``plan_buckets`` (per-atom work in message passing is roughly that of ~8 edges).
_ATOM_COST = 8.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded ``Graph`` with its padded reference labels and label masks.

    A label a frame does not carry is zero and masked out; padding atoms and graphs
    are always masked out.  Losses multiply by the masks (and normalise by their sums).

    Attributes:
        graph: the padded ``Graph`` (N atoms, E edges, G graphs).
        energy: Float[Array, 'G'], eV, total energy per graph.
        forces: Float[Array, 'N 3'], eV/A.
        stress: Float[Array, 'G 3 3'], eV/A^3 (ASE sign: positive = tensile).
        energy_mask: Bool[Array, 'G'], real graph with an energy label.
        forces_mask: Bool[Array, 'N'], real atom whose frame has forces.
        stress_mask: Bool[Array, 'G'], real graph with a stress label.
        long_range: static long-range data of ``graph`` (a pytree, e.g.
            ``polmp.models.long_range.LongRangeData``; pass it on as
            ``energy_fn(params, batch.graph, long_range=batch.long_range)``), or None.
    """

    graph: Graph
    energy: jax.Array
    forces: jax.Array
    stress: jax.Array
    energy_mask: jax.Array
    forces_mask: jax.Array
    stress_mask: jax.Array
    long_range: Any = None


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One planned batch: which frames, and the capacities to pad them to.

    Attributes:
        indices: positions of the frames in the data set.
        num_atoms: atom capacity N (>= total atoms + 1).
        num_edges: edge capacity E (>= total edges).
        num_graphs: graph capacity G (>= number of frames + 1).
        kind: the group key of its frames (``plan_buckets(kinds=...)``), 0 if none.
    """

    indices: tuple[int, ...]
    num_atoms: int
    num_edges: int
    num_graphs: int
    kind: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        """(num_atoms, num_edges, num_graphs): what a jitted function compiles for."""
        return (self.num_atoms, self.num_edges, self.num_graphs)


def round_capacity(n: int, multiple: int = 8) -> int:
    """Round a size up onto a coarse ladder (host).

    Below ``8 * multiple`` the ladder is the multiples of ``multiple``; above, it
    keeps three significant bits (steps of 1/8 of the power of two below n), so
    the padding waste is at most 12.5 % and sizes stay multiples of ``multiple``.

    Args:
        n: the size needed (>= 0).
        multiple: granularity (a power of two, e.g. 8).

    Returns:
        The smallest ladder value >= max(n, 1).
    """
    n = max(int(n), 1)
    step = multiple
    if n > 8 * multiple:
        step = max(multiple, 2 ** (int(math.floor(math.log2(n))) - 3))
    return int(math.ceil(n / step) * step)


def _frame_geometry(frame: Frame):
    """(positions, numbers, cell, pbc) of a checked frame (identity cell if free)."""
    positions = validate_positions(frame.positions).astype(np.float64)
    numbers = np.asarray(frame.numbers)
    if numbers.shape != (positions.shape[0],):
        raise ValueError(
            f"numbers has shape {numbers.shape}, expected ({positions.shape[0]},)"
        )
    if positions.shape[0] == 0:
        raise ValueError("a frame has no atoms")
    if np.any(numbers <= 0):
        raise ValueError(
            "atomic numbers must be positive (0 is reserved for padding atoms)"
        )
    pbc = np.broadcast_to(np.asarray(frame.pbc, dtype=bool), (3,)).copy()
    if pbc.any():
        cell = validate_cell(frame.cell)
    else:
        cell = np.eye(3)  # finite inverse and volume; never used as a lattice
    return positions, numbers.astype(np.int32), cell, pbc


def _frame_pairs(frames: Sequence[Frame], cutoff: float):
    geometry = [_frame_geometry(frame) for frame in frames]
    pairs = [
        neighbor_pairs(pos, cell if pbc.any() else None, pbc, cutoff)
        for pos, _, cell, pbc in geometry
    ]
    return geometry, pairs


def count_edges(frames: Sequence[Frame], cutoff: float) -> np.ndarray:
    """Number of directed edges of each frame within ``cutoff``.  Not jittable.

    Args:
        frames: the data set.
        cutoff: float, A.

    Returns:
        int array (len(frames),).
    """
    _, pairs = _frame_pairs(frames, cutoff)
    return np.array([len(p[0]) for p in pairs], dtype=np.int64)


def frames_to_graph(
    frames: Sequence[Frame],
    cutoff: float,
    num_atoms: int | None = None,
    num_edges: int | None = None,
    num_graphs: int | None = None,
) -> Graph:
    """Concatenate and pad frames into one ``Graph``.  Not jittable.

    Neighbour lists are full lists within ``cutoff`` with integer image shifts
    (``neighbor_pairs``); edges are ordered by frame, then ``idx_i``, then ``idx_j``.

    Args:
        frames: one or more ``Frame``s (periodic, partially periodic or not).
        cutoff: float, A.
        num_atoms: atom capacity N; default total atoms + 1.
        num_edges: edge capacity E; default the total edge count (at least 1).
        num_graphs: graph capacity G; default len(frames) + 1.

    Returns:
        ``Graph`` with float arrays in jax's default float dtype (float64 under x64)
        and int32 indices.

    Raises:
        ValueError: no frames, a bad frame, or a capacity too small (at least one
            padding atom and one padding graph are required).
    """
    _, graph = _build(frames, cutoff, num_atoms, num_edges, num_graphs)
    return graph


def frames_to_batch(
    frames: Sequence[Frame],
    cutoff: float,
    num_atoms: int | None = None,
    num_edges: int | None = None,
    num_graphs: int | None = None,
    *,
    long_range: Callable[[Graph], Any] | None = None,
) -> Batch:
    """``frames_to_graph`` plus padded energy, force and stress labels.  Not jittable.

    Args:
        frames, cutoff, num_atoms, num_edges, num_graphs: as in ``frames_to_graph``.
        long_range: host function ``graph -> static long-range data`` (e.g.
            ``functools.partial(prepare_long_range, sigma=1.0, accuracy=1e-6)`` from
            ``polmp.models.long_range``), stored as ``Batch.long_range``; None: no
            long-range data.  (A callable rather than an import keeps ``polmp.data``
            below ``polmp.models`` in the layer stack.)

    Returns:
        ``Batch``; see its docstring for shapes, units and masks.

    Raises:
        ValueError: as ``frames_to_graph``, or labels of the wrong shape or not finite.
    """
    (n_atoms, n_graphs), graph = _build(
        frames, cutoff, num_atoms, num_edges, num_graphs
    )
    energy = np.zeros(n_graphs)
    stress = np.zeros((n_graphs, 3, 3))
    forces = np.zeros((n_atoms, 3))
    energy_mask = np.zeros(n_graphs, bool)
    stress_mask = np.zeros(n_graphs, bool)
    forces_mask = np.zeros(n_atoms, bool)
    start = 0
    for g, frame in enumerate(frames):
        count = frame.num_atoms
        if frame.energy is not None:
            energy[g] = _finite(frame.energy, (), "energy", g)
            energy_mask[g] = True
        if frame.stress is not None:
            stress[g] = _finite(frame.stress, (3, 3), "stress", g)
            stress_mask[g] = True
        if frame.forces is not None:
            forces[start : start + count] = _finite(
                frame.forces, (count, 3), "forces", g
            )
            forces_mask[start : start + count] = True
        start += count
    real = jnp.result_type(float)
    return Batch(
        graph=graph,
        energy=jnp.asarray(energy, real),
        forces=jnp.asarray(forces, real),
        stress=jnp.asarray(stress, real),
        energy_mask=jnp.asarray(energy_mask),
        forces_mask=jnp.asarray(forces_mask),
        stress_mask=jnp.asarray(stress_mask),
        long_range=None if long_range is None else long_range(graph),
    )


def _finite(value, shape, name, g):
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"frame {g}: {name} has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"frame {g}: {name} contains NaN or inf")
    return arr


def _build(frames, cutoff, num_atoms, num_edges, num_graphs):
    frames = list(frames)
    if not frames:
        raise ValueError("frames is empty")
    geometry, pairs = _frame_pairs(frames, cutoff)
    sizes = [g[0].shape[0] for g in geometry]
    total_atoms = int(sum(sizes))
    total_edges = int(sum(len(p[0]) for p in pairs))
    n_atoms = total_atoms + 1 if num_atoms is None else int(num_atoms)
    n_edges = max(total_edges, 1) if num_edges is None else int(num_edges)
    n_graphs = len(frames) + 1 if num_graphs is None else int(num_graphs)
    if n_atoms < total_atoms + 1:
        raise ValueError(
            f"num_atoms = {n_atoms} < {total_atoms} atoms + 1 padding atom"
        )
    if n_edges < total_edges or n_edges < 1:
        raise ValueError(f"num_edges = {n_edges} < {max(total_edges, 1)} edges")
    if n_graphs < len(frames) + 1:
        raise ValueError(
            f"num_graphs = {n_graphs} < {len(frames)} frames + 1 padding graph"
        )

    positions = np.zeros((n_atoms, 3))
    species = np.zeros(n_atoms, np.int32)
    # padding atoms belong to the first padding graph
    atom_graph = np.full(n_atoms, len(frames), np.int32)
    cell = np.broadcast_to(np.eye(3), (n_graphs, 3, 3)).copy()
    pbc = np.zeros((n_graphs, 3), bool)
    total_charge = np.zeros(n_graphs)
    # padded edges: self-edges of the first padding atom, zero shift
    idx_i = np.full(n_edges, total_atoms, np.int32)
    idx_j = np.full(n_edges, total_atoms, np.int32)
    shifts = np.zeros((n_edges, 3), np.int32)

    atom_start = edge_start = 0
    for g, ((pos, numbers, frame_cell, frame_pbc), (i, j, S), frame) in enumerate(
        zip(geometry, pairs, frames, strict=True)
    ):
        count, edges = pos.shape[0], len(i)
        positions[atom_start : atom_start + count] = pos
        species[atom_start : atom_start + count] = numbers
        atom_graph[atom_start : atom_start + count] = g
        cell[g], pbc[g] = frame_cell, frame_pbc
        total_charge[g] = float(frame.total_charge)
        idx_i[edge_start : edge_start + edges] = i + atom_start
        idx_j[edge_start : edge_start + edges] = j + atom_start
        shifts[edge_start : edge_start + edges] = S
        atom_start += count
        edge_start += edges

    real = jnp.result_type(float)
    graph = Graph(
        positions=jnp.asarray(positions, real),
        species=jnp.asarray(species),
        atom_graph=jnp.asarray(atom_graph),
        idx_i=jnp.asarray(idx_i),
        idx_j=jnp.asarray(idx_j),
        shifts=jnp.asarray(shifts),
        cell=jnp.asarray(cell, real),
        pbc=jnp.asarray(pbc),
        atom_mask=jnp.asarray(np.arange(n_atoms) < total_atoms),
        edge_mask=jnp.asarray(np.arange(n_edges) < total_edges),
        graph_mask=jnp.asarray(np.arange(n_graphs) < len(frames)),
        total_charge=jnp.asarray(total_charge, real),
    )
    return (n_atoms, n_graphs), graph


def plan_buckets(
    frames: Sequence[Frame],
    cutoff: float,
    batch_size: int,
    max_shapes: int = 8,
    *,
    rng: np.random.Generator | None = None,
    edge_counts: Sequence[int] | None = None,
    kinds: Sequence[int] | None = None,
) -> list[BatchPlan]:
    """Group frames into batches with at most ``max_shapes`` distinct capacities.

    Not jittable.  Frames are sorted by size (atoms, then edges; ties broken at
    random when ``rng`` is given) and cut into consecutive batches of
    ``batch_size`` so that each batch holds frames of similar size.  Each batch
    needs (atoms + 1, edges) capacity, rounded with ``round_capacity``; distinct
    shapes are then merged pairwise (neighbours in atom capacity, the merge that
    adds the least padding first, one atom costing like ``_ATOM_COST`` edges) until
    at most ``max_shapes`` remain.  ``num_graphs`` is ``batch_size + 1`` for every
    batch.  Every frame is in exactly one batch, and every batch fits its shape.

    With ``kinds`` (one integer per frame, e.g. periodic or not), frames of different
    kinds never share a batch and shapes of different kinds are never merged: a kind
    may need different static data besides the padded graph (the long-range solver
    groups), so a (kind, shape) pair is what compiles; at most
    ``max(max_shapes, number of kinds)`` pairs result.

    Args:
        frames: the data set.
        cutoff: float, A, the neighbour cutoff the batches will be built with.
        batch_size: frames per batch (the last batch may hold fewer).
        max_shapes: the most distinct (num_atoms, num_edges, num_graphs) shapes.
        rng: if given, random tie-breaking and a shuffled batch order (use a new
            plan per epoch for shuffled training).
        edge_counts: per-frame edge counts if already known (else ``count_edges``).
        kinds: per-frame group keys (ints), or None (one kind).

    Returns:
        list of ``BatchPlan``.

    Raises:
        ValueError: empty data set, batch_size < 1, max_shapes < 1, or edge_counts /
            kinds of the wrong length.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("frames is empty")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(max_shapes) < 1:
        raise ValueError(f"max_shapes must be >= 1, got {max_shapes}")
    atoms = np.array([frame.num_atoms for frame in frames], dtype=np.int64)
    if edge_counts is None:
        edges = count_edges(frames, cutoff)
    else:
        edges = np.asarray(edge_counts, dtype=np.int64)
        if edges.shape != atoms.shape:
            raise ValueError(
                f"edge_counts has {edges.shape} entries, expected {atoms.shape}"
            )
    if kinds is None:
        kind = np.zeros(len(frames), np.int64)
    else:
        kind = np.asarray(kinds, dtype=np.int64)
        if kind.shape != atoms.shape:
            raise ValueError(f"kinds has {kind.shape} entries, expected {atoms.shape}")
    tie_break = (
        rng.permutation(len(frames)) if rng is not None else np.arange(len(frames))
    )
    order = np.lexsort((tie_break, edges, atoms, kind))
    batches = []
    for k in np.unique(kind):
        # batches are cut within a kind (the last one of each kind may be short)
        part = order[kind[order] == k]
        batches += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
    need = np.array([(atoms[b].sum() + 1, max(edges[b].sum(), 1)) for b in batches])
    caps = np.array(
        [
            (kind[b[0]], round_capacity(a), round_capacity(e))
            for b, (a, e) in zip(batches, need, strict=True)
        ]
    )

    # groups of batches sharing one (kind, shape), sorted by kind, then atom capacity
    shapes = sorted({tuple(c) for c in caps.tolist()})
    members = {s: [] for s in shapes}
    for b, c in enumerate(caps.tolist()):
        members[tuple(c)].append(b)
    groups = [(np.array(s), members[s]) for s in shapes]

    def cost(cap, count):
        return count * (_ATOM_COST * cap[1] + cap[2])

    while len(groups) > max_shapes:
        best, best_k = None, None
        for k in range(len(groups) - 1):
            (ca, ma), (cb, mb) = groups[k], groups[k + 1]
            if ca[0] != cb[0]:
                continue  # never merge shapes of different kinds
            merged = np.maximum(ca, cb)
            extra = (
                cost(merged, len(ma) + len(mb)) - cost(ca, len(ma)) - cost(cb, len(mb))
            )
            if best is None or extra < best:
                best, best_k = extra, k
        if best_k is None:
            break  # one shape per kind left
        (ca, ma), (cb, mb) = groups[best_k], groups[best_k + 1]
        groups[best_k : best_k + 2] = [(np.maximum(ca, cb), ma + mb)]

    plans: list[BatchPlan | None] = [None] * len(batches)
    for cap, batch_ids in groups:
        for b in batch_ids:
            plans[b] = BatchPlan(
                indices=tuple(int(k) for k in batches[b]),
                num_atoms=int(cap[1]),
                num_edges=int(cap[2]),
                num_graphs=int(batch_size) + 1,
                kind=int(cap[0]),
            )
    if rng is not None:
        plans = [plans[k] for k in rng.permutation(len(plans))]
    return plans
