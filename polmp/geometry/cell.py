"""Periodic cells: volume, reciprocal cell, fractional coordinates, wrapping, validation.

Convention (ASE's, used everywhere in polmp): ``cell`` is a (3, 3) matrix M whose
*rows* are the lattice vectors a_1, a_2, a_3 in A.  Cartesian and fractional
coordinates are related by ``r = s @ M`` and ``s = r @ inv(M)``.  The reciprocal
cell returned here includes the 2 pi: its rows b_i satisfy a_i . b_j = 2 pi delta_ij,
i.e. ``B = 2 pi inv(M).T``, and reciprocal lattice vectors are ``k = n @ B`` for
integer n.

The jnp functions are pure and differentiable (the cell is a differentiable input, so
stress comes from autodiff).  ``validate_*`` are host-side checks (not jittable) that
raise ``ValueError`` with a clear message before anything is traced.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

#: Smallest volume (A^3) accepted for a periodic cell; anything below is singular.
MIN_CELL_VOLUME = 1e-6


def volume(cell):
    """Signed volume det(M) of a cell.

    Args:
        cell: Float[Array, '3 3'], rows are lattice vectors, A.

    Returns:
        Float[Array, ''], A^3; positive for a right-handed cell.
    """
    return jnp.linalg.det(cell)


def reciprocal_cell(cell):
    """Reciprocal cell B = 2 pi inv(M)^T, rows b_i with a_i . b_j = 2 pi delta_ij.

    Args:
        cell: Float[Array, '3 3'], rows are lattice vectors, A.

    Returns:
        Float[Array, '3 3'], rows are reciprocal lattice vectors, A^-1.
    """
    return 2.0 * math.pi * jnp.linalg.inv(cell).T


def fractional_coordinates(positions, cell):
    """Fractional coordinates s = r inv(M).

    Args:
        positions: Float[Array, 'N 3'], A.
        cell: Float[Array, '3 3'], rows are lattice vectors, A.

    Returns:
        Float[Array, 'N 3'], dimensionless.
    """
    return jnp.linalg.solve(cell.T, positions.T).T


def wrap_positions(positions, cell, pbc=(True, True, True)):
    """Wrap positions into the cell along periodic directions (fractional in [0, 1)).

    Args:
        positions: Float[Array, 'N 3'], A.
        cell: Float[Array, '3 3'], rows are lattice vectors, A.
        pbc: three booleans; non-periodic directions are left untouched.

    Returns:
        Float[Array, 'N 3'], A.
    """
    s = fractional_coordinates(positions, cell)
    s = jnp.where(jnp.asarray(pbc), s - jnp.floor(s), s)
    return s @ cell


def validate_positions(positions, num_atoms=None, name="positions"):
    """Host check: an (N, 3) finite array.  Not jittable.

    Raises:
        ValueError: wrong shape, wrong length or NaN/inf entries.
    """
    arr = np.asarray(positions)
    if arr.ndim != 2 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {arr.shape}")
    if num_atoms is not None and arr.shape[0] != num_atoms:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {num_atoms}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[:, 0]
        raise ValueError(
            f"{name} contains NaN or inf (rows {np.unique(bad)[:10].tolist()})"
        )
    return arr


def validate_cell(cell, *, allow_left_handed=False):
    """Host check of a periodic cell.  Not jittable.

    Args:
        cell: (3, 3) array, rows are lattice vectors, A.
        allow_left_handed: accept det(M) < 0 (off by default: a left-handed cell is
            almost always a transposed or mis-ordered matrix, and silently treating it
            as non-periodic, as some codes do, hides the mistake).

    Returns:
        The cell as a float numpy array.

    Raises:
        ValueError: wrong shape, NaN/inf, singular (|det| < 1e-6 A^3) or left-handed.
    """
    arr = np.asarray(cell, dtype=np.float64)
    if arr.shape != (3, 3):
        raise ValueError(
            f"cell must have shape (3, 3) (rows are lattice vectors), got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("cell contains NaN or inf")
    det = float(np.linalg.det(arr))
    if abs(det) < MIN_CELL_VOLUME:
        raise ValueError(
            f"cell is singular (det = {det:.3g} A^3); pass cell=None for a non-periodic system"
        )
    if det < 0 and not allow_left_handed:
        raise ValueError(
            f"cell is left-handed (det = {det:.6g} A^3 < 0); reorder or negate a lattice "
            "vector (rows of the cell are the lattice vectors)"
        )
    return arr
