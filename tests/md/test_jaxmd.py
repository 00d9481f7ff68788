"""A model bound for jax-md gives the same energy and forces as on a host-built graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import quantity, simulate

from polmp.data.batching import frames_to_graph
from polmp.data.water import water_box
from polmp.geometry.neighbors import neighbor_list
from polmp.md.jaxmd import MDSystem, bind, thermal_energy, timestep, unwrapped_shift
from polmp.md.run import run_chunked
from polmp.models.long_range import graph_long_range, prepare_long_range
from polmp.models.potential import make_energy_fn
from tests.training.morse import tiny_latent_model

CONFIG = tiny_latent_model()
LR = dict(sigma=1.0, accuracy=1e-8, method="ewald")


def _kinetic(state):
    return quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)


@pytest.fixture(scope="module")
def setup():
    jax.config.update("jax_enable_x64", True)
    frame = water_box(3, seed=0)  # 81 atoms, 9.32 A cell
    fns = make_energy_fn(CONFIG, long_range_fn=graph_long_range)
    graph = frames_to_graph([frame], cutoff=CONFIG.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    yield frame, fns, graph, params
    jax.config.update("jax_enable_x64", False)


def test_bound_energy_and_forces_match_host_graph(setup):
    frame, fns, graph, params = setup
    data = prepare_long_range(graph, **LR)
    e_ref = fns.energy_fn(params, graph, long_range=data)[0]
    f_ref = -jax.grad(lambda r: fns.energy_fn(params, graph, r, long_range=data)[0])(
        graph.positions
    )
    system = MDSystem(frame.numbers, frame.cell)
    nfns = neighbor_list(CONFIG.cutoff_A, frame.cell, skin=0.3)
    r = jnp.asarray(frame.positions)
    nbrs = nfns.allocate(r)
    energy_fn = bind(fns, params, system, r, nbrs, long_range_options=LR)
    e = jax.jit(energy_fn)(r, nbrs)
    f = -jax.jit(jax.grad(energy_fn))(r, nbrs)
    np.testing.assert_allclose(e, e_ref, rtol=1e-10)
    np.testing.assert_allclose(f, f_ref[: frame.num_atoms], rtol=1e-8, atol=1e-10)
    # unwrapped positions (an atom moved by a lattice vector) change nothing
    r2 = r.at[0].add(jnp.asarray(frame.cell[1]))
    np.testing.assert_allclose(energy_fn(r2, nfns.update(r2, nbrs)), e_ref, rtol=1e-10)


def test_nve_with_model_conserves_energy(setup):
    frame, fns, graph, params = setup
    system = MDSystem(frame.numbers, frame.cell)
    nfns = neighbor_list(CONFIG.cutoff_A, frame.cell, skin=0.5)
    r = jnp.asarray(frame.positions)
    nbrs = nfns.allocate(r)
    energy_fn = bind(fns, params, system, r, nbrs, long_range_options=LR)
    mass = jnp.asarray(np.where(frame.numbers == 8, 15.999, 1.008))[:, None]
    init, step = simulate.nve(energy_fn, unwrapped_shift, dt=timestep(0.25))
    state = init(
        jax.random.PRNGKey(1), r, kT=thermal_energy(300.0), mass=mass, neighbor=nbrs
    )

    def total(s, n):
        return energy_fn(s.position, n) + _kinetic(s)

    # 50 fs: an untrained model is not a stable liquid (atoms start to collapse after
    # ~60 fs), but energy conservation of the bound model is already visible.
    result = run_chunked(
        step,
        state,
        nfns,
        nbrs,
        num_steps=200,
        chunk_steps=100,
        record_fn=total,
        record_every=10,
    )
    e = result.records
    kinetic0 = float(_kinetic(state))
    assert np.abs(e - e[0]).max() < 1e-3 * kinetic0


def test_units_helpers_and_bad_system():
    assert timestep(1.0) == pytest.approx(1 / 10.1805055, rel=1e-6)
    assert thermal_energy(300.0) == pytest.approx(0.025852, rel=1e-4)
    with pytest.raises(ValueError, match="atomic numbers"):
        MDSystem(np.array([8, 0, 1]))
    with pytest.raises(ValueError, match="positive"):
        timestep(0.0)
