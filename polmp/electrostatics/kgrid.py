"""Reciprocal-lattice index sets for the Ewald k-sum (host side, numpy; not jittable).

Contract
--------
:func:`prepare_kgrid` takes a *concrete* cell (rows are lattice vectors, A), the
pair-kernel width ``sigma`` and a relative ``accuracy`` and returns a :class:`KGrid`:
integer index vectors n of a half space (k = 2 pi n M^-T, written ``k = n @ B`` with
``B = reciprocal_cell(cell)``), every one with 0 < |k| <= k_c.  Only the integers are
stored; ``polmp.electrostatics.ewald`` rebuilds k from the *traced* cell, so the
energy is differentiable with respect to the cell (stress) for the fixed index set.

Choosing k_c (default mode)
---------------------------
The summand of the reciprocal energy is exp(-sigma^2 k^2/2)/k^2 |S(k)|^2.  For
uncorrelated multipoles of order l, |S|^2 grows as k^{2l}, and the k-sum is close to
the integral int k^2 dk exp(-sigma^2 k^2/2) k^{2l}/k^2, so the fraction left out by
|k| > k_c is the regularised upper incomplete gamma function::

    tail(k_c) = Q(l + 1/2, sigma^2 k_c^2 / 2).

polmp picks the smallest k_c with tail(k_c) <= ``accuracy`` for l =
``max_multipole_order`` (2 by default: safe for charges, dipoles and quadrupoles).
``accuracy`` is therefore relative to the bare reciprocal sum (which has the size of
the self energy, k_e/sqrt(2 pi) sum_i q_i^2/sigma + ...).  For sigma = 1 A this gives
sigma k_c = 4.9 (l = 0) / 5.9 (l = 2) at 1e-6 and 6.4 / 7.2 at 1e-10.  Once converged
the energy no longer depends on k_c, and it is a continuous function of the cell.

The integer range per lattice direction follows from the cell: k . a_a = 2 pi n_a,
so |n_a| <= k_c |a_a| / (2 pi).  No fixed n_max is ever used, so long or strongly
sheared cells are covered completely.

``les_compat=True``
-------------------
Exactly the k-set of the reference implementation (docs/method.md#les-compat): every
reciprocal vector with 0 < |k| <= 2 pi / dl, dl = 2.0 A (inclusive), over a half
space with weight 2.  It is not converged (~0.7 % on a 192-atom water box, more for
sheared or larger cells) and jumps when a vector crosses the sphere.  Its constant
1/(2 eps0) = 90.4756 differs from polmp's CODATA value by 4.5e-7 relative; polmp
keeps its own constant.

When to re-prepare
------------------
The index set is fixed at preparation.  When the cell deforms, the stored vectors move
with it: the energy stays smooth, and it stays converged as long as the set still
contains every k of the deformed cell with |k| <= k_c.  :func:`kgrid_covers` checks
exactly that.  For NPT, prepare with ``margin`` (k_c -> (1 + margin) k_c): for a
deformation cell' = cell @ F (positions r' = r @ F) the needed vectors satisfy
|k_ref| <= s_max(F) k_c, so every F whose largest singular value is <= 1 + margin is
covered (compression always is).  Re-prepare, outside jit, when ``kgrid_covers``
turns False.  In
``les_compat`` mode the set should be re-prepared for every new cell (that is what
the reference does, and where its energy jumps).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from scipy.special import gammaincc

from polmp.geometry.cell import validate_cell

__all__ = [
    "KGrid",
    "LES_DL",
    "k_cutoff_for_accuracy",
    "half_space_indices",
    "prepare_kgrid",
    "kgrid_covers",
    "MAX_KVECTORS",
]

#: Default cap on the number of half-space k-vectors of one set (2^24: ~200 MB of
#: int32 indices, and already ~1 s per energy for 8 atoms).  The count is estimated
#: before the set is enumerated, so a huge cell fails fast instead of filling memory.
MAX_KVECTORS = 2**24

#: Real-space resolution dl (A) of the reference implementation: k_c = 2 pi / dl.
LES_DL: float = 2.0


@dataclasses.dataclass(frozen=True)
class KGrid:
    """A static half-space set of reciprocal-lattice indices (pytree).

    ``indices`` is the only array (a pytree leaf, so a ``KGrid`` can be passed to a
    jitted function); everything else is static metadata.

    Attributes:
        indices: Int[Array, 'M 3'] (numpy int32), integer n with k = n @ B.
        k_cutoff: k_c used to build the set (including ``margin``), A^-1.
        sigma: pair-kernel width the set was built for, A.
        accuracy: requested relative accuracy (None for ``les_compat``).
        les_compat: True for the reference implementation's k-set.
        max_multipole_order: l used in the tail estimate.
        margin: relative enlargement of k_c (for cells that will deform).
        reference_cell: the cell the set was built for, as a tuple of tuples, A.
    """

    indices: np.ndarray
    k_cutoff: float
    sigma: float
    accuracy: float | None
    les_compat: bool
    max_multipole_order: int
    margin: float
    reference_cell: tuple

    @property
    def num_kvectors(self) -> int:
        """M, the number of half-space vectors (each counted with weight 2)."""
        return int(self.indices.shape[0])


jax.tree_util.register_dataclass(
    KGrid,
    data_fields=["indices"],
    meta_fields=[
        "k_cutoff",
        "sigma",
        "accuracy",
        "les_compat",
        "max_multipole_order",
        "margin",
        "reference_cell",
    ],
)


def k_cutoff_for_accuracy(sigma: float, accuracy: float, max_multipole_order: int = 2):
    """Smallest k_c with Q(l + 1/2, sigma^2 k_c^2 / 2) <= accuracy.  Not jittable.

    Args:
        sigma: pair-kernel width, A (> 0).
        accuracy: relative truncation error of the k-sum, in (0, 1).
        max_multipole_order: l = 0 (charges), 1 (dipoles) or 2 (quadrupoles).

    Returns:
        k_c in A^-1.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 for a k-space sum, got {sigma}")
    if not 0 < accuracy < 1:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    if max_multipole_order not in (0, 1, 2):
        raise ValueError(
            f"max_multipole_order must be 0, 1 or 2, got {max_multipole_order}"
        )
    a = max_multipole_order + 0.5
    lo, hi = 0.0, 1.0
    while gammaincc(a, hi) > accuracy:
        lo, hi = hi, 2.0 * hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gammaincc(a, mid) > accuracy else (lo, mid)
    return math.sqrt(2.0 * hi) / sigma


def half_space_indices(cell, k_cutoff: float, *, inclusive_rtol: float = 1e-12):
    """All integer n of a half space with 0 < |n @ B| <= k_cutoff.  Not jittable.

    The half space is n_1 > 0, or n_1 = 0 and n_2 > 0, or n_1 = n_2 = 0 and n_3 > 0;
    together with -n it covers every nonzero lattice vector once.  The range per
    direction is |n_a| <= k_cutoff |a_a| / (2 pi) (|a_a| the norm of cell row a).

    Args:
        cell: (3, 3) array, rows are lattice vectors, A.
        k_cutoff: A^-1.
        inclusive_rtol: vectors with |k|^2 <= k_c^2 (1 + rtol) are kept, so vectors on
            the sphere are included despite rounding.

    Returns:
        Int[ndarray, 'M 3'] (int32), sorted by |k|.
    """
    cell = np.asarray(cell, dtype=np.float64)
    recip = 2.0 * np.pi * np.linalg.inv(cell).T
    lengths = np.linalg.norm(cell, axis=1)
    n_max = np.floor(k_cutoff * lengths / (2.0 * np.pi) + 1e-9).astype(int)
    kc2 = k_cutoff**2 * (1.0 + inclusive_rtol)
    r2 = np.arange(-n_max[1], n_max[1] + 1)
    r3 = np.arange(-n_max[2], n_max[2] + 1)
    g2, g3 = np.meshgrid(r2, r3, indexing="ij")
    g2, g3 = g2.ravel(), g3.ravel()
    out = []
    # one n_1 plane at a time keeps host memory at O(n_2 n_3) for very long cells
    for n1 in range(0, n_max[0] + 1):
        n = np.stack([np.full_like(g2, n1), g2, g3], axis=1)
        k = n @ recip
        k2 = np.einsum("ma,ma->m", k, k)
        keep = (k2 <= kc2) & (k2 > 0)
        if n1 == 0:
            keep &= (g2 > 0) | ((g2 == 0) & (g3 > 0))
        out.append(n[keep])
    idx = np.concatenate(out, axis=0) if out else np.zeros((0, 3), int)
    k = idx @ recip
    order = np.argsort(np.einsum("ma,ma->m", k, k), kind="stable")
    return idx[order].astype(np.int32)


def prepare_kgrid(
    cell,
    *,
    sigma: float = 1.0,
    accuracy: float = 1e-6,
    les_compat: bool = False,
    max_multipole_order: int = 2,
    margin: float = 0.0,
    max_kvectors: int = MAX_KVECTORS,
) -> KGrid:
    """Choose k_c and the half-space index set for a concrete cell.  Not jittable.

    Args:
        cell: (3, 3) array, rows are lattice vectors, A (validated: finite,
            non-singular, right-handed); or (G, 3, 3) for a batch of cells: the set
            is then the union of the per-cell sets, so one static index array serves
            every graph of a batch (``jax.vmap`` the energy over graphs; vectors
            beyond a cell's own k_c only add converged terms).  ``les_compat``
            needs identical cells in a batch (its truncated set is cell-specific).
        sigma: pair-kernel width, A (> 0).
        accuracy: relative truncation error of the k-sum (module docstring); ignored
            with ``les_compat``.
        les_compat: use exactly 0 < |k| <= 2 pi / 2.0 A^-1 (inclusive), the reference
            implementation's set.
        max_multipole_order: highest multipole order l the sum will see (0, 1, 2).
        margin: relative enlargement of k_c, >= 0 (for deforming cells, e.g. NPT).
        max_kvectors: refuse sets estimated above this size (memory guard).

    Returns:
        :class:`KGrid`.

    Raises:
        ValueError: a bad cell or options, or a set larger than ``max_kvectors``.
    """
    cell_arr = np.asarray(cell, dtype=np.float64)
    if cell_arr.ndim == 3:
        return _prepare_union(
            cell_arr,
            sigma=sigma,
            accuracy=accuracy,
            les_compat=les_compat,
            max_multipole_order=max_multipole_order,
            margin=margin,
            max_kvectors=max_kvectors,
        )
    cell = validate_cell(cell)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if les_compat:
        k_c = 2.0 * math.pi / LES_DL
        acc = None
    else:
        k_c = k_cutoff_for_accuracy(sigma, accuracy, max_multipole_order)
        acc = float(accuracy)
    k_c *= 1.0 + margin
    # half of the k-sphere volume over the reciprocal cell volume (2 pi)^3 / V
    estimate = abs(np.linalg.det(cell)) * k_c**3 / (12.0 * math.pi**2)
    if estimate > max_kvectors:
        raise ValueError(
            f"the Ewald k-set of this cell would hold ~{estimate:.3g} vectors "
            f"(> max_kvectors = {max_kvectors:.3g}; k_c = {k_c:.3g} A^-1, volume "
            f"{abs(np.linalg.det(cell)):.3g} A^3): use PME, a looser accuracy or a "
            "larger sigma, cell=None for a few atoms in a huge box, or raise "
            "max_kvectors knowingly"
        )
    idx = half_space_indices(cell, k_c)
    return KGrid(
        indices=idx,
        k_cutoff=float(k_c),
        sigma=float(sigma),
        accuracy=acc,
        les_compat=bool(les_compat),
        max_multipole_order=int(max_multipole_order),
        margin=float(margin),
        reference_cell=tuple(tuple(float(x) for x in row) for row in cell),
    )


def _prepare_union(cells, **kw) -> KGrid:
    """One KGrid whose index set is the union of the sets of several cells."""
    if cells.shape[1:] != (3, 3) or cells.shape[0] == 0:
        raise ValueError(
            f"a batch of cells must have shape (G, 3, 3), got {cells.shape}"
        )
    if kw["les_compat"] and not np.allclose(cells, cells[0]):
        raise ValueError(
            "les_compat with a batch of different cells is not the reference"
        )
    grids = [prepare_kgrid(c, **kw) for c in cells]
    union = np.unique(np.concatenate([g.indices for g in grids]), axis=0)
    first = grids[0]
    return dataclasses.replace(
        first,
        indices=union.astype(np.int32),
        k_cutoff=max(g.k_cutoff for g in grids),
    )


def kgrid_covers(kgrid: KGrid, cell) -> bool:
    """Whether ``kgrid`` still holds every k of ``cell`` with |k| <= the needed k_c.

    The needed k_c is ``kgrid.k_cutoff / (1 + margin)`` (the accuracy cutoff without
    the margin).  Use it between MD chunks to decide when to re-prepare.  Not jittable.

    Args:
        kgrid: a prepared :class:`KGrid`.
        cell: the current (3, 3) cell, A.

    Returns:
        bool.
    """
    cell = validate_cell(cell)
    needed = half_space_indices(cell, kgrid.k_cutoff / (1.0 + kgrid.margin))
    have = {tuple(n) for n in np.asarray(kgrid.indices).tolist()}
    return all(tuple(n) in have for n in needed.tolist())
