"""Public entry points: ``long_range`` (one call) and solver bundles (for jitted loops).

``long_range`` assembles method.md sections 3-6 in one call::

    out = long_range(positions, q, mu, theta, kappa, alpha, cell=cell)
    out.energy   # E_lr = E_elec[q, mu, Theta] + U_iq + U_iu (+ E_slab), eV
    out.phi      # phi_i = dE_elec/dq_i of the permanent multipoles, V
    out.field    # E_i = -dE_elec/dmu_i of the permanent multipoles, V/A
    out.dq       # -kappa phi (None without kappa), e
    out.dmu      # alpha (E + E_ext) (None without alpha), e A

It validates every input on the host (clear ``ValueError`` before anything is traced),
prepares the static data (k-grid or PME mesh) from the concrete cell, and runs a jitted
computation.  It is differentiable in positions, every latent and (under
``jax.grad``/``jax.jacfwd`` without an enclosing ``jax.jit``) in the cell.  Inside a
jitted function the cell must be concrete; for jitted MD or training loops use a solver
bundle instead, whose functions take the cell as an ordinary traced array::

    solver = prepare_ewald(cell, sigma=1.0, accuracy=1e-6)      # host, once
    @jax.jit
    def step(positions, cell, q, mu, theta, kappa, alpha):
        return solver.long_range_fn(positions, cell, q, mu, theta, kappa, alpha)

Bundle contract (jax-pme style, a NamedTuple of static data and pure closures):

* ``energy_fn(positions, cell, q, mu, theta, atom_mask=None) -> E_elec`` (eV, channel
  energies summed),
* ``potential_field_fn(...) -> (phi, field)`` (self terms removed),
* ``long_range_fn(positions, cell, q, mu, theta, kappa, alpha, e_ext=None,
  atom_mask=None) -> LongRange``.

Methods: ``"ewald"`` (reciprocal sum, :mod:`~polmp.electrostatics.ewald`), ``"pme"``
(smooth PME, :mod:`~polmp.electrostatics.pme`), ``"direct"`` (non-periodic all pairs,
:mod:`~polmp.electrostatics.direct`), ``"auto"``: direct for ``cell=None``, otherwise
the cheaper of Ewald and PME by a measured cost model (:func:`choose_method`; the
crossover is ~25-400 atoms at water density depending on the multipole order, see
``docs/electrostatics.md``).

Latent channels: q (N, C), mu (N, C, 3), theta (N, C, 3, 3) are C independent sets of
multipoles (channel energies add); kappa and alpha may be per atom or per atom and
channel; phi, field, dq, dmu then carry the channel axis too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from polmp.electrostatics import direct, ewald, kgrid, pme, response
from polmp.electrostatics import multipoles as mp
from polmp.geometry.cell import validate_cell, validate_positions

__all__ = [
    "LongRange",
    "Solver",
    "long_range",
    "prepare_ewald",
    "prepare_pme_solver",
    "prepare_direct",
    "prepare_solver",
    "validate_inputs",
    "choose_method",
    "FLOAT32_MIN_ACCURACY",
    "METHODS",
]

#: Cost model of ``method="auto"`` (seconds per unit, energy + forces, float32, jitted,
#: measured on the project's 2-core CPU, 192/1536-atom water frames): Ewald costs
#: ~65 ns per (atom x half-space k-vector), PME ~22 ns per mesh point (FFTs, influence
#: function and spreading together).  ``auto`` picks the cheaper estimate.
COST_EWALD_PER_ATOM_K: float = 65e-9
COST_PME_PER_MESH_POINT: float = 22e-9

#: Smallest ``accuracy`` accepted for float32 inputs (the float32 floor of the
#: reciprocal sums is ~1e-6 relative to the self energy).
FLOAT32_MIN_ACCURACY: float = 1e-7

METHODS = ("auto", "ewald", "pme", "direct")

#: Relative tolerance of the symmetry checks of theta and alpha.
_SYMMETRY_RTOL = 1e-6


class LongRange(NamedTuple):
    """Result of :func:`long_range`.

    Attributes:
        energy: Float[Array, ''], E_lr = E_elec + U_iq + U_iu (+ E_slab), eV.
        phi: Float[Array, 'N'] (or 'N C'), potential of the permanent multipoles, V.
        field: Float[Array, 'N 3'] (or 'N C 3'), field of the permanent multipoles, V/A.
        dq: Float[Array, 'N'] (or 'N C') induced charges, e, or None without kappa.
        dmu: Float[Array, 'N 3'] (or 'N C 3') induced dipoles, e A (None: no alpha).
    """

    energy: jax.Array
    phi: jax.Array
    field: jax.Array
    dq: jax.Array | None
    dmu: jax.Array | None


class Solver(NamedTuple):
    """Prepared long-range solver: static data plus pure, jittable closures.

    Attributes:
        method: ``"ewald"``, ``"pme"`` or ``"direct"``.
        spec: the static data (:class:`~polmp.electrostatics.kgrid.KGrid`,
            :class:`~polmp.electrostatics.pme.PMESpec` or None).
        sigma: pair-kernel width, A.
        energy_fn: ``(positions, cell, q, mu, theta, atom_mask=None) -> E_elec``, eV.
        potential_field_fn: same arguments -> (phi, field), V and V/A.
        long_range_fn: ``(positions, cell, q, mu, theta, kappa, alpha, e_ext=None,
            atom_mask=None) -> LongRange``.
    """

    method: str
    spec: Any
    sigma: float
    energy_fn: Callable
    potential_field_fn: Callable
    long_range_fn: Callable


# --------------------------------------------------------------------------- validation


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _concrete(x, name):
    """numpy value of x, also for grad/jacfwd tracers with a known value; else None."""
    if x is None:
        return None
    if not _is_tracer(x):
        return np.asarray(x)
    try:
        from jax.extend.core import concrete_or_error

        return np.asarray(concrete_or_error(np.asarray, x, name))
    except Exception:  # noqa: BLE001 - an abstract tracer (under jit): no value checks
        return None


def _check_finite(arr, name):
    if arr is not None and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")


def _check_symmetric(arr, name):
    scale = (
        max(float(np.max(np.abs(arr))), np.finfo(np.float64).tiny) if arr.size else 1.0
    )
    asym = float(np.max(np.abs(arr - np.swapaxes(arr, -1, -2)))) if arr.size else 0.0
    if asym > _SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} must be symmetric (max |A - A^T| = {asym:.3g}, "
            f"max |A| = {scale:.3g})"
        )


def validate_inputs(
    positions,
    q,
    mu=None,
    theta=None,
    kappa=None,
    alpha=None,
    *,
    cell=None,
    sigma=1.0,
    method="auto",
    accuracy=1e-6,
    e_ext=None,
    slab_axis=None,
    atom_mask=None,
):
    """Host checks of :func:`long_range` inputs; raises ``ValueError``.  Not jittable.

    Shapes are always checked; values (NaN/inf, kappa >= 0, symmetric PSD alpha,
    symmetric theta, the cell) are checked for every input whose value is known
    (abstract tracers under ``jax.jit`` are skipped).

    Args:
        positions, q, mu, theta, kappa, alpha, cell, sigma, method, accuracy, e_ext,
            slab_axis, atom_mask: as :func:`long_range`.

    Returns:
        The cell as a float64 numpy array (validated) or None.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    shape = jnp.shape(positions)
    if len(shape) != 2 or shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {shape}")
    n = shape[0]
    dtype = jnp.result_type(positions)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"positions must be a floating array, got dtype {dtype}")
    pos = _concrete(positions, "positions")
    if pos is not None:
        validate_positions(pos)

    q_shape = jnp.shape(q)
    if len(q_shape) not in (1, 2) or q_shape[0] != n:
        raise ValueError(f"q must have shape ({n},) or ({n}, C), got {q_shape}")
    try:
        m = jax.eval_shape(
            lambda a, b, c: mp.to_channels(a, b, c),
            jax.ShapeDtypeStruct(q_shape, dtype),
            None if mu is None else jax.ShapeDtypeStruct(jnp.shape(mu), dtype),
            None if theta is None else jax.ShapeDtypeStruct(jnp.shape(theta), dtype),
        )
    except ValueError:
        raise
    lead = m.q.shape  # (N, C)
    for name, x in (("q", q), ("mu", mu), ("theta", theta)):
        _check_finite(_concrete(x, name), name)
    th = _concrete(theta, "theta")
    if th is not None:
        _check_symmetric(th, "theta")

    if kappa is not None:
        ks = jnp.shape(kappa)
        if ks not in ((n,), lead):
            raise ValueError(f"kappa must have shape ({n},) or {lead}, got {ks}")
        kv = _concrete(kappa, "kappa")
        _check_finite(kv, "kappa")
        if kv is not None and np.any(kv < 0):
            raise ValueError(
                f"kappa must be >= 0 (a softness; min = {float(kv.min()):.3g} e^2/eV)"
            )
    if alpha is not None:
        a_shape = jnp.shape(alpha)
        allowed = ((n,), lead, (n, 3, 3), lead + (3, 3))
        if a_shape not in allowed:
            raise ValueError(
                f"alpha must have shape ({n},), ({n}, 3, 3) or per channel {lead} / "
                f"{lead + (3, 3)}, got {a_shape}"
            )
        av = _concrete(alpha, "alpha")
        _check_finite(av, "alpha")
        if av is not None:
            if a_shape[-2:] == (3, 3) and len(a_shape) >= 3:
                _check_symmetric(av, "alpha")
                sym = 0.5 * (av + np.swapaxes(av, -1, -2))
                w = np.linalg.eigvalsh(sym.astype(np.float64))
                scale = max(float(np.max(np.abs(w))), 1e-300)
                if np.min(w) < -1e-6 * scale:
                    raise ValueError(
                        "alpha must be positive semi-definite (min eigenvalue "
                        f"{float(np.min(w)):.3g} e^2 A^2/eV)"
                    )
            elif np.any(av < 0):
                raise ValueError(f"alpha must be >= 0 (min = {float(av.min()):.3g})")
    if e_ext is not None:
        if jnp.shape(e_ext) != (3,):
            raise ValueError(f"e_ext must have shape (3,), got {jnp.shape(e_ext)}")
        _check_finite(_concrete(e_ext, "e_ext"), "e_ext")
    if atom_mask is not None and jnp.shape(atom_mask) != (n,):
        raise ValueError(
            f"atom_mask must have shape ({n},), got {jnp.shape(atom_mask)}"
        )

    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma >= 0):
        raise ValueError(
            f"sigma must be a finite non-negative number (A), got {sigma!r}"
        )
    if not (isinstance(accuracy, (int, float)) and 0 < accuracy < 1):
        raise ValueError(f"accuracy must be a number in (0, 1), got {accuracy!r}")
    if dtype == jnp.float32 and accuracy < FLOAT32_MIN_ACCURACY:
        raise ValueError(
            f"accuracy={accuracy:g} cannot be reached with float32 inputs (the float32 "
            f"floor is ~1e-6 relative); use accuracy >= {FLOAT32_MIN_ACCURACY:g} or "
            "float64 positions (jax_enable_x64)"
        )

    cell_np = None
    if cell is None:
        if method in ("ewald", "pme"):
            raise ValueError(f"method={method!r} needs a periodic cell; got cell=None")
        if slab_axis is not None:
            raise ValueError("slab_axis needs a periodic cell")
    else:
        if jnp.shape(cell) != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {jnp.shape(cell)}")
        if method == "direct":
            raise ValueError(
                "method='direct' is the non-periodic sum; pass cell=None (or use "
                "'ewald'/'pme' for a periodic cell)"
            )
        cv = _concrete(cell, "cell")
        if cv is None:
            raise ValueError(
                "long_range needs a concrete cell to prepare the k-space sum; inside "
                "jax.jit use prepare_ewald(...)/prepare_pme_solver(...) outside and "
                "call "
                "solver.long_range_fn(...) with the traced cell"
            )
        cell_np = validate_cell(cv)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0 for periodic sums, got {sigma}")
        if slab_axis is not None and slab_axis not in (0, 1, 2):
            raise ValueError(f"slab_axis must be 0, 1, 2 or None, got {slab_axis!r}")
    return cell_np


# --------------------------------------------------------------------------- core


def _multipole_order(mu, theta) -> int:
    return 2 if theta is not None else (1 if mu is not None else 0)


def _per_channel(fn, m):
    """vmap a single-channel (q, mu, theta) function over the channel axis."""

    def single(qc, muc, thc):
        return fn(qc, muc, thc)

    axes = (1, None if m.mu is None else 1, None if m.theta is None else 1)
    return jax.vmap(single, in_axes=axes)(m.q, m.mu, m.theta)


def _elec(method, spec, sigma, positions, cell, m, atom_mask, chunk_size):
    """E_elec per channel (C,), phi (N, C) and field (N, C, 3), self terms removed."""
    if method == "ewald":
        # channel form in -> channel form out (phases shared between channels)
        return ewald.ewald_energy_potential_field(
            positions,
            cell,
            m.q,
            m.mu,
            m.theta,
            spec,
            sigma=sigma,
            atom_mask=atom_mask,
            chunk_size=chunk_size,
        )
    if method == "pme":

        def one(qc, muc, thc):
            # one spread and FFT pair for energy, potential and field (self included)
            e, phi, field = pme.pme_energy_potential_field(
                positions, cell, qc, muc, thc, spec, sigma=sigma, atom_mask=atom_mask
            )
            e = e - mp.self_energy(qc, muc, thc, sigma=sigma, atom_mask=atom_mask)
            phi_s, field_s = mp.self_potential_field(qc, muc, thc, sigma=sigma)
            return e, phi - phi_s, field - field_s

        e, phi, field = _per_channel(one, m)  # (C,), (C, N), (C, N, 3)
        phi, field = jnp.moveaxis(phi, 0, 1), jnp.moveaxis(field, 0, 1)
    else:  # direct

        def one(qc, muc, thc):
            kw = dict(sigma=sigma, atom_mask=atom_mask)
            if chunk_size is not None:
                kw["chunk_size"] = chunk_size
            e = direct.direct_energy(positions, qc, muc, thc, **kw)
            phi, field = direct.direct_potential_field(positions, qc, muc, thc, **kw)
            return e, phi, field

        e, phi, field = _per_channel(one, m)
        phi, field = jnp.moveaxis(phi, 0, 1), jnp.moveaxis(field, 0, 1)
    if atom_mask is not None:
        mask = jnp.asarray(atom_mask, bool)
        phi = jnp.where(mask[:, None], phi, 0.0)
        field = jnp.where(mask[:, None, None], field, 0.0)
    return e, phi, field


def _long_range_core(
    positions,
    cell,
    q,
    mu,
    theta,
    kappa,
    alpha,
    e_ext,
    atom_mask,
    *,
    method,
    spec,
    sigma,
    slab_axis,
    chunk_size,
):
    """Pure, jittable long-range energy, potential, field and response (channels)."""
    positions = jnp.asarray(positions)
    dtype = positions.dtype
    cell = None if cell is None else jnp.asarray(cell, dtype)

    def cast(x):
        return None if x is None else jnp.asarray(x, dtype)

    m = mp.to_channels(cast(q), cast(mu), cast(theta))
    e, phi, field = _elec(
        method, spec, sigma, positions, cell, m, atom_mask, chunk_size
    )
    energy = jnp.sum(e)
    if slab_axis is not None:
        energy = energy + response.slab_correction(
            positions, cell, m.q, m.mu, axis=slab_axis, atom_mask=atom_mask
        )
        phi_s, field_s = response.slab_potential_field(
            positions, cell, m.q, m.mu, axis=slab_axis, atom_mask=atom_mask
        )
        phi, field = phi + phi_s, field + field_s
    kap = cast(kappa)
    alp = cast(alpha)
    if alp is not None and not m.has_channels and alp.ndim in (1, 3):
        alp = alp[:, None]  # per-atom alpha on the single channel
    if kap is not None and not m.has_channels:
        kap = kap[:, None]
    res = response.one_shot_response(phi, field, kap, alp, cast(e_ext), atom_mask)
    energy = energy + res.u_q + res.u_mu
    hc = m.has_channels
    return LongRange(
        energy=energy,
        phi=mp.from_channels(phi, hc),
        field=mp.from_channels(field, hc),
        dq=mp.from_channels(res.dq, hc),
        dmu=mp.from_channels(res.dmu, hc),
    )


_long_range_jit = jax.jit(
    _long_range_core, static_argnames=("method", "sigma", "slab_axis", "chunk_size")
)


@functools.lru_cache(maxsize=64)
def _cached_kgrid(cell_bytes, sigma, accuracy, les_compat, order):
    cell = np.frombuffer(cell_bytes, dtype=np.float64).reshape(3, 3)
    return kgrid.prepare_kgrid(
        cell,
        sigma=sigma,
        accuracy=accuracy,
        les_compat=les_compat,
        max_multipole_order=order,
    )


def choose_method(
    cell, num_atoms, *, sigma=1.0, accuracy=1e-6, max_multipole_order=2, pme_order=6
) -> str:
    """The method ``"auto"`` resolves to: direct, or the cheaper of Ewald and PME.

    Ewald costs ~ N M with M = V k_c^3 / (12 pi^2) half-space vectors, PME ~ the number
    of mesh points (from :func:`polmp.electrostatics.pme.mesh_shape_for`); the
    constants :data:`COST_EWALD_PER_ATOM_K` and :data:`COST_PME_PER_MESH_POINT` were
    measured (``docs/electrostatics.md``).  Since both M and the mesh grow with V, the
    crossover is an atom count that depends on the multipole order and accuracy: at
    water density (10 A^3 per atom) it is ~25 atoms for charges, ~70 with dipoles and
    ~400 with quadrupoles at accuracy 1e-6 (~6 / 9 / 21 at 1e-4, ~130 / 650 / none at
    1e-8: the PME mesh for quadrupoles must be very fine).  Host function.

    Args:
        cell: (3, 3) array or None.
        num_atoms: number of real atoms.
        sigma, accuracy: as :func:`long_range`.
        max_multipole_order: 0, 1 or 2.
        pme_order: B-spline order of PME.

    Returns:
        ``"direct"``, ``"ewald"`` or ``"pme"``.
    """
    if cell is None:
        return "direct"
    cell = np.asarray(cell, dtype=np.float64)
    k_c = kgrid.k_cutoff_for_accuracy(sigma, accuracy, max_multipole_order)
    num_k = abs(np.linalg.det(cell)) * k_c**3 / (12.0 * np.pi**2)
    mesh = pme.mesh_shape_for(
        cell,
        sigma=sigma,
        accuracy=accuracy,
        order=pme_order,
        max_multipole_order=max_multipole_order,
    )
    cost_ewald = COST_EWALD_PER_ATOM_K * max(int(num_atoms), 1) * num_k
    cost_pme = COST_PME_PER_MESH_POINT * float(np.prod(mesh))
    return "ewald" if cost_ewald <= cost_pme else "pme"


def _choose_method(
    method, cell_np, positions, atom_mask, *, sigma, accuracy, order, pme_order
):
    if method != "auto":
        return method
    mask = _concrete(atom_mask, "atom_mask")
    n = int(np.sum(mask)) if mask is not None else jnp.shape(positions)[0]
    return choose_method(
        cell_np,
        n,
        sigma=sigma,
        accuracy=accuracy,
        max_multipole_order=order,
        pme_order=pme_order,
    )


def long_range(
    positions,
    q,
    mu=None,
    theta=None,
    kappa=None,
    alpha=None,
    *,
    cell=None,
    sigma=1.0,
    method="auto",
    accuracy=1e-6,
    les_compat=False,
    e_ext=None,
    slab_axis=None,
    atom_mask=None,
    chunk_size=None,
    pme_order=None,
) -> LongRange:
    """Long-range energy, potential, field and one-shot response of latent multipoles.

    E_lr = E_elec[q, mu, Theta] + U_iq + U_iu (method.md eqs. 3-6), with E_elec the
    periodic k-space sum (Ewald or PME, self energy removed, k = 0 omitted: tinfoil
    boundary, uniform background for a net charge) or, for ``cell=None``, the
    non-periodic all-pairs sum.

    Args:
        positions: Float[Array, 'N 3'], A; its dtype sets the compute dtype.
        q: Float[Array, 'N'] or 'N C' (C latent channels), e.
        mu: Float[Array, 'N 3'] or 'N C 3', e A, or None.
        theta: Float[Array, 'N 3 3'] or 'N C 3 3', symmetric traceless primitive
            quadrupoles, e A^2, or None.
        kappa: Float[Array, 'N'] (or 'N C'), softness >= 0, e^2/eV, or None.
        alpha: Float[Array, 'N'] or 'N 3 3' (or per channel), symmetric PSD
            polarizability, e^2 A^2/eV, or None.
        cell: Float[Array, '3 3'] (rows are lattice vectors, A, right-handed) or None
            (non-periodic).
        sigma: pair-kernel width, A (kernel erf(r/(sqrt(2) sigma))/r).
        method: ``"auto" | "ewald" | "pme" | "direct"``.
        accuracy: relative accuracy of the k-space sum (relative to the self-energy
            scale); >= 1e-7 for float32 inputs.
        les_compat: use the reference implementation's truncated k-set
            (0 < |k| <= pi A^-1); Ewald only.
        e_ext: Float[Array, '3'], external field, V/A, or None.
        slab_axis: lattice direction (0, 1, 2) of the vacuum gap for the Yeh-Berkowitz
            slab correction, or None.
        atom_mask: Bool[Array, 'N'] or None; padded atoms neither act nor feel.
        chunk_size: k-vectors per chunk (Ewald) or rows per block (direct); None = auto.
        pme_order: B-spline order of PME (default: 8 with quadrupoles, else 6).

    Returns:
        :class:`LongRange` (energy, phi, field, dq, dmu); per-atom arrays carry the
        channel axis when q did.

    Raises:
        ValueError: invalid inputs (see :func:`validate_inputs`).
    """
    cell_np = validate_inputs(
        positions,
        q,
        mu,
        theta,
        kappa,
        alpha,
        cell=cell,
        sigma=sigma,
        method=method,
        accuracy=accuracy,
        e_ext=e_ext,
        slab_axis=slab_axis,
        atom_mask=atom_mask,
    )
    if les_compat:
        if cell is None or method not in ("auto", "ewald"):
            raise ValueError(
                "les_compat reproduces the reference implementation's periodic k-set: "
                "it needs a cell and method='ewald' (or 'auto')"
            )
        method = "ewald"
    if pme_order is None:
        # Quadrupoles need a ~2.5x finer order-6 mesh per axis for the same accuracy;
        # order 8 reaches it on a mesh about half as fine (benchmarks/README.md).
        pme_order = 8 if theta is not None else 6
    method = _choose_method(
        method,
        cell_np,
        positions,
        atom_mask,
        sigma=float(sigma),
        accuracy=float(accuracy),
        order=_multipole_order(mu, theta),
        pme_order=pme_order,
    )
    spec = None
    if method == "ewald":
        spec = _cached_kgrid(
            np.ascontiguousarray(cell_np).tobytes(),
            float(sigma),
            float(accuracy),
            bool(les_compat),
            _multipole_order(mu, theta),
        )
    elif method == "pme":
        spec = pme.prepare_pme(
            cell_np,
            sigma=float(sigma),
            accuracy=float(accuracy),
            order=pme_order,
            max_multipole_order=_multipole_order(mu, theta),
        )
    positions = jnp.asarray(positions)
    return _long_range_jit(
        positions,
        cell,
        q,
        mu,
        theta,
        kappa,
        alpha,
        e_ext,
        atom_mask,
        method=method,
        spec=spec,
        sigma=float(sigma),
        slab_axis=slab_axis,
        chunk_size=chunk_size,
    )


# --------------------------------------------------------------------------- bundles


def _make_solver(method, spec, sigma, *, slab_axis=None, chunk_size=None) -> Solver:
    core = functools.partial(
        _long_range_core,
        method=method,
        spec=spec,
        sigma=sigma,
        slab_axis=slab_axis,
        chunk_size=chunk_size,
    )

    def long_range_fn(
        positions,
        cell,
        q,
        mu=None,
        theta=None,
        kappa=None,
        alpha=None,
        e_ext=None,
        atom_mask=None,
    ):
        return core(positions, cell, q, mu, theta, kappa, alpha, e_ext, atom_mask)

    def energy_fn(positions, cell, q, mu=None, theta=None, atom_mask=None):
        positions = jnp.asarray(positions)
        dtype = positions.dtype
        if method == "ewald":
            e = ewald.ewald_energy(
                positions,
                jnp.asarray(cell, dtype),
                jnp.asarray(q, dtype),
                None if mu is None else jnp.asarray(mu, dtype),
                None if theta is None else jnp.asarray(theta, dtype),
                spec,
                sigma=sigma,
                atom_mask=atom_mask,
                chunk_size=chunk_size,
            )
            e = jnp.sum(e)
            if slab_axis is not None:
                e = e + response.slab_correction(
                    positions, cell, q, mu, axis=slab_axis, atom_mask=atom_mask
                )
            return e
        return long_range_fn(positions, cell, q, mu, theta, atom_mask=atom_mask).energy

    def potential_field_fn(positions, cell, q, mu=None, theta=None, atom_mask=None):
        out = long_range_fn(positions, cell, q, mu, theta, atom_mask=atom_mask)
        return out.phi, out.field

    return Solver(method, spec, sigma, energy_fn, potential_field_fn, long_range_fn)


def prepare_ewald(
    cell,
    *,
    sigma=1.0,
    accuracy=1e-6,
    les_compat=False,
    max_multipole_order=2,
    margin=0.0,
    slab_axis=None,
    chunk_size=None,
) -> Solver:
    """Prepare a reciprocal-space Ewald solver for a concrete cell.  Not jittable.

    The returned closures are pure and jittable and take the cell as a traced array
    (k = n @ B(cell)), so a jitted MD step can differentiate with respect to the cell
    (stress) without re-preparing.  Re-prepare when
    ``kgrid.kgrid_covers(solver.spec, new_cell)`` is False (see ``margin``).

    Args:
        cell: (3, 3) array, rows are lattice vectors, A.
        sigma: pair-kernel width, A (> 0).
        accuracy: relative accuracy of the k-sum.
        les_compat: the reference implementation's k-set (0 < |k| <= pi A^-1).
        max_multipole_order: 0 (q), 1 (q, mu) or 2 (q, mu, Theta): sets k_c.
        margin: relative enlargement of k_c for deforming cells (NPT).
        slab_axis: vacuum direction for the Yeh-Berkowitz correction, or None.
        chunk_size: k-vectors per chunk (static) or None.

    Returns:
        :class:`Solver` with method ``"ewald"`` and a ``KGrid`` spec.
    """
    spec = kgrid.prepare_kgrid(
        cell,
        sigma=sigma,
        accuracy=accuracy,
        les_compat=les_compat,
        max_multipole_order=max_multipole_order,
        margin=margin,
    )
    return _make_solver(
        "ewald", spec, float(sigma), slab_axis=slab_axis, chunk_size=chunk_size
    )


def prepare_pme_solver(
    cell, *, sigma=1.0, accuracy=1e-6, order=6, max_multipole_order=2, slab_axis=None
) -> Solver:
    """Prepare a PME solver (mesh from :func:`~polmp.electrostatics.pme.prepare_pme`).

    Args:
        cell: (3, 3) array, rows are lattice vectors, A.
        sigma: pair-kernel width, A.
        accuracy: relative accuracy of the reciprocal energy.
        order: B-spline order.
        max_multipole_order: 0, 1 or 2 (sets the mesh spacing).
        slab_axis: vacuum direction for the Yeh-Berkowitz correction, or None.

    Returns:
        :class:`Solver` with method ``"pme"`` and a ``PMESpec``.
    """
    spec = pme.prepare_pme(
        cell,
        sigma=sigma,
        accuracy=accuracy,
        order=order,
        max_multipole_order=max_multipole_order,
    )
    return _make_solver("pme", spec, float(sigma), slab_axis=slab_axis)


def prepare_direct(*, sigma=1.0, chunk_size=None) -> Solver:
    """Non-periodic all-pairs solver (``cell`` arguments are ignored; pass None).

    Args:
        sigma: pair-kernel width, A (a Python 0 gives point multipoles).
        chunk_size: rows per block, or None.

    Returns:
        :class:`Solver` with method ``"direct"``.
    """
    return _make_solver("direct", None, sigma, chunk_size=chunk_size)


def prepare_solver(
    cell,
    *,
    method="auto",
    num_atoms=None,
    sigma=1.0,
    accuracy=1e-6,
    max_multipole_order=2,
    **kwargs,
):
    """Prepare the solver ``long_range`` would use.  Not jittable.

    Args:
        cell: (3, 3) array or None.
        method: as :func:`long_range`.
        num_atoms: number of real atoms (for ``"auto"``, see :func:`choose_method`).
        sigma, accuracy: as :func:`long_range`.
        max_multipole_order: 0, 1 or 2 (sets k_c or the mesh).
        **kwargs: passed to the specific ``prepare_*``.

    Returns:
        :class:`Solver`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "auto":
        method = choose_method(
            cell,
            num_atoms or 1,
            sigma=sigma,
            accuracy=accuracy,
            max_multipole_order=max_multipole_order,
            pme_order=kwargs.get("order", 6),
        )
    if method == "direct":
        if cell is not None:
            raise ValueError("method='direct' is non-periodic; pass cell=None")
        return prepare_direct(sigma=sigma, **kwargs)
    if cell is None:
        raise ValueError(f"method={method!r} needs a periodic cell")
    if method == "pme":
        return prepare_pme_solver(
            cell,
            sigma=sigma,
            accuracy=accuracy,
            max_multipole_order=max_multipole_order,
            **kwargs,
        )
    return prepare_ewald(
        cell,
        sigma=sigma,
        accuracy=accuracy,
        max_multipole_order=max_multipole_order,
        **kwargs,
    )
