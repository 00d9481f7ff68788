"""Assembled short-range model: backbone features -> latent heads -> per-atom outputs.

``AtomicModel(config)`` is a ``flax.linen`` module; ``model.apply(params, graph,
positions=None, cell=None)`` returns ``AtomicOutputs`` (heads.py) with per-atom energies
E_i (eV) and the latents (q, mu, Theta, kappa, alpha) enabled by ``config.variant``.
E_sr of a graph is the masked sum of E_i over its atoms (``graph_energies``).

Initialise under jit (eager e3nn init is slow)::

    model = AtomicModel(config)
    params = jax.jit(model.init)(key, graph)

``make_energy_fn(config, long_range_fn=...)`` bundles the model into pure functions of
``(params, graph)``: per-graph energies E = E_sr + E_lr, and forces F = -dE/dR and the
stress sigma = (1/V) dE/d(strain) by autodiff of that one energy (style.md 3.3).

E_lr is supplied by the caller as ``long_range_fn(graph, positions, cell, outputs) ->
Float[Array, 'G']`` (eV per graph), e.g. a per-graph wrapper of
``polmp.electrostatics.long_range``, which did not exist when this module was written.
Variants other than ``"sr"`` need either a ``long_range_fn`` or an explicit
``short_range_only=True`` so that the long-range part is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from polmp.geometry.graph import Graph
from polmp.models.config import ModelConfig
from polmp.models.heads import AtomicOutputs, LatentHeads
from polmp.models.layers import Backbone, species_to_index


class AtomicModel(nn.Module):
    """Backbone + heads (see module docstring).

    Attributes:
        config: the model configuration.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self, graph: Graph, positions: jax.Array | None = None, cell=None
    ) -> AtomicOutputs:
        """Per-atom energies and latents.

        Args:
            graph: padded Graph.
            positions: Float[Array, 'N 3'], A; defaults to ``graph.positions``.
            cell: Float[Array, 'G 3 3'], A; defaults to ``graph.cell``.

        Returns:
            AtomicOutputs in the dtype of ``positions``; zero on padding atoms.
        """
        h = Backbone(self.config, name="backbone")(graph, positions, cell)
        index = jnp.where(
            graph.atom_mask, species_to_index(graph.species, self.config.species), 0
        )
        return LatentHeads(self.config, name="heads")(h, index, graph.atom_mask)


def graph_energies(atom_energies: jax.Array, graph: Graph) -> jax.Array:
    """Per-graph sums of per-atom energies (padding atoms and graphs contribute 0).

    Args:
        atom_energies: Float[Array, 'N'], eV.
        graph: the padded Graph (for ``atom_graph``, masks).

    Returns:
        Float[Array, 'G'], eV; 0 for padding graphs.
    """
    e = jnp.where(graph.atom_mask, atom_energies, jnp.zeros_like(atom_energies))
    total = jax.ops.segment_sum(e, graph.atom_graph, num_segments=graph.num_graphs)
    return jnp.where(graph.graph_mask, total, jnp.zeros_like(total))


class EnergyFns(NamedTuple):
    """Pure functions of ``(params, graph, positions=None, cell=None)``.

    Attributes:
        model: the ``AtomicModel`` (``model.init`` gives the params; jit it).
        energy_fn: -> Float[Array, 'G'], eV, E_sr + E_lr per graph (0 for padding).
        outputs_fn: -> ``AtomicOutputs`` (per-atom energies without E_lr, latents).
        energy_forces_stress_fn: -> ``(energy (G,) eV, forces (N, 3) eV/A, stress
            (G, 3, 3) eV/A^3)``; stress is 0 for graphs that are not periodic in all
            three directions (no volume); forces are 0 on padding atoms.
    """

    model: AtomicModel
    energy_fn: Callable
    outputs_fn: Callable
    energy_forces_stress_fn: Callable


def make_energy_fn(
    config: ModelConfig,
    *,
    long_range_fn: Callable | None = None,
    short_range_only: bool = False,
) -> EnergyFns:
    """Energy, forces and stress of the model for ``config`` (module docstring).

    Args:
        config: the model configuration.
        long_range_fn: ``(graph, positions, cell, outputs) -> Float[Array, 'G']``, eV,
            the long-range energy per graph from the latents in ``outputs``.
        short_range_only: allow a non-"sr" variant without ``long_range_fn`` (the
            latents are still computed, E = E_sr).

    Returns:
        ``EnergyFns``.

    Raises:
        ValueError: a variant with latents, no ``long_range_fn`` and not
            ``short_range_only``.
    """
    if config.variant != "sr" and long_range_fn is None and not short_range_only:
        raise ValueError(
            f"variant {config.variant!r} has a long-range part: pass long_range_fn, "
            "or short_range_only=True to evaluate E_sr alone"
        )
    model = AtomicModel(config)

    def outputs_fn(params, graph: Graph, positions=None, cell=None) -> AtomicOutputs:
        return model.apply(params, graph, positions, cell)

    def energy_fn(params, graph: Graph, positions=None, cell=None) -> jax.Array:
        positions = graph.positions if positions is None else positions
        cell = graph.cell if cell is None else cell
        cell = cell.astype(positions.dtype)
        outputs = model.apply(params, graph, positions, cell)
        energy = graph_energies(outputs.energy, graph)  # (G,)
        if long_range_fn is not None:
            e_lr = long_range_fn(graph, positions, cell, outputs)
            energy = energy + jnp.where(graph.graph_mask, e_lr, jnp.zeros_like(e_lr))
        return energy

    def energy_forces_stress_fn(params, graph: Graph, positions=None, cell=None):
        positions = graph.positions if positions is None else positions
        cell = graph.cell if cell is None else cell
        cell = cell.astype(positions.dtype)
        eye = jnp.eye(3, dtype=positions.dtype)

        def strained_total(positions, strain):
            # Homogeneous deformation x -> x (I + eps) of atoms and cell rows, one eps
            # per graph; each graph's energy depends only on its own eps, so the
            # gradient of the total gives dE_g/deps_g.
            deform = eye + strain  # (G, 3, 3)
            pos = jnp.einsum("na,nab->nb", positions, deform[graph.atom_graph])
            c = jnp.einsum("gia,gab->gib", cell, deform)
            energy = energy_fn(params, graph, pos, c)
            return jnp.sum(energy), energy

        strain = jnp.zeros((graph.num_graphs, 3, 3), positions.dtype)
        (_, energy), (d_pos, d_strain) = jax.value_and_grad(
            strained_total, argnums=(0, 1), has_aux=True
        )(positions, strain)
        forces = jnp.where(graph.atom_mask[:, None], -d_pos, jnp.zeros_like(d_pos))
        periodic = jnp.all(graph.pbc, axis=-1) & graph.graph_mask  # (G,)
        volume = jnp.abs(jnp.linalg.det(cell))
        volume = jnp.where(periodic, volume, jnp.ones_like(volume))
        stress = d_strain / volume[:, None, None]
        stress = jnp.where(periodic[:, None, None], stress, jnp.zeros_like(stress))
        return energy, forces, stress

    return EnergyFns(model, energy_fn, outputs_fn, energy_forces_stress_fn)
