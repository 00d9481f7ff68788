"""Linear electrical response of the latent multipoles (docs/method.md#response).

One-shot (non-self-consistent) response, computed once from the potential phi_i and
field E_i of the *permanent* multipoles (self terms removed)::

    dq_i  = -kappa_i phi_i                      U_iq = -1/2 sum_i kappa_i phi_i^2
    dmu_i =  alpha_i (E_i + E_ext)
    U_iu  = -1/2 sum_i (E_i + E_ext)^T alpha_i (E_i + E_ext)
    E_lr  = E_elec[q, mu, Theta] + U_iq + U_iu

kappa_i >= 0 (e^2/eV) is a softness; alpha_i (e^2 A^2/eV = e A^2/V) is a scalar or a
symmetric positive semi-definite 3x3 tensor.  The reference implementation contracts
anisotropic alpha as alpha^T E, identical to alpha E for the symmetric tensors polmp
accepts.  No charge neutrality is imposed on q or dq.  With latent channels (phi (N, C))
kappa and alpha may be per atom (broadcast over channels) or per atom and channel;
E_ext acts on every channel.

Where the one-shot energy comes from: the polarizable functional

    F(dq, dmu) = E_elec[q + dq, mu + dmu, Theta] + sum_i dq_i^2/(2 kappa_i)
                 + 1/2 sum_i dmu_i^T alpha_i^-1 dmu_i - sum_i dmu_i . E_ext

is stationary at dq = -kappa phi_tot, dmu = alpha (E_tot + E_ext), where phi_tot, E_tot
include the induced moments.  Dropping the induced-induced coupling gives exactly the
one-shot formulas above, and F at that point minus the dropped coupling is E_lr.
:func:`self_consistent_response` solves the full stationarity condition (conjugate
gradients on a symmetrised linear system) for any ``energy_fn(q, mu, theta)``, so the
error of the one-shot approximation can be measured; it is a reference, not used in
training.

Yeh-Berkowitz slab correction (:func:`slab_correction`): for a slab periodic in two
directions and padded with vacuum along the third, the 3D Ewald sum with tinfoil
boundaries adds a spurious interaction between periodic images of the net dipole
along the normal n.  Yeh and Berkowitz (J. Chem. Phys. 111, 3155 (1999)) remove it by
adding ::

    E_slab = 2 pi k_e / V * M_n^2,   M_n = n . (sum_i q_i r_i + sum_i mu_i),

with n the unit normal to the two periodic lattice vectors (the direction of
reciprocal vector b_axis).  Quadrupoles do not contribute to M.  It assumes a neutral
slab (for a net charge M_n depends on the origin) and a vacuum gap of at least about
twice the slab thickness; positions must be unwrapped along n (the slab must not be
split across the boundary).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from polmp.units import COULOMB

__all__ = [
    "Response",
    "induced_charges",
    "induced_dipoles",
    "response_energy",
    "one_shot_response",
    "SCFResult",
    "self_consistent_response",
    "slab_correction",
    "slab_potential_field",
]


class Response(NamedTuple):
    """One-shot response (docs/method.md#response).

    Attributes:
        dq: induced charges, shaped like phi (N,) or (N, C), e (None without kappa).
        dmu: induced dipoles like field, (N, 3) or (N, C, 3), e A (None: no alpha).
        u_q: U_iq, eV (scalar; 0 without kappa).
        u_mu: U_iu, eV (scalar; 0 without alpha).
    """

    dq: jax.Array | None
    dmu: jax.Array | None
    u_q: jax.Array
    u_mu: jax.Array


def _broadcast_kappa(kappa, phi):
    kappa = jnp.asarray(kappa, phi.dtype)
    # (N,) kappa with channel phi (N, C): one softness per atom for every channel
    if kappa.ndim == 1 and phi.ndim == 2:
        kappa = kappa[:, None]
    return kappa


def _apply_alpha(alpha, e):
    """alpha_i e_i for scalar (N,) / (N, C) or tensor (N, 3, 3) / (N, C, 3, 3) alpha."""
    alpha = jnp.asarray(alpha, e.dtype)
    lead = e.ndim - 1  # number of leading (atom, channel) axes of e
    if alpha.ndim == 1 or (alpha.ndim == 2 and lead == 2):
        if alpha.ndim == 1 and lead == 2:
            alpha = alpha[:, None]
        return alpha[..., None] * e
    if alpha.ndim == 3 and lead == 2:
        alpha = alpha[:, None]  # per-atom tensor shared by channels
    # alpha^T e as in the reference; identical to alpha e for symmetric alpha
    return jnp.einsum("...ba,...b->...a", alpha, e)


def induced_charges(kappa, phi, atom_mask=None):
    """dq_i = -kappa_i phi_i.

    Args:
        kappa: Float[Array, 'N'] or 'N C', e^2/eV, >= 0.
        phi: Float[Array, 'N'] or 'N C', V.
        atom_mask: Bool[Array, 'N'] or None (padded atoms get 0).

    Returns:
        Float[Array] shaped like phi, e.
    """
    dq = -_broadcast_kappa(kappa, phi) * phi
    return _mask(dq, atom_mask)


def induced_dipoles(alpha, field, e_ext=None, atom_mask=None):
    """dmu_i = alpha_i (E_i + E_ext).

    Args:
        alpha: Float[Array, 'N'] / 'N C' (isotropic) or 'N 3 3' / 'N C 3 3' (symmetric),
            e^2 A^2/eV.
        field: Float[Array, 'N 3'] or 'N C 3', V/A.
        e_ext: Float[Array, '3'], V/A, or None.
        atom_mask: Bool[Array, 'N'] or None.

    Returns:
        Float[Array] shaped like field, e A.
    """
    e = field if e_ext is None else field + jnp.asarray(e_ext, field.dtype)
    return _mask(_apply_alpha(alpha, e), atom_mask)


def _mask(x, atom_mask):
    if atom_mask is None:
        return x
    mask = jnp.asarray(atom_mask, bool).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x, 0.0)


def response_energy(phi, field, kappa=None, alpha=None, e_ext=None, atom_mask=None):
    """U_iq and U_iu of the one-shot response (summed over atoms and channels).

    Args:
        phi: Float[Array, 'N'] or 'N C', V.
        field: Float[Array, 'N 3'] or 'N C 3', V/A.
        kappa: as :func:`induced_charges`, or None.
        alpha: as :func:`induced_dipoles`, or None.
        e_ext: Float[Array, '3'], V/A, or None.
        atom_mask: Bool[Array, 'N'] or None.

    Returns:
        (u_q, u_mu): Float[Array, ''] each, eV.
    """
    return one_shot_response(phi, field, kappa, alpha, e_ext, atom_mask)[2:]


def one_shot_response(phi, field, kappa=None, alpha=None, e_ext=None, atom_mask=None):
    """Induced moments and response energies in one call (docs/method.md#response).

    Args:
        phi, field, kappa, alpha, e_ext, atom_mask: as :func:`response_energy`.

    Returns:
        :class:`Response` (dq, dmu, u_q, u_mu).
    """
    zero = jnp.zeros((), phi.dtype)
    dq = dmu = None
    u_q = u_mu = zero
    if kappa is not None:
        dq = induced_charges(kappa, phi, atom_mask)
        # -1/2 kappa phi^2 = 1/2 dq phi
        u_q = 0.5 * jnp.sum(dq * phi)
    if alpha is not None:
        e = field if e_ext is None else field + jnp.asarray(e_ext, field.dtype)
        dmu = _mask(_apply_alpha(alpha, e), atom_mask)
        u_mu = -0.5 * jnp.sum(dmu * e)
    return Response(dq, dmu, u_q, u_mu)


class SCFResult(NamedTuple):
    """Self-consistent induced moments (reference solver).

    Attributes:
        dq: Float[Array] shaped like q, e (zeros without kappa).
        dmu: Float[Array] shaped like mu, e A (zeros without alpha).
        energy: F at the stationary point = E_elec[q, mu, Theta] + U_scf, eV.
        response_energy: U_scf = F - E_elec[q, mu, Theta], eV (compare U_iq + U_iu).
        residual: relative norm of the stationarity residual.
    """

    dq: jax.Array
    dmu: jax.Array
    energy: jax.Array
    response_energy: jax.Array
    residual: jax.Array


def _sqrt_psd(alpha):
    """Symmetric square root of PSD 3x3 tensors (negative eigenvalues clipped)."""
    w, v = jnp.linalg.eigh(alpha)
    return jnp.einsum("...ab,...b,...cb->...ac", v, jnp.sqrt(jnp.clip(w, 0.0)), v)


def self_consistent_response(
    energy_fn,
    q,
    mu,
    theta,
    kappa=None,
    alpha=None,
    e_ext=None,
    *,
    tol=1e-10,
    max_iter=500,
):
    """Self-consistent induced charges and dipoles for a quadratic ``energy_fn``.

    Solves the stationarity of F (module docstring), dq = -kappa phi_tot and
    dmu = alpha (E_tot + E_ext), including the induced-induced coupling.  With
    x = (dq, dmu), g = (phi, -(E + E_ext)) the gradient at x = 0, H the Hessian of
    E_elec and P = diag(kappa, alpha), the condition is x = -P (g + H x).  Writing
    x = P^{1/2} y gives the symmetric system (I + P^{1/2} H P^{1/2}) y = -P^{1/2} g,
    solved by conjugate gradients (Hessian-vector products by forward-over-reverse
    autodiff).  It is positive definite whenever F is bounded below.  Because F is
    quadratic, F(x*) = E_elec + 1/2 g . x*.  Jittable (``energy_fn`` must be).

    Args:
        energy_fn: ``(q, mu, theta) -> E_elec`` (eV), quadratic in q and mu (any polmp
            electrostatic energy, e.g. a closure over positions and a k-grid).
        q: Float[Array, 'N'] (or any shape ``energy_fn`` accepts), e.
        mu: Float[Array, 'N 3'], e A, or None (zeros are used).
        theta: passed through unchanged (may be None).
        kappa: shaped like q, e^2/eV, >= 0, or None (no induced charges).
        alpha: (N,) or (N, 3, 3) symmetric PSD, e^2 A^2/eV, or None.
        e_ext: Float[Array, '3'], V/A, or None.
        tol: CG relative tolerance.
        max_iter: CG iteration limit.

    Returns:
        :class:`SCFResult`.
    """
    q = jnp.asarray(q)
    mu = jnp.zeros(q.shape + (3,), q.dtype) if mu is None else jnp.asarray(mu)
    ext = jnp.zeros((3,), q.dtype) if e_ext is None else jnp.asarray(e_ext, q.dtype)
    kap = jnp.zeros_like(q) if kappa is None else jnp.asarray(kappa, q.dtype)
    if alpha is None:
        alpha = jnp.zeros(mu.shape[:-1], q.dtype)
    alpha = jnp.asarray(alpha, q.dtype)
    sq_kappa = jnp.sqrt(kap)
    sq_alpha = _sqrt_psd(alpha) if alpha.ndim == mu.ndim + 1 else jnp.sqrt(alpha)

    def p_half(x):
        xq, xm = x
        return sq_kappa * xq, _apply_alpha(sq_alpha, xm)

    def grad_fn(x):
        # gradient of E_elec[q + dq, mu + dmu] - dmu . E_ext w.r.t. (dq, dmu)
        def f(xq, xm):
            return energy_fn(q + xq, mu + xm, theta) - jnp.sum(xm * ext)

        return jax.grad(f, argnums=(0, 1))(*x)

    zeros = (jnp.zeros_like(q), jnp.zeros_like(mu))
    g = grad_fn(zeros)

    def hvp(x):
        return jax.jvp(grad_fn, (zeros,), (x,))[1]

    def matvec(y):
        hy = hvp(p_half(y))
        phy = p_half(hy)
        return jax.tree_util.tree_map(jnp.add, y, phy)

    rhs = jax.tree_util.tree_map(jnp.negative, p_half(g))
    y, _ = jax.scipy.sparse.linalg.cg(matvec, rhs, tol=tol, maxiter=max_iter)
    x = p_half(y)
    resid = jax.tree_util.tree_map(jnp.subtract, matvec(y), rhs)

    def norm(t):
        return jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree_util.tree_leaves(t)))

    residual = norm(resid) / jnp.maximum(norm(rhs), jnp.finfo(q.dtype).tiny)
    e0 = energy_fn(q, mu, theta)
    u = 0.5 * (jnp.sum(g[0] * x[0]) + jnp.sum(g[1] * x[1]))
    return SCFResult(
        dq=x[0], dmu=x[1], energy=e0 + u, response_energy=u, residual=residual
    )


def _slab_normal(cell, axis):
    recip = jnp.linalg.inv(cell).T  # rows proportional to b_a, normal to the other two
    b = recip[axis]
    return b / jnp.linalg.norm(b)


def _total_dipole(positions, q, mu, atom_mask):
    q = jnp.asarray(q)
    qr = q[..., None] * (positions[:, None, :] if q.ndim == 2 else positions)
    m = qr if mu is None else qr + mu
    m = _mask(m, atom_mask)
    return jnp.sum(m.reshape(-1, 3) if q.ndim == 1 else m, axis=0)  # (3,) or (C, 3)


def slab_correction(positions, cell, q, mu=None, *, axis=2, atom_mask=None):
    """Yeh-Berkowitz slab correction E_slab = 2 pi k_e M_n^2 / V (module docstring).

    Args:
        positions: Float[Array, 'N 3'], A (unwrapped along the normal).
        cell: Float[Array, '3 3'], rows are lattice vectors, A.
        q: Float[Array, 'N'] or 'N C', e.
        mu: Float[Array, 'N 3'] or 'N C 3', e A, or None.
        axis: index (0, 1, 2) of the non-periodic (vacuum) lattice direction (static).
        atom_mask: Bool[Array, 'N'] or None.

    Returns:
        Float[Array, ''], eV (channel energies summed).
    """
    n = _slab_normal(cell, axis)
    m_n = _total_dipole(positions, q, mu, atom_mask) @ n
    volume = jnp.abs(jnp.linalg.det(cell))
    return 2.0 * math.pi * COULOMB * jnp.sum(m_n**2) / volume


def slab_potential_field(positions, cell, q, mu=None, *, axis=2, atom_mask=None):
    """phi_i = dE_slab/dq_i and E_i = -dE_slab/dmu_i of the slab correction.

    phi_i = 4 pi k_e M_n (n . r_i) / V and E_i = -4 pi k_e M_n n / V (a uniform field
    that cancels the spurious one of the periodic dipole images).

    Args:
        positions, cell, q, mu, axis, atom_mask: as :func:`slab_correction`.

    Returns:
        (phi, field): shaped like q (V) and q + (3,) (V/A); 0 on padded atoms.
    """
    n = _slab_normal(cell, axis)
    m_n = _total_dipole(positions, q, mu, atom_mask) @ n  # () or (C,)
    volume = jnp.abs(jnp.linalg.det(cell))
    c = 4.0 * math.pi * COULOMB * m_n / volume
    z = positions @ n  # (N,)
    if jnp.ndim(q) == 2:
        phi = c[None, :] * z[:, None]
        field = -c[None, :, None] * n
        field = jnp.broadcast_to(field, phi.shape + (3,))
    else:
        phi = c * z
        field = jnp.broadcast_to(-c * n, positions.shape)
    return _mask(phi, atom_mask), _mask(field, atom_mask)
