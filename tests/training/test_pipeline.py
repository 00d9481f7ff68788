"""Host data pipeline of training: kinds, the seeded shape pool and pinned long-range
capacities keep a mixed periodic + cluster data set of many cells (an NPT set, like
water-gfn2) within ``max_shapes`` compiled shapes, without changing any energy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from polmp.data.batching import frames_to_graph
from polmp.data.schema import Frame
from polmp.data.water import water_box
from polmp.models.long_range import prepare_long_range
from polmp.training import pipeline, sharding
from tests.models.graphs import cluster, long_range_energy_forces, random_latents

CUTOFF = 3.5
OPTIONS = dict(sigma=1.0, accuracy=1e-6, method="auto", les_compat=False)


def _mixed_frames(seed=0):
    """8 water boxes (24 atoms) with different cells + 14 clusters of 3-9 atoms."""
    rng = np.random.default_rng(seed)
    frames = []
    base = water_box(2, seed=seed)
    for _ in range(8):
        scale = 1.0 + 0.03 * rng.uniform(-1, 1, size=3)  # anisotropic NPT-like strain
        cell = np.asarray(base.cell) * scale[:, None]
        frames.append(
            dataclasses.replace(
                base,
                positions=np.asarray(base.positions) * scale
                + 0.05 * rng.normal(size=(24, 3)),
                cell=cell,
            )
        )
    for _ in range(14):
        n = int(rng.integers(1, 4)) * 3
        frames.append(
            Frame(positions=cluster(rng, n=n), numbers=np.tile([8, 1, 1], n // 3))
        )
    order = rng.permutation(len(frames))
    return [frames[k] for k in order]


def _epochs(frames, pool, *, epochs=4, batch_size=3, max_shapes=3):
    kinds = pipeline.frame_kinds(frames)
    edges = pipeline.edge_counts_of(frames, CUTOFF)
    return [
        pipeline.make_step_plans(
            frames,
            CUTOFF,
            batch_size,
            1,
            pool,
            edge_counts=edges,
            rng=np.random.default_rng([0, epoch]),
            max_shapes=max_shapes,
            kinds=kinds,
        )
        for epoch in range(epochs)
    ]


def test_kinds_never_mix_and_pool_is_seeded():
    frames = _mixed_frames()
    kinds = pipeline.frame_kinds(frames)
    pool = pipeline.ShapePool()
    epochs = _epochs(frames, pool)
    box_atoms = max(s[0] for k, s in pool.shapes if k == 1)
    for steps in epochs:
        assert sorted(i for s in steps for i in s.indices) == list(range(len(frames)))
        for step in steps:
            assert {int(kinds[i]) for i in step.indices} == {step.kind}
            if step.kind == 0:
                # clusters are never padded to a box batch's shape (pool seeded with
                # every bucket shape before the first step is assigned)
                assert step.shape[0] < box_atoms
    # at most max_shapes (kind, shape) pairs over all epochs (3 >= 2 kinds)
    assert len(pool.shapes) <= 3


def test_pinned_long_range_adds_no_compiled_shapes(x64):
    frames = _mixed_frames()
    pool = pipeline.ShapePool()
    steps = [s for epoch in _epochs(frames, pool) for s in epoch]
    pinned = pipeline.PinnedLongRange.for_frames(frames, OPTIONS)
    mesh = sharding.make_mesh(1)
    cache = pipeline.BatchCache(frames, CUTOFF, np.float64, mesh, pinned)
    for step in steps:
        cache.get(step)
    assert len(cache.signatures) == len(pool.shapes) <= 3
    # without pinning, the cells of the boxes give batches of different k-sets/meshes
    unpinned = pipeline.BatchCache(
        frames,
        CUTOFF,
        np.float64,
        mesh,
        lambda graph, kind: prepare_long_range(graph, **OPTIONS),
    )
    for step in steps:
        unpinned.get(step)
    assert len(unpinned.signatures) > len(cache.signatures)


@pytest.mark.parametrize(
    "method, kind", [("ewald", 1), ("pme", 1), ("ewald", 0)], ids=str
)
def test_pinned_capacities_do_not_change_energy(x64, method, kind):
    """Pinned slots, block size and k-set are padding (same E_lr and forces to 1e-12);
    a pinned PME mesh is finer than the batch's own, moving E_lr inside its accuracy."""
    frames = _mixed_frames(seed=3)
    options = dict(OPTIONS, method=method)
    pinned = pipeline.PinnedLongRange.for_frames(frames, options)
    rng = np.random.default_rng(5)
    group = [f for f in frames if int(np.any(f.pbc)) == kind][:2]
    graph = frames_to_graph(group, CUTOFF, num_graphs=4)
    latents = random_latents(rng, graph)
    fixed = pinned(graph, kind)
    slots = fixed.periodic if kind == 1 else fixed.free
    assert slots.num_slots == 3  # G - 1: more slots than the two graphs
    e0, f0 = long_range_energy_forces(
        graph, latents, prepare_long_range(graph, **options)
    )
    e1, f1 = long_range_energy_forces(graph, latents, fixed)
    assert np.abs(e0[:2]).min() > 1e-3 and np.abs(f0).max() > 1e-3
    if method == "pme" and kind == 1:
        np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-4 * np.abs(f0).max())
    else:
        np.testing.assert_allclose(e1, e0, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-11)


def test_pinned_pme_mesh_must_cover_the_batch(x64):
    frames = [f for f in _mixed_frames() if np.any(f.pbc)][:2]
    graph = frames_to_graph(frames, CUTOFF)
    mesh = prepare_long_range(graph, **dict(OPTIONS, method="pme")).pme_spec.mesh_shape
    coarse = (mesh[0] - 1, mesh[1], mesh[2])
    with pytest.raises(ValueError, match="coarser"):
        prepare_long_range(graph, **dict(OPTIONS, method="pme"), pme_mesh_shape=coarse)
