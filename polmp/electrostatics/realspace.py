"""Real-space (erfc-type) part of an Ewald split for Gaussian-smeared multipoles.

Contract
--------
``prepare_realspace`` (host, numpy, not jittable) builds a padded full pair list with
integer image shifts; ``realspace_energy`` and ``realspace_potential_field`` are pure,
jittable and differentiable in positions, cell and every multipole (pair vectors are
rebuilt from the traced cell: r_ij = R[j] - R[i] + shifts_ij @ cell).

The split: the periodic energy of sigma-smeared multipoles (docs/method.md#ewald,
k = 0 omitted, self energy E_self(sigma) removed) is, for any sigma_split > sigma,
::

    E(sigma) = E_recip(sigma_split) + E_real(sigma, sigma_split)
               - pi k_e Q^2 (sigma_split^2 - sigma^2) / V,

    E_real = k_e/2 sum_{(i,j,n) != (i,i,0)} D_i D_j [g_sigma - g_sigma_split](|r_ij + n|),

where E_recip(s) = 1/(2 eps0 V) sum_{k != 0} exp(-s^2 k^2/2)/k^2 |S(k)|^2 - E_self(s)
is the reciprocal sum *with its own self energy removed*, and Q = sum_i q_i.  The last
term is the k -> 0 limit of [exp(-sigma^2 k^2/2) - exp(-sigma_split^2 k^2/2)] |S|^2/k^2
that the k = 0-free sums drop (the neutralising-background term of a charged cell;
zero for neutral cells).  For point multipoles (sigma = 0) g_0 - g_split is
erfc(r/(sqrt(2) sigma_split))/r and the formula is the classic Ewald sum.

Cutoff: ``realspace_cutoff`` returns the distance beyond which every radial function
B_l (l <= max_l) of the screened kernel is below ``accuracy`` times the bare Coulomb
one (a relative truncation criterion per pair).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from polmp.electrostatics import kernels
from polmp.geometry.neighbors import neighbor_pairs
from polmp.units import COULOMB


@dataclasses.dataclass(frozen=True)
class RealSpacePairs:
    """Padded full pair list (both i->j and j->i) with image shifts.

    Attributes:
        idx_i: Int[Array, 'E'], centre atom.
        idx_j: Int[Array, 'E'], neighbour atom.
        shifts: Int[Array, 'E 3'], integer image shifts (r_ij = R[j] - R[i] + shifts @ cell).
        mask: Bool[Array, 'E'], False on padding pairs (self-pairs of atom 0, zero shift).
    """

    idx_i: jax.Array
    idx_j: jax.Array
    shifts: jax.Array
    mask: jax.Array


jax.tree_util.register_dataclass(
    RealSpacePairs, data_fields=["idx_i", "idx_j", "shifts", "mask"], meta_fields=[]
)


def realspace_cutoff(sigma_split, accuracy=1e-6, max_l=0):
    """Cutoff (A) beyond which the screened kernel is below ``accuracy`` (relative).

    Finds the smallest r with C_l(r) <= accuracy * (2l-1)!!/r^(2l+1) for all l <= max_l,
    where C_l are the B_l of erfc(r/(sqrt(2) sigma_split))/r (the tail of the real-space
    kernel for any sigma < sigma_split is smaller).  For max_l = 0 this is
    r = sqrt(2) sigma_split erfcinv(accuracy) (4.9 sigma_split at 1e-6).  Host function.

    Args:
        sigma_split: split width, A (> 0).
        accuracy: relative truncation error per pair (0 < accuracy < 1).
        max_l: highest radial order used (0 charges, 2 dipoles, 4 quadrupoles).

    Returns:
        float, A.
    """
    if not sigma_split > 0:
        raise ValueError(f"sigma_split must be positive, got {sigma_split}")
    if not 0 < accuracy < 1:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    a = 1.0 / (math.sqrt(2.0) * sigma_split)

    def worst_ratio(r):
        e = math.exp(-a * a * r * r)
        c = 2.0 / math.sqrt(math.pi) * a * e
        value, point = math.erfc(a * r) / r, 1.0 / r
        ratio = value / point
        for l in range(1, max_l + 1):
            value = ((2 * l - 1) * value + c) / r**2
            point = (2 * l - 1) * point / r**2
            c *= 2.0 * a * a
            ratio = max(ratio, value / point)
        return ratio

    lo, hi = 1e-3 * sigma_split, sigma_split
    while worst_ratio(hi) > accuracy:  # the ratios decrease monotonically beyond ~sigma
        lo, hi = hi, 2.0 * hi
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if worst_ratio(mid) > accuracy else (lo, mid)
    return hi


def prepare_realspace(positions, cell, pbc, cutoff, *, num_pairs=None):
    """Host: full pair list within ``cutoff`` (vesin), padded to ``num_pairs``.

    Args:
        positions: (N, 3) array, A.
        cell: (3, 3) array, rows are lattice vectors, A (None when nothing is periodic).
        pbc: bool or three bools.
        cutoff: float, A (see ``realspace_cutoff``).
        num_pairs: capacity (static size); None uses the exact count.  Padding pairs are
            self-pairs of atom 0 with zero shift and ``mask`` False.

    Returns:
        ``RealSpacePairs`` with numpy-backed int32/bool arrays.

    Raises:
        ValueError: more pairs than ``num_pairs`` (reallocate with a larger capacity).
    """
    idx_i, idx_j, shifts = neighbor_pairs(positions, cell, pbc, cutoff)
    count = idx_i.shape[0]
    capacity = count if num_pairs is None else int(num_pairs)
    if count > capacity:
        raise ValueError(f"{count} pairs within {cutoff} A exceed num_pairs={capacity}")
    pad = capacity - count
    return RealSpacePairs(
        idx_i=jnp.asarray(np.concatenate([idx_i, np.zeros(pad, np.int32)])),
        idx_j=jnp.asarray(np.concatenate([idx_j, np.zeros(pad, np.int32)])),
        shifts=jnp.asarray(np.concatenate([shifts, np.zeros((pad, 3), np.int32)])),
        mask=jnp.asarray(np.arange(capacity) < count),
    )


def _pair_geometry(positions, cell, pairs, sigma, sigma_split, max_l):
    d = positions[pairs.idx_j] - positions[pairs.idx_i]
    if cell is not None:
        d = d + pairs.shifts.astype(positions.dtype) @ cell
    r2 = jnp.sum(d * d, axis=-1)
    # Double where: padding pairs have d = 0, where erfc(r)/r is singular.
    r2 = jnp.where(pairs.mask, r2, 1.0)
    B = kernels.screened_radial(r2, sigma, sigma_split, max_l)
    return d, B


def _take(x, idx):
    return None if x is None else x[idx]


def realspace_energy(positions, cell, q, mu, theta, pairs, *, sigma, sigma_split):
    """Real-space part E_real(sigma, sigma_split) of the Ewald split (module docstring).

    Args:
        positions: Float[Array, 'N 3'], A.
        cell: Float[Array, '3 3'] (rows are lattice vectors, A) or None (no images).
        q: Float[Array, 'N'], e.
        mu: Float[Array, 'N 3'], e*A, or None.
        theta: Float[Array, 'N 3 3'], symmetric primitive quadrupoles, e*A^2, or None.
        pairs: ``RealSpacePairs`` from ``prepare_realspace`` (full list).
        sigma: width of the physical kernel, A (Python 0 for point multipoles).
        sigma_split: width of the kernel left to reciprocal space, A (> sigma).

    Returns:
        Float[Array, ''], eV.
    """
    max_l = kernels.required_order(mu, theta)
    d, B = _pair_geometry(positions, cell, pairs, sigma, sigma_split, max_l)
    i, j = pairs.idx_i, pairs.idx_j
    e = kernels.pair_energy(
        d, B, q[i], q[j], _take(mu, i), _take(mu, j), _take(theta, i), _take(theta, j)
    )
    # 1/2: the list is full, each unordered pair appears twice.
    return 0.5 * COULOMB * jnp.sum(jnp.where(pairs.mask, e, 0.0))


def realspace_potential_field(
    positions, cell, q, mu, theta, pairs, *, sigma, sigma_split
):
    """Real-space parts of phi_i = dE_real/dq_i and E_i = -dE_real/dmu_i.

    Args:
        positions, cell, q, mu, theta, pairs, sigma, sigma_split: as ``realspace_energy``.

    Returns:
        ``(phi, field)``: Float[Array, 'N'] in V and Float[Array, 'N 3'] in V/A.
    """
    n = positions.shape[0]
    max_l = kernels.required_order(mu, theta, field=True)
    d, B = _pair_geometry(positions, cell, pairs, sigma, sigma_split, max_l)
    j = pairs.idx_j
    phi, field = kernels.pair_potential_field(d, B, q[j], _take(mu, j), _take(theta, j))
    phi = jnp.where(pairs.mask, phi, 0.0)
    field = jnp.where(pairs.mask[:, None], field, 0.0)
    phi = jax.ops.segment_sum(phi, pairs.idx_i, num_segments=n)
    field = jax.ops.segment_sum(field, pairs.idx_i, num_segments=n)
    return COULOMB * phi, COULOMB * field
