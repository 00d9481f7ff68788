"""Non-periodic electrostatics of Gaussian-smeared multipoles: all pairs, chunked.

Implements docs/method.md#direct for clusters and molecules::

    E_elec = k_e/2 sum_{i != j} D_i D_j g(|r_i - r_j|),
    D_i = q_i + mu_i . grad_i + 1/2 Theta_i : grad_i grad_i,
    g(r) = erf(r / (sqrt(2) sigma)) / r          (1/r for sigma = 0),

and section 5, phi_i = dE/dq_i and E_i = -dE/dmu_i (self terms excluded), from explicit
kernels (``kernels.pair_energy`` / ``kernels.pair_potential_field``).  The multipole
convention is the one of the structure factor S(k) = sum_i [q_i + i k.mu_i - 1/2 k^T
Theta_i k] exp(i k.r_i), spelled out in ``polmp.electrostatics.kernels``.

Cost and memory: O(N^2) work, O(N * chunk_size) memory.  Rows i are processed in
blocks of ``chunk_size`` with ``lax.map`` against all columns j; each block is
rematerialised (``jax.checkpoint``) in the backward pass so that forces do not store
O(N^2) residuals.  All functions are pure and jittable; ``sigma`` and ``chunk_size``
are static (``sigma`` may be a traced positive scalar, but 0 must be a Python number).
Padded atoms (``atom_mask`` False) neither act nor feel; their phi and field are 0
and their gradients vanish.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from polmp.electrostatics import kernels
from polmp.units import COULOMB


def _prepare_blocks(positions, atom_mask, chunk_size):
    """Pad the rows to a multiple of the chunk and return block row indices."""
    n = positions.shape[0]
    chunk = max(1, min(int(chunk_size), n))
    num_blocks = math.ceil(n / chunk)
    if atom_mask is None:
        atom_mask = jnp.ones((n,), dtype=bool)
    atom_mask = jnp.asarray(atom_mask).astype(bool)
    rows = jnp.arange(num_blocks * chunk).reshape(num_blocks, chunk)
    return chunk, num_blocks, rows, atom_mask


def _as_arrays(*xs):
    return tuple(None if x is None else jnp.asarray(x) for x in xs)


def _gather_rows(x, rows, n):
    """x[rows] with rows >= n (padding of the last block) clamped; masked later."""
    return None if x is None else x[jnp.minimum(rows, n - 1)]


def _block_geometry(rows, positions, atom_mask, sigma, max_l):
    """Pair vectors, masks and radial functions for one block of rows (C, N)."""
    n = positions.shape[0]
    safe_rows = jnp.minimum(rows, n - 1)
    d = positions[None, :, :] - positions[safe_rows][:, None, :]  # r_j - r_i, (C, N, 3)
    pair_mask = (
        (rows < n)[:, None]
        & atom_mask[safe_rows][:, None]
        & atom_mask[None, :]
        & (rows[:, None] != jnp.arange(n)[None, :])
    )
    r2 = jnp.sum(d * d, axis=-1)
    # Double where: masked pairs (i == j, padding) get r2 = 1 so that the 1/r kernel
    # and its derivatives stay finite; their contribution is zeroed afterwards.
    r2 = jnp.where(pair_mask, r2, 1.0)
    B = kernels.gaussian_radial(r2, sigma, max_l)
    return d, pair_mask, B


def direct_energy(
    positions,
    q,
    mu=None,
    theta=None,
    *,
    sigma,
    atom_mask=None,
    chunk_size=256,
):
    """Energy of Gaussian-smeared multipoles in vacuum (docs/method.md#direct).

    Args:
        positions: Float[Array, 'N 3'], A.
        q: Float[Array, 'N'], charges, e.
        mu: Float[Array, 'N 3'], dipoles, e*A, or None (terms skipped at trace time).
        theta: Float[Array, 'N 3 3'], symmetric (traceless) primitive quadrupoles, e*A^2,
            or None.
        sigma: width of the pair kernel erf(r/(sqrt(2) sigma))/r, A; a Python 0 gives
            point multipoles (1/r).
        atom_mask: Bool[Array, 'N'] (True = real atom) or None.
        chunk_size: rows per block (static); memory is O(N * chunk_size).

    Returns:
        Float[Array, ''], eV.
    """
    positions, q, mu, theta = _as_arrays(positions, q, mu, theta)
    n = positions.shape[0]
    chunk, num_blocks, rows, atom_mask = _prepare_blocks(
        positions, atom_mask, chunk_size
    )
    max_l = kernels.required_order(mu, theta)

    @jax.checkpoint
    def block(rows_b):
        d, pair_mask, B = _block_geometry(rows_b, positions, atom_mask, sigma, max_l)
        e = kernels.pair_energy(
            d,
            B,
            _gather_rows(q, rows_b, n)[:, None],
            q[None, :],
            None if mu is None else _gather_rows(mu, rows_b, n)[:, None, :],
            None if mu is None else mu[None, :, :],
            None if theta is None else _gather_rows(theta, rows_b, n)[:, None, :, :],
            None if theta is None else theta[None, :, :, :],
        )
        return jnp.sum(jnp.where(pair_mask, e, 0.0))

    per_block = jax.lax.map(block, rows)  # (num_blocks,)
    # 1/2: every unordered pair appears twice in the i != j double sum.
    return 0.5 * COULOMB * jnp.sum(per_block)


def direct_potential_field(
    positions,
    q,
    mu=None,
    theta=None,
    *,
    sigma,
    atom_mask=None,
    chunk_size=256,
):
    """Potential and field at each atom (docs/method.md#potential-field).

    phi_i = dE/dq_i = k_e sum_{j != i} D_j g(|r_j - r_i|) and
    E_i = -dE/dmu_i = -k_e sum_{j != i} grad_i D_j g(|r_j - r_i|) with E from
    ``direct_energy``; no 1/2 here (the energy applies it once).

    Args:
        positions: Float[Array, 'N 3'], A.
        q: Float[Array, 'N'], e.
        mu: Float[Array, 'N 3'], e*A, or None.
        theta: Float[Array, 'N 3 3'], e*A^2, or None.
        sigma: kernel width, A (Python 0 for point multipoles).
        atom_mask: Bool[Array, 'N'] or None; padded atoms get phi = 0, field = 0.
        chunk_size: rows per block (static).

    Returns:
        ``(phi, field)``: Float[Array, 'N'] in V (eV/e) and Float[Array, 'N 3'] in V/A.
    """
    positions, q, mu, theta = _as_arrays(positions, q, mu, theta)
    n = positions.shape[0]
    chunk, num_blocks, rows, atom_mask = _prepare_blocks(
        positions, atom_mask, chunk_size
    )
    max_l = kernels.required_order(mu, theta, field=True)

    @jax.checkpoint
    def block(rows_b):
        d, pair_mask, B = _block_geometry(rows_b, positions, atom_mask, sigma, max_l)
        phi, field = kernels.pair_potential_field(
            d,
            B,
            q[None, :],
            None if mu is None else mu[None, :, :],
            None if theta is None else theta[None, :, :, :],
        )
        phi = jnp.sum(jnp.where(pair_mask, phi, 0.0), axis=1)  # (C,)
        field = jnp.sum(jnp.where(pair_mask[..., None], field, 0.0), axis=1)  # (C, 3)
        return phi, field

    phi, field = jax.lax.map(block, rows)
    phi = phi.reshape(num_blocks * chunk)[:n]
    field = field.reshape(num_blocks * chunk, 3)[:n]
    return COULOMB * phi, COULOMB * field
