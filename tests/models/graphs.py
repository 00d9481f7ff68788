"""Tiny padded Graphs built by hand for model tests (host side)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from polmp.geometry.graph import Graph
from polmp.geometry.neighbors import neighbor_pairs
from polmp.models.heads import AtomicOutputs
from polmp.models.long_range import graph_long_range
from tests.electrostatics.systems import random_psd


def make_graph(
    positions,
    species,
    cutoff,
    *,
    cell=None,
    pad_atoms: int = 1,
    pad_edges: int = 2,
    dtype=np.float64,
) -> Graph:
    """One structure (graph 0) + one padding graph, padded atoms and self-edges.

    Args:
        positions: (n, 3) A.  species: (n,) atomic numbers.  cutoff: A (neighbour list).
        cell: (3, 3) rows = lattice vectors, periodic in all directions; None = cluster.
        pad_atoms: padding atoms (>= 1) appended; pad_edges: padded edges appended.
    """
    positions = np.asarray(positions, dtype=np.float64)
    n = len(positions)
    periodic = cell is not None
    idx_i, idx_j, shifts = neighbor_pairs(positions, cell, periodic, cutoff)
    e = len(idx_i)
    num_atoms, num_edges = n + pad_atoms, e + pad_edges
    pos = np.zeros((num_atoms, 3))
    pos[:n] = positions
    spec = np.zeros(num_atoms, np.int32)
    spec[:n] = species
    ii = np.full(num_edges, n, np.int32)  # padded edges: self-edges of padding atom n
    jj = np.full(num_edges, n, np.int32)
    ii[:e], jj[:e] = idx_i, idx_j
    sh = np.zeros((num_edges, 3), np.int32)
    sh[:e] = shifts
    cells = np.stack([np.eye(3), np.eye(3)])
    if periodic:
        cells[0] = cell
    return Graph(
        positions=jnp.asarray(pos, dtype),
        species=jnp.asarray(spec),
        atom_graph=jnp.asarray((np.arange(num_atoms) >= n).astype(np.int32)),
        idx_i=jnp.asarray(ii),
        idx_j=jnp.asarray(jj),
        shifts=jnp.asarray(sh),
        cell=jnp.asarray(cells, dtype),
        pbc=jnp.asarray(np.array([[periodic] * 3, [False] * 3])),
        atom_mask=jnp.asarray(np.arange(num_atoms) < n),
        edge_mask=jnp.asarray(np.arange(num_edges) < e),
        graph_mask=jnp.asarray(np.array([True, False])),
        total_charge=jnp.zeros(2, dtype),
    )


def cluster(rng, n=5, scale=1.1):
    """Random non-overlapping-ish cluster of n atoms (min distance > 0.7 A)."""
    while True:
        pos = rng.normal(size=(n, 3)) * scale
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if d.min() > 0.7:
            return pos


def random_latents(rng, graph, channels=2):
    """Random latents of every kind on the flat atom axis, zero on padding atoms."""
    n = graph.num_atoms
    mask = np.asarray(graph.atom_mask, float)

    def m(x):
        return jnp.asarray(x * mask.reshape((-1,) + (1,) * (x.ndim - 1)))

    a = rng.normal(size=(n, 3, 3))
    theta = a + np.swapaxes(a, 1, 2)
    theta -= np.trace(theta, axis1=1, axis2=2)[:, None, None] * np.eye(3) / 3
    alpha = random_psd(rng, n, 0.02, shift=1.0)
    return AtomicOutputs(
        energy=m(np.zeros(n)),
        q=m(0.5 * rng.normal(size=(n, channels))),
        mu=m(0.2 * rng.normal(size=(n, 3))),
        theta=m(0.1 * theta),
        kappa=m(0.02 * rng.uniform(0.5, 1.5, size=n)),
        alpha=m(alpha),
    )


def long_range_energy_forces(graph, latents, data):
    """E_lr per graph and -dE_lr/dR at fixed latents (the adapter alone, no model)."""

    def total(positions):
        out = graph_long_range(graph, positions, graph.cell, latents, data)
        return jnp.sum(out.energy), out.energy

    (_, energy), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(
        graph.positions
    )
    return np.asarray(energy), -np.asarray(grad)
