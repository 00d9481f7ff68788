"""Radial basis and smooth cutoff envelope for the short-range network.

Every edge feature that depends on the distance r = |r_ij| is built from

    B_n(r) = sqrt(2 / r_c) * sin(n pi r / r_c) / r,        n = 1 .. num_basis

(the zeroth spherical Bessel functions of DimeNet/NequIP) times the polynomial envelope

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2),   x = r / r_c,

which is 1 at r = 0 and vanishes at r = r_c together with its first and second
derivatives (so energies, forces and force derivatives are continuous as a neighbour
crosses the cutoff); u = 0 for r >= r_c.  Reference: Gasteiger, Gross, Guennemann,
DimeNet (ICLR 2020), eq. 8; Batzner et al., NequIP (Nat. Commun. 2022).

Both functions are finite in value, gradient and Hessian at r = 0, the length of a
padded edge: ``sin(n pi r / r_c) / r`` is evaluated as
``(n pi / r_c) * sinc(n r / r_c)``, whose derivatives at 0 are defined by ``jnp.sinc``'s
own Maclaurin rule.

All functions are pure, jittable and follow the dtype of ``r``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def polynomial_envelope(r: jax.Array, cutoff: float, p: int = 6) -> jax.Array:
    """Smooth polynomial cutoff u(r / r_c) (DimeNet eq. 8), zero for r >= r_c.

    Args:
        r: Float[Array, '...'], A, distances (>= 0).
        cutoff: r_c, A.
        p: polynomial order (>= 2); u and its first two derivatives vanish at r_c.

    Returns:
        Float[Array, '...'], dimensionless, same dtype as ``r``; 1 at r = 0.
    """
    if p < 2:
        raise ValueError(f"envelope order p must be >= 2, got {p}")
    x = r / cutoff
    c0 = (p + 1.0) * (p + 2.0) / 2.0
    c1 = p * (p + 2.0)
    c2 = p * (p + 1.0) / 2.0
    xp = x**p
    poly = 1.0 - c0 * xp + c1 * xp * x - c2 * xp * x * x
    # The polynomial is non-zero beyond x = 1; the where keeps u = 0 there.  Both
    # branches are finite everywhere, so no double-where is needed.
    return jnp.where(x < 1.0, poly, jnp.zeros_like(poly))


def bessel_basis(r: jax.Array, cutoff: float, num_basis: int) -> jax.Array:
    """Radial Bessel basis sqrt(2/r_c) sin(n pi r/r_c) / r, n = 1..num_basis.

    Finite (value and all derivatives) at r = 0, where it equals sqrt(2/r_c) n pi / r_c.

    Args:
        r: Float[Array, '...'], A, distances.
        cutoff: r_c, A.
        num_basis: number of basis functions.

    Returns:
        Float[Array, '... num_basis'], 1/A^(3/2), same dtype as ``r``.
    """
    n = jnp.arange(1, num_basis + 1, dtype=r.dtype)  # (num_basis,)
    x = r[..., None] / cutoff  # (..., 1)
    # sin(n pi x) / r = (n pi / r_c) * sinc(n x); jnp.sinc is smooth at 0.
    values = (n * jnp.pi / cutoff) * jnp.sinc(n * x)
    return jnp.sqrt(2.0 / cutoff).astype(r.dtype) * values


def radial_embedding(
    r: jax.Array, cutoff: float, num_basis: int, p: int = 6
) -> tuple[jax.Array, jax.Array]:
    """Bessel basis and envelope of the edge lengths, as used by the interaction layers.

    Args:
        r: Float[Array, 'E'], A, edge lengths (0 for padded edges).
        cutoff: r_c, A.
        num_basis: number of Bessel functions.
        p: envelope order.

    Returns:
        ``(basis, envelope)``: Float[Array, 'E num_basis'] and Float[Array, 'E'].
    """
    return bessel_basis(r, cutoff, num_basis), polynomial_envelope(r, cutoff, p)
