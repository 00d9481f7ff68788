"""Smooth particle-mesh Ewald (PME) for Gaussian-smeared charges, dipoles, quadrupoles.

Implements the reciprocal sum of docs/method.md#pme on a mesh (Essmann et al., J. Chem.
Phys. 103, 8577 (1995), smooth PME with cardinal B-splines), extended to point dipoles
and quadrupoles by spreading them with the first and second derivatives of the spline
weights::

    E_pme = 1/(2 eps0 V) sum_{k != 0} exp(-sigma^2 k^2 / 2) / k^2 |S(k)|^2,
    S(k)  = sum_i [q_i + i k.mu_i - 1/2 k^T Theta_i k] exp(i k.r_i).

**The self energy E_self is NOT subtracted** (``pme_energy`` is the bare reciprocal sum;
``polmp.electrostatics`` removes E_self where it assembles E_elec).

Contract
--------
``prepare_pme`` (host, numpy, not jittable) fixes the static mesh shape from a concrete
cell, ``sigma`` and ``accuracy`` and returns a :class:`PMESpec`, a frozen dataclass
registered as a pytree *with no leaves* (all fields static), so it can be passed to a
jitted function as an ordinary argument.  ``pme_energy`` and ``pme_potential_field`` are
pure, jittable and differentiable in positions, cell and every multipole: forces are
``-grad`` w.r.t. positions and the stress follows from the gradient w.r.t. the cell
(the mesh shape stays fixed; re-prepare when the cell changes a lot, e.g. in NPT).
The compute dtype follows ``positions.dtype``.

Algorithm
---------
With M the cell (rows are lattice vectors), K = (K_1, K_2, K_3) the mesh shape and
u_i = K * (r_i M^-1) the scaled fractional coordinates, Euler exponential splines give
``exp(2 pi i m_a u_a / K_a) ~ b_a(m_a) sum_j M_p(u_a - j) exp(2 pi i m_a j / K_a)``
with the Euler exponential spline factors
``1/b_a(m) = exp(-2 pi i (p-1) m/K_a) sum_{k=0}^{p-2} M_p(k+1) exp(2 pi i m k/K_a)``.
Because ``i k.mu exp(i k.r) = mu.grad exp(i k.r)`` and ``-1/2 k^T Theta k exp(i k.r) =
1/2 Theta:grad grad exp(i k.r)``, applying the same differential operators to the
spline approximation gives the mesh density

    Q(j) = sum_i [q_i W_i(j) + d_i . grad_u W_i(j)
                  + 1/2 Theta'_i : grad_u grad_u W_i(j)],
    W_i(j) = prod_a M_p(u_ia - j_a)   (periodically wrapped),
    d_ia = K_a (mu_i M^-1)_a,   Theta'_i,ab = K_a K_b (M^-T Theta_i M^-1)_ab,

and S(k_m) ~ b(m) sum_j Q(j) exp(2 pi i m.j/K), so that the signs of the dipole and
quadrupole terms are those of S(k) by construction (tested against the Ewald sum with
dipole-only and quadrupole-only systems).  Then, with F = rfftn(Q) over half of k space,

    E_pme = 1/(2 eps0 V) sum_m w_m G(k_m) |F(m)|^2,
    G(k_m) = exp(-sigma^2 k^2/2) / k^2 |b(m)|^2,

k_m = m B (B = 2 pi M^-T, traced, so the cell derivative is exact for the fixed mesh),
w_m = 2 for 0 < m_3 < K_3/2 and 1 on the m_3 = 0 plane; m = 0 is removed and the Nyquist
planes (m_a = K_a/2 for even K_a, where a mode and its alias are indistinguishable) are
dropped: the mesh rule puts them where exp(-sigma^2 k^2/2) < accuracy.

Cost and memory: spreading is one windowed scatter-add of N blocks of p^3 values into a
mesh padded by p - 1 points per axis (then folded back periodically); there are no
(N, mesh) arrays: memory is O(N p^3 + K_1 K_2 K_3).  Forces come from autodiff (the
transpose of the scatter is a windowed gather; B-splines of order p are C^{p-2}, so
forces are continuous for p >= 4 even for quadrupoles, whose weights use M_p'').

Mesh rule (``mesh_shape_for``)
------------------------------
The Gaussian controls the truncation of the k-sum but *not* the aliasing of point
multipoles spread with splines: the mode m of the mesh picks up the (undamped) structure
factor at the alias wavevectors k_m + l K b, with relative amplitude
``sum_{l != 0} (f / |f - l|)^(p - n)`` for f = m_a / K_a and a spline derivative of
order n.  The energy error therefore falls as a power of the mesh spacing h, and polmp
uses the model

    |dE| / E ~ A_{l,p} (h / sigma)^(p - l),    l = ``max_multipole_order``,

with A_{l,p} fitted to measured errors (``ALIAS_CONSTANTS``, x2 safety).  The spacing is
h = min(pi / k_c, sigma (accuracy / (2 A_{l,p}))^(1/(p-l))) with
k_c = sqrt(2 ln(1/accuracy)) / sigma, so the mesh also covers the k-sphere the Ewald sum
needs, and K_a = the smallest 2^a 3^b 5^c >= max(|a_a| / h, p).  For sigma = 1 A,
accuracy 1e-5 and p = 6 this gives h = 0.40 A for charges (l = 0), 0.25 A with dipoles
and 0.14 A with quadrupoles: quadrupoles spread with second spline derivatives are
expensive at tight accuracy; use p = 8 (h = 0.30 A for l = 2) or a looser accuracy
for the quadrupole part.  ``max_multipole_order`` defaults to 2 (safe for anything).

What ``accuracy`` means: the error of E_pme is at most about ``accuracy * E_self``, with
E_self = 1/(2 eps0 (2 pi)^(3/2)) sum_i [q_i^2/sigma + |mu_i|^2/(3 sigma^3) +
||Theta_i||_F^2/(10 sigma^5)] the self energy of the same multipoles.  For uncorrelated
multipoles E_pme ~ E_self, so this is the relative error of E_pme (how the constants
were fitted); for condensed matter |E_elec| = |E_pme - E_self| is of the order of
E_self, so it is about the relative error of E_elec.  It is *not* the relative error of
E_pme for neutral molecules, whose E_pme is a small remainder of large cancelling terms
(water: E_pme ~ 0.04 E_self; at accuracy 1e-5 the measured error is 1.6e-6 E_self,
i.e. 4e-5 of E_pme).

Precision: float64 reaches the truncation error of the mesh (~1e-12 relative on fine
meshes).  In float32 (mesh, FFT and sums in float32) the energy of the 1536-atom
water benchmark differs from float64 by 5e-8 E_self (1.2e-6 of E_pme) and the forces by
at most 2e-5 of their rms: the float32 floor is ~1e-7 E_self, so accuracies tighter
than that only make the float32 mesh larger.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from polmp.units import EPSILON0

__all__ = [
    "PMESpec",
    "prepare_pme",
    "mesh_shape_for",
    "mesh_spacing_for",
    "fft_friendly",
    "bspline_weights",
    "pme_energy",
    "pme_potential_field",
    "pme_energy_potential_field",
]


# ---------------------------------------------------------------------------- host side


@dataclasses.dataclass(frozen=True)
class PMESpec:
    """Static description of a PME mesh (a leafless pytree: every field is static).

    Attributes:
        mesh_shape: (K_1, K_2, K_3), number of mesh points along each lattice vector.
        order: B-spline order p (interpolation over p points per axis), >= 4.
        sigma: smearing the mesh was chosen for, A (informational; the energy takes its
            own ``sigma``).
        accuracy: requested accuracy, relative to E_self (informational).
    """

    mesh_shape: tuple
    order: int
    sigma: float = 1.0
    accuracy: float = 1e-6


jax.tree_util.register_dataclass(
    PMESpec, data_fields=[], meta_fields=["mesh_shape", "order", "sigma", "accuracy"]
)


def fft_friendly(n: int) -> int:
    """Smallest integer >= n whose prime factors are all in {2, 3, 5}.  Not jittable."""
    n = max(int(n), 1)
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


#: Fitted constants A_{l,p} of the aliasing-error model |dE|/E ~ A (h/sigma)^(p-l)
#: (l = highest multipole spread, p = spline order), measured against a converged Ewald
#: sum for 40 random multipoles in cubic and triclinic 10 A cells, sigma = 1 A, meshes
#: of
#: 20-60 points (maximum over both cells; see ``mesh_shape_for``).
ALIAS_CONSTANTS = {
    0: {4: 9.0e-3, 6: 1.22e-3, 8: 4.35e-4},
    1: {4: 2.1e-2, 6: 5.1e-3, 8: 3.2e-3},
    2: {4: 5.0e-2, 6: 1.26e-2, 8: 6.3e-3},
}
#: Safety factor applied to the fitted error model.
ALIAS_SAFETY = 2.0


def _alias_constant(order, max_multipole_order):
    table = ALIAS_CONSTANTS[int(max_multipole_order)]
    ps = sorted(table)
    p = min(
        max(order, ps[0]), ps[-1]
    )  # orders above 8 use the (conservative) p = 8 value
    return float(np.exp(np.interp(p, ps, [np.log(table[x]) for x in ps])))


def mesh_spacing_for(sigma: float, accuracy: float, order: int, max_multipole_order=0):
    """Largest mesh spacing h (A) that meets the PME accuracy rule.  Not jittable.

    h = min(pi / k_c, sigma (accuracy / (2 A_{l,p}))^(1/(p-l))), with
    k_c = sqrt(2 ln(1/accuracy)) / sigma the wavenumber at which exp(-sigma^2 k^2/2)
    drops to ``accuracy`` (the mesh must resolve the k-sphere the Ewald sum needs) and
    A_{l,p} the fitted aliasing constants in ``ALIAS_CONSTANTS``.

    Args:
        sigma: Gaussian width of the pair kernel, A (> 0).
        accuracy: target error relative to the self energy (see the module docstring),
            0 < accuracy < 1.
        order: B-spline order p >= 4.
        max_multipole_order: l, highest multipole spread (0 charges, 1 dipoles,
            2 quadrupoles); each spline derivative costs one order of alias damping.

    Returns:
        h in A.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0 < accuracy < 1:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    l = int(max_multipole_order)
    k_c = math.sqrt(2.0 * math.log(1.0 / accuracy)) / sigma
    a = ALIAS_SAFETY * _alias_constant(order, l)
    h_alias = sigma * (accuracy / a) ** (1.0 / (order - l))
    return min(math.pi / k_c, h_alias)


def mesh_shape_for(
    cell, *, sigma, accuracy, order=6, mesh_spacing=None, max_multipole_order=2
):
    """Mesh shape (K_1, K_2, K_3) for a cell.  Not jittable.

    Args:
        cell: (3, 3) array, rows are lattice vectors, A.
        sigma: Gaussian width of the pair kernel, A.
        accuracy: target error relative to the self energy (module docstring).
        order: B-spline order p.
        mesh_spacing: if given, overrides the rule: K_a >= |a_a| / mesh_spacing (A).
        max_multipole_order: see :func:`mesh_spacing_for`.

    Returns:
        tuple of three FFT-friendly ints, each >= ``order``.
    """
    cell = np.asarray(cell, dtype=np.float64)
    lengths = np.linalg.norm(cell, axis=1)
    if mesh_spacing is not None:
        raw = lengths / float(mesh_spacing)
    else:
        raw = lengths / mesh_spacing_for(sigma, accuracy, order, max_multipole_order)
    # the 1e-9 keeps an exact integer (a cell of exactly n spacings) from rounding up
    return tuple(fft_friendly(max(math.ceil(r - 1e-9), order)) for r in raw)


#: Default cap on K_1 K_2 K_3 in ``prepare_pme`` (2^27 points: 0.5 GB per float32 mesh).
MAX_MESH_POINTS = 2**27


def prepare_pme(
    cell,
    *,
    sigma,
    accuracy,
    order=6,
    mesh_spacing=None,
    max_multipole_order=2,
    max_mesh_points=MAX_MESH_POINTS,
) -> PMESpec:
    """Choose the PME mesh for a concrete cell (host, numpy).  Not jittable.

    Args:
        cell: (3, 3) array, rows are lattice vectors, A (valid, right-handed).
        sigma: Gaussian width of the pair kernel exp(-sigma^2 k^2/2)/k^2, A.
        accuracy: target error of the energy relative to the self energy E_self of the
            multipoles (see the module docstring), e.g. 1e-6.
        order: B-spline order p >= 4 (default 6).
        mesh_spacing: optional explicit mesh spacing, A (overrides the accuracy rule).
        max_multipole_order: 0, 1 or 2; the highest multipole that will be spread
            (default 2, safe for q, mu and Theta; 0 gives a smaller mesh for charges
            only).
        max_mesh_points: refuse meshes with more points than this (quadrupoles at
            tight accuracy and low order ask for very fine meshes; raise it knowingly).

    Returns:
        :class:`PMESpec` with the mesh shape and order.

    Raises:
        ValueError: invalid cell, order < 4, or a mesh above ``max_mesh_points``.
    """
    from polmp.geometry.cell import validate_cell

    cell = validate_cell(cell)
    order = int(order)
    if order < 4:
        raise ValueError(
            f"order must be >= 4 (C^2 splines for quadrupole forces), got {order}"
        )
    if max_multipole_order not in (0, 1, 2):
        raise ValueError(
            f"max_multipole_order must be 0, 1 or 2, got {max_multipole_order}"
        )
    shape = mesh_shape_for(
        cell,
        sigma=sigma,
        accuracy=accuracy,
        order=order,
        mesh_spacing=mesh_spacing,
        max_multipole_order=max_multipole_order,
    )
    points = int(np.prod(shape))
    if points > max_mesh_points:
        raise ValueError(
            f"PME mesh {shape} has {points:.3g} points (> max_mesh_points = "
            f"{max_mesh_points:.3g}) for order {order}, accuracy {accuracy:g} and "
            f"max_multipole_order {max_multipole_order}: use a higher order (8 needs a "
            "much coarser mesh for quadrupoles), a looser accuracy, or raise "
            "max_mesh_points"
        )
    return PMESpec(
        mesh_shape=shape, order=order, sigma=float(sigma), accuracy=float(accuracy)
    )


def _bspline_values_at_integers(order):
    """M_p(k) for k = 0..p (numpy float64)."""

    # M_2(x) = 1 - |x - 1| on [0, 2]; recursion of Essmann et al. eq. 4.1
    def m(n, x):
        if n == 2:
            return max(0.0, 1.0 - abs(x - 1.0))
        return (x * m(n - 1, x) + (n - x) * m(n - 1, x - 1.0)) / (n - 1)

    return np.array(
        [m(order, float(k)) if 0 < k < order else 0.0 for k in range(order + 1)]
    )


def _spline_modulus_sq(size, order):
    """|sum_{k=0}^{p-2} M_p(k+1) exp(2 pi i m k / K)|^2 for m = 0..K-1 (numpy)."""
    mk = _bspline_values_at_integers(order)[1:order]  # M_p(1..p-1)
    m = np.arange(size)
    phase = 2.0 * np.pi * np.outer(m, np.arange(order - 1)) / size
    re = (mk * np.cos(phase)).sum(1)
    im = (mk * np.sin(phase)).sum(1)
    mod = re**2 + im**2
    # odd orders vanish at m = K/2; that mode is dropped anyway (Nyquist): keep finite
    return np.where(mod < 1e-10, 1.0, mod)


# -------------------------------------------------------------------------- traced side


def bspline_weights(t, order, num_derivatives=0):
    """Cardinal B-spline weights M_p(t + p - 1 - k), k = 0..p-1, and u-derivatives.

    For a point at scaled coordinate u = floor(u) + t the p mesh points it touches are
    j = floor(u) - (p - 1) + k, in ascending order, with weight M_p(u - j).

    Args:
        t: Float[Array, '...'], fractional part of u, in [0, 1).
        order: p (static).
        num_derivatives: 0, 1 or 2 (static).

    Returns:
        tuple of ``num_derivatives + 1`` arrays Float[Array, '... p']: the weights and
        their first (and second) derivatives with respect to u.
    """

    def descending(n):
        # w[k] = M_n(t + k), k = 0..n-1, from
        # M_n(x) = (x M_{n-1}(x) + (n-x) M_{n-1}(x-1))/(n-1)
        w = [t, 1.0 - t]
        for m in range(3, n + 1):
            new = []
            for k in range(m):
                x = t + k
                a = w[k] if k < m - 1 else 0.0
                b = w[k - 1] if k >= 1 else 0.0
                new.append((x * a + (m - x) * b) / (m - 1))
            w = new
        return w

    def stack(w):
        return jnp.stack(w[::-1], axis=-1)  # ascending mesh index: M_p(t + p - 1 - k)

    out = [stack(descending(order))]
    if num_derivatives >= 1:
        w = descending(order - 1) + [0.0]  # M_{p-1}(t + k), k = 0..p-1
        d1 = [w[k] - (w[k - 1] if k >= 1 else 0.0) for k in range(order)]
        out.append(stack([jnp.broadcast_to(x, t.shape) for x in d1]))
    if num_derivatives >= 2:
        w = descending(order - 2) + [0.0, 0.0]
        d2 = [
            w[k] - 2.0 * (w[k - 1] if k >= 1 else 0.0) + (w[k - 2] if k >= 2 else 0.0)
            for k in range(order)
        ]
        out.append(stack([jnp.broadcast_to(x, t.shape) for x in d2]))
    return tuple(out)


def _wavevectors_sq(cell, mesh_shape, dtype):
    """|k_m|^2 on the rfft half mesh (K1, K2, K3//2+1), A^-2 (traced in the cell)."""
    k1, k2, k3 = mesh_shape
    recip = 2.0 * math.pi * jnp.linalg.inv(cell).T  # rows b_a
    m1 = jnp.asarray(np.fft.fftfreq(k1, 1.0 / k1), dtype)
    m2 = jnp.asarray(np.fft.fftfreq(k2, 1.0 / k2), dtype)
    m3 = jnp.asarray(np.arange(k3 // 2 + 1), dtype)
    # k = m1 b1 + m2 b2 + m3 b3; |k|^2 = sum_ab m_a m_b (b_a . b_b)
    g = recip @ recip.T
    ksq = (
        g[0, 0] * m1[:, None, None] ** 2
        + g[1, 1] * m2[None, :, None] ** 2
        + g[2, 2] * m3[None, None, :] ** 2
        + 2.0 * g[0, 1] * m1[:, None, None] * m2[None, :, None]
        + 2.0 * g[0, 2] * m1[:, None, None] * m3[None, None, :]
        + 2.0 * g[1, 2] * m2[None, :, None] * m3[None, None, :]
    )
    return ksq


def _static_mode_factors(mesh_shape, order):
    """Half-space weights w_m / |D(m)|^2; m = 0 and Nyquist planes zeroed (numpy)."""
    k1, k2, k3 = mesh_shape
    d1 = 1.0 / _spline_modulus_sq(k1, order)
    d2 = 1.0 / _spline_modulus_sq(k2, order)
    d3 = 1.0 / _spline_modulus_sq(k3, order)[: k3 // 2 + 1]
    w3 = np.full(k3 // 2 + 1, 2.0)
    w3[0] = 1.0
    if k3 % 2 == 0:
        w3[-1] = 0.0
    if k1 % 2 == 0:
        d1[k1 // 2] = 0.0
    if k2 % 2 == 0:
        d2[k2 // 2] = 0.0
    fac = d1[:, None, None] * d2[None, :, None] * (d3 * w3)[None, None, :]
    fac[0, 0, 0] = 0.0  # k = 0 omitted (tinfoil boundary)
    return fac


def _influence(cell, spec, sigma, dtype):
    """w_m exp(-sigma^2 k^2/2) / (k^2 |D(m)|^2) on the rfft half mesh, A^2."""
    ksq = _wavevectors_sq(cell, spec.mesh_shape, dtype)
    fac = jnp.asarray(_static_mode_factors(spec.mesh_shape, spec.order), dtype)
    keep = fac != 0
    # double where: k = 0 (and dropped modes) get k^2 = 1: 1/k^2 stays finite under grad
    safe_ksq = jnp.where(keep, ksq, 1.0)
    g = jnp.exp(-0.5 * sigma**2 * safe_ksq) / safe_ksq
    return jnp.where(keep, g * fac, 0.0)


def _spread(positions, cell, q, mu, theta, spec):
    """Mesh density Q (K1, K2, K3) of the multipoles (periodically wrapped)."""
    p = spec.order
    K = spec.mesh_shape
    dtype = positions.dtype
    n = positions.shape[0]
    kvec = jnp.asarray(K, dtype)
    cell_inv = jnp.linalg.inv(cell)
    u = (positions @ cell_inv) * kvec  # (N, 3) scaled fractional coordinates
    floor_u = jnp.floor(lax.stop_gradient(u))
    t = u - floor_u  # gradient flows through t only
    num_der = 0 if (mu is None and theta is None) else (1 if theta is None else 2)
    W = bspline_weights(t, p, num_der)  # each (N, 3, p)

    if num_der == 0:
        values = (
            q[:, None, None, None]
            * W[0][:, 0, :, None, None]
            * W[0][:, 1, None, :, None]
            * W[0][:, 2, None, None, :]
        )
    else:
        # coefficient tensor C[n, n1, n2, n3] over derivative orders per axis
        A = jnp.stack(W, axis=2)  # (N, 3 axes, num_der+1, p)
        nd = num_der + 1
        C = jnp.zeros((n, nd, nd, nd), dtype)
        C = C.at[:, 0, 0, 0].set(q)
        if mu is not None:
            d = (mu @ cell_inv) * kvec  # (N, 3): d_a = K_a (mu M^-1)_a
            C = (
                C.at[:, 1, 0, 0]
                .set(d[:, 0])
                .at[:, 0, 1, 0]
                .set(d[:, 1])
                .at[:, 0, 0, 1]
                .set(d[:, 2])
            )
        if theta is not None:
            th = jnp.einsum("ca,ncd,db->nab", cell_inv, theta, cell_inv)
            th = th * kvec[None, :, None] * kvec[None, None, :]
            # 1/2 sum_ab Th_ab d_a d_b: diagonal terms carry 1/2, off-diagonals pair up
            C = C.at[:, 2, 0, 0].add(0.5 * th[:, 0, 0])
            C = C.at[:, 0, 2, 0].add(0.5 * th[:, 1, 1])
            C = C.at[:, 0, 0, 2].add(0.5 * th[:, 2, 2])
            C = C.at[:, 1, 1, 0].add(0.5 * (th[:, 0, 1] + th[:, 1, 0]))
            C = C.at[:, 1, 0, 1].add(0.5 * (th[:, 0, 2] + th[:, 2, 0]))
            C = C.at[:, 0, 1, 1].add(0.5 * (th[:, 1, 2] + th[:, 2, 1]))
        # values[n,i,j,k] = sum_abc C[n,a,b,c] A1[n,a,i] A2[n,b,j] A3[n,c,k], one axis
        # at a
        # time with broadcast products (tiny batched matmuls are slow on CPU)
        A1, A2, A3 = A[:, 0], A[:, 1], A[:, 2]  # (N, nd, p)
        T = jnp.sum(
            C[:, :, :, :, None] * A3[:, None, None, :, :], axis=3
        )  # (N, nd, nd, p)
        U = jnp.sum(
            T[:, :, :, None, :] * A2[:, None, :, :, None], axis=2
        )  # (N, nd, p, p)
        values = jnp.sum(U[:, :, None, :, :] * A1[:, :, :, None, None], axis=1)
    assert values.shape == (n, p, p, p)

    start = (floor_u.astype(jnp.int32) - (p - 1)) % jnp.asarray(K, jnp.int32)  # (N, 3)
    padded = tuple(k + p - 1 for k in K)
    dnums = lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2, 3),
        inserted_window_dims=(),
        scatter_dims_to_operand_dims=(0, 1, 2),
    )
    mesh = lax.scatter_add(
        jnp.zeros(padded, dtype),
        start,
        values,
        dnums,
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )
    # fold the p - 1 overhanging planes back onto the start of each axis (periodicity)
    for axis in range(3):
        k = K[axis]
        head = lax.slice_in_dim(mesh, 0, k, axis=axis)
        tail = lax.slice_in_dim(mesh, k, k + p - 1, axis=axis)
        pad = [(0, 0, 0)] * 3
        pad[axis] = (0, k - (p - 1), 0)
        mesh = head + lax.pad(tail, jnp.zeros((), dtype), pad)
    return mesh


def _check_inputs(positions, q, mu, theta):
    """Static shape checks (trace time), with the expected shapes in the message."""
    shape = jnp.shape(positions)
    if len(shape) != 2 or shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {shape}")
    n = shape[0]
    for name, x, tail in (("q", q, ()), ("mu", mu, (3,)), ("theta", theta, (3, 3))):
        if x is not None and jnp.shape(x) != (n,) + tail:
            raise ValueError(
                f"{name} must have shape {(n,) + tail} (one per atom of positions "
                f"{shape}), got {jnp.shape(x)}"
            )


def pme_energy(positions, cell, q, mu, theta, spec, *, sigma, atom_mask=None):
    """Reciprocal-space energy of Gaussian-smeared multipoles by smooth PME.

    E = 1/(2 eps0 V) sum_{k != 0} exp(-sigma^2 k^2/2)/k^2 |S(k)|^2 with
    S(k) = sum_i [q_i + i k.mu_i - 1/2 k^T Theta_i k] exp(i k.r_i).
    **The self energy is not subtracted.**  Absent terms (``mu``/``theta`` None) are
    skipped statically.

    Args:
        positions: Float[Array, 'N 3'], A (any image; wrapped internally).
        cell: Float[Array, '3 3'], rows are lattice vectors, A.
        q: Float[Array, 'N'], charges, e.
        mu: Float[Array, 'N 3'] or None, dipoles, e A.
        theta: Float[Array, 'N 3 3'] or None, symmetric quadrupoles, e A^2 (primitive
            second-moment convention of S(k); traceless or not).
        spec: :class:`PMESpec` from :func:`prepare_pme` (static).
        sigma: Gaussian width of the pair kernel, A (float or traced scalar).
        atom_mask: Bool[Array, 'N'] or None; padded atoms (False) do not contribute.

    Returns:
        Float[Array, ''], eV, in ``positions.dtype``.
    """
    positions = jnp.asarray(positions)
    dtype = positions.dtype
    cell = jnp.asarray(cell, dtype)
    q = jnp.asarray(q, dtype)
    mu = None if mu is None else jnp.asarray(mu, dtype)
    theta = None if theta is None else jnp.asarray(theta, dtype)
    _check_inputs(positions, q, mu, theta)
    if atom_mask is not None:
        atom_mask = jnp.asarray(atom_mask, bool)
        positions = jnp.where(atom_mask[:, None], positions, 0.0)
        q = jnp.where(atom_mask, q, 0.0)
        mu = None if mu is None else jnp.where(atom_mask[:, None], mu, 0.0)
        theta = (
            None if theta is None else jnp.where(atom_mask[:, None, None], theta, 0.0)
        )

    mesh = _spread(positions, cell, q, mu, theta, spec)
    F = jnp.fft.rfftn(mesh)
    G = _influence(cell, spec, jnp.asarray(sigma, dtype), dtype)
    power = jnp.real(F) ** 2 + jnp.imag(F) ** 2
    volume = jnp.abs(jnp.linalg.det(cell))
    return jnp.sum(G * power.astype(dtype)) / (2.0 * EPSILON0 * volume)


def pme_potential_field(positions, cell, q, mu, theta, spec, *, sigma, atom_mask=None):
    """Reciprocal-space potential phi_i = dE/dq_i and field E_i = -dE/dmu_i at atoms.

    Derivatives of :func:`pme_energy` (exactly consistent with it: a mesh gather with
    the
    spline weights and their derivatives).  **Self terms are included** (they belong to
    the bare reciprocal sum); remove them with
    ``polmp.electrostatics.multipoles.self_potential_field`` (for traceless Theta:
    phi_self = q_i/(eps0 (2 pi)^(3/2) sigma),
    E_self = -mu_i/(3 eps0 (2 pi)^(3/2) sigma^3)).

    Args:
        positions, cell, q, mu, theta, spec, sigma, atom_mask: as in :func:`pme_energy`
            (``mu`` None is treated as zero dipoles, ``theta`` None as absent).

    Returns:
        phi: Float[Array, 'N'], V (eV/e).
        field: Float[Array, 'N 3'], V/A.
    """
    _, phi, field = pme_energy_potential_field(
        positions, cell, q, mu, theta, spec, sigma=sigma, atom_mask=atom_mask
    )
    return phi, field


def pme_energy_potential_field(
    positions, cell, q, mu, theta, spec, *, sigma, atom_mask=None
):
    """:func:`pme_energy` and :func:`pme_potential_field` in one pass (one spread, one
    forward and one inverse FFT), the form response models need.

    Args:
        positions, cell, q, mu, theta, spec, sigma, atom_mask: as in :func:`pme_energy`.

    Returns:
        energy: Float[Array, ''], eV (self energy included).
        phi: Float[Array, 'N'], V (self potential included).
        field: Float[Array, 'N 3'], V/A (self field included).
    """
    positions = jnp.asarray(positions)
    dtype = positions.dtype
    q = jnp.asarray(q, dtype)
    mu = jnp.zeros(positions.shape, dtype) if mu is None else jnp.asarray(mu, dtype)

    def energy(q_, mu_):
        return pme_energy(
            positions, cell, q_, mu_, theta, spec, sigma=sigma, atom_mask=atom_mask
        )

    e, (phi, dmu) = jax.value_and_grad(energy, argnums=(0, 1))(q, mu)
    return e, phi, -dmu
