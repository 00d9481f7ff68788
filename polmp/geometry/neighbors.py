"""Neighbour lists.

Host side (not jittable, for data preparation): ``neighbor_pairs`` wraps vesin to
give a *full* list (both i->j and j->i) with integer cell shifts, for periodic
triclinic, partially periodic and non-periodic systems, including cells shorter than
twice the cutoff (several images of the same atom appear as separate edges).

Device side (for MD): ``neighbor_list(cutoff, cell)`` returns
``NeighborListFns(allocate, update)`` wrapping ``jax_md.partition.neighbor_list``
(jax-md closure style: ``allocate`` is host code that sizes the buffers, ``update``
is jittable and raises an overflow bit instead of resizing).
``update_or_reallocate`` reads that bit on the host and reallocates, so no pair is
ever dropped silently.  ``neighbor_edges`` turns a jax-md Sparse list into
``(idx_i, idx_j, shifts, edge_mask)`` in the ``Graph`` conventions below.

Convention: r_ij = R[j] - R[i] + shifts_ij @ cell (rows of ``cell`` are lattice
vectors); an atom is never its own neighbour with zero shift.  jax-md's own
conventions (displacement ``Ra - Rb``, lattice vectors as box *columns*, upper
triangular box, fractional coordinates in [0, 1)) stay inside this module: every
public function here takes Cartesian positions and ASE-row cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import vesin

from polmp.geometry.cell import validate_cell, validate_positions


def neighbor_pairs(positions, cell, pbc, cutoff):
    """All pairs closer than ``cutoff`` (full list, integer image shifts); not jittable.

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


# ---------------------------------------------------------------------------
# Device-side neighbour list (jax-md), for MD with a fixed cell.
# ---------------------------------------------------------------------------


class NeighborListFns(NamedTuple):
    """A pair of closures in the jax-md style (see ``neighbor_list``).

    Attributes:
        allocate: ``allocate(positions, extra_capacity=0) -> jax_md NeighborList``.
            Not jittable: reads the positions to size the buffers.
        update: ``update(positions, neighbor) -> jax_md NeighborList``.  Jittable;
            never resizes, sets ``neighbor.did_buffer_overflow`` instead.
    """

    allocate: Callable
    update: Callable


def _min_perpendicular_width(cell: np.ndarray) -> float:
    """Smallest distance between opposite faces of the cell, A (host)."""
    volume = abs(np.linalg.det(cell))
    areas = [
        np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3])) for a in range(3)
    ]
    return float(volume / max(areas))


def _upper_triangular_box(cell: np.ndarray) -> np.ndarray:
    """jax-md box (lattice vectors as columns, upper triangular) of the same lattice.

    jax-md's cell list sizes its cells from an upper-triangular box.  QR of the
    column form, ``cell.T = Q R``, gives ``R`` with the same metric (``R^T R =
    cell cell^T``), i.e. the same lattice rotated; fractional coordinates and all
    distances are unchanged, which is all jax-md is used for here (it only selects
    the pairs; edge vectors are rebuilt from Cartesian positions, see
    ``neighbor_edges``).
    """
    _, r = np.linalg.qr(cell.T)
    signs = np.sign(np.diag(r))  # make the diagonal positive (right-handed box)
    return r * signs[:, None]


def box_to_cell(box, dtype=None):
    """polmp cell (rows are lattice vectors) of a jax-md box.  Jittable.

    jax-md's ``space.periodic_general`` takes a box whose *columns* are the lattice
    vectors: a scalar (cube), a (3,) vector (orthorhombic) or a (3, 3) matrix.  This is
    the one place where that convention is converted to polmp's rows.

    Args:
        box: scalar, Float[Array, '3'] or Float[Array, '3 3'] (columns), A.
        dtype: result dtype (default: the box's own floating dtype).

    Returns:
        Float[Array, '3 3'], rows are lattice vectors, A (a numpy array for a host
        numpy / Python input, so host preparation keeps float64).
    """
    xp = jnp if isinstance(box, jax.Array) else np
    box = xp.asarray(box) if dtype is None else xp.asarray(box, dtype)
    if box.ndim == 0:
        return box * xp.eye(3, dtype=box.dtype)
    if box.shape == (3,):
        return xp.diag(box)
    if box.shape != (3, 3):
        raise ValueError(
            f"a jax-md box is a scalar, a (3,) vector or a (3, 3) matrix (columns are "
            f"lattice vectors); got shape {box.shape}"
        )
    return box.T


def cell_to_box(cell):
    """jax-md box (columns are lattice vectors) of a polmp cell (rows)."""
    return jnp.asarray(cell).T


def _upper_triangular_traced(cell):
    """``_upper_triangular_box`` under jit (QR of the column form, positive diagonal)."""
    _, r = jnp.linalg.qr(cell.T)
    signs = jnp.sign(jnp.diag(r))
    return r * signs[:, None]


def neighbor_list(
    cutoff,
    cell=None,
    pbc=None,
    *,
    skin=0.0,
    capacity_multiplier=1.25,
    format="sparse",
    fractional_coordinates=False,
    min_box_scale=1.0,
):
    """Device neighbour list (jax-md) for periodic or free-space MD.  Host factory.

    Wraps ``jax_md.partition.neighbor_list`` and follows its contract in full:
    ``fns.allocate(R)``, ``fns.update(R, nbrs)`` and ``nbrs.update(R)`` all give the
    same list (the conversion to the wrapped fractional coordinates jax-md's cell
    list works in travels with the list as its ``update_fn``).  Positions are
    Cartesian, A, in polmp's convention and may be unwrapped; with
    ``fractional_coordinates=True`` they are fractional (jax-md's
    ``periodic_general(..., fractional_coordinates=True)``, as NPT integrators use).

    A changing box: ``update(R, nbrs, box=box)`` and ``allocate(R, box=box)`` take a
    jax-md box (columns are lattice vectors, see ``box_to_cell``).  With a box the
    list is rebuilt at every update (jax-md's skin test compares atom displacements
    only and would miss pairs brought within the cutoff by a shrinking box); a box
    whose cells became too small for the cell list sets ``cell_size_too_small`` and
    one that is too small for the minimum image makes ``neighbor_edges`` wrong, so
    callers must keep it within ``min_box_scale`` (checked here for the starting
    cell) and reallocate on any overflow flag (``list_overflowed``).

    Limits, checked here with a ``ValueError``: the system is fully periodic or
    fully free (no mixed pbc), and for periodic cells ``cutoff + skin`` is below half
    the smallest perpendicular width of ``min_box_scale * cell``, so that each pair
    has exactly one image within the cutoff (jax-md uses the minimum image in
    fractional coordinates).  Smaller cells need several images: use the host
    ``neighbor_pairs``.

    Args:
        cutoff: float, A.  Pairs with |r_ij| < cutoff + skin are listed.
        cell: (3, 3) array, rows are lattice vectors, A; None for free space.
        pbc: bool or three bools; default: periodic iff ``cell`` is given.
        skin: float, A (jax-md ``dr_threshold``): the list is only rebuilt when an
            atom moved more than skin / 2; edges may then be up to cutoff + skin long
            and the model's cutoff function must zero them.
        capacity_multiplier: float, buffer size over the observed pair count.
        format: ``"sparse"`` (full list of pairs, the only format ``neighbor_edges``
            accepts), ``"ordered_sparse"`` (half list i < j) or ``"dense"``.
        fractional_coordinates: positions are fractional (periodic cells only).
        min_box_scale: the smallest linear scale of ``cell`` the list will see
            (NPT); the width check uses it.

    Returns:
        ``NeighborListFns(allocate, update)``.

    Raises:
        ValueError: bad cutoff, skin, cell or format, mixed pbc, or a cell too small.
    """
    # Imported lazily: jax-md is only needed for MD, and importing it is slow.
    from jax_md import partition, space

    formats = {
        "sparse": partition.NeighborListFormat.Sparse,
        "ordered_sparse": partition.NeighborListFormat.OrderedSparse,
        "dense": partition.NeighborListFormat.Dense,
    }
    if format not in formats:
        raise ValueError(f"format must be one of {sorted(formats)}, got {format!r}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    if not skin >= 0:
        raise ValueError(f"skin must be >= 0, got {skin}")
    if not capacity_multiplier >= 1:
        raise ValueError(f"capacity_multiplier must be >= 1, got {capacity_multiplier}")
    if not 0 < min_box_scale <= 1:
        raise ValueError(f"min_box_scale must be in (0, 1], got {min_box_scale}")
    if pbc is None:
        pbc = cell is not None
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if pbc.any() and not pbc.all():
        raise ValueError(
            f"mixed pbc {pbc.tolist()} is not supported by the device list; use "
            "neighbor_pairs (host) or a fully periodic cell with vacuum"
        )
    periodic = bool(pbc.all())
    jax_format = formats[format]
    reach = float(cutoff) + float(skin)

    if periodic:
        cell = validate_cell(cell)
        width = min_box_scale * _min_perpendicular_width(cell)
        if not reach < 0.5 * width:
            raise ValueError(
                f"cutoff + skin = {reach:.4g} A must be below half the smallest cell "
                f"width ({width:.4g} A at box scale {min_box_scale:g}) for the device "
                "list; replicate the cell or use neighbor_pairs (host), which lists "
                "several images"
            )
        box = _upper_triangular_box(cell)
        inverse_cell = np.linalg.inv(cell)
        displacement_fn, _ = space.periodic_general(box, fractional_coordinates=True)
        common = dict(
            capacity_multiplier=float(capacity_multiplier),
            fractional_coordinates=True,
            format=jax_format,
        )
        jax_md_fns = partition.neighbor_list(
            displacement_fn, box, float(cutoff), dr_threshold=float(skin), **common
        )
        # Same cutoff + skin, dr_threshold 0: jax-md then rebuilds at every update.
        rebuild_fns = partition.neighbor_list(
            displacement_fn, box, reach, dr_threshold=0.0, **common
        )

        def to_fractional(positions, box=None):
            # jax-md's fractional cell list wants coordinates in [0, 1).
            if fractional_coordinates:
                s = positions
            elif box is None:
                s = positions @ jnp.asarray(inverse_cell, positions.dtype)
            else:
                s = jnp.linalg.solve(box_to_cell(box, positions.dtype).T, positions.T).T
            return s - jnp.floor(s)

        def jax_md_box(box):
            return (
                {}
                if box is None
                else {"box": _upper_triangular_traced(box_to_cell(box))}
            )

        def allocate(positions, extra_capacity=0, box=None, **kwargs):
            del kwargs
            if fractional_coordinates:
                positions = jnp.asarray(positions)
                if not bool(jnp.all(jnp.isfinite(positions))):
                    raise ValueError("positions contain NaN or inf")
            else:
                positions = jnp.asarray(validate_positions(positions))
            if box is not None:
                validate_cell(np.asarray(box_to_cell(box)))
            s = to_fractional(positions, box)
            neighbor = jax_md_fns.allocate(s, extra_capacity, **jax_md_box(box))
            return _hashable_cell_size(neighbor).set(update_fn=update)

        def update(positions, neighbor, box=None, **kwargs):
            del kwargs  # integrator keywords travel through jax-md's update too
            s = to_fractional(positions, box)
            fns = jax_md_fns if box is None else rebuild_fns
            new = fns.update(s, neighbor, **jax_md_box(box))
            return new.set(update_fn=update)

        return NeighborListFns(allocate, update)

    if fractional_coordinates:
        raise ValueError("fractional_coordinates needs a periodic cell")
    displacement_fn, _ = space.free()

    def allocate(positions, extra_capacity=0, **kwargs):
        del kwargs
        positions_np = validate_positions(positions)
        # The cell list hashes positions modulo its box, so any box is correct;
        # the bounding box (plus the reach) only keeps the cells evenly filled.
        extent = positions_np.max(axis=0) - positions_np.min(axis=0) + reach
        fns = partition.neighbor_list(
            displacement_fn,
            extent,
            float(cutoff),
            dr_threshold=float(skin),
            capacity_multiplier=float(capacity_multiplier),
            format=jax_format,
        )
        return fns.allocate(jnp.asarray(positions_np), extra_capacity)

    def update(positions, neighbor, **kwargs):
        del kwargs
        # The jax-md update closure travels with the list (a static field).
        return neighbor.update(positions)

    return NeighborListFns(allocate, update)


def _hashable_cell_size(neighbor):
    """The list with its static ``cell_size`` as a Python float.

    jax-md 0.2.29 stores the fractional cell size as a jax array in a static
    (metadata) field; jit then fails ("Exception raised while checking equality of
    metadata fields") as soon as two lists with different closures meet in one
    process (a second MD run, a second system in a notebook).  The value is a scalar
    and is only read as a number, so a float is equivalent and hashable.
    """
    if neighbor.cell_size is None or isinstance(neighbor.cell_size, float):
        return neighbor
    return neighbor.set(cell_size=float(neighbor.cell_size))


def update_or_reallocate(fns, positions, neighbor, **kwargs):
    """Update a device list and reallocate it on overflow.  Not jittable.

    The overflow flag of jax-md (neighbour or cell-list buffer too small, or cells
    too small after a box change) is read on the host; the list is then allocated
    afresh from ``positions``, so no neighbour is ever dropped silently.

    Args:
        fns: ``NeighborListFns`` from ``neighbor_list``.
        positions: (N, 3) array, A (Cartesian).
        neighbor: the current jax-md ``NeighborList``.
        **kwargs: ``box=`` for a changed box (jax-md convention).

    Returns:
        ``(neighbor, reallocated)``: a list valid for ``positions`` and whether it
        had to be reallocated (new capacity, so jitted consumers recompile).

    Raises:
        RuntimeError: a freshly allocated list still overflows (a bug).
    """
    updated = fns.update(positions, neighbor, **kwargs)
    if not _overflowed(updated):
        return updated, False
    fresh = fns.allocate(positions, **kwargs)
    if _overflowed(fresh):
        raise RuntimeError(f"freshly allocated neighbour list overflows: {fresh.error}")
    return fresh, True


def list_overflowed(neighbor):
    """Whether a jax-md list is invalid: a buffer overflowed or its cells are too small
    for the current box.  Jittable (a traced bool).

    MALFORMED_BOX is deliberately not read: jax-md 0.2.29 sets that bit for every
    *valid* fractional box (inverted predicate); polmp validates the cell itself.
    """
    return neighbor.did_buffer_overflow | neighbor.cell_size_too_small


def _overflowed(neighbor) -> bool:
    return bool(list_overflowed(neighbor))


def neighbor_edges(neighbor, positions, cell=None):
    """Edge arrays in ``Graph`` conventions from a jax-md Sparse list.  Jittable.

    jax-md stores pairs as ``idx = [[j...], [i...]]`` padded with ``N`` (the
    number of atoms) and leaves the periodic image implicit in its displacement
    function.  Here the image is made explicit as an integer shift, so that edge
    vectors follow the polmp convention

        r_ij = R[j] - R[i] + shifts_ij @ cell     (== jax-md displacement(R_j, R_i))

    with ``shifts_ij = -round(s_j - s_i)``, ``s = R inv(cell)`` (fractional
    coordinates of the *Cartesian, possibly unwrapped* positions).  This is the
    minimum image, which is the unique image within the cutoff because
    ``neighbor_list`` demands cutoff + skin < half the smallest cell width.  The
    shifts are integers (no gradient); derivatives with respect to positions and
    cell flow through ``R`` and ``cell`` as in ``graph.edge_vectors``.

    Padding: jax-md's sentinel index is ``N``.  Build the MD ``Graph`` with one
    padding atom appended at index ``N`` (species 0, atom_mask False); padded
    entries then are exactly the self-edges of that padding atom with zero shift,
    as ``Graph`` requires.  Free space: pass ``cell=None``; all shifts are zero.

    Args:
        neighbor: jax-md ``NeighborList`` in Sparse format (a full list).
        positions: Float[Array, 'N 3'], A, Cartesian (real atoms only).
        cell: Float[Array, '3 3'], rows are lattice vectors, A; None in free space.

    Returns:
        ``(idx_i, idx_j, shifts, edge_mask)``: Int[Array, 'E'] (centre),
        Int[Array, 'E'] (neighbour), Int[Array, 'E 3'], Bool[Array, 'E'], with E the
        list capacity and padded indices equal to N.

    Raises:
        ValueError: the list is not in Sparse format (a half list would silently
            drop half of the edges that polmp's full-list models expect).
    """
    from jax_md import partition

    if neighbor.format is not partition.NeighborListFormat.Sparse:
        raise ValueError(
            f"neighbor_edges needs a full Sparse list, got {neighbor.format}; build "
            "it with neighbor_list(..., format='sparse')"
        )
    num_atoms = positions.shape[0]
    idx_j = neighbor.idx[0].astype(jnp.int32)
    idx_i = neighbor.idx[1].astype(jnp.int32)
    edge_mask = (idx_i < num_atoms) & (idx_j < num_atoms)
    if cell is None:
        shifts = jnp.zeros((idx_i.shape[0], 3), jnp.int32)
    else:
        s = jnp.linalg.solve(cell.T, positions.T).T  # (N, 3) fractional
        # Clip the sentinel index for the gather only; those rows are masked below.
        ds = s[jnp.minimum(idx_j, num_atoms - 1)] - s[jnp.minimum(idx_i, num_atoms - 1)]
        shifts = -jnp.round(jax.lax.stop_gradient(ds)).astype(jnp.int32)
        shifts = jnp.where(edge_mask[:, None], shifts, 0)
    idx_i = jnp.where(edge_mask, idx_i, num_atoms)
    idx_j = jnp.where(edge_mask, idx_j, num_atoms)
    return idx_i, idx_j, shifts, edge_mask
