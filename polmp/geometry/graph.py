"""Padded graph pytree shared by single structures and batches.

One type, ``Graph``, holds one or several structures flattened along the atom axis,
padded to static capacities so that a data set compiles a handful of shapes.

Layout (N atoms, E edges, G graphs, all padded capacities):
    positions   Float[Array, 'N 3']   A
    species     Int[Array, 'N']       atomic number; 0 = padding ("no element"), never -1
    atom_graph  Int[Array, 'N']       graph index of each atom (padding atoms -> a padding graph)
    idx_i       Int[Array, 'E']       centre atom of each edge (receives the message)
    idx_j       Int[Array, 'E']       neighbour atom of each edge
    shifts      Int[Array, 'E 3']     integer cell shifts n: r_ij = R[j] - R[i] + n @ cell[g]
    cell        Float[Array, 'G 3 3'] rows are lattice vectors, A; padding/non-periodic -> identity
    pbc         Bool[Array, 'G 3']    periodic directions; a padded graph has pbc False
    atom_mask   Bool[Array, 'N']      True for real atoms
    edge_mask   Bool[Array, 'E']      True for real edges
    graph_mask  Bool[Array, 'G']      True for real graphs
    total_charge Float[Array, 'G']    e (0 for padding)

Padding rules (see docs/ARCHITECTURE): every padded batch has at least one padding atom
and one padding graph; padded edges are self-edges of a padding atom with zero shift, so
their length is exactly zero and kernels must mask them before dividing.  Masks are the
source of truth; sentinel values only keep arithmetic finite.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Graph:
    """Padded atoms + edges + cells of one or more structures (see module docstring)."""

    positions: jax.Array
    species: jax.Array
    atom_graph: jax.Array
    idx_i: jax.Array
    idx_j: jax.Array
    shifts: jax.Array
    cell: jax.Array
    pbc: jax.Array
    atom_mask: jax.Array
    edge_mask: jax.Array
    graph_mask: jax.Array
    total_charge: jax.Array

    @property
    def num_atoms(self) -> int:
        """Padded atom capacity N (static)."""
        return self.positions.shape[0]

    @property
    def num_edges(self) -> int:
        """Padded edge capacity E (static)."""
        return self.idx_i.shape[0]

    @property
    def num_graphs(self) -> int:
        """Padded graph capacity G (static)."""
        return self.cell.shape[0]


def edge_vectors(graph: Graph, positions=None, cell=None):
    """Edge vectors r_ij = R[j] - R[i] + shifts_ij @ cell[graph(i)].

    Differentiable in ``positions`` and ``cell`` (pass them explicitly to take
    derivatives, e.g. strained cells for the stress).

    Args:
        graph: the padded graph.
        positions: Float[Array, 'N 3'], A; defaults to ``graph.positions``.
        cell: Float[Array, 'G 3 3'], A; defaults to ``graph.cell``.

    Returns:
        Float[Array, 'E 3'], A.  Padded edges give exactly zero vectors.
    """
    positions = graph.positions if positions is None else positions
    cell = graph.cell if cell is None else cell
    edge_cell = cell[graph.atom_graph[graph.idx_i]]  # (E, 3, 3)
    offsets = jnp.einsum("ea,eab->eb", graph.shifts.astype(positions.dtype), edge_cell)
    vectors = positions[graph.idx_j] - positions[graph.idx_i] + offsets
    return jnp.where(graph.edge_mask[:, None], vectors, 0.0)
