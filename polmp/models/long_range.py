"""Long-range energy E_lr of the latent multipoles on a flat padded ``Graph``.

The model gives per-atom latents on the flat atom axis of a padded ``Graph`` that may
hold several structures (periodic, non-periodic, different cells).  The electrostatics
:class:`~polmp.electrostatics.api.Solver` computes E_lr of ONE structure; this module
only gathers, vmaps and scatters (docs/method.md#multipoles to #response)::

    E_lr,g = E_elec[q, mu, Theta; graph g] + U_iq,g + U_iu,g          (eV per graph)

Contract (host preparation + pure traced function, as the electrostatics solvers):

* ``prepare_long_range(graph, *, sigma, accuracy, method, ...)`` (host, not jittable)
  reads the concrete graph and returns a :class:`LongRangeData` pytree: for the graphs
  periodic in all three directions and for the non-periodic graphs separately (two
  static groups, so no graph pays for both methods), an index table (G_k, n) that
  gathers each graph's atoms into a padded per-graph block (pad entries point to a
  padding atom and are masked), and a stack of solvers, one per slot (the method,
  PME order and mesh chosen once for the group by
  :func:`polmp.electrostatics.plan_solver`; each Ewald slot keeps its own k-vector set,
  zero-padded to a common count M: n = 0 is k = 0, which the Ewald kernel always
  excludes, so zero rows are exact padding).  Capacities are rounded
  (``round_capacity``) so a data set compiles few shapes; pass them explicitly to pin
  the shapes of every batch (``pin_periodic_solver``).
* ``graph_long_range(graph, positions, cell, outputs, data) -> LongRangeOutputs``
  (pure, jittable): gather -> ``jax.vmap(solver.long_range_fn)`` over the slots of
  each group -> scatter of energy, phi, field, dq, dmu back to graphs and the flat atom
  axis.  Positions and cell are traced: forces and the stress (strained cell) follow
  by autodiff; the k-sets / mesh are fixed at preparation for the range of cells set
  by ``max_cell_scale`` (NPT: prepare for the largest box expected).
  ``check_long_range`` (or ``check=True``) adds ``checkify`` value checks (NaN,
  bad or out-of-range cells, bad latents).

``make_energy_fn(config, long_range_fn=graph_long_range)`` then gives E = E_sr + E_lr;
the training loop passes the ``LongRangeData`` of each batch (``Batch.long_range``) as
``energy_fn(params, graph, long_range=data)``.  For a fixed structure (MD)
``bind_long_range(data)`` closes over the data and has the 4-argument form.

Conventions (those of :func:`polmp.electrostatics.long_range`, which runs the same
solver): q is (N, C) with C latent channels; a single mu (N, 3) or Theta (N, 3, 3)
joins channel 0; channel energies add; kappa and alpha per atom act on every channel;
phi, field, dq, dmu carry the channel axis.  Self terms are removed, k = 0 is omitted
(tinfoil boundary, uniform background for a net charge).  Graphs periodic in only one
or two directions are refused unless ``partial_pbc="periodic"`` (then treated as 3D
periodic with their cell, as the reference implementation does for slabs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from polmp.data.batching import round_capacity
from polmp.electrostatics import api, pme
from polmp.electrostatics import multipoles as mp
from polmp.geometry.graph import Graph

__all__ = [
    "LongRangeData",
    "LongRangeGroup",
    "LongRangeOutputs",
    "bind_long_range",
    "check_long_range",
    "graph_long_range",
    "pin_periodic_solver",
    "prepare_long_range",
]

PERIODIC_METHODS = ("auto", "ewald", "pme")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LongRangeGroup:
    """Graphs of one kind (periodic or not) gathered into padded per-graph blocks.

    Attributes:
        graph_index: Int[Array, 'K'], graph of each slot; padding slots point to a
            padding graph (their energy is 0 and masked anyway).
        atom_index: Int[Array, 'K n'], flat atom index of each block entry; padding
            entries point to a padding atom.
        atom_mask: Bool[Array, 'K n'], real atoms of each block.
        solver: :class:`~polmp.electrostatics.api.Solver` whose leaves carry the slot
            axis K (Ewald: k-vector indices (K, M, 3); periodic: reference cells
            (K, 3, 3)); ``jax.vmap`` runs one solver per slot.
    """

    graph_index: jax.Array
    atom_index: jax.Array
    atom_mask: jax.Array
    solver: api.Solver

    @property
    def num_slots(self) -> int:
        """K, graph slots of the group (static)."""
        return self.atom_index.shape[0]

    @property
    def kvectors(self) -> jax.Array:
        """Int[Array, 'K M 3'], the zero-padded Ewald k-vector indices (M = 0 else)."""
        if self.solver.method == "ewald" and self.solver.spec is not None:
            return self.solver.spec.indices
        return jnp.zeros((self.num_slots, 0, 3), jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LongRangeData:
    """Static long-range data of one padded graph/batch (module docstring).

    Attributes:
        periodic: group of graphs periodic in all directions (Ewald or PME).
        free: group of non-periodic graphs (all-pairs sum).
    """

    periodic: LongRangeGroup
    free: LongRangeGroup

    @property
    def method(self) -> str:
        """``"ewald"`` or ``"pme"``, the periodic group's solver (static)."""
        return self.periodic.solver.method

    @property
    def pme_spec(self) -> pme.PMESpec | None:
        """``PMESpec`` of the periodic group (PME), or None."""
        return self.periodic.solver.spec if self.method == "pme" else None

    @property
    def sigma(self) -> float:
        """Pair-kernel width, A."""
        return self.periodic.solver.sigma

    @property
    def accuracy(self) -> float | None:
        """Requested relative accuracy of the k-space sums."""
        return self.periodic.solver.accuracy


class LongRangeOutputs(NamedTuple):
    """Result of :func:`graph_long_range`.

    Attributes:
        energy: Float[Array, 'G'], E_lr per graph, eV (0 for padding graphs).
        phi: Float[Array, 'N C'], potential of the permanent multipoles, V.
        field: Float[Array, 'N C 3'], their field, V/A.
        dq: Float[Array, 'N C'] induced charges, e, or None (no kappa).
        dmu: Float[Array, 'N C 3'] induced dipoles, e A, or None (no alpha).
        All per-atom arrays are 0 on padding atoms.
    """

    energy: jax.Array
    phi: jax.Array | None
    field: jax.Array | None
    dq: jax.Array | None
    dmu: jax.Array | None


# ----------------------------------------------------------------------------- host


def _group(graph_ids, atoms_of, num_slots, atoms_per_graph, pad_atom, pad_graph):
    """Index table of a group: (K,), (K, n), (K, n) with K, n >= the needs."""
    need_n = max((len(atoms_of[g]) for g in graph_ids), default=1)
    n = round_capacity(need_n) if atoms_per_graph is None else int(atoms_per_graph)
    k = len(graph_ids) if num_slots is None else int(num_slots)
    if n < need_n:
        raise ValueError(f"atoms_per_graph = {n} < {need_n} atoms of a graph")
    if k < len(graph_ids):
        raise ValueError(f"{k} slots for {len(graph_ids)} graphs of one kind")
    graph_index = np.full(k, pad_graph, np.int32)
    atom_index = np.full((k, n), pad_atom, np.int32)
    atom_mask = np.zeros((k, n), bool)
    for s, g in enumerate(graph_ids):
        atoms = atoms_of[g]
        graph_index[s] = g
        atom_index[s, : len(atoms)] = atoms
        atom_mask[s, : len(atoms)] = True
    return graph_index, atom_index, atom_mask


def _plan(cells, atoms_per_graph, *, method, les_compat, pme_order, **kw):
    if les_compat:
        if method == "pme":
            raise ValueError(
                "les_compat is the reference Ewald k-set: use method='ewald'"
            )
        method = "ewald"
    return api.plan_solver(
        cells,
        atoms_per_graph,
        method=method,
        les_compat=les_compat,
        pme_order=pme_order,
        **kw,
    )


def pin_periodic_solver(
    cells,
    *,
    atoms_per_graph: int,
    sigma: float = 1.0,
    accuracy: float = 1e-6,
    method: str = "auto",
    max_multipole_order: int = 2,
    les_compat: bool = False,
    pme_order: int | None = None,
    max_cell_scale: float = 1.0,
) -> dict:
    """One periodic solver and its capacities for every cell of a data set.  Host.

    ``prepare_long_range`` otherwise sizes the k-vector set or the PME mesh (and, with
    ``method="auto"``, picks the solver) batch by batch, so a data set of many cells
    (an NPT trajectory) compiles a new shape for many batches.  Passing this function's
    result as keyword arguments pins them: the largest k-set / the finest mesh of all
    cells, and one solver chosen by :func:`polmp.electrostatics.plan_solver` for a
    block of ``atoms_per_graph`` atoms.

    Args:
        cells: (F, 3, 3) lattice vectors of the periodic frames, A (F >= 1).
        atoms_per_graph: block size n of the periodic group.
        sigma, accuracy, method, max_multipole_order, les_compat, pme_order,
            max_cell_scale: as in ``prepare_long_range``.

    Returns:
        dict with ``method`` ("ewald" or "pme"), ``num_kvectors`` (Ewald) and
        ``pme_mesh_shape`` (PME), for ``prepare_long_range(graph, **options, **pin)``.

    Raises:
        ValueError: no cells, a bad cell, or an unknown method.
    """
    if method not in PERIODIC_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {PERIODIC_METHODS}")
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    if cells.shape[0] == 0:
        raise ValueError("pin_periodic_solver needs at least one periodic cell")
    # an NPT set repeats few cells exactly; evaluate each distinct one once
    cells = np.unique(cells.reshape(-1, 9), axis=0).reshape(-1, 3, 3)
    plan = _plan(
        cells,
        int(atoms_per_graph),
        method=method,
        les_compat=les_compat,
        pme_order=pme_order,
        sigma=float(sigma),
        accuracy=float(accuracy),
        max_multipole_order=max_multipole_order,
        max_cell_scale=max_cell_scale,
    )
    if plan.method == "ewald":
        need = max(g.num_kvectors for g in plan.kgrids)
        return dict(method="ewald", num_kvectors=round_capacity(need, 64))
    return dict(method="pme", pme_mesh_shape=plan.mesh_shape)


def _periodic_solver(plan, cells, num_slots, *, sigma, accuracy, num_kvectors, mesh):
    """The stacked solver of the periodic group (leaves with a leading slot axis)."""
    ref = np.tile(np.eye(3), (num_slots, 1, 1))
    ref[: len(cells)] = cells  # padding slots: a unit cell, never checked
    if plan.method == "ewald":
        need_m = max(g.num_kvectors for g in plan.kgrids)
        m = round_capacity(need_m, 64) if num_kvectors is None else int(num_kvectors)
        if m < need_m:
            raise ValueError(f"num_kvectors = {m} < {need_m} k-vectors of a graph")
        indices = np.zeros((num_slots, m, 3), np.int32)
        for s, grid in enumerate(plan.kgrids):
            indices[s, : grid.num_kvectors] = grid.indices
        first = plan.kgrids[0]
        spec = dataclasses.replace(
            first,
            indices=jnp.asarray(indices),
            k_cutoff=max(g.k_cutoff for g in plan.kgrids),
            reference_cell=None,
        )
    else:
        spec = pme.PMESpec(
            mesh_shape=mesh,
            order=int(plan.pme_order),
            sigma=float(sigma),
            accuracy=float(accuracy),
        )
    return api.Solver(
        plan.method,
        spec,
        jnp.asarray(ref),
        float(sigma),
        None if getattr(spec, "les_compat", False) else float(accuracy),
        plan.max_cell_scale,
    )


def prepare_long_range(
    graph: Graph,
    *,
    sigma: float = 1.0,
    accuracy: float = 1e-6,
    method: str = "auto",
    max_multipole_order: int = 2,
    les_compat: bool = False,
    pme_order: int | None = None,
    partial_pbc: str = "error",
    max_cell_scale: float = 1.0,
    num_periodic: int | None = None,
    num_free: int | None = None,
    atoms_per_graph: int | None = None,
    num_kvectors: int | None = None,
    pme_mesh_shape: tuple[int, int, int] | None = None,
) -> LongRangeData:
    """Static long-range data of a concrete padded graph.  Not jittable.

    Args:
        graph: padded ``Graph`` with concrete arrays (e.g. ``frames_to_graph``).
        sigma: pair-kernel width, A (kernel erf(r/(sqrt(2) sigma))/r).
        accuracy: relative accuracy of the k-space sums (as ``long_range``).
        method: solver of the periodic graphs: ``"auto"`` (by
            :func:`polmp.electrostatics.plan_solver` for the padded block),
            ``"ewald"`` or ``"pme"``; non-periodic graphs always use the all-pairs
            sum.
        max_multipole_order: 0 (q), 1 (q, mu) or 2 (q, mu, Theta): sets k_c / the mesh.
        les_compat: the reference implementation's truncated k-set (Ewald only).
        pme_order: B-spline order of PME (default: ``plan_solver``'s rule, 8 with
            quadrupoles, else 6).
        partial_pbc: ``"error"`` (refuse graphs periodic in 1 or 2 directions) or
            ``"periodic"`` (treat them as 3D periodic with their cell).
        max_cell_scale: s >= 1: the data stay converged for every cell' = cell @ F
            of each graph with largest singular value of F <= s (NPT: the largest box
            expected); ``check_long_range`` flags cells beyond.
        num_periodic: slots of the periodic group (default: the number of periodic
            graphs); fix it (and the next three) to pin shapes across batches.
        num_free: slots of the non-periodic group (default: their number).
        atoms_per_graph: block size n (default: ``round_capacity`` of the largest
            graph).
        num_kvectors: k-vector capacity M of the Ewald group (default:
            ``round_capacity(max M, 64)``).
        pme_mesh_shape: PME mesh of the periodic group (default: the per-axis maximum
            the graphs need); a finer mesh only improves the sum.  ``pin_periodic_solver``
            gives ``method``, ``num_kvectors`` and this for a whole data set.

    Returns:
        :class:`LongRangeData`.

    Raises:
        ValueError: bad method / options, a capacity too small, a partially periodic
            graph with ``partial_pbc="error"``, a k-set or mesh beyond the memory
            guards, or a graph with no padding atom/graph.
    """
    if method not in PERIODIC_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {PERIODIC_METHODS}")
    if partial_pbc not in ("error", "periodic"):
        raise ValueError(
            f"partial_pbc must be 'error' or 'periodic', got {partial_pbc!r}"
        )
    atom_graph = np.asarray(graph.atom_graph)
    atom_mask = np.asarray(graph.atom_mask)
    graph_mask = np.asarray(graph.graph_mask)
    pbc = np.asarray(graph.pbc)
    cells = np.asarray(graph.cell, dtype=np.float64)
    if atom_mask.all() or graph_mask.all():
        raise ValueError(
            "the graph needs at least one padding atom and one padding graph"
        )
    pad_atom = int(np.flatnonzero(~atom_mask)[0])
    pad_graph = int(np.flatnonzero(~graph_mask)[0])
    real = np.flatnonzero(graph_mask)
    atoms_of = {int(g): np.flatnonzero(atom_mask & (atom_graph == g)) for g in real}
    periodic, free = [], []
    for g in real:
        g = int(g)
        if pbc[g].all():
            periodic.append(g)
        elif not pbc[g].any():
            free.append(g)
        elif partial_pbc == "periodic":
            periodic.append(g)
        else:
            raise ValueError(
                f"graph {g} is periodic along {pbc[g].tolist()} only; pass "
                "partial_pbc='periodic' to treat it as 3D periodic (vacuum in its cell)"
            )

    p_index, p_atoms, p_mask = _group(
        periodic, atoms_of, num_periodic, atoms_per_graph, pad_atom, pad_graph
    )
    f_index, f_atoms, f_mask = _group(
        free, atoms_of, num_free, atoms_per_graph, pad_atom, pad_graph
    )

    sigma, accuracy = float(sigma), float(accuracy)
    if periodic:
        plan = _plan(
            cells[periodic],
            p_atoms.shape[1],
            method=method,
            les_compat=les_compat,
            pme_order=pme_order,
            sigma=sigma,
            accuracy=accuracy,
            max_multipole_order=max_multipole_order,
            max_cell_scale=max_cell_scale,
        )
        mesh = plan.mesh_shape
        if plan.method == "pme" and pme_mesh_shape is not None:
            pinned = tuple(int(x) for x in pme_mesh_shape)
            if len(pinned) != 3 or any(
                p < m for p, m in zip(pinned, mesh, strict=True)
            ):
                raise ValueError(
                    f"pme_mesh_shape = {pme_mesh_shape} is coarser than the mesh "
                    f"{mesh} a graph of this batch needs"
                )
            mesh = pinned
        p_solver = _periodic_solver(
            plan,
            cells[periodic],
            len(p_index),
            sigma=sigma,
            accuracy=accuracy,
            num_kvectors=num_kvectors,
            mesh=mesh,
        )
    else:  # no periodic graph: an empty group, never run
        kind = "pme" if method == "pme" else "ewald"
        p_solver = api.Solver(kind, None, None, sigma, accuracy)

    def group(index, atoms, mask, solver):
        return LongRangeGroup(
            graph_index=jnp.asarray(index),
            atom_index=jnp.asarray(atoms),
            atom_mask=jnp.asarray(mask),
            solver=solver,
        )

    return LongRangeData(
        periodic=group(p_index, p_atoms, p_mask, p_solver),
        free=group(f_index, f_atoms, f_mask, api.prepare_direct(sigma=sigma)),
    )


# ----------------------------------------------------------------------------- traced


def _gather(group, positions, cell, outputs):
    """Per-slot blocks of the solver arguments (channel form, model dtype)."""
    dtype = positions.dtype

    def cast(x):
        return None if x is None else x.astype(dtype)

    m = mp.to_channels(cast(outputs.q), cast(outputs.mu), cast(outputs.theta))
    idx = group.atom_index  # (K, n)

    def take(x):
        return None if x is None else x[idx]

    return (
        positions[idx],  # (K, n, 3)
        cell.astype(dtype)[group.graph_index],  # (K, 3, 3)
        m.q[idx],  # (K, n, C)
        take(m.mu),
        take(m.theta),
        take(cast(outputs.kappa)),
        take(cast(outputs.alpha)),
        group.atom_mask,
    )


def _groups(data):
    return [g for g in (data.periodic, data.free) if g.num_slots > 0]


def check_long_range(graph, positions, cell, outputs, data, *, e_ext=None) -> None:
    """``checkify`` value checks of every graph's long-range inputs.  Jittable.

    Runs :meth:`polmp.electrostatics.Solver.check_inputs` on each slot: NaN/inf
    positions or latents, singular or left-handed cells, cells outside the range the
    data were prepared for (``max_cell_scale``), asymmetric theta or alpha, non-PSD
    alpha, negative kappa.  Must run under ``jax.experimental.checkify.checkify``;
    padding atoms and slots are not checked.

    Args:
        graph, positions, cell, outputs, data, e_ext: as :func:`graph_long_range`.
    """
    if outputs.q is None:
        return
    for group in _groups(data):

        def one(solver, pos, c, q, mu, theta, kap, alp, mask):
            solver.check_inputs(pos, c, q, mu, theta, kap, alp, e_ext, mask)

        jax.vmap(one)(group.solver, *_gather(group, positions, cell, outputs))


def graph_long_range(
    graph: Graph,
    positions: jax.Array,
    cell: jax.Array,
    outputs,
    data: LongRangeData | None = None,
    *,
    e_ext: jax.Array | None = None,
    check: bool = False,
) -> LongRangeOutputs:
    """E_lr per graph of the latents in ``outputs`` (module docstring).  Jittable.

    E_lr,g = E_elec[q, mu, Theta] + U_iq + U_iu with dq = -kappa phi and
    dmu = alpha (E + E_ext) (docs/method.md#response), by one
    :class:`~polmp.electrostatics.Solver` per graph (``jax.vmap`` over the slots).

    Args:
        graph: the padded ``Graph`` (masks, atom_graph).
        positions: Float[Array, 'N 3'], A (traced: forces).
        cell: Float[Array, 'G 3 3'], rows are lattice vectors, A (traced: stress).
        outputs: ``AtomicOutputs`` with q (N, C) e, and optionally mu (N, 3) e A,
            theta (N, 3, 3) e A^2, kappa (N,) e^2/eV, alpha (N,) or (N, 3, 3)
            e^2 A^2/eV.
        data: from :func:`prepare_long_range` for this graph (its static shapes).
        e_ext: Float[Array, '3'], uniform external field, V/A, or None.
        check: add :func:`check_long_range`'s ``checkify`` checks (then run the
            caller under ``checkify.checkify``).

    Returns:
        :class:`LongRangeOutputs` (energy (G,) eV; phi, field, dq, dmu on the flat
        atom axis, 0 on padding atoms).

    Raises:
        ValueError: no ``data`` (prepare it on the host and pass it along).
    """
    if data is None:
        raise ValueError(
            "graph_long_range needs the static data of this graph: build it with "
            "prepare_long_range(graph) (or frames_to_batch(..., long_range=...)) and "
            "pass it as energy_fn(params, graph, long_range=data)"
        )
    dtype = positions.dtype
    num_atoms, num_graphs = graph.num_atoms, graph.num_graphs
    if outputs.q is None:  # variant "sr": nothing long-ranged
        zero = jnp.zeros((num_graphs,), dtype)
        return LongRangeOutputs(zero, None, None, None, None)
    if check:
        check_long_range(graph, positions, cell, outputs, data, e_ext=e_ext)
    c = 1 if outputs.q.ndim == 1 else outputs.q.shape[1]
    energy = jnp.zeros((num_graphs,), dtype)
    phi = jnp.zeros((num_atoms, c), dtype)
    field = jnp.zeros((num_atoms, c, 3), dtype)
    dq = None if outputs.kappa is None else jnp.zeros((num_atoms, c), dtype)
    dmu = None if outputs.alpha is None else jnp.zeros((num_atoms, c, 3), dtype)
    for group in _groups(data):

        def one(solver, pos, cel, q, mu, theta, kap, alp, mask):
            return solver.long_range_fn(pos, cel, q, mu, theta, kap, alp, e_ext, mask)

        out = jax.vmap(one)(group.solver, *_gather(group, positions, cell, outputs))
        # padding slots and entries carry exact zeros (masked in the solvers), so
        # scatter-adding them onto the padding graph / atom changes nothing real
        energy = energy.at[group.graph_index].add(out.energy)
        idx = group.atom_index.reshape(-1)
        phi = phi.at[idx].add(out.phi.reshape(-1, c))
        field = field.at[idx].add(out.field.reshape(-1, c, 3))
        if dq is not None:
            dq = dq.at[idx].add(out.dq.reshape(-1, c))
        if dmu is not None:
            dmu = dmu.at[idx].add(out.dmu.reshape(-1, c, 3))
    energy = jnp.where(graph.graph_mask, energy, 0.0)
    return LongRangeOutputs(energy, phi, field, dq, dmu)


def bind_long_range(
    data: LongRangeData, *, e_ext=None, check: bool = False
) -> Callable:
    """``graph_long_range`` with fixed ``data``: ``fn(graph, positions, cell, outputs)``
    (4 arguments).

    For a structure whose shapes do not change (MD, one evaluation); a training loop
    should instead pass each batch's data through ``energy_fn(..., long_range=data)``.

    Args:
        data: from :func:`prepare_long_range`.
        e_ext: Float[Array, '3'], V/A, or None.
        check: add ``checkify`` value checks (:func:`check_long_range`); run the
            caller under ``jax.experimental.checkify.checkify``.

    Returns:
        Callable ``(graph, positions, cell, outputs) -> LongRangeOutputs``.
    """

    def long_range_fn(graph, positions, cell, outputs):
        return graph_long_range(
            graph, positions, cell, outputs, data, e_ext=e_ext, check=check
        )

    return long_range_fn
