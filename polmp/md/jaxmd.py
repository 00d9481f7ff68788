"""Bind a polmp model to jax-md: the only place that speaks jax-md's conventions.

jax-md integrators call ``energy_fn(R, neighbor=nbrs, **kwargs)`` with Cartesian
positions R (N, 3) and a jax-md neighbour list.  polmp models take a padded
``Graph``.  ``bind`` closes over the parameters, the species and cell of one system
and its static long-range data, and rebuilds the Graph inside the traced step:

* edges come from the device list through ``geometry.neighbors.neighbor_edges``,
  which turns jax-md's implicit periodic images into explicit integer shifts so that
  r_ij = R[j] - R[i] + shifts_ij @ cell (polmp's convention);
* jax-md pads its index arrays with N, so the Graph gets one padding atom at index N
  (species 0, masked) and a padding graph; padded entries are then exactly the
  zero-shift self-edges of that atom, as the Graph padding rules require.

Positions may be unwrapped (free ``shift_fn``): the periodic images are recomputed
from fractional coordinates at every neighbour-list update, and unwrapped
trajectories are what IR spectra want.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from polmp import units
from polmp.geometry.cell import validate_cell, validate_positions
from polmp.geometry.graph import Graph
from polmp.geometry.neighbors import neighbor_edges


@dataclasses.dataclass(frozen=True)
class MDSystem:
    """Static description of the simulated system (host side).

    Attributes:
        species: (N,) atomic numbers (no zeros).
        cell: (3, 3) rows are lattice vectors, A, or None for a cluster in free space.
        total_charge: e.
    """

    species: np.ndarray
    cell: np.ndarray | None = None
    total_charge: float = 0.0

    def __post_init__(self):
        species = np.asarray(self.species)
        if species.ndim != 1 or species.size == 0 or np.any(species <= 0):
            raise ValueError(
                "species must be a non-empty 1D array of atomic numbers (> 0)"
            )
        if self.cell is not None:
            validate_cell(self.cell)

    @property
    def num_atoms(self) -> int:
        return int(np.asarray(self.species).shape[0])


def md_graph(system: MDSystem, positions, neighbor) -> Graph:
    """Padded single-structure Graph from positions and a jax-md Sparse neighbour list.

    Args:
        system: the static system.
        positions: Float[Array, 'N 3'], A (traced).
        neighbor: jax-md NeighborList in Sparse format (full list).

    Returns:
        Graph with N + 1 atoms (padding atom at index N) and 2 graphs (graph 1 is padding).
    """
    n = system.num_atoms
    dtype = positions.dtype
    cell = None if system.cell is None else jnp.asarray(system.cell, dtype)
    idx_i, idx_j, shifts, edge_mask = neighbor_edges(neighbor, positions, cell)
    periodic = system.cell is not None
    cells = jnp.stack(
        [cell if periodic else jnp.eye(3, dtype=dtype), jnp.eye(3, dtype=dtype)]
    )
    return Graph(
        positions=jnp.concatenate([positions, jnp.zeros((1, 3), dtype)]),
        species=jnp.concatenate(
            [jnp.asarray(system.species, jnp.int32), jnp.zeros(1, jnp.int32)]
        ),
        atom_graph=jnp.concatenate([jnp.zeros(n, jnp.int32), jnp.ones(1, jnp.int32)]),
        idx_i=idx_i,
        idx_j=idx_j,
        shifts=shifts,
        cell=cells,
        pbc=jnp.array([[periodic] * 3, [False] * 3]),
        atom_mask=jnp.arange(n + 1) < n,
        edge_mask=edge_mask,
        graph_mask=jnp.array([True, False]),
        total_charge=jnp.asarray([system.total_charge, 0.0], dtype),
    )


def prepare_md_long_range(system: MDSystem, positions, neighbor, long_range_options):
    """Static long-range data of the MD graph (None when ``long_range_options`` is None).

    Host side: run once before the jitted steps (the cell is fixed).
    """
    positions = jnp.asarray(validate_positions(positions, system.num_atoms))
    if long_range_options is None:
        return None
    from polmp.models.long_range import prepare_long_range

    template = md_graph(system, positions, neighbor)
    return prepare_long_range(template, **long_range_options)


def bind(
    energy_fns,
    params,
    system: MDSystem,
    positions,
    neighbor,
    *,
    long_range_options=None,
    long_range_data=None,
):
    """jax-md energy function ``energy_fn(R, neighbor=nbrs, **kwargs) -> eV`` of a model.

    Args:
        energy_fns: ``polmp.models.EnergyFns`` from ``make_energy_fn`` (built with
            ``long_range_fn=polmp.models.long_range.graph_long_range`` for variants
            with latents).
        params: model parameters.
        system: ``MDSystem``.
        positions: (N, 3) initial positions, A (host; used to prepare static data).
        neighbor: an allocated jax-md Sparse neighbour list for ``positions``.
        long_range_options: keyword arguments of
            ``polmp.models.long_range.prepare_long_range`` (sigma, accuracy, method...);
            None for an "sr" model.
        long_range_data: already prepared data (``prepare_md_long_range``) instead of
            ``long_range_options``, to share it with other bound functions.

    Returns:
        ``energy_fn(R, neighbor, **kwargs)``; extra kwargs (kT, mass, ...) that jax-md
        threads through are ignored.
    """
    if long_range_data is None:
        long_range_data = prepare_md_long_range(
            system, positions, neighbor, long_range_options
        )

    def energy_fn(R, neighbor, **kwargs):
        del kwargs  # jax-md passes integrator state (kT, mass, ...) through
        graph = md_graph(system, R, neighbor)
        energy = energy_fns.energy_fn(params, graph, long_range=long_range_data)
        return energy[0]

    return energy_fn


def unwrapped_shift(positions, displacement, **kwargs):
    """jax-md ``shift_fn`` that never wraps: positions stay continuous (for spectra).

    Periodic images are handled by the neighbour list (fractional coordinates), so
    wrapping is not needed for the energy.
    """
    del kwargs
    return positions + displacement


def timestep(timestep_fs: float) -> float:
    """A time step in fs in the internal unit sqrt(amu A^2 / eV) that jax-md integrates in."""
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    return timestep_fs * units.FS


def thermal_energy(temperature_K: float) -> float:
    """kT in eV for a temperature in K."""
    if not temperature_K >= 0:
        raise ValueError(f"temperature_K must be >= 0, got {temperature_K}")
    return units.KB * temperature_K
