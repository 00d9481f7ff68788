"""Assembled short-range model: backbone features -> latent heads -> per-atom outputs.

``AtomicModel(config)`` is a ``flax.linen`` module; ``model.apply(params, graph,
positions=None, cell=None)`` returns ``AtomicOutputs`` (heads.py) with per-atom energies
E_i (eV) and the latents (q, mu, Theta, kappa, alpha) enabled by ``config.variant``.
E_sr of a graph is the masked sum of E_i over its atoms (``graph_energies``).

Initialise under jit (eager e3nn init is slow)::

    model = AtomicModel(config)
    params = jax.jit(model.init)(key, graph)
"""

from __future__ import annotations

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
