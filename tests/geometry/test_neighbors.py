"""Host neighbour pairs against ASE; the jax-md device list against the host list."""

from __future__ import annotations

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from polmp.geometry.neighbors import (
    list_overflowed,
    neighbor_edges,
    neighbor_list,
    neighbor_pairs,
    update_or_reallocate,
)
from tests.utils import shared_path

# jax-md 0.2.29 scatters int64 into int32 buffers under x64 (its code, harmless).
pytestmark = pytest.mark.filterwarnings(
    "ignore:scatter inputs have incompatible types:FutureWarning"
)


def _host_pairs(atoms, cutoff):
    """{(i, j, shift): distance} from polmp's host list."""
    cell = atoms.cell.array if atoms.pbc.any() else None
    i, j, S = neighbor_pairs(atoms.positions, cell, atoms.pbc, cutoff)
    vectors = atoms.positions[j] - atoms.positions[i] + S @ atoms.cell.array
    d = np.linalg.norm(vectors, axis=1)
    return {
        (a, b, tuple(s)): r
        for a, b, s, r in zip(i.tolist(), j.tolist(), S.tolist(), d, strict=True)
    }


def _ase_pairs(atoms, cutoff):
    i, j, S, d = ase_neighbor_list("ijSd", atoms, cutoff)
    return {
        (a, b, tuple(s)): r
        for a, b, s, r in zip(i.tolist(), j.tolist(), S.tolist(), d, strict=True)
    }


def _assert_same_as_ase(atoms, cutoff):
    ours, theirs = _host_pairs(atoms, cutoff), _ase_pairs(atoms, cutoff)
    assert len(theirs) > 0
    assert ours.keys() == theirs.keys()
    keys = sorted(theirs)
    np.testing.assert_allclose(
        [ours[k] for k in keys], [theirs[k] for k in keys], rtol=1e-12, atol=1e-12
    )
    # full list: every pair appears in both directions with opposite shifts
    assert all((j, i, tuple(-s for s in S)) in ours for i, j, S in ours)
    return ours


def _water():
    return ase.io.read(
        shared_path("lesfit_water_rpbe_d3", "test-H2O_RPBE-D3.xyz"), index=0
    )


def test_water_192_matches_ase():
    ours = _assert_same_as_ase(_water(), 5.0)
    assert len(ours) > 192 * 40  # ~52 neighbours per atom at liquid density


def test_au2mgo_slab_matches_ase():
    atoms = ase.io.read(shared_path("lesfit_au2mgo_dft_structs", "1-doped.xyz"))
    _assert_same_as_ase(atoms, 5.5)


def test_au2mgo_slab_mixed_pbc_matches_ase():
    atoms = ase.io.read(shared_path("lesfit_au2mgo_dft_structs", "1-doped.xyz"))
    atoms.pbc = [True, True, False]
    ours = _assert_same_as_ase(atoms, 5.5)
    assert all(S[2] == 0 for _, _, S in ours)
    assert any(S[0] != 0 for _, _, S in ours)


def test_mapbi3_matches_ase():
    atoms = ase.io.read(
        shared_path("finkler_mapbi3_geometries", "cubic.ascii"), format="v-sim"
    )
    _assert_same_as_ase(atoms, 5.5)


def test_isolated_molecule_matches_ase():
    atoms = molecule("CH3CH2OH")
    assert not atoms.pbc.any()
    ours = _assert_same_as_ase(atoms, 2.5)
    assert all(S == (0, 0, 0) for _, _, S in ours)
    # cell is ignored without pbc, even when absent
    i, _, _ = neighbor_pairs(atoms.positions, None, False, 2.5)
    assert len(i) == len(ours)


def test_small_triclinic_cell_lists_several_images():
    cell = np.array([[3.0, 0.0, 0.0], [1.1, 3.2, 0.0], [0.5, -0.7, 2.9]])
    rng = np.random.default_rng(1)
    atoms = ase.Atoms(
        "H3O", scaled_positions=rng.uniform(size=(4, 3)), cell=cell, pbc=True
    )
    ours = _assert_same_as_ase(atoms, 5.0)  # cutoff > half (and > all) cell widths
    # an atom sees periodic images of itself, and of each partner several times
    assert any(i == j for i, j, _ in ours)
    images = {}
    for i, j, S in ours:
        images.setdefault((i, j), set()).add(S)
    assert max(len(v) for v in images.values()) > 10


@pytest.mark.parametrize(
    "positions, cell, pbc, cutoff, match",
    [
        (np.zeros((3, 2)), None, False, 2.0, "shape"),
        (np.array([[0.0, 0, 0], [np.nan, 0, 0]]), None, False, 2.0, "NaN"),
        (np.zeros((2, 3)), None, False, 0.0, "cutoff"),
        (np.zeros((2, 3)), None, False, -1.0, "cutoff"),
        (np.zeros((2, 3)), np.zeros((3, 3)), True, 2.0, "singular"),
        (np.zeros((2, 3)), np.eye(2), True, 2.0, "shape"),
        (np.zeros((2, 3)), -np.eye(3), True, 2.0, "left-handed"),
    ],
)
def test_host_bad_input(positions, cell, pbc, cutoff, match):
    with pytest.raises(ValueError, match=match):
        neighbor_pairs(positions, cell, pbc, cutoff)


# --------------------------------------------------------------------------- device


def _edge_set(idx_i, idx_j, shifts, mask):
    idx_i, idx_j, shifts, mask = map(np.asarray, (idx_i, idx_j, shifts, mask))
    return set(
        zip(
            idx_i[mask].tolist(),
            idx_j[mask].tolist(),
            map(tuple, shifts[mask].tolist()),
            strict=True,
        )
    )


def _host_set(positions, cell, pbc, cutoff):
    i, j, S = neighbor_pairs(positions, cell, pbc, cutoff)
    return set(zip(i.tolist(), j.tolist(), map(tuple, S.tolist()), strict=True))


TRICLINIC = np.array([[12.0, 0.0, 0.0], [2.0, 11.0, 0.0], [-1.5, 3.0, 13.0]])


def test_device_periodic_triclinic_matches_host(x64, rng):
    positions = rng.uniform(size=(200, 3)) @ TRICLINIC
    # unwrapped input (atoms that left the cell) must give the same pairs
    unwrapped = positions + rng.integers(-2, 3, size=(200, 3)) @ TRICLINIC
    fns = neighbor_list(4.0, TRICLINIC)
    nbrs = fns.allocate(unwrapped)
    idx_i, idx_j, shifts, mask = neighbor_edges(
        nbrs, jnp.asarray(unwrapped), jnp.asarray(TRICLINIC)
    )
    ours = _edge_set(idx_i, idx_j, shifts, mask)
    assert ours == _host_set(unwrapped, TRICLINIC, True, 4.0)
    # padded entries point at the padding atom N with zero shift
    assert np.all(np.asarray(idx_i)[~np.asarray(mask)] == 200)
    assert np.all(np.asarray(shifts)[~np.asarray(mask)] == 0)
    # edge vectors by the Graph rule equal jax-md's displacement(R_j, R_i)
    vectors = (
        unwrapped[idx_j[mask]]
        - unwrapped[idx_i[mask]]
        + np.asarray(shifts)[mask] @ TRICLINIC
    )
    assert np.all(np.linalg.norm(vectors, axis=1) < 4.0)


def test_device_rotated_cell_matches_host(x64, rng):
    # a general (not lower-triangular) cell: jax-md needs an upper-triangular box,
    # which polmp derives by QR without rotating the positions
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.linalg.det(q))
    cell = TRICLINIC @ rotation
    assert np.abs(np.triu(cell, 1)).max() > 1.0
    positions = rng.uniform(size=(100, 3)) @ cell
    nbrs = neighbor_list(4.5, cell).allocate(positions)
    edges = neighbor_edges(nbrs, jnp.asarray(positions), jnp.asarray(cell))
    assert _edge_set(*edges) == _host_set(positions, cell, True, 4.5)


def test_device_update_is_jittable_and_tracks_motion(x64, rng):
    positions = rng.uniform(size=(150, 3)) @ TRICLINIC
    fns = neighbor_list(4.0, TRICLINIC, skin=0.5)
    nbrs = fns.allocate(positions)
    moved = positions + 0.4 * rng.normal(size=positions.shape)
    nbrs = jax.jit(fns.update)(jnp.asarray(moved), nbrs)
    assert not nbrs.did_buffer_overflow
    edges = neighbor_edges(nbrs, jnp.asarray(moved), jnp.asarray(TRICLINIC))
    ours = _edge_set(*edges)
    # with a skin the list is a superset: all pairs within cutoff, none beyond
    # cutoff + skin
    assert (
        _host_set(moved, TRICLINIC, True, 4.0)
        <= ours
        <= _host_set(moved, TRICLINIC, True, 4.5)
    )


def test_device_free_space_matches_host(x64, rng):
    positions = rng.uniform(size=(120, 3)) * 15.0 + 40.0  # far from the origin
    fns = neighbor_list(3.5)
    nbrs = fns.allocate(positions)
    edges = neighbor_edges(nbrs, jnp.asarray(positions))
    assert _edge_set(*edges) == _host_set(positions, None, False, 3.5)


def test_overflow_triggers_reallocation_and_same_pairs(x64, rng):
    box = 16.0 * np.eye(3)
    positions = rng.uniform(size=(250, 3)) @ box
    fns = neighbor_list(3.0, box)
    nbrs = fns.allocate(positions)
    capacity = nbrs.idx.shape[1]
    # squeeze every atom into a corner: ~5x the density, the buffers cannot hold it
    squeezed = 0.55 * positions
    assert fns.update(squeezed, nbrs).did_buffer_overflow
    new, reallocated = update_or_reallocate(fns, squeezed, nbrs)
    assert reallocated and new.idx.shape[1] > capacity
    assert not new.did_buffer_overflow
    edges = neighbor_edges(new, jnp.asarray(squeezed), jnp.asarray(box))
    assert _edge_set(*edges) == _host_set(squeezed, box, True, 3.0)
    # a small move needs no reallocation
    same, reallocated = update_or_reallocate(fns, squeezed + 0.01, new)
    assert not reallocated and same.idx.shape == new.idx.shape


def test_device_bad_input():
    with pytest.raises(ValueError, match="half the smallest cell width"):
        neighbor_list(5.0, TRICLINIC, skin=0.4)  # smallest width 10.72 A
    neighbor_list(5.0, TRICLINIC, skin=0.3)  # just fits
    with pytest.raises(ValueError, match="mixed pbc"):
        neighbor_list(3.0, TRICLINIC, pbc=[True, True, False])
    with pytest.raises(ValueError, match="format"):
        neighbor_list(3.0, TRICLINIC, format="csr")
    with pytest.raises(ValueError, match="cutoff"):
        neighbor_list(0.0)
    with pytest.raises(ValueError, match="singular"):
        neighbor_list(3.0, np.zeros((3, 3)))
    fns = neighbor_list(3.0)
    with pytest.raises(ValueError, match="NaN"):
        fns.allocate(np.full((4, 3), np.nan))


def test_neighbor_edges_rejects_half_lists(rng):
    positions = rng.uniform(size=(20, 3)) * 6.0
    fns = neighbor_list(3.0, format="ordered_sparse")
    with pytest.raises(ValueError, match="Sparse"):
        neighbor_edges(fns.allocate(positions), jnp.asarray(positions))


@pytest.mark.parametrize("path", ["fns.update", "nbrs.update", "jit nbrs.update"])
def test_all_jax_md_update_paths_give_the_host_list(x64, rng, path):
    """jax-md's contract: fns.update(R, nbrs) == nbrs.update(R) == allocate(R),
    after large (unwrapped) moves, against the host list (vesin)."""
    positions = rng.uniform(size=(150, 3)) @ TRICLINIC
    fns = neighbor_list(4.0, TRICLINIC, skin=0.5)
    nbrs = fns.allocate(positions)
    for k in range(3):  # every atom moves ~1.5 A, some across the cell
        moved = positions + 1.5 * rng.normal(size=positions.shape) + k * TRICLINIC[0]
        r = jnp.asarray(moved)
        if path == "fns.update":
            nbrs = fns.update(r, nbrs)
        elif path == "nbrs.update":
            nbrs = nbrs.update(r)
        else:
            nbrs = jax.jit(lambda r, n: n.update(r))(r, nbrs)
        if nbrs.did_buffer_overflow:
            nbrs = fns.allocate(moved)
        edges = neighbor_edges(nbrs, r, jnp.asarray(TRICLINIC))
        within = {e for e in _edge_set(*edges) if _length(e, moved, TRICLINIC) < 4.0}
        assert within == _host_set(moved, TRICLINIC, True, 4.0)
        fresh = fns.allocate(moved)
        edges = neighbor_edges(fresh, r, jnp.asarray(TRICLINIC))
        assert {
            e for e in _edge_set(*edges) if _length(e, moved, TRICLINIC) < 4.0
        } == within


def _length(edge, positions, cell):
    i, j, shift = edge
    return np.linalg.norm(positions[j] - positions[i] + np.asarray(shift) @ cell)


@pytest.mark.parametrize("fractional", [False, True])
def test_update_with_a_new_box(x64, rng, fractional):
    """A shrinking box (NPT) rebuilds the list; overflow is flagged, never dropped."""
    box = 14.0 * np.eye(3)
    s = rng.uniform(size=(200, 3))
    fns = neighbor_list(3.0, box, skin=0.5, fractional_coordinates=fractional)
    nbrs = fns.allocate(s if fractional else s @ box)
    for scale in (0.97, 0.9):
        cell = scale * box
        r = s if fractional else s @ cell
        new = fns.update(jnp.asarray(r), nbrs, box=jnp.asarray(cell.T))
        if scale == 0.9:  # 37 % more pairs than the buffer was sized for
            assert bool(list_overflowed(new))
        if bool(list_overflowed(new)):
            new, reallocated = update_or_reallocate(
                fns, jnp.asarray(r), nbrs, box=jnp.asarray(cell.T)
            )
            assert reallocated and not bool(list_overflowed(new))
        cartesian = s @ cell
        edges = neighbor_edges(new, jnp.asarray(cartesian), jnp.asarray(cell))
        within = {e for e in _edge_set(*edges) if _length(e, cartesian, cell) < 3.0}
        assert within == _host_set(cartesian, cell, True, 3.0)
