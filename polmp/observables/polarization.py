"""Polarization, Born effective charges, system polarizability and field forces.

Everything here is autodiff of a function that maps positions to the *total* latent
charges and dipoles of a frame (permanent + induced), so it works for any model
(docs/method.md#polarization):

    P = sum_i (q_i + dq_i) r_i + sum_i (mu_i + dmu_i)     (mean of q + dq removed)
    Z*_{i,ab} = sqrt(eps_e) dP_a / dr_{i,b}

``charges_fn(positions) -> (charges (N,), dipoles (N, 3))`` is the contract; build it
from a model with its parameters and neighbour list closed over.

Periodic cells.  P of a periodic cell is defined only up to where each atom's image
is taken, but its derivative is not: moving atom i changes the charge of atom j
(dQ_j/dr_i, the charge flux) only through the atoms within the model's receptive
field R (charges of a message-passing model with L layers of cutoff r_c: R = L r_c),
so the flux is weighted with the minimum-image vector d_ij = mic(r_j - r_i).  With
centred charges Q = (q + dq) - mean (their total is conserved, sum_j dQ_j/dr_i = 0),
the ``"local"`` form is

    Z*_i = Q_i I + sum_j d_ij (x) dQ_j/dr_i + d(sum_j m_j)/dr_i  -  (1/N) sum_k [...]_k

It equals the direct form exactly for a molecule in a large box (every d_ij is then
the molecule's own r_j - r_i) and is exact for any local model whose charges are
conserved while 2R is below the cell width (each d_ij is then the one image through
which j feels i).  Two parts of a trained model are not local, and for them a
periodic cell does not define the polarization change: (a) the mean removal, which
moves the net charge sum_j dq_j/dr_i that a displacement creates from/to every atom
of the cell; (b) the induced charges dq = -kappa phi, which follow the long-range
potential, so dQ_j/dr_i is non-zero for every j.  For both the form uses the nearest
image of i seen from j (the molecular limit), and the residual sum_i Z*_i that
remains (zero for conserved local charges; for a non-conserving model it equals
-d(sum_j q_j)/d(strain) minus the drain term, see ``local_born_charges``) is removed
uniformly, so the acoustic sum rule holds exactly.  The induced dipoles are vectors,
not charges, so their term d(sum_j m_j)/dr_i needs no image (it is translation
invariant and sums to zero on its own).

The ``"phase"`` (Berry-like) form is kept as an option: with fractional coordinates
s = r M^-1 (rows of M are lattice vectors),

    Pt_a = sum_j Q_j exp(2 pi i s_{j,a}) / (2 pi i)
    Zt_{i,ab} = Re[ exp(-2 pi i s_{i,a}) dPt_a / dr_{i,b} ]
    Z^q_i = M^T Zt_i                      (back to Cartesian)

It weights the flux by sin(2 pi (s_j - s_i)) / (2 pi) instead of s_j - s_i, which is
wrong by O((2 pi d / L)^2) at separation d (about 2.3 rad of phase for neighbours
4.5 A apart in a 12.4 A box), and violates the sum rule by as much.  For rigid point
charges all forms give Z*_i = q_i I exactly.

Screening: latents are screened charges, so Born charges carry sqrt(eps_e): eps_e = 1
in vacuum, eps_inf for bulk without induced dipoles, eps_inf / (1 + chi) with them
(see ``electronic_screening``).  The global sign of all latents is arbitrary (a
trained model may come out with the opposite sign convention).
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

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


#: Born-charge forms: "auto" (direct without a cell, local with one), "direct",
#: "local" (minimum image, sum rule exact) and "phase" (Berry-like, kept as an option).
FORMS = ("auto", "direct", "local", "phase")


def cell_widths(cell):
    """Perpendicular widths (3,) of a cell (rows = lattice vectors), A: V / |a_b x a_c|."""
    cell = jnp.asarray(cell)
    volume = jnp.abs(jnp.linalg.det(cell))
    cross = jnp.stack(
        [jnp.cross(cell[(a + 1) % 3], cell[(a + 2) % 3]) for a in range(3)]
    )
    return volume / jnp.linalg.norm(cross, axis=-1)


def minimum_image(vectors, cell):
    """Shortest periodic image of ``vectors`` (..., 3), A, for any cell (rows = lattice
    vectors): fractional rounding, then the shortest of the 125 shifts within +-2 cells
    (rounding alone is not the minimum in skewed cells)."""
    frac = jnp.linalg.solve(cell.T, vectors.reshape(-1, 3).T).T
    frac = frac - jnp.round(frac)
    best = frac @ cell
    best_norm = (best**2).sum(-1)
    span = (-2, -1, 0, 1, 2)
    for n in [(a, b, c) for a in span for b in span for c in span]:
        if n == (0, 0, 0):
            continue
        trial = (frac + jnp.asarray(n, frac.dtype)) @ cell
        norm = (trial**2).sum(-1)
        shorter = norm < best_norm
        best = jnp.where(shorter[:, None], trial, best)
        best_norm = jnp.where(shorter, norm, best_norm)
    return best.reshape(vectors.shape)


def _concrete(x):
    """``x`` as a numpy array, or None inside a trace (the cell of a jitted MD step)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _resolve_form(form, cell, receptive_field, periodic_default="local"):
    """The form to use; warns when the local form is not exact for this cell.

    ``periodic_default`` is what "auto" means with a cell: "local" for ``born_charges``
    (the sum rule holds exactly), "phase" for ``polarization_current`` (the local
    current needs one reverse pass per atom at every recorded step, the phase form
    seven forward passes, so MD keeps the cheap form unless asked)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if cell is None:
        if form in ("local", "phase"):
            raise ValueError(f"form={form!r} needs a periodic cell (cell=None given)")
        return "direct"
    if form == "auto":
        form = periodic_default
    if form == "local" and receptive_field is not None:
        concrete = _concrete(cell)
        if concrete is not None:
            width = float(np.min(np.asarray(cell_widths(concrete))))
            if 2.0 * receptive_field >= width:
                warnings.warn(
                    f"local Born charges: twice the receptive field "
                    f"({2 * receptive_field:.2f} A) is not below the cell width "
                    f"({width:.2f} A), so an atom can feel two images of another; the "
                    f"charge flux of such pairs is attributed to the nearest image "
                    f"only (approximate). Use a supercell wider than "
                    f"{2 * receptive_field:.2f} A for exact values.",
                    stacklevel=3,
                )
    return form


def local_born_charges(charges_fn, positions, cell, *, atom_mask=None, has_aux=False):
    """Minimum-image Born charges, before the sum-rule projection (module docstring).

    Z_i = Q_i I + sum_j d_ij (x) dQ_j/dr_i + d(sum_j m_j)/dr_i with centred charges Q
    and d_ij = mic(r_j - r_i); one reverse pass per atom (the charge Jacobian is
    dense: induced charges and the mean removal reach every atom).

    Their sum sum_i Z_i is zero for conserved local charges (within a cell wider than
    twice the receptive field) and for anything the direct form is exact for (a
    molecule in a large box).  Otherwise it is the part a periodic cell leaves
    undefined: for raw local charges q it equals -d(sum_j q_j)/d(strain) (the raw total
    charge is not conserved under homogeneous deformation) minus sum_i c_i (x) g_i,
    g_i = d(sum_j q_j)/dr_i the created charge, c_i = mean_j d_ij its drain point.

    Args:
        charges_fn: positions -> (charges (N,) e, dipoles (N, 3) e*A), total latents
            (or ``((charges, dipoles), aux)`` with ``has_aux``).
        positions: Float[Array, 'N 3'], A.
        cell: Float[Array, '3 3'], rows = lattice vectors, A.
        atom_mask: optional Bool[Array, 'N'].
        has_aux: see ``polarization_current``.

    Returns:
        Float[Array, 'N 3 3'] (unscreened, e; zero on padding), or ``(z, aux)``.
    """

    def latents(r):
        out = charges_fn(r)
        (charges, dipoles), aux = out if has_aux else (out, None)
        charges = _centred(charges, atom_mask)
        if atom_mask is not None:
            dipoles = jnp.where(atom_mask[:, None], dipoles, 0.0)
        return (charges, dipoles.sum(0)), (charges, aux)

    (d_charge, d_dipole), (charges, aux) = jax.jacrev(latents, has_aux=True)(
        positions
    )  # d_charge[j, i, b] = dQ_j/dr_ib; d_dipole[a, i, b]
    d = minimum_image(positions[None, :, :] - positions[:, None, :], cell)  # [i, j]
    if atom_mask is not None:
        d = jnp.where(atom_mask[:, None, None] & atom_mask[None, :, None], d, 0.0)
    eye = jnp.eye(3, dtype=positions.dtype)
    z = (
        charges[:, None, None] * eye
        + jnp.einsum("ija,jib->iab", d, d_charge)
        + jnp.transpose(d_dipole, (1, 0, 2))
    )
    if atom_mask is not None:
        z = jnp.where(atom_mask[:, None, None], z, 0.0)
    return (z, aux) if has_aux else z


def _remove_mean(z, atom_mask):
    """z_i - (1/N) sum_k z_k on real atoms (zero on padding)."""
    if atom_mask is None:
        return z - z.sum(0) / z.shape[0]
    n = jnp.maximum(atom_mask.sum(), 1)
    z = jnp.where(atom_mask[:, None, None], z, 0.0)
    return jnp.where(atom_mask[:, None, None], z - z.sum(0) / n, 0.0)


def _phase_born_charges(charges_fn, positions, cell, atom_mask):
    d_real, d_imag, d_dip = jax.jacrev(
        lambda r: _phase_polarization(charges_fn, r, cell, atom_mask)
    )(positions)  # each (3, N, 3): [a, i, b]
    s = jnp.linalg.solve(cell.T, positions.T).T
    theta = 2.0 * math.pi * s  # (N, 3): [i, a]
    # Re[exp(-i theta_ia) (dRe + i dIm)] = cos dRe + sin dIm
    z_tilde = (
        jnp.cos(theta).T[:, :, None] * d_real + jnp.sin(theta).T[:, :, None] * d_imag
    )  # [a, i, b]
    z_charge = jnp.einsum("ac,aib->icb", cell, z_tilde)  # M^T Zt
    return z_charge + jnp.transpose(d_dip, (1, 0, 2))


def born_charges(
    charges_fn,
    positions,
    cell=None,
    *,
    eps_e: float = 1.0,
    atom_mask=None,
    enforce_sum_rule: bool = False,
    form: str = "auto",
    receptive_field: float | None = None,
):
    """Born effective charges Z*_{i,ab} = sqrt(eps_e) dP_a/dr_{i,b} by autodiff.

    Args:
        charges_fn: positions -> (charges (N,), dipoles (N, 3)): total latent charges
            (e) and dipoles (e*A), permanent + induced.
        positions: Float[Array, 'N 3'], A.
        cell: None (molecule/cluster) or Float[Array, '3 3'] with rows the lattice
            vectors, A.
        eps_e: electronic screening constant (1 in vacuum).
        atom_mask: optional Bool[Array, 'N']; padded atoms get Z* = 0.
        enforce_sum_rule: subtract the mean so that sum_i Z*_i = 0 (the local form
            always does; for the direct and phase forms an option).
        form: "auto" (direct without a cell, "local" with one), "direct", "local"
            (minimum image, acoustic sum rule exact; module docstring) or "phase".
        receptive_field: the model's receptive field, A (``num_layers * cutoff``); with
            a concrete cell, the local form warns when twice it reaches the cell width
            (the flux of pairs that feel two images is then approximate).

    Returns:
        Float[Array, 'N 3 3'], e.
    """
    form = _resolve_form(form, cell, receptive_field)
    if form == "direct":
        z = jax.jacrev(lambda r: polarization(charges_fn, r, atom_mask))(
            positions
        )  # (3, N, 3)
        z = jnp.transpose(z, (1, 0, 2))
    elif form == "local":
        z = local_born_charges(charges_fn, positions, cell, atom_mask=atom_mask)
        enforce_sum_rule = True
    else:
        z = _phase_born_charges(charges_fn, positions, cell, atom_mask)
    z = math.sqrt(eps_e) * z
    if atom_mask is not None:
        z = jnp.where(atom_mask[:, None, None], z, 0.0)
    return _remove_mean(z, atom_mask) if enforce_sum_rule else z


def polarization_current(
    charges_fn,
    positions,
    velocities,
    cell=None,
    *,
    eps_e: float = 1.0,
    atom_mask=None,
    has_aux: bool = False,
    form: str = "auto",
    receptive_field: float | None = None,
):
    """Polarization current Pdot_a = sum_i Z*_{i,ab} v_{i,b} (e*A/fs if v in A/fs).

    Equal to ``einsum("iab,ib->a", born_charges(..., form=form), velocities)`` for
    the same explicit ``form``; "auto" with a cell means "phase" here (cost, see
    ``_resolve_form``) but "local" in ``born_charges``.

    * direct form (no cell): one forward-mode tangent along the velocities, Z* never
      formed;
    * local form (``form="local"``): the local Born charges (one reverse pass per
      atom, the charge Jacobian is dense) contracted with v;
    * phase form: seven tangents sharing one primal pass (``jax.vmap`` over
      ``jax.jvp``): the dipole part along v, and for each reciprocal direction a the
      derivatives of Re/Im Pt_a along cos(2 pi s_{i,a}) v_i and sin(2 pi s_{i,a}) v_i.

    This is what an MD scan records per step for IR spectra (docs/method.md#polarization-current).

    Args:
        charges_fn: positions -> (charges (N,) e, dipoles (N, 3) e*A), total latents.
        positions: Float[Array, 'N 3'], A.
        velocities: Float[Array, 'N 3'] (any unit; the result carries e * that * A/A).
        cell: None or Float[Array, '3 3'] rows = lattice vectors, A.
        eps_e: electronic screening constant (Z* carries sqrt(eps_e)).
        atom_mask: optional Bool[Array, 'N'] for padded frames.
        has_aux: ``charges_fn`` returns ``((charges, dipoles), aux)``; ``aux`` (e.g.
            the polarizabilities of the same model evaluation) is returned from the
            shared primal pass, so recording it costs no second forward pass.
        form, receptive_field: as ``born_charges``.

    Returns:
        Float[Array, '3'], or ``(current, aux)`` with ``has_aux``.
    """
    form = _resolve_form(form, cell, receptive_field, periodic_default="phase")
    if atom_mask is not None:
        velocities = jnp.where(atom_mask[:, None], velocities, 0.0)

    def latents_and_aux(r):
        out = charges_fn(r)
        return out if has_aux else (out, None)

    if form == "local":
        z, aux = local_born_charges(
            lambda r: latents_and_aux(r),
            positions,
            cell,
            atom_mask=atom_mask,
            has_aux=True,
        )
        z = _remove_mean(z, atom_mask)
        current = math.sqrt(eps_e) * jnp.einsum("iab,ib->a", z, velocities)
        return (current, aux) if has_aux else current
    if form == "direct":

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
    """Screening constant eps_e for Born charges (docs/method.md#screening).

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
