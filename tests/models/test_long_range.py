"""E = E_sr + E_lr on padded batches: graph_long_range vs electrostatics.long_range."""

from __future__ import annotations

import dataclasses
import functools

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from polmp.data.batching import Batch, frames_to_batch, frames_to_graph
from polmp.data.schema import Frame
from polmp.electrostatics import long_range
from polmp.models.config import ModelConfig
from polmp.models.long_range import (
    LongRangeData,
    bind_long_range,
    graph_long_range,
    prepare_long_range,
)
from polmp.models.potential import make_energy_fn
from tests.models.equivariance import assert_equivariant
from tests.models.graphs import cluster, long_range_energy_forces, random_latents
from tests.utils import shared_path

CUTOFF = 3.0
ACCURACY = 1e-6
CONFIG = ModelConfig(
    species=(1, 8),
    cutoff_A=CUTOFF,
    l_max=2,
    num_channels=4,
    num_layers=1,
    num_basis=4,
    radial_mlp=(8,),
    readout_hidden=8,
    avg_num_neighbors=8.0,
    variant="full",
    alpha_kind="anisotropic",
    num_charge_channels=2,
    q_scale=0.5,
    mu_scale=0.2,
    theta_scale=0.2,
    kappa_scale=0.05,
    alpha_scale=0.05,
)
TRI_CELL = np.array([[3.0, 0.0, 0.0], [1.1, 3.2, 0.0], [0.5, -0.7, 2.9]])


def _water_frame():
    path = shared_path("lesfit_water_rpbe_d3", "test-H2O_RPBE-D3.xyz")
    atoms = ase.io.read(path, index=0)
    return Frame(
        positions=atoms.positions.copy(),
        numbers=atoms.numbers.copy(),
        cell=atoms.cell.array.copy(),
        pbc=np.ones(3, bool),
    )


def _small_frames(rng):
    """A triclinic 4-atom cell (many images) and a 3-atom molecule."""
    tri = Frame(
        positions=rng.uniform(size=(4, 3)) @ TRI_CELL,
        numbers=np.array([8, 1, 1, 8]),
        cell=TRI_CELL,
        pbc=np.ones(3, bool),
    )
    molecule = Frame(positions=cluster(rng, n=3), numbers=np.array([8, 1, 1]))
    return [tri, molecule]


def _per_graph_reference(frames, outputs, graph, method="ewald", accuracy=ACCURACY):
    """electrostatics.long_range on each frame alone (atoms contiguous per frame)."""
    start, refs = 0, []
    for frame in frames:
        sl = slice(start, start + frame.num_atoms)
        start += frame.num_atoms
        refs.append(
            long_range(
                graph.positions[sl],
                outputs.q[sl],
                outputs.mu[sl],
                outputs.theta[sl],
                outputs.kappa[sl],
                outputs.alpha[sl],
                cell=jnp.asarray(frame.cell) if frame.periodic else None,
                method=method if frame.periodic else "direct",
                accuracy=accuracy,
            )
        )
    return refs


def test_batch_equals_long_range_per_graph(x64, rng):
    frames = [_water_frame(), *_small_frames(rng)]
    graph = frames_to_graph(frames, CUTOFF)
    data = prepare_long_range(graph, accuracy=ACCURACY, method="ewald")
    assert data.method == "ewald" and data.periodic.num_slots == 2
    assert data.free.num_slots == 1
    outputs = random_latents(rng, graph)
    out = jax.jit(graph_long_range)(graph, graph.positions, graph.cell, outputs, data)
    refs = _per_graph_reference(frames, outputs, graph)
    start = 0
    for g, (frame, ref) in enumerate(zip(frames, refs, strict=True)):
        sl = slice(start, start + frame.num_atoms)
        start += frame.num_atoms
        assert abs(float(ref.energy)) > 1e-2
        np.testing.assert_allclose(out.energy[g], ref.energy, rtol=1e-10)
        for name in ("phi", "field", "dq", "dmu"):
            got, want = getattr(out, name)[sl], getattr(ref, name)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10, err_msg=name)
    assert float(out.energy[len(frames)]) == 0.0
    for name in ("phi", "field", "dq", "dmu"):
        np.testing.assert_array_equal(getattr(out, name)[start:], 0.0)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_adapter_runs_the_solver_of_each_graph(x64, rng, method):
    """gather -> vmap(solver) -> scatter: for every graph of a padded batch the same
    E, phi, field, dq, dmu as long_range on that graph alone (two channels, theta,
    tensor alpha; the molecule through the direct sum)."""
    frames = _small_frames(rng)
    graph = frames_to_graph(frames, CUTOFF, num_atoms=12, num_graphs=4)
    data = prepare_long_range(graph, accuracy=ACCURACY, method=method)
    assert data.method == method
    outputs = random_latents(rng, graph)
    out = jax.jit(graph_long_range)(graph, graph.positions, graph.cell, outputs, data)
    refs = _per_graph_reference(frames, outputs, graph, method=method)
    start = 0
    for g, (frame, ref) in enumerate(zip(frames, refs, strict=True)):
        sl = slice(start, start + frame.num_atoms)
        start += frame.num_atoms
        np.testing.assert_allclose(out.energy[g], ref.energy, rtol=1e-12)
        for name in ("phi", "field", "dq", "dmu"):
            got, want = getattr(out, name)[sl], getattr(ref, name)
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13, err_msg=name)
    np.testing.assert_array_equal(out.energy[2:], 0.0)


def test_check_long_range_flags_bad_inputs(x64, rng):
    """checkify checks per graph: NaN positions, a cell outside the prepared range,
    negative kappa; padding atoms and slots are not flagged."""
    frames = _small_frames(rng)
    graph = frames_to_graph(frames, CUTOFF, num_atoms=12, num_graphs=4)
    data = prepare_long_range(graph, accuracy=ACCURACY, max_cell_scale=1.05)
    outputs = random_latents(rng, graph)

    def energy(positions, cell, kappa):
        lat = dataclasses.replace(outputs, kappa=kappa)
        return graph_long_range(graph, positions, cell, lat, data, check=True).energy

    checked = jax.jit(checkify.checkify(energy))
    args = (graph.positions, graph.cell, outputs.kappa)
    err, e = checked(*args)
    err.throw()
    plain = jax.jit(graph_long_range)(graph, *args[:2], outputs, data).energy
    np.testing.assert_array_equal(e, plain)
    stretched = graph.cell.at[0].multiply(1.04)  # inside the range
    checked(graph.positions, stretched, outputs.kappa)[0].throw()
    bad = [
        ("NaN", (graph.positions.at[1, 0].set(jnp.nan), *args[1:])),
        ("leaves the range", (args[0], graph.cell.at[0].multiply(1.5), args[2])),
        ("kappa must be >= 0", (*args[:2], -outputs.kappa)),
    ]
    for match, a in bad:
        with pytest.raises(Exception, match=match):
            checked(*a)[0].throw()
    # a NaN on a padding atom is not an error
    checked(graph.positions.at[-1, 0].set(jnp.nan), *args[1:])[0].throw()


@pytest.mark.slow
def test_pme_group_agrees_with_ewald(x64, rng):
    frames = [_water_frame(), *_small_frames(rng)]
    graph = frames_to_graph(frames, CUTOFF)
    outputs = random_latents(rng, graph)
    data = prepare_long_range(graph, accuracy=ACCURACY, method="pme")
    assert data.method == "pme" and data.pme_spec is not None
    # one mesh for the group: the per-axis maximum over its graphs
    assert data.pme_spec.mesh_shape[0] >= 40
    out = jax.jit(graph_long_range)(graph, graph.positions, graph.cell, outputs, data)
    ref = _per_graph_reference(frames[:2], outputs, graph)
    for g in range(2):
        scale = abs(float(ref[g].energy)) + 1.0
        assert abs(float(out.energy[g] - ref[g].energy)) < 1e-4 * scale


def _model(variant="full"):
    config = (
        CONFIG
        if variant == "full"
        else ModelConfig(**{**CONFIG.__dict__, "variant": variant})
    )
    return make_energy_fn(config, long_range_fn=graph_long_range)


@pytest.fixture(scope="module")
def small_setup():
    """Full-variant model, a (triclinic cell + molecule) batch and its data (x64)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        fns = _model()
        frames = _small_frames(np.random.default_rng(7))
        graph = frames_to_graph(frames, CUTOFF)
        data = prepare_long_range(graph, accuracy=1e-8)
        params = jax.jit(fns.model.init)(jax.random.PRNGKey(1), graph)
        # jitted once here so that tests of the same shapes share the compilations
        fns = fns._replace(
            energy_fn=jax.jit(fns.energy_fn),
            outputs_fn=jax.jit(fns.outputs_fn),
            energy_forces_stress_fn=jax.jit(fns.energy_forces_stress_fn),
        )
        yield fns, params, frames, graph, data
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.usefixtures("debug_nans")
def test_padding_invariance(x64, rng):
    """Extra padding atoms, graphs, slots, block entries, k-vectors change nothing."""
    frames = _small_frames(rng)
    n = sum(f.num_atoms for f in frames)
    graph = frames_to_graph(frames, CUTOFF)
    heavy = frames_to_graph(frames, CUTOFF, num_atoms=n + 13, num_graphs=6)
    data = prepare_long_range(graph, accuracy=1e-8)
    heavy_data = prepare_long_range(
        heavy,
        accuracy=1e-8,
        num_periodic=3,
        num_free=2,
        atoms_per_graph=24,
        num_kvectors=data.periodic.kvectors.shape[1] + 100,
    )
    outputs = random_latents(rng, graph)

    def pad(x):  # same latents on the real atoms, zeros on the extra padding
        return jnp.concatenate([x, jnp.zeros((13,) + x.shape[1:], x.dtype)])

    heavy_outputs = jax.tree_util.tree_map(pad, outputs)
    e0, f0 = long_range_energy_forces(graph, outputs, data)
    e1, f1 = long_range_energy_forces(heavy, heavy_outputs, heavy_data)
    assert np.all(np.abs(e0[:2]) > 1e-3) and np.abs(f0[:n]).max() > 1e-3
    np.testing.assert_allclose(e1[:2], e0[:2], rtol=1e-11)
    np.testing.assert_allclose(f1[:n], f0[:n], rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(e1[2:], 0.0)
    np.testing.assert_array_equal(f1[n:], 0.0)
    np.testing.assert_array_equal(f0[n:], 0.0)


def test_forces_match_central_differences(x64, small_setup):
    fns, params, frames, graph, data = small_setup
    efs = fns.energy_forces_stress_fn
    energy_fn = fns.energy_fn
    _, forces, _ = efs(params, graph, long_range=data)
    n = sum(f.num_atoms for f in frames)
    np.testing.assert_array_equal(forces[n:], 0.0)  # padding atoms feel nothing
    h = 1e-5
    for atom, axis in [(0, 0), (3, 2), (4, 1), (6, 2)]:
        step = jnp.zeros_like(graph.positions).at[atom, axis].set(h)
        ep = jnp.sum(energy_fn(params, graph, graph.positions + step, long_range=data))
        em = jnp.sum(energy_fn(params, graph, graph.positions - step, long_range=data))
        fd = -(ep - em) / (2 * h)
        assert float(forces[atom, axis]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


def test_stress_matches_finite_strain(x64, small_setup):
    fns, params, frames, graph, data = small_setup
    _, _, stress = fns.energy_forces_stress_fn(params, graph, long_range=data)
    energy_fn = fns.energy_fn
    volume = abs(np.linalg.det(TRI_CELL))
    h = 1e-5
    assert np.abs(np.asarray(stress[0])).max() > 1e-4
    for a, b in [(0, 0), (1, 2), (2, 0)]:
        values = []
        for sign in (1, -1):
            deform = np.eye(3)
            deform[a, b] += sign * h
            pos = np.asarray(graph.positions).copy()
            pos[:4] = pos[:4] @ deform
            cell = np.asarray(graph.cell).copy()
            cell[0] = cell[0] @ deform
            e = energy_fn(
                params, graph, jnp.asarray(pos), jnp.asarray(cell), long_range=data
            )
            values.append(float(e[0]))
        fd = (values[0] - values[1]) / (2 * h) / volume
        assert float(stress[0, a, b]) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_energy_is_rotation_and_inversion_invariant(x64, small_setup, rng):
    fns, params, frames, graph, data = small_setup
    energy_fn = fns.energy_fn
    n_tri = frames[0].num_atoms
    positions = np.concatenate([f.positions for f in frames])

    def fn(pos, q):
        cell = TRI_CELL @ q.T
        if np.linalg.det(cell) < 0:
            cell = -cell  # same lattice, right-handed rows
        moved = [
            Frame(
                positions=pos[:n_tri],
                numbers=frames[0].numbers,
                cell=cell,
                pbc=np.ones(3, bool),
            ),
            Frame(positions=pos[n_tri:], numbers=frames[1].numbers),
        ]
        g = frames_to_graph(moved, CUTOFF)
        d = prepare_long_range(g, accuracy=1e-8)
        return {"energy": np.asarray(energy_fn(params, g, long_range=d))[:2, None]}

    assert_equivariant(fn, positions, {"energy": "0e"}, rng, rtol=1e-9, atol=1e-10)


def test_isolated_atom_has_zero_long_range_energy(x64, small_setup):
    fns, params, *_ = small_setup
    atom = Frame(positions=np.zeros((1, 3)), numbers=np.array([8]))
    graph = frames_to_graph([atom], CUTOFF)
    data = prepare_long_range(graph)
    out = fns.outputs_fn(params, graph, long_range=data)
    assert abs(float(out.q[0, 0])) > 1e-4  # a real charge, alone
    assert float(out.long_range_energy[0]) == 0.0
    np.testing.assert_array_equal(out.dq[0], 0.0)
    np.testing.assert_array_equal(out.dmu[0], 0.0)


def test_outputs_expose_induced_moments(x64, small_setup):
    fns, params, frames, graph, data = small_setup
    out = fns.outputs_fn(params, graph, long_range=data)
    n = sum(f.num_atoms for f in frames)
    c = CONFIG.num_charge_channels
    assert out.dq.shape == (graph.num_atoms, c)
    assert out.dmu.shape == (graph.num_atoms, c, 3)
    assert np.abs(np.asarray(out.dq[:n])).max() > 1e-6
    assert np.abs(np.asarray(out.dmu[:n])).max() > 1e-6
    np.testing.assert_allclose(out.dq, -out.kappa[:, None] * out.phi, rtol=1e-12)
    dmu = jnp.einsum("nab,ncb->nca", out.alpha, out.field)
    np.testing.assert_allclose(out.dmu, dmu, rtol=1e-12, atol=1e-15)
    # the same moments as electrostatics.long_range on each graph alone
    refs = _per_graph_reference(frames, out, graph, accuracy=1e-8)
    start = 0
    for g, (frame, ref) in enumerate(zip(frames, refs, strict=True)):
        sl = slice(start, start + frame.num_atoms)
        start += frame.num_atoms
        np.testing.assert_allclose(out.dq[sl], ref.dq, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(out.dmu[sl], ref.dmu, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(out.long_range_energy[g], ref.energy, rtol=1e-10)
    energy = fns.energy_fn(params, graph, long_range=data)
    e_sr = jax.ops.segment_sum(out.energy, graph.atom_graph, graph.num_graphs)
    np.testing.assert_allclose(
        energy[:2], (e_sr + out.long_range_energy)[:2], rtol=1e-12
    )


def test_batch_carries_long_range_data_and_shapes_repeat(x64, small_setup, rng):
    fns, params, *_ = small_setup
    prepare = functools.partial(
        prepare_long_range,
        accuracy=1e-8,
        num_periodic=2,
        num_free=2,
        atoms_per_graph=8,
        num_kvectors=2048,
    )
    energy_fn = fns.energy_fn
    compiled = energy_fn._cache_size()
    results = []
    for seed in (11, 12):
        frames = _small_frames(np.random.default_rng(seed))
        batch = frames_to_batch(frames, CUTOFF, 16, 256, 4, long_range=prepare)
        assert isinstance(batch, Batch) and isinstance(batch.long_range, LongRangeData)
        results.append(energy_fn(params, batch.graph, long_range=batch.long_range))
        # without data the adapter refuses instead of dropping E_lr
        out = random_latents(rng, batch.graph)
        args = (batch.graph, batch.graph.positions, batch.graph.cell, out)
        with pytest.raises(ValueError, match="prepare_long_range"):
            graph_long_range(*args)
    assert energy_fn._cache_size() == compiled + 1  # one shape for both batches
    assert not np.allclose(results[0], results[1])
    # bind_long_range: the 4-argument form for a fixed structure
    bound = bind_long_range(batch.long_range)(*args)
    np.testing.assert_array_equal(
        bound.energy, graph_long_range(*args, batch.long_range).energy
    )


def test_partial_pbc_is_refused_unless_asked(x64, rng):
    slab = Frame(
        positions=rng.uniform(size=(3, 3)) * 3.0,
        numbers=np.array([8, 1, 1]),
        cell=np.diag([4.0, 4.0, 12.0]),
        pbc=np.array([True, True, False]),
    )
    graph = frames_to_graph([slab], CUTOFF)
    with pytest.raises(ValueError, match="partial_pbc"):
        prepare_long_range(graph)
    data = prepare_long_range(graph, partial_pbc="periodic", method="ewald")
    assert data.periodic.num_slots == 1 and data.free.num_slots == 0
