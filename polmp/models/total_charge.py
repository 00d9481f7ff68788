"""Shift latent charges so that each structure carries its total charge Q_g.

The paper's latent charges are free: nothing ties sum_i q_i to the net charge of the
structure, so a cation and a neutral molecule with the same local environments get
the same latents and the same long-range energy.  ``shift_to_total_charge`` projects
the predicted charges qt_i onto the constraint sum_{i in g} q_i = Q_g, graph by graph
(docs/total_charge.md):

    q_i = qt_i + s_i / (sum_{j in g(i)} s_j) * (Q_g(i) - sum_{j in g(i)} qt_j)

It is the minimiser of sum_i (q_i - qt_i)^2 / (2 s_i) subject to the constraint, with
weights s_i > 0:

* ``"uniform"``: s_i = 1, the excess is spread evenly (the smallest change of q in the
  Euclidean norm);
* ``"softness"``: s_i > 0 a learned per-atom softness (charge-equilibration: with a
  hardness J_i = 1/s_i the shift is what minimising sum_i J_i (q_i - qt_i)^2 / 2 gives,
  so soft atoms take more of the excess).

With C latent charge channels (energies of the channels add) channel 0 is shifted to
Q_g and the other channels to 0: the far field of a structure is then that of its net
charge in one channel and of neutral distributions in the others, so the long-range
ion-ion energy is k_e Q_A Q_B / r whatever C is, and the polarization, which sums the
channels, sees a total charge Q_g.

Static shapes: segment sums over ``atom_graph`` with masks; padding atoms stay 0 and
padding graphs (no real atoms, Q = 0) divide by a guarded 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def shift_to_total_charge(
    q: jax.Array,
    weights: jax.Array,
    atom_graph: jax.Array,
    atom_mask: jax.Array,
    total_charge: jax.Array,
) -> jax.Array:
    """Charges q shifted, per graph, to sum to Q_g in channel 0 and to 0 in the rest.

    Args:
        q: Float[Array, 'N C'], predicted latent charges qt, e (0 on padding atoms).
        weights: Float[Array, 'N'], s_i > 0 on real atoms (any value on padding
            atoms: masked), dimensionless (only ratios within a graph matter).
        atom_graph: Int[Array, 'N'], graph index of each atom.
        atom_mask: Bool[Array, 'N'], real atoms.
        total_charge: Float[Array, 'G'], Q_g, e (0 for padding graphs).

    Returns:
        Float[Array, 'N C'], e, with sum_{i in g} q_ic = Q_g delta_c0 for every graph g
        that has real atoms; 0 on padding atoms.
    """
    num_graphs = total_charge.shape[0]
    dtype = q.dtype
    mask = atom_mask.astype(dtype)
    w = jnp.where(atom_mask, weights.astype(dtype), jnp.zeros((), dtype))  # (N,)
    q = q * mask[:, None]

    def per_graph(x):
        return jax.ops.segment_sum(x, atom_graph, num_segments=num_graphs)

    q_sum = per_graph(q)  # (G, C)
    w_sum = per_graph(w)  # (G,)
    target = jnp.zeros_like(q_sum).at[:, 0].set(total_charge.astype(dtype))
    # A graph without real atoms (padding) has w_sum = 0: divide by 1 instead so that
    # values and gradients stay finite (its atoms are masked anyway).
    w_sum = jnp.where(w_sum > 0, w_sum, jnp.ones_like(w_sum))
    lam = (target - q_sum) / w_sum[:, None]  # (G, C), e per unit weight
    return q + w[:, None] * lam[atom_graph]


def graph_charges(
    q: jax.Array, atom_graph: jax.Array, atom_mask: jax.Array, num_graphs: int
) -> jax.Array:
    """Per-graph sums of the charges (padding atoms excluded).

    Args:
        q: Float[Array, 'N C'], e.
        atom_graph: Int[Array, 'N'].  atom_mask: Bool[Array, 'N'].
        num_graphs: G.

    Returns:
        Float[Array, 'G C'], e.
    """
    q = jnp.where(atom_mask[:, None], q, jnp.zeros_like(q))
    return jax.ops.segment_sum(q, atom_graph, num_segments=num_graphs)
