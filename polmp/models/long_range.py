"""Long-range energy E_lr of the latent multipoles on a flat padded ``Graph``.

The model gives per-atom latents on the flat atom axis of a padded ``Graph`` that may
hold several structures (periodic, non-periodic, different cells).  The electrostatic
solvers of :mod:`polmp.electrostatics` work on one structure at a time.  This module
is the adapter between the two (method.md sections 2-6)::

    E_lr,g = E_elec[q, mu, Theta; graph g] + U_iq,g + U_iu,g          (eV per graph)

Contract (host preparation + pure traced function, as the electrostatics solvers):

* ``prepare_long_range(graph, *, sigma, accuracy, method, ...)`` (host, not jittable)
  reads the concrete graph and returns a :class:`LongRangeData` pytree: for the graphs
  periodic in all three directions and for the non-periodic graphs separately (two
  static groups, so no graph pays for both methods), an index table (G_k, n) that
  gathers each graph's atoms into a padded per-graph block (pad entries point to a
  padding atom and are masked), and for an Ewald group the per-graph integer k-vector
  sets (``kgrid.prepare_kgrid``) zero-padded to a common count M (n = 0 is k = 0, which
  the Ewald kernel always excludes, so zero rows are exact padding).  Capacities are
  rounded (``round_capacity``) so a data set compiles few shapes; pass them explicitly
  to pin the shapes of every batch.
* ``graph_long_range(graph, positions, cell, outputs, data) -> LongRangeOutputs``
  (pure, jittable) gathers the blocks, vmaps the per-graph sum over each group (Ewald or
  PME for the periodic group, the all-pairs sum for the other), adds the one-shot
  response U_iq, U_iu from kappa, alpha (method.md section 6) and scatters phi, field,
  dq, dmu back to the flat atom axis.  Positions and cell are traced: forces and the
  stress (strained cell) follow by autodiff; the index sets are fixed at preparation
  (re-prepare when a cell deforms a lot, see ``kgrid.kgrid_covers``).

``make_energy_fn(config, long_range_fn=graph_long_range)`` then gives E = E_sr + E_lr;
the training loop passes the ``LongRangeData`` of each batch (``Batch.long_range``) as
``energy_fn(params, graph, long_range=data)``.  For a fixed structure (MD)
``bind_long_range(data)`` closes over the data and has the 4-argument form.

Conventions (those of :func:`polmp.electrostatics.long_range`, which the tests compare
with graph by graph): q is (N, C) with C latent channels; a single mu (N, 3) or Theta
(N, 3, 3) is shared by every channel; channel energies add; kappa and alpha per atom
act on every channel; phi, field, dq, dmu carry the channel axis.  Self terms are
removed, k = 0 is omitted (tinfoil boundary, uniform background for a net charge).
Graphs periodic in only one or two directions are refused unless
``partial_pbc="periodic"`` (then treated as 3D periodic with their cell, as the
reference implementation does for slabs).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from polmp.data.batching import round_capacity
from polmp.electrostatics import api, direct, ewald, kgrid, pme, response
from polmp.electrostatics import multipoles as mp
from polmp.geometry.cell import validate_cell
from polmp.geometry.graph import Graph

__all__ = [
    "LongRangeData",
    "LongRangeGroup",
    "LongRangeOutputs",
    "bind_long_range",
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
        kvectors: Int[Array, 'K M 3'], integer k-vector indices n (k = n @ 2 pi M^-T)
            of each periodic graph for the Ewald sum, zero-padded (n = 0 is skipped);
            M = 0 for PME and non-periodic groups.
    """

    graph_index: jax.Array
    atom_index: jax.Array
    atom_mask: jax.Array
    kvectors: jax.Array

    @property
    def num_slots(self) -> int:
        """K, graph slots of the group (static)."""
        return self.atom_index.shape[0]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["periodic", "free"],
    meta_fields=["sigma", "method", "pme_spec", "accuracy"],
)
@dataclasses.dataclass(frozen=True)
class LongRangeData:
    """Static long-range data of one padded graph/batch (module docstring).

    Attributes:
        periodic: group of graphs periodic in all directions (method ``method``).
        free: group of non-periodic graphs (all-pairs sum).
        sigma: pair-kernel width, A.
        method: ``"ewald"`` or ``"pme"``, the periodic group's solver (static).
        pme_spec: ``PMESpec`` shared by the periodic group (mesh = per-axis maximum
            over its graphs, so every graph meets ``accuracy``), or None.
        accuracy: requested relative accuracy of the k-space sums.
    """

    periodic: LongRangeGroup
    free: LongRangeGroup
    sigma: float
    method: str
    pme_spec: pme.PMESpec | None
    accuracy: float


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


def _empty_group(pad_atom: int, pad_graph: int, n: int = 1) -> dict:
    return dict(
        graph_index=np.full((0,), pad_graph, np.int32),
        atom_index=np.full((0, n), pad_atom, np.int32),
        atom_mask=np.zeros((0, n), bool),
        kvectors=np.zeros((0, 0, 3), np.int32),
    )


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


def _cheaper_solver(atoms_per_graph: int, num_kvectors: int, mesh) -> str:
    """ "ewald" or "pme" for one periodic block, by ``api``'s measured cost model."""
    cost_ewald = api.COST_EWALD_PER_ATOM_K * atoms_per_graph * num_kvectors
    cost_pme = api.COST_PME_PER_MESH_POINT * float(np.prod(mesh))
    return "ewald" if cost_ewald <= cost_pme else "pme"


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
) -> dict:
    """One periodic solver and its capacities for every cell of a data set.  Host.

    ``prepare_long_range`` otherwise sizes the k-vector set or the PME mesh (and, with
    ``method="auto"``, picks the solver) batch by batch, so a data set of many cells
    (an NPT trajectory) compiles a new shape for many batches.  Passing this function's
    result as keyword arguments pins them: the largest k-set / the finest mesh of all
    cells, and one solver chosen by the same cost model for a block of
    ``atoms_per_graph`` atoms.

    Args:
        cells: (F, 3, 3) lattice vectors of the periodic frames, A (F >= 1).
        atoms_per_graph: block size n of the periodic group.
        sigma, accuracy, method, max_multipole_order, les_compat, pme_order: as in
            ``prepare_long_range``.

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
    for cell in cells:
        validate_cell(cell)
    if les_compat:
        method = "ewald"
    if pme_order is None:
        pme_order = 8 if max_multipole_order >= 2 else 6
    kw = dict(sigma=float(sigma), accuracy=float(accuracy))
    num_k = mesh = None
    if method in ("auto", "ewald"):
        num_k = max(
            kgrid.prepare_kgrid(
                c, les_compat=les_compat, max_multipole_order=max_multipole_order, **kw
            ).num_kvectors
            for c in cells
        )
    if method in ("auto", "pme"):
        mesh = tuple(
            int(x)
            for x in np.max(
                [
                    pme.mesh_shape_for(
                        c,
                        order=pme_order,
                        max_multipole_order=max_multipole_order,
                        **kw,
                    )
                    for c in cells
                ],
                axis=0,
            )
        )
    if method == "auto":
        method = _cheaper_solver(int(atoms_per_graph), num_k, mesh)
    if method == "ewald":
        return dict(method="ewald", num_kvectors=round_capacity(num_k, 64))
    return dict(method="pme", pme_mesh_shape=mesh)


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
        method: solver of the periodic graphs: ``"auto"`` (the cheaper of Ewald and PME
            for the padded group, by ``api``'s measured cost model), ``"ewald"`` or
            ``"pme"``; non-periodic graphs always use the all-pairs sum.
        max_multipole_order: 0 (q), 1 (q, mu) or 2 (q, mu, Theta): sets k_c / the mesh.
        les_compat: the reference implementation's truncated k-set (Ewald only).
        pme_order: B-spline order of PME (default: 8 when quadrupoles are possible,
            ``max_multipole_order`` 2, else 6: same accuracy on a far coarser mesh).
        partial_pbc: ``"error"`` (refuse graphs periodic in 1 or 2 directions) or
            ``"periodic"`` (treat them as 3D periodic with their cell).
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
            graph with ``partial_pbc="error"``, or a graph with no padding atom/graph.
    """
    if pme_order is None:
        pme_order = 8 if max_multipole_order >= 2 else 6
    if method not in PERIODIC_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {PERIODIC_METHODS}")
    if partial_pbc not in ("error", "periodic"):
        raise ValueError(
            f"partial_pbc must be 'error' or 'periodic', got {partial_pbc!r}"
        )
    if les_compat:
        if method == "pme":
            raise ValueError(
                "les_compat is the reference Ewald k-set: use method='ewald'"
            )
        method = "ewald"
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
    for g in periodic:
        validate_cell(cells[g])

    p_index, p_atoms, p_mask = _group(
        periodic, atoms_of, num_periodic, atoms_per_graph, pad_atom, pad_graph
    )
    f_index, f_atoms, f_mask = _group(
        free, atoms_of, num_free, atoms_per_graph, pad_atom, pad_graph
    )

    kw = dict(sigma=float(sigma), accuracy=float(accuracy))
    grids = (
        [
            kgrid.prepare_kgrid(
                cells[g],
                les_compat=les_compat,
                max_multipole_order=max_multipole_order,
                **kw,
            )
            for g in periodic
        ]
        if method in ("auto", "ewald")
        else []
    )
    mesh = None
    if periodic and method in ("auto", "pme"):
        shapes = np.array(
            [
                pme.mesh_shape_for(
                    cells[g],
                    order=pme_order,
                    max_multipole_order=max_multipole_order,
                    **kw,
                )
                for g in periodic
            ]
        )
        # a finer mesh than a graph needs only improves it: one mesh for the group
        mesh = tuple(int(x) for x in shapes.max(axis=0))
        if pme_mesh_shape is not None:
            pinned = tuple(int(x) for x in pme_mesh_shape)
            if len(pinned) != 3 or any(
                p < m for p, m in zip(pinned, mesh, strict=True)
            ):
                raise ValueError(
                    f"pme_mesh_shape = {pme_mesh_shape} is coarser than the mesh "
                    f"{mesh} a graph of this batch needs"
                )
            mesh = pinned
    if method == "auto":
        if not periodic:
            method = "ewald"
        else:
            num_k = max(grid.num_kvectors for grid in grids)
            method = _cheaper_solver(p_atoms.shape[1], num_k, mesh)

    pme_spec = None
    kvectors = np.zeros((len(p_index), 0, 3), np.int32)
    if method == "ewald" and periodic:
        need_m = max(grid.num_kvectors for grid in grids)
        m = round_capacity(need_m, 64) if num_kvectors is None else int(num_kvectors)
        if m < need_m:
            raise ValueError(f"num_kvectors = {m} < {need_m} k-vectors of a graph")
        kvectors = np.zeros((len(p_index), m, 3), np.int32)
        for s, grid in enumerate(grids):
            kvectors[s, : grid.num_kvectors] = grid.indices
    elif method == "pme" and periodic:
        pme_spec = pme.PMESpec(
            mesh_shape=mesh,
            order=int(pme_order),
            sigma=float(sigma),
            accuracy=float(accuracy),
        )

    def group(index, atoms, mask, kvec):
        return LongRangeGroup(
            graph_index=jnp.asarray(index),
            atom_index=jnp.asarray(atoms),
            atom_mask=jnp.asarray(mask),
            kvectors=jnp.asarray(kvec),
        )

    return LongRangeData(
        periodic=group(p_index, p_atoms, p_mask, kvectors),
        free=group(f_index, f_atoms, f_mask, np.zeros((len(f_index), 0, 3), np.int32)),
        sigma=float(sigma),
        method=method,
        pme_spec=pme_spec,
        accuracy=float(accuracy),
    )


# ----------------------------------------------------------------------------- traced


def _per_channel(fn, m: mp.Multipoles):
    """vmap a single-channel ``fn(q, mu, theta)`` over the channel axis of m."""
    axes = (1, None if m.mu is None else 1, None if m.theta is None else 1)
    return jax.vmap(fn, in_axes=axes)(m.q, m.mu, m.theta)


def _elec_one(kind, data, positions, cell, m, mask, kvec):
    """E_elec (C,), phi (n, C), field (n, C, 3) of one graph, self terms removed."""
    sigma = data.sigma
    if kind == "ewald":
        return ewald.ewald_energy_potential_field(
            positions, cell, m.q, m.mu, m.theta, kvec, sigma=sigma, atom_mask=mask
        )
    if kind == "pme":

        def one(q, mu, theta):
            e, phi, field = pme.pme_energy_potential_field(
                positions,
                cell,
                q,
                mu,
                theta,
                data.pme_spec,
                sigma=sigma,
                atom_mask=mask,
            )
            e = e - mp.self_energy(q, mu, theta, sigma=sigma, atom_mask=mask)
            phi_s, field_s = mp.self_potential_field(q, mu, theta, sigma=sigma)
            return e, phi - phi_s, field - field_s

    else:  # non-periodic

        def one(q, mu, theta):
            kw = dict(sigma=sigma, atom_mask=mask)
            e = direct.direct_energy(positions, q, mu, theta, **kw)
            phi, field = direct.direct_potential_field(positions, q, mu, theta, **kw)
            return e, phi, field

    e, phi, field = _per_channel(one, m)  # (C,), (C, n), (C, n, 3)
    phi, field = jnp.moveaxis(phi, 0, 1), jnp.moveaxis(field, 0, 1)
    phi = jnp.where(mask[:, None], phi, 0.0)
    field = jnp.where(mask[:, None, None], field, 0.0)
    return e, phi, field


def _group_long_range(kind, group, data, positions, cell, m, kappa, alpha, e_ext):
    """Per-slot energies (K,) and block phi, field, dq, dmu of one group."""
    idx = group.atom_index  # (K, n)

    def take(x):
        return None if x is None else x[idx]

    def one(pos, c, q, mu, theta, kap, alp, mask, kvec):
        mg = mp.Multipoles(q, mu, theta, True)
        e, phi, field = _elec_one(kind, data, pos, c, mg, mask, kvec)
        res = response.one_shot_response(phi, field, kap, alp, e_ext, mask)
        return jnp.sum(e) + res.u_q + res.u_mu, phi, field, res.dq, res.dmu

    return jax.vmap(one)(
        positions[idx],  # (K, n, 3)
        cell[group.graph_index],  # (K, 3, 3)
        m.q[idx],  # (K, n, C)
        take(m.mu),
        take(m.theta),
        take(kappa),
        take(alpha),
        group.atom_mask,
        group.kvectors,  # (K, M, 3)
    )


def graph_long_range(
    graph: Graph,
    positions: jax.Array,
    cell: jax.Array,
    outputs,
    data: LongRangeData | None = None,
    *,
    e_ext: jax.Array | None = None,
) -> LongRangeOutputs:
    """E_lr per graph of the latents in ``outputs`` (module docstring).  Jittable.

    E_lr,g = E_elec[q, mu, Theta] + U_iq + U_iu with dq = -kappa phi and
    dmu = alpha (E + E_ext) (method.md sections 3, 4, 6).

    Args:
        graph: the padded ``Graph`` (masks, atom_graph).
        positions: Float[Array, 'N 3'], A (traced: forces).
        cell: Float[Array, 'G 3 3'], rows are lattice vectors, A (traced: stress).
        outputs: ``AtomicOutputs`` with q (N, C) e, and optionally mu (N, 3) e A,
            theta (N, 3, 3) e A^2, kappa (N,) e^2/eV, alpha (N,) or (N, 3, 3)
            e^2 A^2/eV.
        data: from :func:`prepare_long_range` for this graph (its static shapes).
        e_ext: Float[Array, '3'], uniform external field, V/A, or None.

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
    cell = cell.astype(dtype)

    def cast(x):
        return None if x is None else x.astype(dtype)

    m = mp.to_channels(cast(outputs.q), cast(outputs.mu), cast(outputs.theta))
    kappa, alpha = cast(outputs.kappa), cast(outputs.alpha)
    c = m.num_channels
    energy = jnp.zeros((num_graphs,), dtype)
    phi = jnp.zeros((num_atoms, c), dtype)
    field = jnp.zeros((num_atoms, c, 3), dtype)
    dq = None if kappa is None else jnp.zeros((num_atoms, c), dtype)
    dmu = None if alpha is None else jnp.zeros((num_atoms, c, 3), dtype)
    for kind, group in ((data.method, data.periodic), ("direct", data.free)):
        if group.num_slots == 0:  # static: no graph of this kind in the batch
            continue
        e_g, phi_g, field_g, dq_g, dmu_g = _group_long_range(
            kind, group, data, positions, cell, m, kappa, alpha, e_ext
        )
        # padding slots and entries carry exact zeros (masked in the solvers), so
        # scatter-adding them onto the padding graph / atom changes nothing real
        energy = energy.at[group.graph_index].add(e_g)
        idx = group.atom_index.reshape(-1)
        phi = phi.at[idx].add(phi_g.reshape(-1, c))
        field = field.at[idx].add(field_g.reshape(-1, c, 3))
        if dq is not None:
            dq = dq.at[idx].add(dq_g.reshape(-1, c))
        if dmu is not None:
            dmu = dmu.at[idx].add(dmu_g.reshape(-1, c, 3))
    energy = jnp.where(graph.graph_mask, energy, 0.0)
    return LongRangeOutputs(energy, phi, field, dq, dmu)


def bind_long_range(data: LongRangeData, *, e_ext=None) -> Callable:
    """``graph_long_range`` with fixed ``data``: ``fn(graph, positions, cell, outputs)``
    (4 arguments).

    For a structure whose shapes do not change (MD, one evaluation); a training loop
    should instead pass each batch's data through ``energy_fn(..., long_range=data)``.

    Args:
        data: from :func:`prepare_long_range`.
        e_ext: Float[Array, '3'], V/A, or None.

    Returns:
        Callable ``(graph, positions, cell, outputs) -> LongRangeOutputs``.
    """

    def long_range_fn(graph, positions, cell, outputs):
        return graph_long_range(graph, positions, cell, outputs, data, e_ext=e_ext)

    return long_range_fn
