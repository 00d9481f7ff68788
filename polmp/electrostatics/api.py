"""Public entry points: the prepared :class:`Solver` (the one kernel) and ``long_range``.

Everything that computes E_elec, phi, field and the one-shot response of ONE structure
goes through a :class:`Solver`: a host-side preparation (numpy: the k-vector set or
the PME mesh, chosen by :func:`plan_solver`) plus pure, jittable functions of
positions, cell and latents.  ``long_range`` (one call, notebooks) and the model
adapter (``polmp.models.long_range``: gather -> ``vmap(solver)`` -> scatter over the
graphs of a padded batch) are both thin layers over it::

    solver = prepare_solver(cell, num_atoms=n, sigma=1.0, accuracy=1e-6)  # host, once
    @jax.jit
    def step(positions, cell, q, mu, theta, kappa, alpha):
        return solver.long_range_fn(positions, cell, q, mu, theta, kappa, alpha)

    out = long_range(positions, q, mu, theta, kappa, alpha, cell=cell)  # host, one call
    out.energy   # E_lr = E_elec[q, mu, Theta] + U_iq + U_iu (+ E_slab), eV
    out.phi      # phi_i = dE_elec/dq_i of the permanent multipoles, V
    out.field    # E_i = -dE_elec/dmu_i of the permanent multipoles, V/A
    out.dq       # -kappa phi (None without kappa), e
    out.dmu      # alpha (E + E_ext) (None without alpha), e A

``long_range`` validates every value and prepares on the host, the same way for plain
arrays and for ``jax.grad``/``jax.jacfwd`` tracers (whose values are known); inside
``jax.jit`` or ``jax.vmap`` it raises and points to the prepared solver, which is the
jittable path.  A solver checks shapes and dtypes when it is traced (``ValueError``)
and values only on request, with :mod:`jax.experimental.checkify`
(:meth:`Solver.check_inputs`, :meth:`Solver.checked_long_range_fn`): NaN/inf, a
singular or left-handed cell, a cell outside the prepared range, asymmetric theta or
alpha, a non-PSD alpha, negative kappa.

Cell range: a solver is prepared for a reference cell and ``max_cell_scale`` s >= 1.
It is converged for every cell' = cell @ F whose deformation F has largest singular
value <= s (any compression, and stretches up to s): the Ewald k-set is built for
(s k_c), the PME mesh for the cell scaled by s.  The k-vectors are integer multiples
of the traced reciprocal cell, so the energy follows the box continuously and its
cell derivative (stress) is exact.  NPT runs prepare once for the largest box they
expect; :meth:`Solver.covers` (host) and the checkify check say when a cell leaves it.

Methods: ``"ewald"`` (reciprocal sum, :mod:`~polmp.electrostatics.ewald`), ``"pme"``
(smooth PME, :mod:`~polmp.electrostatics.pme`), ``"direct"`` (non-periodic all pairs,
:mod:`~polmp.electrostatics.direct`), ``"split"`` (classic Ewald split: reciprocal sum
at a wider Gaussian plus the erfc real-space pair sum of
:mod:`~polmp.electrostatics.realspace`; the periodic method for point multipoles,
``sigma=0``; ``long_range`` only, since its pair list is built from the positions) and
``"auto"``: direct for ``cell=None``, otherwise the cheaper of Ewald and PME that fits
in memory, by :func:`plan_solver` (``docs/electrostatics.md``).

Latent channels: q (N, C), mu (N, C, 3), theta (N, C, 3, 3) are C independent sets of
multipoles (channel energies add); kappa and alpha may be per atom or per atom and
channel; phi, field, dq, dmu then carry the channel axis too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from polmp.electrostatics import direct, ewald, kgrid, pme, realspace, response
from polmp.electrostatics import multipoles as mp
from polmp.geometry.cell import MIN_CELL_VOLUME, validate_cell, validate_positions
from polmp.units import COULOMB

__all__ = [
    "LongRange",
    "Solver",
    "SolverPlan",
    "long_range",
    "prepare_ewald",
    "prepare_pme_solver",
    "prepare_direct",
    "prepare_solver",
    "plan_solver",
    "pme_order_for",
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

METHODS = ("auto", "ewald", "pme", "direct", "split")

#: Relative tolerance of the symmetry checks of theta and alpha.
_SYMMETRY_RTOL = 1e-6
#: Relative slack of the cell-range check (rounding of a cell exactly at the limit).
_RANGE_RTOL = 1e-9


class LongRange(NamedTuple):
    """Result of :func:`long_range` and :meth:`Solver.long_range_fn`.

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


# --------------------------------------------------------------------------- checks


def _check_shapes(positions, q, mu, theta, kappa, alpha, e_ext, atom_mask, cell):
    """Static checks (shapes, dtypes; trace time or host); returns (N, C)."""
    shape = jnp.shape(positions)
    if len(shape) != 2 or shape[-1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {shape}")
    n = shape[0]
    dtype = jnp.result_type(positions)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"positions must be a floating array, got dtype {dtype}")
    q_shape = jnp.shape(q)
    if len(q_shape) not in (1, 2) or q_shape[0] != n:
        raise ValueError(f"q must have shape ({n},) or ({n}, C), got {q_shape}")
    m = jax.eval_shape(
        mp.to_channels,
        jax.ShapeDtypeStruct(q_shape, dtype),
        None if mu is None else jax.ShapeDtypeStruct(jnp.shape(mu), dtype),
        None if theta is None else jax.ShapeDtypeStruct(jnp.shape(theta), dtype),
    )
    lead = m.q.shape  # (N, C)
    if kappa is not None and jnp.shape(kappa) not in ((n,), lead):
        raise ValueError(
            f"kappa must have shape ({n},) or {lead}, got {jnp.shape(kappa)}"
        )
    if alpha is not None:
        a_shape = jnp.shape(alpha)
        if a_shape not in ((n,), lead, (n, 3, 3), lead + (3, 3)):
            raise ValueError(
                f"alpha must have shape ({n},), ({n}, 3, 3) or per channel {lead} / "
                f"{lead + (3, 3)}, got {a_shape}"
            )
    if e_ext is not None and jnp.shape(e_ext) != (3,):
        raise ValueError(f"e_ext must have shape (3,), got {jnp.shape(e_ext)}")
    if atom_mask is not None and jnp.shape(atom_mask) != (n,):
        raise ValueError(
            f"atom_mask must have shape ({n},), got {jnp.shape(atom_mask)}"
        )
    if cell is not None and jnp.shape(cell) != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {jnp.shape(cell)}")
    for name, x in (("q", q), ("mu", mu), ("theta", theta), ("kappa", kappa)):
        if x is not None and not jnp.issubdtype(jnp.result_type(x), jnp.floating):
            raise ValueError(
                f"{name} must be a floating array, got {jnp.result_type(x)}"
            )
    return lead


def _check_float32_floor(dtype, accuracy):
    if (
        accuracy is not None
        and dtype == jnp.float32
        and accuracy < FLOAT32_MIN_ACCURACY
    ):
        raise ValueError(
            f"accuracy={accuracy:g} cannot be reached with float32 inputs (the float32 "
            f"floor is ~1e-6 relative); use accuracy >= {FLOAT32_MIN_ACCURACY:g} or "
            "float64 positions (jax_enable_x64)"
        )


def _value_conditions(positions, q, mu, theta, kappa, alpha, e_ext, atom_mask, cell):
    """(ok, message, values) for every value condition; jnp, so host or traced.

    Padded atoms (``atom_mask`` False) are not checked; a block with no real atom (a
    padding slot of a batch) passes everything.
    """
    n = jnp.shape(positions)[0]
    mask = jnp.ones((n,), bool) if atom_mask is None else jnp.asarray(atom_mask, bool)
    active = jnp.any(mask)

    def per_atom(x):
        return mask.reshape((n,) + (1,) * (jnp.ndim(x) - 1))

    def finite(x):
        return jnp.all(jnp.where(per_atom(x), jnp.isfinite(x), True))

    def asym(x):
        x = jnp.where(per_atom(x), x, 0.0)
        scale = jnp.maximum(jnp.max(jnp.abs(x), initial=0.0), 1e-300)
        skew = jnp.max(jnp.abs(x - jnp.swapaxes(x, -1, -2)), initial=0.0)
        return skew, scale

    out = [(finite(positions), "positions contain NaN or inf", {})]
    for name, x in (("q", q), ("mu", mu), ("theta", theta), ("e_ext", e_ext)):
        if x is not None:
            ok = finite(x) if name != "e_ext" else jnp.all(jnp.isfinite(x))
            out.append((ok, f"{name} contains NaN or inf", {}))
    if theta is not None:
        skew, scale = asym(theta)
        out.append(
            (
                skew <= _SYMMETRY_RTOL * scale,
                "theta must be symmetric (max |A - A^T| = {skew}, max |A| = {scale})",
                dict(skew=skew, scale=scale),
            )
        )
    if kappa is not None:
        kmin = jnp.min(jnp.where(per_atom(kappa), kappa, 0.0), initial=0.0)
        out.append((finite(kappa), "kappa contains NaN or inf", {}))
        out.append(
            (
                kmin >= 0,
                "kappa must be >= 0 (a softness; min = {kmin} e^2/eV)",
                dict(kmin=kmin),
            )
        )
    if alpha is not None:
        out.append((finite(alpha), "alpha contains NaN or inf", {}))
        a = jnp.where(per_atom(alpha), alpha, 0.0)
        a = jnp.where(jnp.isfinite(a), a, 0.0)
        if jnp.ndim(alpha) >= 3 and jnp.shape(alpha)[-2:] == (3, 3):
            skew, scale = asym(alpha)
            w = jnp.linalg.eigvalsh(0.5 * (a + jnp.swapaxes(a, -1, -2)))
            wmax = jnp.maximum(jnp.max(jnp.abs(w), initial=0.0), 1e-300)
            wmin = jnp.min(w, initial=0.0)
            out.append(
                (
                    skew <= _SYMMETRY_RTOL * scale,
                    "alpha must be symmetric (max |A - A^T| = {skew}, max |A| = {scale})",
                    dict(skew=skew, scale=scale),
                )
            )
            out.append(
                (
                    wmin >= -1e-6 * wmax,
                    "alpha must be positive semi-definite (min eigenvalue {wmin} "
                    "e^2 A^2/eV)",
                    dict(wmin=wmin),
                )
            )
        else:
            amin = jnp.min(a, initial=0.0)
            out.append(
                (amin >= 0, "alpha must be >= 0 (min = {amin})", dict(amin=amin))
            )
    if cell is not None:
        det = jnp.linalg.det(jnp.where(jnp.isfinite(cell), cell, 0.0))
        out.append((jnp.all(jnp.isfinite(cell)), "cell contains NaN or inf", {}))
        out.append(
            (
                jnp.abs(det) >= MIN_CELL_VOLUME,
                "cell is singular (det = {det} A^3); pass cell=None for a non-periodic "
                "system",
                dict(det=det),
            )
        )
        out.append(
            (
                det >= 0,
                "cell is left-handed (det = {det} A^3 < 0); reorder or negate a lattice "
                "vector (rows of the cell are the lattice vectors)",
                dict(det=det),
            )
        )
    return [(jnp.logical_or(ok, ~active), msg, kw) for ok, msg, kw in out]


def _raise_on_host(conditions):
    for ok, msg, kw in conditions:
        if not bool(ok):
            raise ValueError(
                msg.format(**{k: f"{float(v):.3g}" for k, v in kw.items()})
            )


def _concrete(x, name):
    """numpy value of x (also of a grad/jacfwd tracer with a known value).

    Raises:
        ValueError: x is abstract (inside ``jax.jit``/``jax.vmap``).
    """
    if x is None:
        return None
    if not isinstance(x, jax.core.Tracer):
        return np.asarray(x)
    try:
        from jax.extend.core import concrete_or_error

        return np.asarray(concrete_or_error(np.asarray, x, name))
    except Exception as err:  # noqa: BLE001 - any abstract tracer
        raise ValueError(
            f"long_range validates and prepares on the host, but its argument {name!r} "
            "is abstract here (inside jax.jit or jax.vmap).  The jittable path is a "
            "prepared solver: solver = prepare_solver(cell, ...) (or prepare_ewald / "
            "prepare_pme_solver / prepare_direct) outside, solver.long_range_fn("
            "positions, cell, q, ...) inside"
        ) from err


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

    Shapes and every value are checked (NaN/inf, kappa >= 0, symmetric PSD alpha,
    symmetric theta, the cell); inputs whose value is unknown (inside ``jax.jit``)
    raise, naming the prepared solver as the jittable path.

    Args:
        positions, q, mu, theta, kappa, alpha, cell, sigma, method, accuracy, e_ext,
            slab_axis, atom_mask: as :func:`long_range`.

    Returns:
        The cell as a float64 numpy array (validated) or None.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    _check_shapes(positions, q, mu, theta, kappa, alpha, e_ext, atom_mask, cell)
    values = {
        name: _concrete(x, name)
        for name, x in dict(
            positions=positions,
            q=q,
            mu=mu,
            theta=theta,
            kappa=kappa,
            alpha=alpha,
            e_ext=e_ext,
            atom_mask=atom_mask,
            cell=cell,
        ).items()
    }
    validate_positions(values["positions"])
    conditions = _value_conditions(**{**values, "cell": None})
    _raise_on_host(conditions)

    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma >= 0):
        raise ValueError(
            f"sigma must be a finite non-negative number (A), got {sigma!r}"
        )
    if not (isinstance(accuracy, (int, float)) and 0 < accuracy < 1):
        raise ValueError(f"accuracy must be a number in (0, 1), got {accuracy!r}")
    _check_float32_floor(jnp.result_type(positions), accuracy)

    cell_np = None
    if cell is None:
        if method in ("ewald", "pme", "split"):
            raise ValueError(f"method={method!r} needs a periodic cell; got cell=None")
        if slab_axis is not None:
            raise ValueError("slab_axis needs a periodic cell")
    else:
        if method == "direct":
            raise ValueError(
                "method='direct' is the non-periodic sum; pass cell=None (or use "
                "'ewald'/'pme' for a periodic cell)"
            )
        cell_np = validate_cell(values["cell"])
        if sigma <= 0 and method != "split":
            raise ValueError(
                f"sigma must be > 0 for periodic k-space sums, got {sigma}; for point "
                "multipoles (sigma = 0) use method='split'"
            )
        if slab_axis is not None and slab_axis not in (0, 1, 2):
            raise ValueError(f"slab_axis must be 0, 1, 2 or None, got {slab_axis!r}")
    return cell_np


# --------------------------------------------------------------------------- planning


def pme_order_for(max_multipole_order: int) -> int:
    """Default B-spline order of PME: 8 with quadrupoles, else 6.

    Quadrupoles need a ~2.5x finer order-6 mesh per axis for the same accuracy; order 8
    reaches it on a mesh about half as fine (``benchmarks/README.md``).
    """
    return 8 if int(max_multipole_order) >= 2 else 6


class SolverPlan(NamedTuple):
    """What :func:`plan_solver` chose.

    Attributes:
        method: ``"direct"``, ``"ewald"`` or ``"pme"``.
        pme_order: B-spline order of PME (also set for Ewald: the order compared).
        mesh_shape: PME mesh (per-axis maximum over the cells), or None.
        kgrids: per-cell :class:`~polmp.electrostatics.kgrid.KGrid` (Ewald), or None.
        max_cell_scale: the cell range the plan covers (module docstring).
    """

    method: str
    pme_order: int
    mesh_shape: tuple | None
    kgrids: tuple | None
    max_cell_scale: float


def _num_kvectors_estimate(cell, k_c):
    # half of the k-sphere volume / reciprocal cell volume
    return abs(np.linalg.det(cell)) * k_c**3 / (12.0 * np.pi**2)


def plan_solver(
    cells,
    num_atoms,
    *,
    method="auto",
    sigma=1.0,
    accuracy=1e-6,
    max_multipole_order=2,
    pme_order=None,
    les_compat=False,
    max_cell_scale=1.0,
    max_kvectors=kgrid.MAX_KVECTORS,
    max_mesh_points=pme.MAX_MESH_POINTS,
) -> SolverPlan:
    """THE rule that chooses method, PME order, mesh and k-sets.  Host, not jittable.

    Every caller (``long_range``, ``prepare_solver``, the model adapter, training's
    pinned capacities) plans through this function.  Ewald costs ~N M with M the
    half-space k-vectors (``COST_EWALD_PER_ATOM_K``), PME ~ the mesh points
    (``COST_PME_PER_MESH_POINT``), both measured (``docs/electrostatics.md``); at
    water density the crossover is ~25 atoms for charges, ~70 with dipoles and ~400
    with quadrupoles at accuracy 1e-6.  Memory is part of the choice: a k-set above
    ``max_kvectors`` or a mesh above ``max_mesh_points`` is not a candidate (a few
    atoms in a huge box); if neither fits, a clear ``ValueError`` says what to change.

    Args:
        cells: None (non-periodic), a (3, 3) cell or (G, 3, 3) cells that share one
            solver (the mesh is the per-axis maximum; each cell keeps its own k-set).
        num_atoms: atoms per structure (the block size of a padded batch).
        method: ``"auto"``, ``"ewald"``, ``"pme"`` or ``"direct"``.
        sigma, accuracy: as :func:`long_range`.
        max_multipole_order: highest multipole order l (0 q, 1 mu, 2 Theta).
        pme_order: B-spline order, or None for :func:`pme_order_for`.
        les_compat: the reference implementation's k-set (forces Ewald).
        max_cell_scale: s >= 1, the cell range to cover (module docstring).
        max_kvectors, max_mesh_points: memory guards.

    Returns:
        :class:`SolverPlan`.

    Raises:
        ValueError: unknown method, bad cell or options, or nothing fits in memory.
    """
    if method not in ("auto", "ewald", "pme", "direct"):
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS[:4]}")
    if not (isinstance(max_cell_scale, (int, float)) and max_cell_scale >= 1):
        raise ValueError(
            f"max_cell_scale must be a number >= 1, got {max_cell_scale!r}"
        )
    order = pme_order_for(max_multipole_order) if pme_order is None else int(pme_order)
    if cells is None:
        if method not in ("auto", "direct"):
            raise ValueError(f"method={method!r} needs a periodic cell")
        return SolverPlan("direct", order, None, None, float(max_cell_scale))
    if method == "direct":
        raise ValueError("method='direct' is non-periodic; pass cell=None")
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)
    if cells.shape[0] == 0:
        raise ValueError("plan_solver needs at least one cell")
    for cell in cells:
        validate_cell(cell)
    if les_compat:
        if method == "pme":
            raise ValueError(
                "les_compat is the reference Ewald k-set: use method='ewald'"
            )
        method = "ewald"
    scale = float(max_cell_scale)
    problems = []

    grids = None
    if method in ("auto", "ewald"):
        k_c = (
            2.0 * math.pi / kgrid.LES_DL
            if les_compat
            else kgrid.k_cutoff_for_accuracy(sigma, accuracy, max_multipole_order)
        )
        estimate = max(_num_kvectors_estimate(c, k_c * scale) for c in cells)
        if estimate <= max_kvectors:
            grids = tuple(
                kgrid.prepare_kgrid(
                    c,
                    sigma=sigma,
                    accuracy=accuracy,
                    les_compat=les_compat,
                    max_multipole_order=max_multipole_order,
                    margin=scale - 1.0,
                    max_kvectors=max_kvectors,
                )
                for c in cells
            )
        else:
            problems.append(
                f"Ewald needs ~{estimate:.3g} k-vectors (> {max_kvectors:.3g})"
            )
    mesh = None
    if method in ("auto", "pme"):
        shapes = [
            pme.mesh_shape_for(
                c * scale,
                sigma=sigma,
                accuracy=accuracy,
                order=order,
                max_multipole_order=max_multipole_order,
            )
            for c in cells
        ]
        candidate = tuple(int(x) for x in np.max(shapes, axis=0))
        points = int(np.prod(candidate))
        if points <= max_mesh_points:
            mesh = candidate
        else:
            problems.append(
                f"PME (order {order}) needs a {candidate} mesh, {points:.3g} points "
                f"(> {max_mesh_points:.3g})"
            )
    if grids is None and mesh is None:
        raise ValueError(
            "no periodic solver fits in memory: "
            + "; ".join(problems)
            + f" for cell lengths {np.linalg.norm(cells, axis=-1).max(0).round(1)} A, "
            f"sigma {sigma} A, accuracy {accuracy:g}, multipole order "
            f"{max_multipole_order}.  For a few atoms in a huge box use cell=None (the "
            "non-periodic direct sum); otherwise loosen the accuracy, raise sigma, or "
            "raise max_kvectors / max_mesh_points knowingly"
        )
    if method == "auto":
        if grids is None:
            method = "pme"
        elif mesh is None:
            method = "ewald"
        else:
            num_k = max(g.num_kvectors for g in grids)
            cost_ewald = COST_EWALD_PER_ATOM_K * max(int(num_atoms), 1) * num_k
            cost_pme = COST_PME_PER_MESH_POINT * float(np.prod(mesh))
            method = "ewald" if cost_ewald <= cost_pme else "pme"
    return SolverPlan(
        method,
        order,
        mesh if method == "pme" else None,
        grids if method == "ewald" else None,
        scale,
    )


def choose_method(
    cell, num_atoms, *, sigma=1.0, accuracy=1e-6, max_multipole_order=2, pme_order=None
) -> str:
    """The method ``"auto"`` resolves to (:func:`plan_solver`'s choice).  Host.

    Args:
        cell: (3, 3) array or None.
        num_atoms: number of real atoms.
        sigma, accuracy: as :func:`long_range`.
        max_multipole_order: 0, 1 or 2.
        pme_order: B-spline order of PME (None: :func:`pme_order_for`).

    Returns:
        ``"direct"``, ``"ewald"`` or ``"pme"``.
    """
    return plan_solver(
        cell,
        num_atoms,
        sigma=sigma,
        accuracy=accuracy,
        max_multipole_order=max_multipole_order,
        pme_order=pme_order,
    ).method


# --------------------------------------------------------------------------- kernel


def _per_channel(fn, m):
    """vmap a single-channel ``fn(q, mu, theta)`` over the channel axis of m."""
    axes = (1, None if m.mu is None else 1, None if m.theta is None else 1)
    return jax.vmap(fn, in_axes=axes)(m.q, m.mu, m.theta)


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

    elif method == "split":

        def one(qc, muc, thc):
            return _split_one(positions, cell, qc, muc, thc, spec, sigma, atom_mask)

    else:  # direct

        def one(qc, muc, thc):
            kw = dict(sigma=sigma, atom_mask=atom_mask)
            if chunk_size is not None:
                kw["chunk_size"] = chunk_size
            e = direct.direct_energy(positions, qc, muc, thc, **kw)
            phi, field = direct.direct_potential_field(positions, qc, muc, thc, **kw)
            return e, phi, field

    e, phi, field = _per_channel(one, m)  # (C,), (C, N), (C, N, 3)
    phi, field = jnp.moveaxis(phi, 0, 1), jnp.moveaxis(field, 0, 1)
    if atom_mask is not None:
        mask = jnp.asarray(atom_mask, bool)
        phi = jnp.where(mask[:, None], phi, 0.0)
        field = jnp.where(mask[:, None, None], field, 0.0)
    return e, phi, field


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _SplitSpec:
    """Static data of the ``"split"`` method: the reciprocal k-set at ``sigma_split``
    and the real-space pair list (built from the positions on the host)."""

    kgrid: kgrid.KGrid
    pairs: realspace.RealSpacePairs
    sigma_split: float = dataclasses.field(metadata=dict(static=True))


def _split_one(positions, cell, q, mu, theta, spec, sigma, atom_mask):
    """One channel of the Ewald split (``realspace`` module docstring)."""
    s = spec.sigma_split
    if atom_mask is not None:
        mask = jnp.asarray(atom_mask, bool)
        q = jnp.where(mask, q, 0.0)
        mu = None if mu is None else jnp.where(mask[:, None], mu, 0.0)
        theta = None if theta is None else jnp.where(mask[:, None, None], theta, 0.0)
    e, phi, field = ewald.ewald_energy_potential_field(
        positions, cell, q, mu, theta, spec.kgrid, sigma=s, atom_mask=atom_mask
    )
    kw = dict(sigma=sigma, sigma_split=s)
    e = e + realspace.realspace_energy(positions, cell, q, mu, theta, spec.pairs, **kw)
    phi_r, field_r = realspace.realspace_potential_field(
        positions, cell, q, mu, theta, spec.pairs, **kw
    )
    # k -> 0 limit dropped by both k = 0-free sums (uniform background, charged cells)
    background = math.pi * COULOMB * (s**2 - sigma**2) / jnp.abs(jnp.linalg.det(cell))
    total = jnp.sum(q)
    return (
        e - background * total**2,
        phi + phi_r - 2.0 * background * total,
        field + field_r,
    )


def _solve(
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
    """E_lr, phi, field, dq, dmu of one structure: the one long-range kernel."""
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


# --------------------------------------------------------------------------- solver


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["spec", "reference_cell"],
    meta_fields=[
        "method",
        "sigma",
        "accuracy",
        "max_cell_scale",
        "slab_axis",
        "chunk_size",
    ],
)
@dataclasses.dataclass(frozen=True)
class Solver:
    """Prepared long-range solver of one structure: static data + pure functions.

    A pytree (``spec`` and ``reference_cell`` are its leaves), so a stack of solvers
    (one per graph of a batch, leaves with a leading axis) can be ``jax.vmap``-ed.

    Attributes:
        method: ``"ewald"``, ``"pme"`` or ``"direct"``.
        spec: :class:`~polmp.electrostatics.kgrid.KGrid`,
            :class:`~polmp.electrostatics.pme.PMESpec` or None.
        reference_cell: Float[Array, '3 3'], the cell it was prepared for (None for
            direct).
        sigma: pair-kernel width, A.
        accuracy: requested relative accuracy (None: not accuracy-driven).
        max_cell_scale: covered cell range (module docstring).
        slab_axis: vacuum direction of the Yeh-Berkowitz correction, or None.
        chunk_size: k-vectors per chunk (Ewald) / rows per block (direct), or None.
    """

    method: str
    spec: Any
    reference_cell: Any
    sigma: float
    accuracy: float | None = None
    max_cell_scale: float = 1.0
    slab_axis: int | None = None
    chunk_size: int | None = None

    def _static_checks(self, positions, cell, q, mu, theta, kappa, alpha, e_ext, mask):
        periodic = self.method != "direct"
        if periodic and cell is None:
            raise ValueError(f"the {self.method} solver needs the (traced) cell")
        _check_shapes(
            positions,
            q,
            mu,
            theta,
            kappa,
            alpha,
            e_ext,
            mask,
            cell if periodic else None,
        )
        _check_float32_floor(jnp.result_type(positions), self.accuracy)

    def long_range_fn(
        self,
        positions,
        cell,
        q,
        mu=None,
        theta=None,
        kappa=None,
        alpha=None,
        e_ext=None,
        atom_mask=None,
    ) -> LongRange:
        """E_lr, phi, field, dq, dmu (:class:`LongRange`).  Pure and jittable.

        Args:
            positions: Float[Array, 'N 3'], A (sets the compute dtype).
            cell: Float[Array, '3 3'], rows are lattice vectors, A (traced: stress);
                ignored (pass None) by the direct solver.
            q, mu, theta, kappa, alpha, e_ext, atom_mask: as :func:`long_range`.

        Raises:
            ValueError: at trace time, for shapes, dtypes or a float32 input with an
                accuracy below the float32 floor.
        """
        self._static_checks(
            positions, cell, q, mu, theta, kappa, alpha, e_ext, atom_mask
        )
        return _solve(
            positions,
            None if self.method == "direct" else cell,
            q,
            mu,
            theta,
            kappa,
            alpha,
            e_ext,
            atom_mask,
            method=self.method,
            spec=self.spec,
            sigma=self.sigma,
            slab_axis=self.slab_axis,
            chunk_size=self.chunk_size,
        )

    def energy_fn(self, positions, cell, q, mu=None, theta=None, atom_mask=None):
        """E_elec (+ E_slab), eV, channel energies summed.  Pure and jittable."""
        self._static_checks(positions, cell, q, mu, theta, None, None, None, atom_mask)
        if self.method != "ewald":
            return self.long_range_fn(
                positions, cell, q, mu, theta, atom_mask=atom_mask
            ).energy
        positions = jnp.asarray(positions)
        dtype = positions.dtype

        def cast(x):
            return None if x is None else jnp.asarray(x, dtype)

        # the bare energy needs no potential: the cheaper Ewald pass
        e = jnp.sum(
            ewald.ewald_energy(
                positions,
                cast(cell),
                cast(q),
                cast(mu),
                cast(theta),
                self.spec,
                sigma=self.sigma,
                atom_mask=atom_mask,
                chunk_size=self.chunk_size,
            )
        )
        if self.slab_axis is not None:
            m = mp.to_channels(cast(q), cast(mu))
            e = e + response.slab_correction(
                positions,
                cast(cell),
                m.q,
                m.mu,
                axis=self.slab_axis,
                atom_mask=atom_mask,
            )
        return e

    def cell_scale(self, cell):
        """Largest singular value of F = reference_cell^-1 cell (jnp; traced or not)."""
        ref = jnp.asarray(self.reference_cell, jnp.result_type(cell))
        deform = jnp.linalg.solve(ref, jnp.where(jnp.isfinite(cell), cell, 0.0))
        return jnp.linalg.norm(deform, ord=2)

    def covers(self, cell) -> bool:
        """Whether ``cell`` lies in the prepared range (host check, numpy)."""
        if self.method == "direct":
            return True
        cell = validate_cell(np.asarray(cell))
        ref = np.asarray(self.reference_cell, np.float64)
        scale = float(np.linalg.norm(np.linalg.solve(ref, cell), ord=2))
        return scale <= self.max_cell_scale * (1.0 + _RANGE_RTOL)

    def check_inputs(
        self,
        positions,
        cell,
        q,
        mu=None,
        theta=None,
        kappa=None,
        alpha=None,
        e_ext=None,
        atom_mask=None,
    ) -> None:
        """Value checks as ``checkify.check`` (run under ``checkify.checkify``).

        NaN/inf in any input, a singular or left-handed cell, a cell outside the
        prepared range, asymmetric theta or alpha, a non-PSD alpha, negative kappa or
        alpha.  Padded atoms are not checked.  Jittable; costs one pass over the inputs.

        Example::

            err, out = jax.jit(checkify.checkify(lambda *a: (
                solver.check_inputs(*a), solver.long_range_fn(*a))[1]))(*args)
            err.throw()

        (:meth:`checked_long_range_fn` is exactly this.)
        """
        periodic = self.method != "direct"
        self._static_checks(
            positions, cell, q, mu, theta, kappa, alpha, e_ext, atom_mask
        )
        conditions = _value_conditions(
            positions,
            q,
            mu,
            theta,
            kappa,
            alpha,
            e_ext,
            atom_mask,
            cell if periodic else None,
        )
        if periodic:
            scale = self.cell_scale(jnp.asarray(cell))
            active = (
                jnp.asarray(True)
                if atom_mask is None
                else jnp.any(jnp.asarray(atom_mask, bool))
            )
            conditions.append(
                (
                    jnp.logical_or(
                        scale <= self.max_cell_scale * (1.0 + _RANGE_RTOL), ~active
                    ),
                    "cell leaves the range the solver was prepared for (largest "
                    "stretch {scale} of the reference cell > max_cell_scale "
                    f"{self.max_cell_scale:g}); prepare again with this cell or a "
                    "larger max_cell_scale",
                    dict(scale=scale),
                )
            )
        for ok, msg, kw in conditions:
            checkify.check(ok, msg, **kw)

    def checked_long_range_fn(self, *args, **kwargs):
        """:meth:`long_range_fn` with :meth:`check_inputs`, checkified.

        Returns:
            ``(error, LongRange)``; call ``error.throw()`` (outside ``jax.jit``) to
            raise the first failed check.  Jittable.
        """

        def run(*a, **k):
            self.check_inputs(*a, **k)
            return self.long_range_fn(*a, **k)

        return checkify.checkify(run)(*args, **kwargs)


def _host_x64_floor(accuracy):
    if (
        accuracy is not None
        and accuracy < FLOAT32_MIN_ACCURACY
        and not jax.config.jax_enable_x64
    ):
        raise ValueError(
            f"accuracy={accuracy:g} is below the float32 floor ({FLOAT32_MIN_ACCURACY:g}) "
            "and jax_enable_x64 is off, so every input will be float32; enable x64 "
            "first or use a looser accuracy"
        )


def _build(plan, cell, *, sigma, accuracy, slab_axis=None, chunk_size=None) -> Solver:
    if plan.method == "direct":
        return Solver("direct", None, None, sigma, chunk_size=chunk_size)
    if plan.method == "ewald":
        spec = plan.kgrids[0]
    else:
        spec = pme.PMESpec(
            mesh_shape=plan.mesh_shape,
            order=plan.pme_order,
            sigma=float(sigma),
            accuracy=float(accuracy),
        )
    return Solver(
        plan.method,
        spec,
        np.asarray(cell, np.float64),
        float(sigma),
        None if getattr(spec, "les_compat", False) else float(accuracy),
        plan.max_cell_scale,
        slab_axis,
        chunk_size,
    )


def prepare_solver(
    cell,
    *,
    method="auto",
    num_atoms=None,
    sigma=1.0,
    accuracy=1e-6,
    max_multipole_order=2,
    max_cell_scale=1.0,
    pme_order=None,
    les_compat=False,
    slab_axis=None,
    chunk_size=None,
    max_kvectors=kgrid.MAX_KVECTORS,
    max_mesh_points=pme.MAX_MESH_POINTS,
) -> Solver:
    """Prepare the solver ``long_range`` would use (:func:`plan_solver`).  Host.

    Args:
        cell: (3, 3) array (rows are lattice vectors, A) or None (non-periodic).
        method: ``"auto"``, ``"ewald"``, ``"pme"`` or ``"direct"``.
        num_atoms: number of real atoms (for ``"auto"``).
        sigma, accuracy: as :func:`long_range`.
        max_multipole_order: 0, 1 or 2 (sets k_c or the mesh).
        max_cell_scale: s >= 1: converged for every cell @ F with largest singular
            value of F <= s (NPT: the largest box expected).
        pme_order: B-spline order (None: :func:`pme_order_for`).
        les_compat: the reference implementation's k-set (Ewald).
        slab_axis: vacuum direction for the Yeh-Berkowitz correction, or None.
        chunk_size: k-vectors per chunk (Ewald) / rows per block (direct), or None.
        max_kvectors, max_mesh_points: memory guards (:func:`plan_solver`).

    Returns:
        :class:`Solver`.
    """
    if method not in METHODS[:4]:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS[:4]}")
    if not les_compat:
        _host_x64_floor(accuracy)
    plan = plan_solver(
        cell,
        num_atoms or 1,
        method=method,
        sigma=sigma,
        accuracy=accuracy,
        max_multipole_order=max_multipole_order,
        pme_order=pme_order,
        les_compat=les_compat,
        max_cell_scale=max_cell_scale,
        max_kvectors=max_kvectors,
        max_mesh_points=max_mesh_points,
    )
    return _build(
        plan,
        cell,
        sigma=sigma,
        accuracy=accuracy,
        slab_axis=slab_axis,
        chunk_size=chunk_size,
    )


def prepare_ewald(cell, *, max_multipole_order=2, **kwargs) -> Solver:
    """Prepare a reciprocal-space Ewald solver (``prepare_solver(method="ewald")``).

    Keyword arguments as :func:`prepare_solver` (sigma, accuracy, les_compat,
    max_cell_scale, slab_axis, chunk_size, max_kvectors).
    """
    return prepare_solver(
        cell, method="ewald", max_multipole_order=max_multipole_order, **kwargs
    )


def prepare_pme_solver(cell, *, order=None, max_multipole_order=2, **kwargs) -> Solver:
    """Prepare a smooth-PME solver (``prepare_solver(method="pme")``).

    Args:
        cell: (3, 3), rows are lattice vectors, A.
        order: B-spline order (None: :func:`pme_order_for`).
        max_multipole_order: 0, 1 or 2 (sets the mesh spacing).
        **kwargs: as :func:`prepare_solver` (sigma, accuracy, max_cell_scale,
            slab_axis, max_mesh_points).
    """
    return prepare_solver(
        cell,
        method="pme",
        pme_order=order,
        max_multipole_order=max_multipole_order,
        **kwargs,
    )


def prepare_direct(*, sigma=1.0, chunk_size=None) -> Solver:
    """Non-periodic all-pairs solver (``cell`` arguments are ignored; pass None).

    Args:
        sigma: pair-kernel width, A (a Python 0 gives point multipoles).
        chunk_size: rows per block, or None.
    """
    return Solver("direct", None, None, sigma, chunk_size=chunk_size)


# --------------------------------------------------------------------------- one call

_solve_jit = jax.jit(
    _solve, static_argnames=("method", "sigma", "slab_axis", "chunk_size")
)


def _prepare_split(cell, positions, atom_mask, *, sigma, accuracy, order):
    """Host data of the ``"split"`` method (long_range only: pairs need positions)."""
    sigma_split = max(1.0, 2.0 * float(sigma))
    grid = kgrid.prepare_kgrid(
        cell, sigma=sigma_split, accuracy=accuracy, max_multipole_order=order
    )
    pos = np.asarray(positions, np.float64)
    real = np.arange(len(pos)) if atom_mask is None else np.flatnonzero(atom_mask)
    cutoff = realspace.realspace_cutoff(sigma_split, accuracy, 2 * order + 1)
    pairs = realspace.prepare_realspace(pos[real], cell, True, cutoff)
    pairs = realspace.RealSpacePairs(
        idx_i=jnp.asarray(real[np.asarray(pairs.idx_i)], jnp.int32),
        idx_j=jnp.asarray(real[np.asarray(pairs.idx_j)], jnp.int32),
        shifts=pairs.shifts,
        mask=pairs.mask,
    )
    return _SplitSpec(grid, pairs, sigma_split)


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

    E_lr = E_elec[q, mu, Theta] + U_iq + U_iu (docs/method.md#energy), with E_elec the
    periodic k-space sum (Ewald or PME, self energy removed, k = 0 omitted: tinfoil
    boundary, uniform background for a net charge) or, for ``cell=None``, the
    non-periodic all-pairs sum.  Host function: validates, prepares a
    :class:`Solver` (:func:`prepare_solver`) and runs it jitted.  Not callable inside
    ``jax.jit`` (use the prepared solver there); differentiable under ``jax.grad``.

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
        sigma: pair-kernel width, A (kernel erf(r/(sqrt(2) sigma))/r); 0 (point
            multipoles) needs ``method="split"`` or ``cell=None``.
        method: ``"auto" | "ewald" | "pme" | "direct" | "split"``.
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
        ValueError: invalid inputs (see :func:`validate_inputs`), a k-set or mesh that
            does not fit in memory, or abstract inputs (inside ``jax.jit``).
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
    if les_compat and (cell is None or method not in ("auto", "ewald")):
        raise ValueError(
            "les_compat reproduces the reference implementation's periodic k-set: "
            "it needs a cell and method='ewald' (or 'auto')"
        )
    order = 2 if theta is not None else (1 if mu is not None else 0)
    mask = _concrete(atom_mask, "atom_mask")
    if method == "split":
        spec = _prepare_split(
            cell_np,
            _concrete(positions, "positions"),
            mask,
            sigma=float(sigma),
            accuracy=float(accuracy),
            order=order,
        )
    else:
        n = int(np.sum(mask)) if mask is not None else jnp.shape(positions)[0]
        solver = prepare_solver(
            cell_np,
            method=method,
            num_atoms=n,
            sigma=float(sigma),
            accuracy=float(accuracy),
            max_multipole_order=order,
            pme_order=pme_order,
            les_compat=les_compat,
        )
        method, spec = solver.method, solver.spec
    return _solve_jit(
        jnp.asarray(positions),
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
