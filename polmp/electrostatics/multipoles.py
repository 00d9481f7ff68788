"""Gaussian-smeared point multipoles: latent channels, structure factor, self energy.

Conventions (docs/method.md#multipoles, written down once here)
---------------------------------------------------------------
Atom i carries a charge q_i (e), a dipole mu_i (e A) and a symmetric quadrupole
Theta_i (e A^2) in the *primitive second-moment* convention: a set of point charges
c_a at offsets s_a from r_i has ``mu = sum_a c_a s_a`` and
``Theta = sum_a c_a s_a s_a^T``
(polmp's latent quadrupoles are traceless; every formula here is also valid for a
symmetric Theta with a trace).  The Fourier transform of atom i's density is
``q_i + i k.mu_i - 1/2 k^T Theta_i k`` times ``exp(i k.r_i)``, so::

    S(k) = sum_i [ q_i + i k.mu_i - 1/2 k^T Theta_i k ] exp(i k.r_i).

Every multipole is smeared so that the pair kernel is exp(-sigma^2 k^2/2)/k^2 in k
space and g(r) = erf(r/(sqrt(2) sigma))/r in real space (each atomic Gaussian has a
standard deviation sigma/sqrt(2) per axis).

Self energy
-----------
The k-space sum also contains the interaction of each smeared multipole with itself,
``E_self = 1/(2 eps0) int d^3k/(2 pi)^3 exp(-sigma^2 k^2/2)/k^2 sum_i |s_i(k)|^2``.
Averaging over directions (<k_a k_b> = k^2 delta_ab/3, <(k^T A k)^2> = k^4 (tr(A)^2 +
2 ||A||_F^2)/15) gives, with c = 1/(2 eps0 (2 pi)^{3/2}) = k_e / sqrt(2 pi)::

    E_self = c sum_i [ q_i^2/sigma + (|mu_i|^2 - q_i tr Theta_i)/(3 sigma^3)
                       + ((tr Theta_i)^2 + 2 ||Theta_i||_F^2)/(20 sigma^5) ],

which for traceless Theta is docs/method.md#self-energy exactly
(c [q^2/sigma + |mu|^2/(3 sigma^3) + ||Theta||_F^2/(10 sigma^5)]).  For a single
charge this is k_e q^2/(sqrt(2 pi) sigma) = k_e/2 q^2 g(0), i.e. 1/2 q^2 times the
r -> 0 limit of the pair kernel (note sqrt(2 pi), not sqrt(pi): sigma is the width of
the *pair* kernel, not of one atomic Gaussian).

Channels
--------
Users may pass several independent latent channels: q (N, C), mu (N, C, 3),
theta (N, C, 3, 3).  :func:`to_channels` puts any accepted input into that channel
form and records whether a channel axis was given, so results can be returned in the
caller's layout (no channel axis in, no channel axis out).  Channel energies add.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from polmp.units import EPSILON0

__all__ = [
    "Multipoles",
    "to_channels",
    "from_channels",
    "structure_factor",
    "self_energy",
    "self_potential_field",
    "SELF_PREFACTOR",
]

#: c = 1/(2 eps0 (2 pi)^{3/2}) = k_e/sqrt(2 pi), eV A / e^2: E_self = c q^2/sigma + ...
SELF_PREFACTOR: float = 1.0 / (2.0 * EPSILON0 * (2.0 * math.pi) ** 1.5)


@dataclasses.dataclass(frozen=True)
class Multipoles:
    """Latent multipoles in channel form (a pytree; ``has_channels`` is static).

    Attributes:
        q: Float[Array, 'N C'], charges, e.
        mu: Float[Array, 'N C 3'] dipoles, e A, or None (absent: skipped at trace time).
        theta: Float[Array, 'N C 3 3'] symmetric quadrupoles, e A^2, or None.
        has_channels: whether the caller passed a channel axis (static).
    """

    q: jax.Array
    mu: jax.Array | None
    theta: jax.Array | None
    has_channels: bool = False

    @property
    def num_channels(self) -> int:
        """Number of channels C (static)."""
        return self.q.shape[1]


jax.tree_util.register_dataclass(
    Multipoles, data_fields=["q", "mu", "theta"], meta_fields=["has_channels"]
)


def to_channels(q, mu=None, theta=None) -> Multipoles:
    """Put user latents into channel form (jittable: only static shapes are inspected).

    Accepted layouts: ``q`` (N,) with ``mu`` (N, 3) and ``theta`` (N, 3, 3), or ``q``
    (N, C) with ``mu`` (N, C, 3) and ``theta`` (N, C, 3, 3).  A single-channel ``mu``
    or ``theta`` (no channel axis) joins channel 0 when ``q`` has C > 1 channels
    (zeros in the others), so each physical multipole is counted exactly once:
    broadcasting it would count its self-interaction C times.

    Args:
        q: Float[Array, 'N'] or Float[Array, 'N C'], e.
        mu: Float[Array, 'N 3'] or Float[Array, 'N C 3'], e A, or None.
        theta: Float[Array, 'N 3 3'] or Float[Array, 'N C 3 3'], e A^2, or None.

    Returns:
        :class:`Multipoles`: q (N, C), mu (N, C, 3) or None, theta (N, C, 3, 3) or None.

    Raises:
        ValueError: shapes that do not fit together.
    """
    q = jnp.asarray(q)
    if q.ndim not in (1, 2):
        raise ValueError(f"q must have shape (N,) or (N, C), got {q.shape}")
    has_channels = q.ndim == 2
    n = q.shape[0]
    qc = q if has_channels else q[:, None]
    c = qc.shape[1]

    def norm(x, name, tail):
        if x is None:
            return None
        x = jnp.asarray(x)
        single = (n,) + tail
        multi = (n, c) + tail
        if has_channels and x.shape == multi:
            return x
        if x.shape == single:
            x = x[:, None]
            if c == 1:
                return x
            # Channel 0 carries the single multipole; the other channels hold none.
            pad = [(0, 0), (0, c - 1)] + [(0, 0)] * len(tail)
            return jnp.pad(x, pad)
        want = f"{single}" + (f" or {multi}" if has_channels else "")
        raise ValueError(
            f"{name} must have shape {want} to match q {q.shape}, got {x.shape}"
        )

    if not has_channels and mu is not None and jnp.ndim(mu) == 3:
        raise ValueError(
            f"mu has a channel axis {jnp.shape(mu)} but q {q.shape} does not; "
            "pass q as (N, C)"
        )
    if not has_channels and theta is not None and jnp.ndim(theta) == 4:
        raise ValueError(
            f"theta has a channel axis {jnp.shape(theta)} but q {q.shape} does not; "
            "pass q as (N, C)"
        )
    return Multipoles(
        q=qc,
        mu=norm(mu, "mu", (3,)),
        theta=norm(theta, "theta", (3, 3)),
        has_channels=has_channels,
    )


def from_channels(x, has_channels: bool):
    """Drop the channel axis (axis 1) again when the caller passed none.

    Args:
        x: array with a channel axis at position 1 (per-atom quantity) or None.
        has_channels: the flag of :class:`Multipoles`.

    Returns:
        ``x`` unchanged, or ``x[:, 0]`` for single-channel input.
    """
    if x is None or has_channels:
        return x
    return x[:, 0]


def _coefficients(kvec, q, mu, theta):
    """Real and imaginary per-atom coefficients a + i b of S(k) for a block of k.

    a_ik = q_i - 1/2 k^T Theta_i k,  b_ik = k . mu_i.

    Args:
        kvec: Float[Array, 'K 3'], A^-1.
        q: Float[Array, 'N C'].
        mu: Float[Array, 'N C 3'] or None.
        theta: Float[Array, 'N C 3 3'] or None.

    Returns:
        (a, b): Float[Array, 'N C K'] each (b is None without dipoles).
    """
    a = jnp.broadcast_to(q[:, :, None], q.shape + (kvec.shape[0],))
    if theta is not None:
        a = a - 0.5 * jnp.einsum("ka,ncab,kb->nck", kvec, theta, kvec)
    b = None if mu is None else jnp.einsum("nca,ka->nck", mu, kvec)
    return a, b


def structure_factor(positions, kvectors, q, mu=None, theta=None):
    """Structure factor S(k) of smeared multipoles for a set of k-vectors.

    S(k) = sum_i [q_i + i k.mu_i - 1/2 k^T Theta_i k] exp(i k.r_i).
    Memory is O(N K): chunk the k-vectors for large sets (``ewald`` does).

    Args:
        positions: Float[Array, 'N 3'], A.
        kvectors: Float[Array, 'K 3'], A^-1.
        q: Float[Array, 'N'] or 'N C', e.
        mu: Float[Array, 'N 3'] or 'N C 3', e A, or None.
        theta: Float[Array, 'N 3 3'] or 'N C 3 3', e A^2, or None.

    Returns:
        (re, im): Float[Array, 'K'] (or 'C K' with channels), e.
    """
    m = to_channels(q, mu, theta)
    phase = positions @ kvectors.T  # (N, K)
    cos, sin = jnp.cos(phase)[:, None, :], jnp.sin(phase)[:, None, :]
    a, b = _coefficients(kvectors, m.q, m.mu, m.theta)
    re = jnp.sum(a * cos, axis=0)
    im = jnp.sum(a * sin, axis=0)
    if b is not None:
        # (a + i b)(cos + i sin) = (a cos - b sin) + i (a sin + b cos)
        re = re - jnp.sum(b * sin, axis=0)
        im = im + jnp.sum(b * cos, axis=0)
    if not m.has_channels:
        re, im = re[0], im[0]
    return re, im


def _trace(theta):
    return jnp.trace(theta, axis1=-2, axis2=-1)


def self_energy(q, mu=None, theta=None, *, sigma, atom_mask=None):
    """Self energy of Gaussian-smeared multipoles (docs/method.md#self-energy).

    Args:
        q: Float[Array, 'N'] or 'N C', e.
        mu: Float[Array, 'N 3'] or 'N C 3', e A, or None.
        theta: Float[Array, 'N 3 3'] or 'N C 3 3', symmetric, e A^2, or None.
        sigma: pair-kernel width, A (> 0).
        atom_mask: Bool[Array, 'N'] or None; padded atoms contribute nothing.

    Returns:
        Float[Array, ''] (or 'C' with channels), eV.
    """
    m = to_channels(q, mu, theta)
    s = sigma
    e = m.q**2 / s  # (N, C)
    if m.mu is not None:
        e = e + jnp.sum(m.mu**2, axis=-1) / (3.0 * s**3)
    if m.theta is not None:
        tr = _trace(m.theta)
        e = e - m.q * tr / (3.0 * s**3)
        e = e + (tr**2 + 2.0 * jnp.sum(m.theta**2, axis=(-2, -1))) / (20.0 * s**5)
    if atom_mask is not None:
        e = jnp.where(jnp.asarray(atom_mask)[:, None], e, 0.0)
    out = SELF_PREFACTOR * jnp.sum(e, axis=0)
    return out if m.has_channels else out[0]


def self_potential_field(q, mu=None, theta=None, *, sigma):
    """Self parts of phi_i = dE_self/dq_i and E_i = -dE_self/dmu_i.

    phi_self = 2c [q/sigma - tr Theta/(6 sigma^3)],  E_self = -2c mu/(3 sigma^3).
    A bare reciprocal sum contains these; subtract them to get the potential and field
    of the *other* atoms (docs/method.md#potential-field).

    Args:
        q, mu, theta: as :func:`self_energy` (mu None -> zero field).
        sigma: pair-kernel width, A.

    Returns:
        (phi, field): shaped like q (V) and like q + (3,) (V/A).
    """
    q = jnp.asarray(q)
    phi = 2.0 * SELF_PREFACTOR * q / sigma
    if theta is not None:
        phi = phi - 2.0 * SELF_PREFACTOR * _trace(jnp.asarray(theta)) / (6.0 * sigma**3)
    if mu is None:
        field = jnp.zeros(q.shape + (3,), q.dtype)
    else:
        field = -2.0 * SELF_PREFACTOR * jnp.asarray(mu) / (3.0 * sigma**3)
    return phi, field
