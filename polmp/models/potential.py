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
stress sigma = (1/V) dE/d(strain) by autodiff of that one energy
(docs/method.md#energy).

E_lr is supplied by the caller as ``long_range_fn(graph, positions, cell, outputs
[, long_range]) -> Float[Array, 'G']`` (eV per graph) or a ``LongRangeOutputs`` (its
``energy`` is E_lr; phi, field, dq, dmu are kept for ``outputs_fn``).  The adapter of
this package is ``polmp.models.long_range.graph_long_range``, whose static per-batch
data (``prepare_long_range``, or ``Batch.long_range``) is passed as the keyword
``long_range=`` of every function below and handed on as the fifth argument; without it
``long_range_fn`` is called with four arguments.  Variants other than ``"sr"`` need
either a ``long_range_fn`` or an explicit ``short_range_only=True`` so that the
long-range part is never dropped silently.

Typical use::

    fns = make_energy_fn(config, long_range_fn=graph_long_range)
    data = prepare_long_range(graph, sigma=1.0, accuracy=1e-6)      # host
    energy, forces, stress = jax.jit(fns.energy_forces_stress_fn)(
        params, graph, long_range=data)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from polmp.geometry.graph import Graph
from polmp.models.config import ModelConfig
from polmp.models.heads import AtomicOutputs, LatentHeads
from polmp.models.layers import Backbone, species_to_index
from polmp.models.long_range import LongRangeOutputs


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
        return LatentHeads(self.config, name="heads")(
            h, index, graph.atom_mask, graph.atom_graph, graph.total_charge
        )


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelOutputs(AtomicOutputs):
    """``AtomicOutputs`` plus the long-range results (``None`` where not computed).

    Attributes:
        energy, q, mu, theta, kappa, alpha: as ``AtomicOutputs`` (``energy`` is the
            per-atom short-range E_i, eV).
        long_range_energy: Float[Array, 'G'], E_lr per graph, eV.
        phi: Float[Array, 'N C'], potential of the permanent multipoles, V.
        field: Float[Array, 'N C 3'], their field, V/A.
        dq: Float[Array, 'N C'], induced charges -kappa phi, e.
        dmu: Float[Array, 'N C 3'], induced dipoles alpha (E + E_ext), e A.
    """

    long_range_energy: jax.Array | None = None
    phi: jax.Array | None = None
    field: jax.Array | None = None
    dq: jax.Array | None = None
    dmu: jax.Array | None = None


class EnergyFns(NamedTuple):
    """Pure functions of ``(params, graph, positions=None, cell=None, *, long_range)``.

    ``long_range`` is the static long-range data of ``graph`` (e.g.
    ``prepare_long_range(graph)`` or ``Batch.long_range``), passed on to
    ``long_range_fn``; ``e_ext`` (Float[Array, '3'], V/A, optional) is a uniform
    external field passed on to it as a keyword (it enters the induced dipoles and
    U_iu; the field's force on the ions, Z*^T E_ext, is not an energy gradient and is
    added by the MD front door, ``polmp.md.jaxmd``).

    Attributes:
        model: the ``AtomicModel`` (``model.init`` gives the params; jit it).
        energy_fn: -> Float[Array, 'G'], eV, E_sr + E_lr per graph (0 for padding).
        outputs_fn: -> ``ModelOutputs`` (per-atom energies without E_lr, latents, and
            with a long-range part E_lr per graph, phi, field and the induced dq, dmu).
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
        long_range_fn: ``(graph, positions, cell, outputs[, long_range]) ->
            Float[Array, 'G']`` (eV) or ``LongRangeOutputs``, the long-range energy per
            graph from the latents in ``outputs``, e.g.
            ``polmp.models.long_range.graph_long_range``.
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

    def evaluate(params, graph, positions, cell, long_range, e_ext=None):
        """(per-graph E_sr + E_lr, ModelOutputs) at the given positions and cell."""
        positions = graph.positions if positions is None else positions
        cell = graph.cell if cell is None else cell
        cell = cell.astype(positions.dtype)
        outputs = model.apply(params, graph, positions, cell)
        energy = graph_energies(outputs.energy, graph)  # (G,)
        extra = {}
        if e_ext is not None and long_range_fn is None:
            raise ValueError(
                "an external field e_ext acts through the long-range response: this "
                "model has no long_range_fn"
            )
        if long_range_fn is not None:
            args = (graph, positions, cell, outputs)
            if long_range is not None:
                args = (*args, long_range)
            # the field is a keyword only when given, so 4/5-argument
            # long_range_fn without one keep working
            kw = {} if e_ext is None else {"e_ext": e_ext}
            result = long_range_fn(*args, **kw)
            if isinstance(result, LongRangeOutputs):
                extra = result._asdict()
                e_lr = extra.pop("energy")
            else:
                e_lr = result
            e_lr = jnp.where(graph.graph_mask, e_lr, jnp.zeros_like(e_lr))
            energy = energy + e_lr
            extra["long_range_energy"] = e_lr
        fields = {f.name: getattr(outputs, f.name) for f in dataclasses.fields(outputs)}
        return energy, ModelOutputs(**fields, **extra)

    def outputs_fn(
        params, graph: Graph, positions=None, cell=None, *, long_range=None, e_ext=None
    ) -> ModelOutputs:
        return evaluate(params, graph, positions, cell, long_range, e_ext)[1]

    def energy_fn(
        params, graph: Graph, positions=None, cell=None, *, long_range=None, e_ext=None
    ) -> jax.Array:
        return evaluate(params, graph, positions, cell, long_range, e_ext)[0]

    def energy_forces_stress_fn(
        params, graph: Graph, positions=None, cell=None, *, long_range=None, e_ext=None
    ):
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
            energy = energy_fn(
                params, graph, pos, c, long_range=long_range, e_ext=e_ext
            )
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
