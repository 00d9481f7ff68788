"""Neighbour lists.

Host side (not jittable, for data preparation): ``neighbor_pairs`` wraps vesin to
give a *full* list (both i->j and j->i) with integer cell shifts, for periodic
triclinic, partially periodic and non-periodic systems, including cells shorter than
twice the cutoff (several images of the same atom appear as separate edges).

Convention: r_ij = R[j] - R[i] + shifts_ij @ cell (rows of ``cell`` are lattice
vectors); an atom is never its own neighbour with zero shift.
"""

from __future__ import annotations

import numpy as np
import vesin

from polmp.geometry.cell import validate_cell, validate_positions


def neighbor_pairs(positions, cell, pbc, cutoff):
    """All pairs closer than ``cutoff`` (full list, integer image shifts).  Not jittable.

    Args:
        positions: (N, 3) array, A.
        cell: (3, 3) array, rows are lattice vectors, A; ignored (may be None) when
            no direction is periodic.
        pbc: bool or three bools, periodic directions.
        cutoff: float, A (pairs with |r_ij| < cutoff).

    Returns:
        ``(idx_i, idx_j, shifts)``: int32 (E,), int32 (E,), int32 (E, 3), sorted by
        ``idx_i`` then ``idx_j``.

    Raises:
        ValueError: non-finite positions, bad cell for a periodic system, cutoff <= 0.
    """
    positions = validate_positions(positions).astype(np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if pbc.any():
        box = validate_cell(cell)
    else:
        box = np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    idx_i, idx_j, shifts = calculator.compute(
        points=positions, box=box, periodic=pbc.tolist(), quantities="ijS"
    )
    order = np.lexsort((idx_j, idx_i))
    return (
        idx_i[order].astype(np.int32),
        idx_j[order].astype(np.int32),
        shifts[order].astype(np.int32),
    )
