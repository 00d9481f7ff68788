"""Radial kernels and pair contractions for Gaussian-smeared point multipoles.

Contract
--------
Every pair interaction of polmp's multipoles (docs/method.md#multipoles) is written
with Smith's radial functions of a pair kernel g(r)::

    B_0(r) = g(r),        B_{l+1}(r) = -(1/r) dB_l/dr  (= -2 dB_l/d(r^2)),

so that derivatives of g(|d|) with respect to the pair vector d are polynomials in d
times B_l, e.g. grad g = -d B_1 and grad grad g = -I B_1 + d d^T B_2 (Smith, CCP5 Info.
Quart. 4 (1982); the same algebra as in standard Ewald multipole codes).  Three
kernels are provided, all as functions of the *squared* distance ``r2`` so that the
smeared kernels, which are finite at r = 0, also have finite gradients there (no
sqrt at r = 0):

* ``coulomb_radial``:  g(r) = 1/r, B_l = (2l-1)!!/r^(2l+1).  Singular at r = 0; the
  caller must pass ``r2 > 0`` (masked pairs are replaced by a safe value).
* ``gaussian_radial``: g(r) = erf(r/(sqrt(2) sigma))/r, the kernel between two
  Gaussian charges of standard deviation sigma/sqrt(2) per axis (docs/method.md),
  whose Fourier transform is 4 pi exp(-sigma^2 k^2/2)/k^2.  A positive series (Kummer's
  transform of the incomplete gamma function) with stable downward recursion is used
  for r^2/(2 sigma^2) < 2, and the upward erf recursion beyond.
* ``screened_radial``: g_sigma - g_sigma_split, short ranged (the Ewald real-space
  kernel); sigma = 0 gives erfc(r/(sqrt(2) sigma_split))/r.  Differences of nearly
  equal kernels at large r are taken between the erfc forms, so the tail keeps its
  relative accuracy.

Multipole convention (that of S(k), docs/method.md#structure-factor)
----------------------------------------------------------------
The charge density of atom i is
``rho_i(r) = q_i delta - mu_i . grad delta + 1/2 Theta_i : grad grad delta`` (all
centred on r_i), whose Fourier transform int rho exp(i k.r) is
``[q_i + i k.mu_i - 1/2 k^T Theta_i k] exp(i k.r_i)``.  For a set of point charges
c_a at offsets s_a from r_i this gives ``mu = sum_a c_a s_a`` and ``Theta = sum_a c_a
s_a s_a^T`` (the *primitive* second moment; polmp's latent quadrupoles are its
traceless part, but the contractions below are valid for any symmetric Theta).
The pair energy is ``D_i D_j g(|r_j - r_i|)`` with ``D_i = q_i + mu_i . grad_i +
1/2 Theta_i : grad_i grad_i`` acting on r_i.  With the pair vector d = r_j - r_i,
grad_j = grad_d and grad_i = -grad_d, which fixes every sign below.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import erf, erfc

#: Highest radial order provided (quadrupole-quadrupole energies need B_4; the field
#: of a quadrupole needs B_3; B_5 is there for field gradients).
MAX_ORDER = 5

#: Switch between the series (x < X_SWITCH) and the recursions, x = r^2/(2 sigma^2).
#: At x = 2 the upward erf recursion loses at most ~1 digit up to l = 5, and the
#: positive series below has converged to double precision with ``_NUM_TERMS`` terms.
X_SWITCH = 2.0
_NUM_TERMS = 26

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def is_point(sigma) -> bool:
    """True when ``sigma`` is a static zero (point multipoles, kernel 1/r)."""
    return isinstance(sigma, (int, float)) and float(sigma) == 0.0


def coulomb_radial(r2, max_l=4):
    """B_l of the bare Coulomb kernel 1/r: B_l = (2l-1)!!/r^(2l+1).

    Args:
        r2: Float[Array, '...'], squared distance, A^2; must be > 0 (mask first).
        max_l: highest order returned (static int, <= MAX_ORDER).

    Returns:
        Tuple of ``max_l + 1`` arrays shaped like ``r2``; B_l in A^-(2l+1).
    """
    inv_r2 = 1.0 / r2
    out = [jnp.sqrt(inv_r2)]
    for l in range(1, max_l + 1):
        out.append((2 * l - 1) * out[-1] * inv_r2)
    return tuple(out)


def _series_scaled(x, max_l):
    """b_l(x) = int_0^1 t^(2l) exp(-x t^2) dt for l = 0..max_l, accurate for x < X_SWITCH.

    b_L = exp(-x) sum_m (2x)^m / ((2L+1)(2L+3)...(2L+2m+1)) has only positive terms (no
    cancellation, unlike the Taylor series of erf), and the downward recursion
    b_{l-1} = (2x b_l + exp(-x))/(2l-1) only adds positive numbers, so it is stable.
    """
    two_x = 2.0 * x
    s = jnp.ones_like(x)
    for m in range(_NUM_TERMS, 0, -1):  # Horner, innermost term first
        s = 1.0 + s * two_x / (2 * max_l + 2 * m + 1)
    ex = jnp.exp(-x)
    b = [ex * s / (2 * max_l + 1)]
    for l in range(max_l, 0, -1):
        b.append((two_x * b[-1] + ex) / (2 * l - 1))
    return b[::-1]


def _erf_series(r2, sigma, max_l):
    """Series branch of ``gaussian_radial`` (valid for r2/(2 sigma^2) < X_SWITCH)."""
    x = r2 / (2.0 * sigma**2)
    b = _series_scaled(x, max_l)
    # B_l = sqrt(2/pi) sigma^-(2l+1) b_l(x)
    pref = _SQRT_2_OVER_PI / sigma
    inv_s2 = 1.0 / sigma**2
    out = []
    for l in range(max_l + 1):
        out.append(pref * b[l])
        pref = pref * inv_s2
    return out


def _upward(r2, sigma, max_l, *, complementary):
    """Upward recursion for erf(a r)/r (complementary=False) or erfc(a r)/r.

    a = 1/(sqrt(2) sigma); with e = exp(-a^2 r^2) and c = 2a/sqrt(pi):
    B_l = [(2l-1) B_{l-1} -/+ c (2a^2)^(l-1) e] / r^2.  Valid for r2 bounded away
    from 0 (the erf form) or any r2 > 0 (the erfc form, all terms positive).
    """
    r = jnp.sqrt(r2)
    a = 1.0 / (math.sqrt(2.0) * sigma)
    inv_r2 = 1.0 / r2
    e = jnp.exp(-(a * a) * r2)
    c = (2.0 / math.sqrt(math.pi)) * a * e
    sign = 1.0 if complementary else -1.0
    out = [(erfc(a * r) if complementary else erf(a * r)) / r]
    for l in range(1, max_l + 1):
        out.append(((2 * l - 1) * out[-1] + sign * c) * inv_r2)
        c = c * (2.0 * a * a)
    return out


def _erf_both(r2, sigma, max_l, *, need_erfc=True):
    """(B_l of erf(a r)/r, B_l of erfc(a r)/r valid where large (or None), large mask)."""
    x = r2 / (2.0 * sigma**2)
    large = x >= X_SWITCH
    # Double where: each branch only ever sees inputs where it is accurate and finite,
    # so the discarded branch cannot inject NaN/inf into gradients.
    r2_small = jnp.where(large, 0.0, r2)
    r2_large = jnp.where(large, r2, 2.0 * X_SWITCH * sigma**2)
    small = _erf_series(r2_small, sigma, max_l)
    big = _upward(r2_large, sigma, max_l, complementary=False)
    big_c = _upward(r2_large, sigma, max_l, complementary=True) if need_erfc else None
    erf_l = [jnp.where(large, bl, sl) for sl, bl in zip(small, big, strict=True)]
    return erf_l, big_c, large


def gaussian_radial(r2, sigma, max_l=4):
    """B_l of the Gaussian-smeared kernel g(r) = erf(r/(sqrt(2) sigma))/r.

    Finite with finite derivatives of every order at r = 0, where
    B_l(0) = sqrt(2/pi) sigma^-(2l+1) / (2l+1).  ``sigma == 0`` (a static Python
    number) falls back to ``coulomb_radial``.

    Args:
        r2: Float[Array, '...'], squared distance, A^2 (>= 0).
        sigma: pair-kernel width, A (exp(-sigma^2 k^2/2)/k^2 in k space).
        max_l: highest order returned (static int, <= MAX_ORDER).

    Returns:
        Tuple of ``max_l + 1`` arrays shaped like ``r2``; B_l in A^-(2l+1).
    """
    if is_point(sigma):
        return coulomb_radial(r2, max_l)
    erf_l, _, _ = _erf_both(r2, sigma, max_l, need_erfc=False)
    return tuple(erf_l)


def screened_radial(r2, sigma, sigma_split, max_l=4):
    """B_l of g_sigma - g_sigma_split (short ranged), the Ewald real-space kernel.

    For sigma = 0 (static) this is erfc(r/(sqrt(2) sigma_split))/r (singular at r = 0:
    pass r2 > 0); for sigma > 0 it is finite at r = 0.

    Args:
        r2: Float[Array, '...'], squared distance, A^2.
        sigma: width of the physical kernel, A (0 for point multipoles).
        sigma_split: width of the smooth kernel handled in reciprocal space, A.
        max_l: highest order returned (static int, <= MAX_ORDER).

    Returns:
        Tuple of ``max_l + 1`` arrays shaped like ``r2``; B_l in A^-(2l+1).
    """
    erf_s, erfc_s, large_s = _erf_both(r2, sigma_split, max_l)
    if is_point(sigma):
        # erfc = 1/r - erf: at small x (r < 2 sigma_split) 1/r - series is accurate
        # (no large cancellation, erf/r <= 1/r * x-ish), beyond use the erfc recursion.
        r2_pt = jnp.where(large_s, 1.0, r2)
        point = coulomb_radial(r2_pt, max_l)
        return tuple(
            jnp.where(large_s, cl, pl - sl)
            for cl, pl, sl in zip(erfc_s, point, erf_s, strict=True)
        )
    erf_a, erfc_a, large_a = _erf_both(r2, sigma, max_l)
    both_large = large_a & large_s
    # Far out both kernels are 1/r minus a tiny erfc tail: subtract the tails directly
    # (erfc_split - erfc_sigma) so that the difference keeps its relative accuracy.
    return tuple(
        jnp.where(both_large, cs - ca, ea - es)
        for ea, es, ca, cs in zip(erf_a, erf_s, erfc_a, erfc_s, strict=True)
    )


# ---------------------------------------------------------------------------------
# Pair contractions.  Arrays broadcast: i-quantities and j-quantities may be shaped
# (..., 1) / (1, ...) against d (..., 3) for dense blocks, or gathered (E,) lists.
# ---------------------------------------------------------------------------------


def _dot(a, b):
    return jnp.sum(a * b, axis=-1)


def _matvec(theta, v):
    # (..., 3, 3) x (..., 3) -> (..., 3) with broadcasting over the leading axes
    return jnp.sum(theta * v[..., None, :], axis=-1)


def _trace(theta):
    return theta[..., 0, 0] + theta[..., 1, 1] + theta[..., 2, 2]


def required_order(mu, theta, *, field=False):
    """Highest B_l a contraction needs (static): energy q:0, mu:2, Theta:4; field +1."""
    order = 4 if theta is not None else (2 if mu is not None else 0)
    return order + 1 if field else order


def pair_energy(d, B, q_i, q_j, mu_i=None, mu_j=None, theta_i=None, theta_j=None):
    """Interaction D_i D_j g(|d|) of two multipoles, d = r_j - r_i (no k_e).

    Terms (tr = trace, all symmetric Theta allowed)::

        qq      q_i q_j B0
        q mu    [q_j (mu_i.d) - q_i (mu_j.d)] B1
        mu mu   (mu_i.mu_j) B1 - (mu_i.d)(mu_j.d) B2
        q Th    1/2 q_j [-tr Th_i B1 + d.Th_i.d B2] + (i <-> j)
        mu Th   1/2 [(mu_j.d) tr Th_i B2 + 2 mu_j.Th_i.d B2 - (mu_j.d)(d.Th_i.d) B3]
                - (same with i <-> j)
        Th Th   1/4 [(tr_i tr_j + 2 Th_i:Th_j) B2
                     - (4 (Th_i d).(Th_j d) + tr_i d.Th_j.d + tr_j d.Th_i.d) B3
                     + (d.Th_i.d)(d.Th_j.d) B4]

    Args:
        d: Float[Array, '... 3'], r_j - r_i, A.
        B: tuple of radial functions B_0..B_L (L >= required_order), A^-(2l+1).
        q_i, q_j: charges, e, broadcastable to d.shape[:-1].
        mu_i, mu_j: dipoles (..., 3), e*A, or both None.
        theta_i, theta_j: quadrupoles (..., 3, 3), e*A^2, or both None.

    Returns:
        Float[Array, '...'], e^2/A (multiply by k_e for eV).
    """
    e = q_i * q_j * B[0]
    if mu_i is not None:
        mid, mjd = _dot(mu_i, d), _dot(mu_j, d)
        e = e + (q_j * mid - q_i * mjd) * B[1]
        e = e + _dot(mu_i, mu_j) * B[1] - mid * mjd * B[2]
    if theta_i is not None:
        ti, tj = _trace(theta_i), _trace(theta_j)
        thi_d, thj_d = _matvec(theta_i, d), _matvec(theta_j, d)
        dti, dtj = _dot(d, thi_d), _dot(d, thj_d)
        e = (
            e
            + 0.5 * q_j * (-ti * B[1] + dti * B[2])
            + 0.5 * q_i * (-tj * B[1] + dtj * B[2])
        )
        if mu_i is not None:
            # grad_i = -grad_d: the mu_i (one gradient) terms flip sign, Theta_i's do not.
            e = e + 0.5 * (
                mjd * ti * B[2] + 2.0 * _dot(mu_j, thi_d) * B[2] - mjd * dti * B[3]
            )
            e = e - 0.5 * (
                mid * tj * B[2] + 2.0 * _dot(mu_i, thj_d) * B[2] - mid * dtj * B[3]
            )
        th_th = jnp.sum(theta_i * theta_j, axis=(-2, -1))
        e = e + 0.25 * (
            (ti * tj + 2.0 * th_th) * B[2]
            - (4.0 * _dot(thi_d, thj_d) + ti * dtj + tj * dti) * B[3]
            + dti * dtj * B[4]
        )
    return e


def pair_potential_field(d, B, q_j, mu_j=None, theta_j=None):
    """Potential and field at r_i of the multipole at r_j, d = r_j - r_i (no k_e).

    phi_ij = D_j g = q_j B0 - (mu_j.d) B1 + 1/2 (-tr Th_j B1 + d.Th_j.d B2), and
    E_ij = -grad_i phi_ij = grad_d phi_ij =
    -q_j d B1 - mu_j B1 + d (mu_j.d) B2 + 1/2 [d tr Th_j B2 + 2 Th_j d B2 - d (d.Th_j.d) B3].
    These are the derivatives of ``pair_energy`` with respect to q_i and -mu_i.

    Args:
        d: Float[Array, '... 3'], r_j - r_i, A.
        B: tuple of radial functions up to required_order(mu, theta, field=True).
        q_j: charges of the sources, e (broadcastable to d.shape[:-1]).
        mu_j: dipoles (..., 3), e*A, or None.
        theta_j: quadrupoles (..., 3, 3), e*A^2, or None.

    Returns:
        ``(phi, field)``: Float[Array, '...'] in e/A and Float[Array, '... 3'] in e/A^2
        (multiply by k_e for V and V/A).
    """
    phi = q_j * B[0]
    coef_d = -q_j * B[1]  # field = coef_d * d + (vector terms)
    vec = jnp.zeros_like(d)
    if mu_j is not None:
        mjd = _dot(mu_j, d)
        phi = phi - mjd * B[1]
        coef_d = coef_d + mjd * B[2]
        vec = vec - mu_j * B[1][..., None]
    if theta_j is not None:
        tj = _trace(theta_j)
        thj_d = _matvec(theta_j, d)
        dtj = _dot(d, thj_d)
        phi = phi + 0.5 * (-tj * B[1] + dtj * B[2])
        coef_d = coef_d + 0.5 * (tj * B[2] - dtj * B[3])
        vec = vec + thj_d * B[2][..., None]
    return phi, coef_d[..., None] * d + vec
