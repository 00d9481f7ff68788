"""make_energy_fn: per-graph energies, forces and stress by autodiff, E_lr plumbing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.data.batching import frames_to_graph
from polmp.data.schema import Frame
from polmp.models.config import ModelConfig
from polmp.models.potential import make_energy_fn
from tests.models.graphs import cluster

CUTOFF = 3.0
CONFIG = ModelConfig(
    species=(1, 8),
    cutoff_A=CUTOFF,
    l_max=1,
    num_channels=4,
    num_layers=1,
    num_basis=4,
    radial_mlp=(8,),
    readout_hidden=8,
    avg_num_neighbors=3.0,
    variant="q",
    q_scale=1.0,
)


def toy_long_range(graph, positions, cell, outputs):
    """0.5 sum_i q_i^2 per graph: depends on positions only through the latents."""
    del positions, cell
    e = 0.5 * jnp.sum(outputs.q**2, axis=-1)
    return jax.ops.segment_sum(e, graph.atom_graph, num_segments=graph.num_graphs)


def frames(rng):
    cell = np.array([[3.6, 0.2, 0.0], [0.0, 3.9, 0.3], [0.1, 0.0, 4.1]])
    periodic = Frame(
        positions=rng.uniform(0, 3.5, size=(4, 3)),
        numbers=np.array([8, 1, 1, 8]),
        cell=cell,
        pbc=np.ones(3, bool),
    )
    molecule = Frame(positions=cluster(rng, n=3), numbers=np.array([8, 1, 1]))
    return periodic, molecule


@pytest.fixture(scope="module")
def setup():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        fns = make_energy_fn(CONFIG, long_range_fn=toy_long_range)
        rng = np.random.default_rng(3)
        graph = frames_to_graph(frames(rng), CUTOFF, num_atoms=9, num_graphs=3)
        params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
        fns = fns._replace(energy_fn=jax.jit(fns.energy_fn))
        yield fns, params, graph, jax.jit(fns.energy_forces_stress_fn)
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_long_range_part_is_never_dropped_silently():
    with pytest.raises(ValueError, match="long_range_fn"):
        make_energy_fn(CONFIG)
    make_energy_fn(CONFIG, short_range_only=True)
    make_energy_fn(ModelConfig(species=(1,), variant="sr"))


def test_energy_is_sr_plus_lr_per_graph(x64, setup):
    fns, params, graph, efs = setup
    energy, forces, stress = efs(params, graph)
    out = fns.outputs_fn(params, graph)
    e_sr = jax.ops.segment_sum(out.energy, graph.atom_graph, num_segments=3)
    e_lr = toy_long_range(graph, None, None, out)
    np.testing.assert_allclose(energy[:2], (e_sr + e_lr)[:2], rtol=1e-12)
    assert energy[2] == 0 and np.all(np.asarray(forces[7:]) == 0)
    assert np.all(np.asarray(stress[1:]) == 0)  # molecule and padding graph
    assert np.abs(np.asarray(stress[0])).max() > 0
    np.testing.assert_allclose(stress[0], stress[0].T, atol=1e-10)


def test_forces_match_central_differences(x64, setup):
    fns, params, graph, efs = setup
    _, forces, _ = efs(params, graph)
    h = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2), (6, 0)]:
        step = jnp.zeros_like(graph.positions).at[atom, axis].set(h)
        ep = jnp.sum(fns.energy_fn(params, graph, graph.positions + step))
        em = jnp.sum(fns.energy_fn(params, graph, graph.positions - step))
        fd = -(ep - em) / (2 * h)
        assert float(forces[atom, axis]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_stress_matches_finite_strain(x64, setup):
    fns, params, graph, efs = setup
    _, _, stress = efs(params, graph)
    volume = abs(np.linalg.det(np.asarray(graph.cell[0])))
    h = 1e-5
    for a, b in [(0, 0), (1, 2), (2, 0)]:
        values = []
        for sign in (1, -1):
            deform = np.eye(3)
            deform[a, b] += sign * h
            pos = np.asarray(graph.positions).copy()
            pos[:4] = pos[:4] @ deform
            cell = np.asarray(graph.cell).copy()
            cell[0] = cell[0] @ deform
            e = fns.energy_fn(params, graph, jnp.asarray(pos), jnp.asarray(cell))[0]
            values.append(float(e))
        fd = (values[0] - values[1]) / (2 * h) / volume
        assert float(stress[0, a, b]) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_batched_energy_equals_single_frame_energy(x64, setup):
    fns, params, graph, _ = setup
    periodic, molecule = frames(np.random.default_rng(3))
    energy = fns.energy_fn(params, graph)
    alone = fns.energy_fn(params, frames_to_graph([molecule], CUTOFF))
    np.testing.assert_allclose(energy[1], alone[0], rtol=1e-12)
    alone = fns.energy_fn(params, frames_to_graph([periodic], CUTOFF))
    np.testing.assert_allclose(energy[0], alone[0], rtol=1e-12)
