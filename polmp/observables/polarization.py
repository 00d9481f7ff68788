"""Polarization, Born effective charges, system polarizability and field forces.

Everything here is autodiff of a function that maps positions to the *total* latent
charges and dipoles of a frame (permanent + induced), so it works for any model
(method.md §7):

    P = sum_i (q_i + dq_i) r_i + sum_i (mu_i + dmu_i)     (mean of q + dq removed)
    Z*_{i,ab} = sqrt(eps_e) dP_a / dr_{i,b}

``charges_fn(positions) -> (charges (N,), dipoles (N, 3))`` is the contract; build it
from a model with its parameters and neighbour list closed over.

Periodic cells use the phase (Berry-like) form for the charge part, so that the
result does not depend on which image of an atom is stored: with fractional
coordinates s = r M^-1 (rows of M are lattice vectors),

    Pt_a = sum_j Q_j exp(2 pi i s_{j,a}) / (2 pi i)
    Zt_{i,ab} = Re[ exp(-2 pi i s_{i,a}) dPt_a / dr_{i,b} ]
    Z^q_i = M^T Zt_i                      (back to Cartesian)

and the dipole part d(sum_j mu_j + dmu_j)/dr_i is taken directly.  For rigid point
charges both forms give Z*_i = q_i I exactly; for a molecule in a large box they
agree to O((size / L)^2).

Screening: latents are screened charges, so Born charges carry sqrt(eps_e): eps_e = 1
in vacuum, eps_inf for bulk without induced dipoles, eps_inf / (1 + chi) with them
(see ``electronic_screening``).  The global sign of all latents is arbitrary (a
trained model may come out with the opposite sign convention).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from polmp import units


def total_latents(outputs):
    """Per-atom total charge (N,) e and dipole (N, 3) e*A of a model's outputs.

    q + dq summed over the charge channels, mu + dmu (induced dipoles summed over
    channels); zeros for what a variant does not predict.

    Args:
        outputs: ``polmp.models.ModelOutputs`` (or anything with ``q``, ``dq``, ``mu``,
            ``dmu`` attributes); ``q`` must not be None.
    """
    q = outputs.q
    if outputs.dq is not None:
        q = q + outputs.dq
    q = q.reshape(q.shape[0], -1).sum(-1)
    mu = jnp.zeros((q.shape[0], 3), q.dtype) if outputs.mu is None else outputs.mu
    if outputs.dmu is not None:
        dmu = outputs.dmu
        mu = mu + (dmu.sum(1) if dmu.ndim == 3 else dmu)
    return q, mu


def _centred(charges, atom_mask):
    """Charges with their (masked) mean removed, so P does not depend on the origin."""
    if atom_mask is None:
        return charges - charges.mean()
    n = jnp.maximum(atom_mask.sum(), 1)
    mean = jnp.where(atom_mask, charges, 0.0).sum() / n
    return jnp.where(atom_mask, charges - mean, 0.0)


def polarization(charges_fn, positions, atom_mask=None):
    """Direct-form polarization (dipole) P = sum_i Q_i r_i + sum_i m_i, e*A.

    Args:
        charges_fn: positions -> (charges (N,) e, dipoles (N, 3) e*A), total latents.
        positions: Float[Array, 'N 3'], A.
        atom_mask: optional Bool[Array, 'N'] for padded frames.

    Returns:
        Float[Array, '3'], e*A (unscreened).
    """
    charges, dipoles = charges_fn(positions)
    charges = _centred(charges, atom_mask)
    if atom_mask is not None:
        dipoles = jnp.where(atom_mask[:, None], dipoles, 0.0)
    return charges @ positions + dipoles.sum(0)


def _phase_polarization(charges_fn, positions, cell, atom_mask):
    """Real and imaginary parts of Pt_a = sum_j Q_j exp(2 pi i s_ja) / (2 pi i), plus sum m."""
    charges, dipoles = charges_fn(positions)
    charges = _centred(charges, atom_mask)
    s = jnp.linalg.solve(cell.T, positions.T).T  # (N, 3) fractional
    theta = 2.0 * math.pi * s
    # exp(i theta)/(2 pi i) = (sin theta - i cos theta) / (2 pi)
    real = charges @ jnp.sin(theta) / (2.0 * math.pi)
    imag = -(charges @ jnp.cos(theta)) / (2.0 * math.pi)
    if atom_mask is not None:
        dipoles = jnp.where(atom_mask[:, None], dipoles, 0.0)
    return real, imag, dipoles.sum(0)


def born_charges(
    charges_fn,
    positions,
    cell=None,
    *,
    eps_e: float = 1.0,
    atom_mask=None,
    enforce_sum_rule: bool = False,
):
    """Born effective charges Z*_{i,ab} = sqrt(eps_e) dP_a/dr_{i,b} by autodiff.

    Args:
        charges_fn: positions -> (charges (N,), dipoles (N, 3)): total latent charges
            (e) and dipoles (e*A), permanent + induced.
        positions: Float[Array, 'N 3'], A.
        cell: None (molecule/cluster: direct form) or Float[Array, '3 3'] with rows
            the lattice vectors (phase form for the charge part).
        eps_e: electronic screening constant (1 in vacuum).
        atom_mask: optional Bool[Array, 'N']; padded atoms get Z* = 0.
        enforce_sum_rule: subtract the mean so that sum_i Z*_i = 0 (acoustic sum rule).

    Returns:
        Float[Array, 'N 3 3'], e.
    """
    if cell is None:
        z = jax.jacrev(lambda r: polarization(charges_fn, r, atom_mask))(
            positions
        )  # (3, N, 3)
        z = jnp.transpose(z, (1, 0, 2))
    else:
        d_real, d_imag, d_dip = jax.jacrev(
            lambda r: _phase_polarization(charges_fn, r, cell, atom_mask)
        )(positions)  # each (3, N, 3): [a, i, b]
        s = jnp.linalg.solve(cell.T, positions.T).T
        theta = 2.0 * math.pi * s  # (N, 3): [i, a]
        # Re[exp(-i theta_ia) (dRe + i dIm)] = cos dRe + sin dIm
        z_tilde = (
            jnp.cos(theta).T[:, :, None] * d_real
            + jnp.sin(theta).T[:, :, None] * d_imag
        )  # [a, i, b]
        z_charge = jnp.einsum("ac,aib->icb", cell, z_tilde)  # M^T Zt
        z = z_charge + jnp.transpose(d_dip, (1, 0, 2))
    z = math.sqrt(eps_e) * z
    if atom_mask is not None:
        z = jnp.where(atom_mask[:, None, None], z, 0.0)
    if enforce_sum_rule:
        n = z.shape[0] if atom_mask is None else jnp.maximum(atom_mask.sum(), 1)
        correction = z.sum(0) / n
        z = (
            z - correction
            if atom_mask is None
            else jnp.where(atom_mask[:, None, None], z - correction, 0.0)
        )
    return z


def polarization_current(
    charges_fn,
    positions,
    velocities,
    cell=None,
    *,
    eps_e: float = 1.0,
    atom_mask=None,
    has_aux: bool = False,
):
    """Polarization current Pdot_a = sum_i Z*_{i,ab} v_{i,b} (e*A/fs if v in A/fs).

    Equal to ``einsum("iab,ib->a", born_charges(...), velocities)`` but computed by
    forward-mode derivatives of P along the velocities, without forming Z*: one
    tangent for a molecule (direct form), seven for a periodic cell.  In the phase
    form the weight exp(-2 pi i s_{i,a}) depends on the moving atom i, so the charge
    part is, for each reciprocal direction a, the derivative of Re/Im Pt_a along the
    tangents cos(2 pi s_{i,a}) v_i and sin(2 pi s_{i,a}) v_i (six tangents); the
    dipole part is the derivative along v (one more).  All tangents share one primal
    evaluation (``jax.vmap`` over ``jax.jvp``).  This is what an MD scan records per
    step for IR spectra (method.md section 8).

    Args:
        charges_fn: positions -> (charges (N,) e, dipoles (N, 3) e*A), total latents.
        positions: Float[Array, 'N 3'], A.
        velocities: Float[Array, 'N 3'] (any unit; the result carries e * that * A/A).
        cell: None (direct form) or Float[Array, '3 3'] rows = lattice vectors, A.
        eps_e: electronic screening constant (Z* carries sqrt(eps_e)).
        atom_mask: optional Bool[Array, 'N'] for padded frames.
        has_aux: ``charges_fn`` returns ``((charges, dipoles), aux)``; ``aux`` (e.g.
            the polarizabilities of the same model evaluation) is returned from the
            shared primal pass, so recording it costs no second forward pass.

    Returns:
        Float[Array, '3'], or ``(current, aux)`` with ``has_aux``.
    """
    if atom_mask is not None:
        velocities = jnp.where(atom_mask[:, None], velocities, 0.0)

    def latents_and_aux(r):
        out = charges_fn(r)
        return out if has_aux else (out, None)

    if cell is None:

        def direct(r):
            latents, aux = latents_and_aux(r)
            return polarization(lambda _: latents, r, atom_mask), aux

        _, current, aux = jax.jvp(direct, (positions,), (velocities,), has_aux=True)
        current = math.sqrt(eps_e) * current
        return (current, aux) if has_aux else current
    s = jnp.linalg.solve(cell.T, positions.T).T
    theta = 2.0 * math.pi * s  # (N, 3): [i, a]
    # tangents: v, then cos(theta_a) v and sin(theta_a) v for a = 0, 1, 2
    tangents = jnp.concatenate(
        [
            velocities[None],
            jnp.cos(theta).T[:, :, None] * velocities[None],
            jnp.sin(theta).T[:, :, None] * velocities[None],
        ]
    )  # (7, N, 3)

    def phase(r):
        latents, aux = latents_and_aux(r)
        return _phase_polarization(lambda _: latents, r, cell, atom_mask), aux

    def along(tangent):
        _, d, aux = jax.jvp(phase, (positions,), (tangent,), has_aux=True)
        return d, aux

    # the primal (and aux) does not depend on the tangent: vmap keeps it unbatched
    # and only broadcasts aux on the way out
    (d_real, d_imag, d_dip), aux = jax.vmap(along)(tangents)  # each (7, 3)
    axis = jnp.arange(3)
    z_tilde_v = d_real[1 + axis, axis] + d_imag[4 + axis, axis]  # (3,): [a]
    current = math.sqrt(eps_e) * (cell.T @ z_tilde_v + d_dip[0])
    if not has_aux:
        return current
    return current, jax.tree.map(lambda x: x[0], aux)


def acoustic_sum_rule_violation(bec, atom_mask=None):
    """sum_i Z*_i (3x3, e): zero for a neutral periodic system."""
    if atom_mask is not None:
        bec = jnp.where(atom_mask[:, None, None], bec, 0.0)
    return bec.sum(0)


def electronic_screening(eps_inf: float, alpha=None, volume=None):
    """Screening constant eps_e for Born charges (method.md §7).

    eps_e = eps_inf without induced dipoles; with them eps_inf / (1 + chi),
    chi = sum_i tr(alpha_i)/3 / (eps0 V).

    Args:
        eps_inf: high-frequency dielectric constant (water 1.78, MAPbI3 4.7; 1 in vacuum).
        alpha: optional (N,) or (N, 3, 3) latent polarizabilities, e^2 A^2 / eV.
        volume: cell volume, A^3 (needed with alpha).
    """
    if alpha is None:
        return eps_inf
    if volume is None:
        raise ValueError("electronic_screening with alpha needs the cell volume")
    alpha = jnp.asarray(alpha)
    trace = alpha if alpha.ndim == 1 else jnp.trace(alpha, axis1=-2, axis2=-1) / 3.0
    chi = trace.sum() / (units.EPSILON0 * volume)
    return eps_inf / (1.0 + chi)


def system_polarizability(alpha, eps_e: float = 1.0, atom_mask=None):
    """alpha_sys = eps_e * k_e * sum_i alpha_i, in A^3 (3x3).

    Args:
        alpha: (N,) isotropic or (N, 3, 3) latent polarizabilities, e^2 A^2 / eV.
        eps_e: screening constant.
        atom_mask: optional Bool[Array, 'N'].
    """
    alpha = jnp.asarray(alpha)
    if alpha.ndim == 1:
        alpha = alpha[:, None, None] * jnp.eye(3, dtype=alpha.dtype)
    if atom_mask is not None:
        alpha = jnp.where(atom_mask[:, None, None], alpha, 0.0)
    return eps_e * units.COULOMB * alpha.sum(0)


def field_forces(bec, field):
    """Forces of a uniform external field on the ions: F_i = Z*_i^T E (eV/A).

    Args:
        bec: Float[Array, 'N 3 3'], e, Z*_{i,ab} = dP_a/dr_{i,b}.
        field: Float[Array, '3'], V/A.
    """
    return jnp.einsum("iab,a->ib", bec, field)
