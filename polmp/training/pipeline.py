"""Host data pipeline of training: load, split, check, plan and cache batches.

Not jittable (numpy, Python loops over frames).  The jitted step sees *device-stacked*
batches (``polmp.training.sharding``): one optimisation step is a ``StepPlan`` with D
chunks of frame indices (one per device) and one per-device shape (N, E, G).

Batch order.  Each epoch draws its own plan with ``plan_buckets`` and an rng seeded by
``(seed, epoch)``: batches of ``batch_size`` frames of similar size, in shuffled order.
The order of an epoch is therefore a pure function of (seed, epoch), and the position
in it is the whole data-order state (``LoopState.batch_in_epoch``).  With D devices,
each global batch is cut into D consecutive chunks; the frames of a step do not depend
on D, so D devices train on the same batches as one.

Compiled shapes.  A ``ShapePool`` keeps the (kind, shape) pairs used so far.  The
first plan over a data set seeds it with all of its bucket shapes (so a small batch is
never padded to a big shape that happened to be drawn first); afterwards a step takes
the cheapest pooled shape of its kind that fits all of its chunks, and only when none
fits is a new shape added (the epoch's own bucket shape, or for D > 1 the rounded
largest chunk need of that bucket).  Shapes therefore stay at ``plan_buckets``'
<= ``max_shapes`` per data set unless a later epoch's tie-breaking needs a bigger one,
and the count is reported.

Kinds.  With long-range terms, periodic and non-periodic frames need different solver
groups, so they are planned as two kinds (``frame_kinds``) that never share a batch,
and ``PinnedLongRange`` prepares the long-range data of every batch of a kind with
capacities fixed for the whole data set (slots, block size, k-vectors or PME mesh):
the long-range data then add no compiled shapes beyond the padded graph's.

Batches are built once per (chunks, shape) with ``frames_to_batch`` and cached.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from polmp.data.batching import (
    _ATOM_COST,
    Batch,
    count_edges,
    frames_to_batch,
    plan_buckets,
    round_capacity,
)
from polmp.data.schema import Frame
from polmp.geometry.graph import Graph
from polmp.models.long_range import pin_periodic_solver, prepare_long_range
from polmp.training import sharding


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One optimisation (or evaluation) step.

    Attributes:
        chunks: D tuples of frame indices, one per device (a chunk may be empty).
        shape: per-device capacities (num_atoms, num_edges, num_graphs).
        kind: the kind of its frames (``frame_kinds``), 0 without kinds.
    """

    chunks: tuple[tuple[int, ...], ...]
    shape: tuple[int, int, int]
    kind: int = 0

    @property
    def indices(self) -> tuple[int, ...]:
        """All frame indices of the step, device by device."""
        return tuple(k for chunk in self.chunks for k in chunk)


@dataclasses.dataclass
class ShapePool:
    """(kind, per-device shape) pairs used so far (mutable host bookkeeping, module
    docstring)."""

    shapes: set = dataclasses.field(default_factory=set)

    def fit(
        self,
        needs: Sequence[tuple[int, int]],
        num_graphs: int,
        candidate,
        kind: int = 0,
    ) -> tuple:
        """The cheapest pooled shape of ``kind`` that holds every (atoms, edges) need,
        else add ``candidate`` (which must hold them)."""
        fits = [
            s
            for k, s in self.shapes
            if k == kind
            and s[2] == num_graphs
            and all(s[0] >= a and s[1] >= e for a, e in needs)
        ]
        if fits:
            return min(fits, key=lambda s: (_ATOM_COST * s[0] + s[1], s))
        candidate = tuple(int(c) for c in candidate)
        assert all(candidate[0] >= a and candidate[1] >= e for a, e in needs)
        self.shapes.add((int(kind), candidate))
        return candidate


def split_frames(
    frames: Sequence[Frame], valid_fraction: float, test_fraction: float, seed: int
) -> tuple[list[Frame], list[Frame], list[Frame]]:
    """Deterministic seeded split into (train, valid, test).  Not jittable.

    ``round(fraction * F)`` frames go to validation and test (at least one each when
    the fraction is positive), drawn by ``np.random.default_rng(seed).permutation``;
    the remaining frames keep their file order.

    Raises:
        ValueError: no frames, or no training frames left.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("the data set is empty (no frames to split)")
    count = len(frames)

    def size(fraction):
        return 0 if fraction <= 0 else max(1, int(round(fraction * count)))

    n_valid, n_test = size(valid_fraction), size(test_fraction)
    if n_valid + n_test >= count:
        raise ValueError(
            f"{count} frames cannot give {n_valid} validation + {n_test} test frames "
            "and a non-empty training set"
        )
    order = np.random.default_rng(seed).permutation(count)
    valid = sorted(order[:n_valid].tolist())
    test = sorted(order[n_valid : n_valid + n_test].tolist())
    held = set(valid) | set(test)
    train = [k for k in range(count) if k not in held]
    return (
        [frames[k] for k in train],
        [frames[k] for k in valid],
        [frames[k] for k in test],
    )


def species_of(frames: Sequence[Frame]) -> set[int]:
    """Atomic numbers present in ``frames``."""
    return {int(z) for f in frames for z in np.unique(np.asarray(f.numbers))}


def check_datasets(
    train: Sequence[Frame],
    others: dict[str, Sequence[Frame]],
    *,
    model_species: Sequence[int],
    energy_weight: float,
    forces_weight: float,
    stress_weight: float,
) -> None:
    """Refuse data a run cannot train on, with a message that names the problem.

    Raises:
        ValueError: empty training set; a training frame without energy (or forces)
            while its weight is positive; stress_weight > 0 with no stress label in the
            training set; species of the training set the model does not list; species
            in another set (validation, test) that the training set does not contain.
    """
    if not train:
        raise ValueError("the training set is empty")
    for k, frame in enumerate(train):
        if energy_weight > 0 and frame.energy is None:
            raise ValueError(
                f"training frame {k} has no energy label but energy_weight = "
                f"{energy_weight} > 0"
            )
        if forces_weight > 0 and frame.forces is None:
            raise ValueError(
                f"training frame {k} has no forces label but forces_weight = "
                f"{forces_weight} > 0 (set forces_weight: 0 to train on energies only)"
            )
    if stress_weight > 0 and all(f.stress is None for f in train):
        raise ValueError(
            f"stress_weight = {stress_weight} > 0 but no training frame has a stress"
        )
    seen = species_of(train)
    unknown = seen - {int(z) for z in model_species}
    if unknown:
        raise ValueError(
            f"training data contain species {sorted(unknown)} that model.species "
            f"{tuple(model_species)} does not list"
        )
    for name, frames in others.items():
        extra = species_of(frames) - seen
        if extra:
            raise ValueError(
                f"{name} data contain species {sorted(extra)} not seen in the training "
                f"set (training species {sorted(seen)}): their reference energies and "
                "embeddings would be untrained"
            )


def _needs(indices, atoms, edges):
    return (
        int(atoms[list(indices)].sum()) + 1,
        max(int(edges[list(indices)].sum()), 1),
    )


def make_step_plans(
    frames: Sequence[Frame],
    cutoff: float,
    batch_size: int,
    num_devices: int,
    pool: ShapePool,
    *,
    edge_counts: np.ndarray,
    rng: np.random.Generator | None = None,
    max_shapes: int = 8,
    kinds: Sequence[int] | None = None,
) -> list[StepPlan]:
    """Steps over ``frames`` (one epoch, or one evaluation pass).  Not jittable.

    Args:
        frames: the data set.
        cutoff: neighbour cutoff, A.
        batch_size: frames per step (over all devices).
        num_devices: D; each batch is cut into D consecutive chunks.
        pool: the ``ShapePool`` of this data set (updated in place).
        edge_counts: per-frame edge counts (``count_edges``, computed once).
        rng: shuffles the order (and ties) when given; None keeps size order.
        max_shapes: passed to ``plan_buckets``.
        kinds: per-frame kinds (``frame_kinds``) or None; frames of different kinds
            never share a step.

    Returns:
        list of ``StepPlan``.
    """
    atoms = np.array([f.num_atoms for f in frames], dtype=np.int64)
    edges = np.asarray(edge_counts, dtype=np.int64)
    plans = plan_buckets(
        frames,
        cutoff,
        batch_size,
        max_shapes,
        rng=rng,
        edge_counts=edges,
        kinds=kinds,
    )
    per_device = math.ceil(batch_size / num_devices)
    num_graphs = per_device + 1
    chunked = []
    for plan in plans:
        # consecutive chunks (frames within a plan are in size order); a chunk has at
        # most per_device frames and may be empty for a short last batch
        idx = list(plan.indices)
        chunks = tuple(
            tuple(idx[d * per_device : (d + 1) * per_device])
            for d in range(num_devices)
        )
        chunked.append((plan, chunks))
    # candidate per-device shape of each bucket shape: its largest chunk need, rounded
    candidates: dict[tuple, list[int]] = {}
    for plan, chunks in chunked:
        key = (plan.kind, plan.shape)
        if num_devices == 1:
            candidates[key] = [plan.num_atoms, plan.num_edges]
            continue
        best = candidates.setdefault(key, [1, 1])
        for chunk in chunks:
            a, e = _needs(chunk, atoms, edges)
            best[0], best[1] = max(best[0], a), max(best[1], e)
    if num_devices > 1:
        candidates = {
            k: [round_capacity(v[0]), round_capacity(v[1])]
            for k, v in candidates.items()
        }
    if not pool.shapes:
        # the first plan seeds the pool with every bucket shape (module docstring)
        for (kind, _), cap in candidates.items():
            pool.shapes.add((kind, (*cap, num_graphs)))
    steps = []
    for plan, chunks in chunked:
        needs = [_needs(c, atoms, edges) for c in chunks]
        candidate = (*candidates[(plan.kind, plan.shape)], num_graphs)
        shape = pool.fit(needs, num_graphs, candidate, plan.kind)
        steps.append(StepPlan(chunks=chunks, shape=shape, kind=plan.kind))
    return steps


def frame_kinds(frames: Sequence[Frame]) -> np.ndarray:
    """Per-frame kind for long-range batching: 1 periodic (any direction), 0 not."""
    return np.array([int(np.any(f.pbc)) for f in frames], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class PinnedLongRange:
    """Long-range preparation with capacities fixed per data set (host, callable).

    ``pinned(graph, kind)`` is ``prepare_long_range(graph, **options)`` with the slots
    of the periodic / non-periodic group set to the graph capacity G - 1 for a batch of
    kind 1 / 0 (and 0 for the other group), the block size to the largest frame of
    that kind, and the periodic solver, its k-vector count or PME mesh fixed by
    ``pin_periodic_solver`` over every periodic cell: every batch of one (kind, shape)
    then has long-range data of one shape.

    Attributes:
        options: ``prepare_long_range`` keyword arguments (sigma, accuracy, ...).
        atoms_per_graph: {kind: block size n}.
        periodic_solver: ``pin_periodic_solver`` result, or None (no periodic frame).
    """

    options: dict
    atoms_per_graph: dict
    periodic_solver: dict | None

    @classmethod
    def for_frames(cls, frames: Sequence[Frame], options: dict) -> PinnedLongRange:
        """Capacities for ``frames`` (all the data sets that share compiled steps)."""
        kinds = frame_kinds(frames)
        atoms_per_graph = {}
        for kind in (0, 1):
            sizes = [
                f.num_atoms for f, k in zip(frames, kinds, strict=True) if k == kind
            ]
            if sizes:
                atoms_per_graph[kind] = round_capacity(max(sizes))
        solver = None
        if 1 in atoms_per_graph:
            cells = [f.cell for f, k in zip(frames, kinds, strict=True) if k]
            solver = pin_periodic_solver(
                np.asarray(cells), atoms_per_graph=atoms_per_graph[1], **options
            )
        return cls(dict(options), atoms_per_graph, solver)

    def __call__(self, graph: Graph, kind: int):
        slots = int(graph.graph_mask.shape[0]) - 1
        if kind not in self.atoms_per_graph:
            raise ValueError(f"no frame of kind {kind} was seen when pinning")
        pinned = dict(
            num_periodic=slots if kind == 1 else 0,
            num_free=0 if kind == 1 else slots,
            atoms_per_graph=self.atoms_per_graph[kind],
        )
        if kind == 1:
            pinned.update(self.periodic_solver)
        return prepare_long_range(graph, **{**self.options, **pinned})


def padding_batch(shape: tuple[int, int, int]) -> Batch:
    """A batch of padding only (every mask False), for an empty device chunk.

    Follows the padding rules of ``polmp.geometry.graph``: species 0, zero positions,
    self-edges of atom 0 with zero shift, identity cells with pbc False.
    """
    n, e, g = shape
    real = jnp.result_type(float)
    graph = Graph(
        positions=jnp.zeros((n, 3), real),
        species=jnp.zeros(n, jnp.int32),
        atom_graph=jnp.zeros(n, jnp.int32),
        idx_i=jnp.zeros(e, jnp.int32),
        idx_j=jnp.zeros(e, jnp.int32),
        shifts=jnp.zeros((e, 3), jnp.int32),
        cell=jnp.broadcast_to(jnp.eye(3, dtype=real), (g, 3, 3)),
        pbc=jnp.zeros((g, 3), bool),
        atom_mask=jnp.zeros(n, bool),
        edge_mask=jnp.zeros(e, bool),
        graph_mask=jnp.zeros(g, bool),
        total_charge=jnp.zeros(g, real),
    )
    return Batch(
        graph=graph,
        energy=jnp.zeros(g, real),
        forces=jnp.zeros((n, 3), real),
        stress=jnp.zeros((g, 3, 3), real),
        energy_mask=jnp.zeros(g, bool),
        forces_mask=jnp.zeros(n, bool),
        stress_mask=jnp.zeros(g, bool),
    )


def _cast(tree, dtype):
    def cast(x):
        x = np.asarray(x)
        return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x

    return jax.tree.map(cast, tree)


def shape_signature(batch) -> tuple:
    """What a jitted step compiles for: tree structure and leaf shapes/dtypes."""
    leaves, treedef = jax.tree.flatten(batch)
    return (
        str(treedef),
        tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves),
    )


class BatchCache:
    """Device-stacked, device-placed batches built once per (chunks, shape).

    Host-side cache (explicitly mutable): ``get(step)`` returns the stacked ``Batch``
    for a ``StepPlan``; ``signatures`` collects the distinct compiled shapes.

    Args:
        frames: the data set the plans index into.
        cutoff: neighbour cutoff, A.
        dtype: float dtype of the batches (the run's precision).
        mesh: device mesh (leading axis split over ``"data"``).
        long_range: host function ``(graph, kind) -> long-range data`` (e.g.
            ``PinnedLongRange``) or None.
        max_entries: cache size (oldest entries are dropped beyond it).
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        cutoff: float,
        dtype,
        mesh,
        long_range: Callable[[Graph], Any] | None = None,
        max_entries: int = 4096,
    ):
        self.frames = list(frames)
        self.cutoff = float(cutoff)
        self.dtype = np.dtype(dtype)
        self.mesh = mesh
        self.long_range = long_range
        self.max_entries = int(max_entries)
        self._cache: dict = {}
        self.signatures: set = set()

    def _one(self, chunk, shape, kind):
        long_range = (
            None
            if self.long_range is None
            else functools.partial(self.long_range, kind=kind)
        )
        if not chunk:
            batch = padding_batch(shape)
            if long_range is not None:
                batch = dataclasses.replace(batch, long_range=long_range(batch.graph))
            return batch
        return frames_to_batch(
            [self.frames[k] for k in chunk], self.cutoff, *shape, long_range=long_range
        )

    def get(self, step: StepPlan):
        """The device-placed stacked batch of ``step`` (built on first use)."""
        key = (step.chunks, step.shape)
        batch = self._cache.get(key)
        if batch is None:
            host = [
                _cast(self._one(chunk, step.shape, step.kind), self.dtype)
                for chunk in step.chunks
            ]
            stacked = sharding.stack_batches(host)
            self.signatures.add(shape_signature(stacked))
            batch = sharding.put_batch(stacked, self.mesh)
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = batch
        return batch


def edge_counts_of(frames: Sequence[Frame], cutoff: float) -> np.ndarray:
    """Per-frame edge counts (computed once per data set)."""
    return count_edges(frames, cutoff) if frames else np.zeros(0, np.int64)
