"""The jax-md front door: energy, forces and stress equal the training path's, the box
and jax-md's strain are honoured, every jax-md integrator runs, field MD pushes the ions
with Z*^T E."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import minimize, quantity, simulate, space

import polmp
from polmp.config.schema import LongRangeConfig, RunConfig
from polmp.data.batching import frames_to_graph
from polmp.data.water import water_box
from polmp.md.jaxmd import bind, thermal_energy, timestep, unwrapped_shift
from polmp.md.run import run_chunked
from polmp.models.long_range import prepare_long_range
from polmp.observables.polarization import born_charges, total_latents
from polmp.training.trained import TrainedModel, energy_fns_of
from tests.training.morse import tiny_latent_model

# jax-md 0.2.29 scatters int64 into int32 buffers under x64 (its code, harmless).
pytestmark = pytest.mark.filterwarnings(
    "ignore:scatter inputs have incompatible types:FutureWarning"
)

SKIN = 0.3


def _trained(variant, method, accuracy=1e-8):
    extra = {"l_max": 2} if variant == "full" else {}  # Theta needs l = 2
    model = tiny_latent_model(variant=variant, **extra)
    config = RunConfig(
        model=model,
        long_range=LongRangeConfig(sigma_A=1.0, accuracy=accuracy, method=method),
    )
    fns = energy_fns_of(model)
    graph = frames_to_graph([water_box(3, seed=0)], cutoff=model.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    return TrainedModel(config, params, fns, f"tiny:{variant}")


@pytest.fixture(scope="module")
def x64_module():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def frame():
    return water_box(3, seed=0)  # 81 atoms, 9.32 A cubic cell


def _host_energy_forces_stress(trained, frame):
    """The training path: host graph (vesin) + prepare_long_range + EnergyFns."""
    graph = frames_to_graph([frame], cutoff=trained.model_config.cutoff_A)
    data = (
        None
        if trained.long_range_options is None
        else prepare_long_range(graph, **trained.long_range_options)
    )
    e, f, s = jax.jit(trained.energy_fns.energy_forces_stress_fn)(
        trained.params, graph, long_range=data
    )
    return float(e[0]), np.asarray(f[: frame.num_atoms]), np.asarray(s[0])


@pytest.mark.parametrize(
    "variant, method",
    [
        ("sr", "ewald"),
        ("q+mu+dq+dmu", "pme"),
        pytest.param("full", "ewald", marks=pytest.mark.slow),
        pytest.param("full", "pme", marks=pytest.mark.slow),
    ],
)
def test_stress_energy_forces_match_training_path_and_finite_strain(
    x64_module, frame, variant, method
):
    trained = _trained(variant, method)
    box = jnp.asarray(frame.cell.T)
    neighbor_fn, energy_fn = polmp.neighbor_list_energy(
        trained, frame.cell.T, frame.numbers, skin=SKIN
    )
    r = jnp.asarray(frame.positions)
    nbrs = neighbor_fn.allocate(r)
    e_ref, f_ref, s_ref = _host_energy_forces_stress(trained, frame)

    energy = jax.jit(energy_fn)
    np.testing.assert_allclose(energy(r, nbrs), e_ref, rtol=1e-9)
    forces = -jax.jit(jax.grad(energy_fn))(r, nbrs)
    np.testing.assert_allclose(forces, f_ref, rtol=1e-7, atol=1e-9)

    # jax-md's stress is -(1/V) dU/d(eps) (compressive positive): minus polmp's
    stress = jax.jit(lambda r, n: quantity.stress(energy_fn, r, box, neighbor=n))(
        r, nbrs
    )
    scale = np.abs(s_ref).max()
    np.testing.assert_allclose(stress, -s_ref, rtol=0, atol=1e-6 * scale)

    # central finite strain of the energy through jax-md's perturbation
    volume = abs(np.linalg.det(frame.cell))
    h = 1e-5
    for a, b in ((0, 0), (1, 2)):
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / 2 if a != b else h
        up = energy(r, nbrs, perturbation=jnp.eye(3) + eps)
        down = energy(r, nbrs, perturbation=jnp.eye(3) - eps)
        # a symmetric shear h/2 + h/2 does sigma_ab h V of work
        fd = float(up - down) / (2 * h) / volume
        np.testing.assert_allclose(fd, s_ref[a, b], rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize(
    "fractional", [pytest.param(False, marks=pytest.mark.slow), True]
)
def test_box_keyword_is_honoured(x64_module, frame, fractional):
    """energy_fn(R, box=1.01 box) is the energy of that structure built from scratch."""
    trained = _trained("q+mu+dq+dmu", "ewald")
    bound = bind(
        trained,
        frame.cell.T,
        frame.numbers,
        skin=SKIN,
        fractional_coordinates=fractional,
        box_scale_range=(0.95, 1.05),
    )
    cartesian = jnp.asarray(frame.positions)
    r = cartesian @ jnp.linalg.inv(jnp.asarray(frame.cell)) if fractional else cartesian
    nbrs = bound.neighbor_fn.allocate(r)
    e0 = bound.energy_fn(r, nbrs)
    big = 1.01 * frame.cell
    nbrs_big = bound.neighbor_fn.update(r, nbrs, box=big.T)
    e1 = bound.energy_fn(r, nbrs_big, box=jnp.asarray(big.T))
    # fractional R: the scaled structure; Cartesian R: same atoms in a larger cell
    positions = np.asarray(r) @ big if fractional else frame.positions
    scaled = dataclasses.replace(frame, positions=positions, cell=big)
    e_scratch, _, _ = _host_energy_forces_stress(trained, scaled)
    assert abs(float(e1 - e0)) > 1e-4
    np.testing.assert_allclose(e1, e_scratch, rtol=1e-9)
    # outside the prepared range the energy is NaN, never silently unconverged
    assert np.isnan(bound.energy_fn(r, nbrs_big, box=jnp.asarray(1.1 * frame.cell.T)))


def test_bad_keywords_species_and_overflow(x64_module, frame):
    trained = _trained("q+mu+dq+dmu", "ewald", accuracy=1e-6)
    neighbor_fn, energy_fn = polmp.neighbor_list_energy(
        trained, frame.cell.T, frame.numbers, skin=SKIN
    )
    r = jnp.asarray(frame.positions)
    nbrs = neighbor_fn.allocate(r)
    with pytest.raises(TypeError, match="unexpected keyword.*'temperature'"):
        energy_fn(r, nbrs, temperature=300.0)
    energy_fn(r, nbrs, kT=0.025, mass=1.0, pressure=0.0)  # integrator keywords
    with pytest.raises(ValueError, match=r"Na \(Z=11\).*H \(Z=1\), O \(Z=8\)"):
        polmp.neighbor_list_energy(trained, frame.cell.T, np.r_[frame.numbers[:-1], 11])
    with pytest.raises(TypeError, match="unknown keyword"):
        polmp.neighbor_list_energy(trained, frame.cell.T, frame.numbers, sigmaa=1.0)
    # an overflowed list gives NaN, not an energy without the dropped pairs
    squeezed = frame.positions.mean(0) + 0.6 * (
        frame.positions - frame.positions.mean(0)
    )
    small = neighbor_fn.update(jnp.asarray(squeezed), nbrs)
    assert bool(small.did_buffer_overflow)
    assert np.isnan(energy_fn(jnp.asarray(squeezed), small))


@pytest.mark.parametrize(
    "variant", ["sr", pytest.param("q+mu+dq+dmu", marks=pytest.mark.slow)]
)
def test_every_jax_md_integrator_and_fire_run(x64_module, frame, variant):
    trained = _trained(variant, "ewald", accuracy=1e-6)
    box = frame.cell.T
    kT = thermal_energy(300.0)
    dt = timestep(0.25)
    mass = jnp.asarray(np.where(frame.numbers == 8, 15.999, 1.008))[:, None]
    key = jax.random.PRNGKey(0)
    r = jnp.asarray(frame.positions)
    neighbor_fn, energy_fn = polmp.neighbor_list_energy(
        trained, box, frame.numbers, skin=SKIN
    )
    nbrs = neighbor_fn.allocate(r)
    ensembles = {
        "nve": simulate.nve(energy_fn, unwrapped_shift, dt),
        "nvt_nose_hoover": simulate.nvt_nose_hoover(energy_fn, unwrapped_shift, dt, kT),
        "nvt_langevin": simulate.nvt_langevin(energy_fn, unwrapped_shift, dt, kT),
    }
    for name, (init, step) in ensembles.items():
        state = init(key, r, kT=kT, mass=mass, neighbor=nbrs)
        result = run_chunked(step, state, neighbor_fn, nbrs, num_steps=3, chunk_steps=3)
        assert np.isfinite(result.state.position).all(), name
    # NPT: fractional coordinates and the box follow jax-md's convention
    neighbor_fn, energy_fn = polmp.neighbor_list_energy(
        trained, box, frame.numbers, skin=SKIN, fractional_coordinates=True
    )
    s = r @ jnp.linalg.inv(jnp.asarray(frame.cell))
    nbrs = neighbor_fn.allocate(s)
    _, shift = space.periodic_general(box)
    init, step = simulate.npt_nose_hoover(energy_fn, shift, dt, 1e-6, kT)
    state = init(key, s, jnp.asarray(box), mass=mass, neighbor=nbrs)
    result = run_chunked(
        step,
        state,
        neighbor_fn,
        nbrs,
        num_steps=3,
        chunk_steps=3,
        box_fn=simulate.npt_box,
    )
    assert np.isfinite(result.state.position).all()
    assert float(jnp.linalg.det(simulate.npt_box(result.state))) != pytest.approx(
        np.linalg.det(box), rel=1e-12
    )
    # FIRE minimisation with the Cartesian door
    neighbor_fn, energy_fn = polmp.neighbor_list_energy(
        trained, box, frame.numbers, skin=SKIN
    )
    nbrs = neighbor_fn.allocate(r)
    init, apply = minimize.fire_descent(energy_fn, unwrapped_shift, dt_start=0.01)
    state = init(r, neighbor=nbrs)
    apply = jax.jit(apply)
    e0 = energy_fn(r, nbrs)
    for _ in range(5):
        state = apply(state, neighbor=nbrs)
        nbrs = nbrs.update(state.position)
    assert float(energy_fn(state.position, nbrs)) < float(e0)


@pytest.mark.parametrize(
    "variant", [pytest.param("q+mu+dq+dmu", marks=pytest.mark.slow), "q+mu+dq"]
)
def test_field_forces_are_born_charges_times_field(x64_module, frame, variant):
    """sum_i F_i(E) - F_i(0) == (sum_i Z*_i)^T E, Z* from an independent host graph;
    without polarizabilities the energy ignores E and the change is Z*_i^T E per atom."""
    trained = _trained(variant, "ewald")
    eps_e = 1.78
    bound = bind(trained, frame.cell.T, frame.numbers, skin=SKIN, eps_e=eps_e)
    r = jnp.asarray(frame.positions)
    nbrs = bound.neighbor_fn.allocate(r)
    field = jnp.array([0.02, -0.01, 0.03])  # V/A

    def forces(e_ext):
        return -jax.grad(bound.energy_fn)(r, nbrs, e_ext=e_ext)

    f0, f1 = forces(None), forces(field)
    assert np.abs(f0.sum(0)).max() < 1e-9  # neutral, no field: no net force

    graph = frames_to_graph([frame], cutoff=trained.model_config.cutoff_A)
    data = prepare_long_range(graph, **trained.long_range_options)
    n = frame.num_atoms

    def charges_fn(x):
        outputs = trained.energy_fns.outputs_fn(
            trained.params,
            graph,
            graph.positions.at[:n].set(x),
            long_range=data,
            e_ext=field,
        )
        q, mu = total_latents(outputs)
        return q[:n], mu[:n]

    z = born_charges(charges_fn, r, jnp.asarray(frame.cell), eps_e=eps_e)
    expected = np.asarray(z.sum(0)).T @ np.asarray(field)
    np.testing.assert_allclose((f1 - f0).sum(0), expected, rtol=1e-6, atol=1e-10)
    if not trained.model_config.use_alpha:
        per_atom = np.einsum("iab,a->ib", np.asarray(z), np.asarray(field))
        np.testing.assert_allclose(f1 - f0, per_atom, rtol=1e-7, atol=1e-10)
    assert np.abs(f1 - f0).max() > 1e-4


def test_units_helpers():
    assert timestep(1.0) == pytest.approx(1 / 10.1805055, rel=1e-6)
    assert thermal_energy(300.0) == pytest.approx(0.025852, rel=1e-4)
    with pytest.raises(ValueError, match="positive"):
        timestep(0.0)
