"""Padded batching: padding is invisible, pairs are the host pairs, buckets fit."""

from __future__ import annotations

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule

from polmp.data.batching import (
    Batch,
    count_edges,
    frames_to_batch,
    frames_to_graph,
    plan_buckets,
    round_capacity,
)
from polmp.data.schema import Frame
from polmp.geometry.graph import Graph, edge_vectors
from polmp.geometry.neighbors import neighbor_pairs
from polmp.geometry.safe import safe_norm
from tests.utils import shared_path

CUTOFF = 4.0
# Morse parameters (eV, 1/A, A) of a made-up smooth pair potential
D, A, R0 = 0.3, 1.4, 1.8


def _frame(atoms, **labels):
    return Frame(
        positions=atoms.positions.copy(),
        numbers=atoms.numbers.copy(),
        cell=atoms.cell.array.copy() if atoms.pbc.any() else None,
        pbc=atoms.pbc.copy(),
        **labels,
    )


def _water_frames(count=2):
    path = shared_path("lesfit_water_rpbe_d3", "test-H2O_RPBE-D3.xyz")
    return [_frame(a) for a in ase.io.read(path, index=f":{count}")]


def _mixed_frames(rng):
    """Molecule, mixed-pbc slab, small triclinic cell (many images), periodic cube."""
    ethanol = _frame(molecule("CH3CH2OH"))
    slab_cell = np.array([[5.0, 0.0, 0.0], [0.0, 5.5, 0.0], [0.0, 0.0, 20.0]])
    slab = Frame(
        positions=rng.uniform(size=(6, 3)) * [5.0, 5.5, 3.0] + [0, 0, 8.0],
        numbers=np.array([12, 8, 12, 8, 79, 79]),
        cell=slab_cell,
        pbc=np.array([True, True, False]),
    )
    tri_cell = np.array([[3.0, 0.0, 0.0], [1.1, 3.2, 0.0], [0.5, -0.7, 2.9]])
    tri = Frame(
        positions=rng.uniform(size=(3, 3)) @ tri_cell,
        numbers=np.array([8, 1, 1]),
        cell=tri_cell,
        pbc=np.ones(3, bool),
    )
    cube = Frame(
        positions=rng.uniform(size=(20, 3)) * 7.0,
        numbers=rng.integers(1, 9, size=20),
        cell=7.0 * np.eye(3),
        pbc=np.ones(3, bool),
        total_charge=1.0,
    )
    return [ethanol, slab, tri, cube]


def _pair_energy(r):
    """Morse pair energy times a smooth cosine cutoff, eV."""
    morse = D * (1.0 - jnp.exp(-A * (r - R0))) ** 2 - D
    return morse * 0.5 * (jnp.cos(jnp.pi * r / CUTOFF) + 1.0)


def _graph_energies(graph: Graph, positions):
    """Per-graph energy 1/2 sum_edges phi(r_ij), masked; Float[G], eV."""
    vectors = edge_vectors(graph, positions)
    r = safe_norm(vectors)
    e = jnp.where(graph.edge_mask, 0.5 * _pair_energy(r), 0.0)
    return jax.ops.segment_sum(e, graph.atom_graph[graph.idx_i], graph.num_graphs)


def _energies_and_forces(graph):
    def total(positions):
        return jnp.sum(
            jnp.where(graph.graph_mask, _graph_energies(graph, positions), 0.0)
        )

    energies = _graph_energies(graph, graph.positions)
    forces = -jax.grad(total)(graph.positions)
    return np.asarray(energies), np.asarray(forces)


def _numpy_energy(frame):
    cell = frame.cell if frame.periodic else None
    i, j, S = neighbor_pairs(frame.positions, cell, frame.pbc, CUTOFF)
    lattice = frame.cell if frame.periodic else np.zeros((3, 3))
    r = np.linalg.norm(frame.positions[j] - frame.positions[i] + S @ lattice, axis=1)
    phi = (
        (D * (1 - np.exp(-A * (r - R0))) ** 2 - D)
        * 0.5
        * (np.cos(np.pi * r / CUTOFF) + 1)
    )
    return 0.5 * phi.sum()


@pytest.mark.usefixtures("debug_nans")
def test_padding_is_invisible(x64, rng):
    frames = _mixed_frames(rng)
    minimal = frames_to_graph(frames, CUTOFF)
    n = sum(f.num_atoms for f in frames)
    assert minimal.num_atoms == n + 1 and minimal.num_graphs == len(frames) + 1
    heavy = frames_to_graph(
        frames,
        CUTOFF,
        num_atoms=n + 37,
        num_edges=minimal.num_edges + 501,
        num_graphs=9,
    )
    e_min, f_min = _energies_and_forces(minimal)
    e_heavy, f_heavy = _energies_and_forces(heavy)
    expected = [_numpy_energy(f) for f in frames]
    assert np.all(np.abs(expected) > 1e-3)  # every frame has interacting pairs
    np.testing.assert_allclose(e_min[: len(frames)], expected, rtol=1e-12)
    np.testing.assert_allclose(e_heavy[: len(frames)], expected, rtol=1e-12)
    np.testing.assert_array_equal(e_heavy[len(frames) :], 0.0)
    np.testing.assert_allclose(f_heavy[:n], f_min[:n], rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(f_heavy[n:], 0.0)
    np.testing.assert_array_equal(f_min[n:], 0.0)
    # forces are real: Newton's third law per isolated graph, and non-zero
    assert np.abs(f_min[:n]).max() > 1e-3
    np.testing.assert_allclose(f_min[:9].sum(axis=0), 0.0, atol=1e-12)  # ethanol


def test_padding_layout(x64, rng):
    frames = _mixed_frames(rng)
    n = sum(f.num_atoms for f in frames)
    g = frames_to_graph(frames, CUTOFF, num_atoms=n + 5, num_edges=4000, num_graphs=7)
    species, atom_graph = np.asarray(g.species), np.asarray(g.atom_graph)
    np.testing.assert_array_equal(species[n:], 0)
    assert np.all(species[:n] > 0)
    np.testing.assert_array_equal(atom_graph[n:], len(frames))
    np.testing.assert_array_equal(np.asarray(g.atom_mask), np.arange(n + 5) < n)
    edge_mask = np.asarray(g.edge_mask)
    idx_i, idx_j = np.asarray(g.idx_i), np.asarray(g.idx_j)
    assert np.all(idx_i[~edge_mask] == n) and np.all(idx_j[~edge_mask] == n)
    np.testing.assert_array_equal(np.asarray(g.shifts)[~edge_mask], 0)
    np.testing.assert_array_equal(np.asarray(edge_vectors(g))[~edge_mask], 0.0)
    cell, pbc = np.asarray(g.cell), np.asarray(g.pbc)
    np.testing.assert_array_equal(cell[0], np.eye(3))  # molecule: identity, no pbc
    assert not pbc[0].any()
    np.testing.assert_array_equal(pbc[1], [True, True, False])
    np.testing.assert_array_equal(
        cell[len(frames) :], np.broadcast_to(np.eye(3), (3, 3, 3))
    )
    assert not pbc[len(frames) :].any()
    np.testing.assert_array_equal(np.asarray(g.graph_mask), np.arange(7) < len(frames))
    np.testing.assert_array_equal(np.asarray(g.total_charge), [0, 0, 0, 1, 0, 0, 0])
    # edges never cross graphs
    assert np.all(atom_graph[idx_i] == atom_graph[idx_j])


def test_water_graph_has_host_pairs(x64):
    frames = _water_frames(2)
    g = frames_to_graph(frames, 5.0)
    mask = np.asarray(g.edge_mask)
    got = set(
        zip(
            np.asarray(g.idx_i)[mask].tolist(),
            np.asarray(g.idx_j)[mask].tolist(),
            map(tuple, np.asarray(g.shifts)[mask].tolist()),
            strict=True,
        )
    )
    expected = set()
    for k, frame in enumerate(frames):
        i, j, S = neighbor_pairs(frame.positions, frame.cell, frame.pbc, 5.0)
        expected |= set(
            zip(
                (i + 192 * k).tolist(),
                (j + 192 * k).tolist(),
                map(tuple, S.tolist()),
                strict=True,
            )
        )
    assert got == expected and len(got) > 2 * 192 * 40
    assert g.positions.dtype == jnp.float64 and g.idx_i.dtype == jnp.int32


def test_default_float_dtype(rng):
    # jax's default float: float32 unless x64 is on (then float64)
    g = frames_to_graph(_mixed_frames(rng)[:1], CUTOFF)
    default = jnp.result_type(float)
    assert g.positions.dtype == default and g.cell.dtype == default
    assert g.idx_i.dtype == jnp.int32 and g.species.dtype == jnp.int32


def test_batch_labels_and_masks(x64, rng):
    frames = _mixed_frames(rng)
    frames[0] = Frame(
        positions=frames[0].positions,
        numbers=frames[0].numbers,
        energy=-1.5,
        forces=np.ones((9, 3)),
    )
    frames[3] = Frame(
        **{**frames[3].__dict__, "energy": 2.0, "stress": np.eye(3) * 0.01}
    )
    batch = frames_to_batch(frames, CUTOFF, num_graphs=6)
    assert isinstance(batch, Batch)
    np.testing.assert_array_equal(batch.energy, [-1.5, 0, 0, 2.0, 0, 0])
    np.testing.assert_array_equal(
        batch.energy_mask, [True, False, False, True, False, False]
    )
    np.testing.assert_array_equal(
        batch.stress_mask, [False, False, False, True, False, False]
    )
    np.testing.assert_allclose(batch.stress[3], np.eye(3) * 0.01)
    n = batch.graph.num_atoms
    np.testing.assert_array_equal(batch.forces_mask, np.arange(n) < 9)
    np.testing.assert_array_equal(np.asarray(batch.forces)[9:], 0.0)
    # a pytree: passes through jit unchanged
    out = jax.jit(lambda b: b)(batch)
    np.testing.assert_array_equal(out.energy, batch.energy)
    with pytest.raises(ValueError, match="forces"):
        frames_to_batch(
            [Frame(**{**frames[0].__dict__, "forces": np.ones((8, 3))})], CUTOFF
        )


def test_bad_input(rng):
    frames = _mixed_frames(rng)
    n = sum(f.num_atoms for f in frames)
    with pytest.raises(ValueError, match="padding atom"):
        frames_to_graph(frames, CUTOFF, num_atoms=n)
    with pytest.raises(ValueError, match="padding graph"):
        frames_to_graph(frames, CUTOFF, num_graphs=len(frames))
    with pytest.raises(ValueError, match="num_edges"):
        frames_to_graph(frames, CUTOFF, num_edges=10)
    with pytest.raises(ValueError, match="empty"):
        frames_to_graph([], CUTOFF)
    with pytest.raises(ValueError, match="reserved for padding"):
        frames_to_graph(
            [Frame(positions=np.zeros((1, 3)), numbers=np.array([0]))], CUTOFF
        )
    with pytest.raises(ValueError, match="NaN"):
        frames_to_graph(
            [Frame(positions=np.full((1, 3), np.nan), numbers=np.array([1]))], CUTOFF
        )
    with pytest.raises(ValueError, match="batch_size"):
        plan_buckets(frames, CUTOFF, 0)


def test_round_capacity():
    assert [round_capacity(n) for n in (0, 1, 8, 9, 64, 65, 100, 129, 1000)] == [
        8,
        8,
        8,
        16,
        64,
        72,
        104,
        144,
        1024,
    ]
    for n in range(1, 5000, 7):
        c = round_capacity(n)
        assert c >= n and c % 8 == 0 and c <= max(1.125 * n, n + 8)


def _cluster(rng, size):
    # random non-overlapping-ish cluster at liquid-like density
    side = (size / 0.08) ** (1 / 3)
    return Frame(
        positions=rng.uniform(size=(size, 3)) * side, numbers=np.ones(size, int)
    )


def test_plan_buckets_few_shapes_and_every_batch_fits(rng):
    frames = [_cluster(rng, s) for s in rng.integers(3, 201, size=300)]
    edges = count_edges(frames, CUTOFF)
    plans = plan_buckets(frames, CUTOFF, batch_size=4, rng=rng, edge_counts=edges)
    assert len({p.shape for p in plans}) <= 8
    seen = sorted(k for p in plans for k in p.indices)
    assert seen == list(range(len(frames)))
    padded = needed = 0
    for p in plans:
        atoms = sum(frames[k].num_atoms for k in p.indices)
        assert len(p.indices) <= 4 and p.num_graphs == 5
        assert p.num_atoms >= atoms + 1 and p.num_edges >= edges[list(p.indices)].sum()
        padded += p.num_atoms
        needed += atoms + 1
    assert padded < 1.6 * needed  # size-sorted batches keep the padding modest
    # the plans really build (spot check two shapes)
    for p in plans[:2]:
        g = frames_to_graph(
            [frames[k] for k in p.indices],
            CUTOFF,
            p.num_atoms,
            p.num_edges,
            p.num_graphs,
        )
        assert (g.num_atoms, g.num_edges, g.num_graphs) == p.shape
    # without rng: deterministic; max_shapes respected when tighter
    assert (
        len({p.shape for p in plan_buckets(frames, CUTOFF, 4, 3, edge_counts=edges)})
        <= 3
    )
    assert plan_buckets(frames, CUTOFF, 4, edge_counts=edges) == plan_buckets(
        frames, CUTOFF, 4, edge_counts=edges
    )


def test_plan_buckets_keeps_kinds_apart(rng):
    frames = [_cluster(rng, s) for s in rng.integers(3, 60, size=60)]
    kinds = rng.integers(0, 3, size=len(frames))
    edges = count_edges(frames, CUTOFF)
    for max_shapes in (1, 2, 8):
        plans = plan_buckets(
            frames, CUTOFF, 4, max_shapes, rng=rng, edge_counts=edges, kinds=kinds
        )
        assert sorted(k for p in plans for k in p.indices) == list(range(60))
        for p in plans:
            assert {int(kinds[k]) for k in p.indices} == {p.kind}
        # one shape per kind at least; merges never cross kinds
        pairs = {(p.kind, p.shape) for p in plans}
        assert len(pairs) <= max(max_shapes, 3)
        assert {k for k, _ in pairs} == {0, 1, 2}
    with pytest.raises(ValueError, match="kinds"):
        plan_buckets(frames, CUTOFF, 4, edge_counts=edges, kinds=kinds[:-1])
