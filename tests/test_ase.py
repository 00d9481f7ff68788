"""The ASE calculator returns the model's energy, forces, stress, charges, dipole, BEC."""

import ase
import jax
import numpy as np
import pytest

from polmp import units
from polmp.ase import Calculator
from polmp.data.batching import frames_to_graph
from polmp.data.water import water_box
from polmp.models.long_range import graph_long_range, prepare_long_range
from polmp.models.potential import make_energy_fn
from tests.training.morse import tiny_latent_model

CONFIG = tiny_latent_model(cutoff_A=3.0, avg_num_neighbors=4.0)
LR = dict(sigma=1.0, accuracy=1e-8, method="ewald")


@pytest.fixture
def calc_and_ref(x64):
    frame = water_box(2, seed=3)  # 24 atoms, periodic
    fns = make_energy_fn(CONFIG, long_range_fn=graph_long_range)
    graph = frames_to_graph([frame], cutoff=CONFIG.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    atoms = ase.Atoms(
        numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True
    )
    atoms.calc = Calculator(CONFIG, params, long_range_options=LR, eps_e=1.78)
    return atoms, fns, graph, params


def test_energy_forces_stress_match_the_model(calc_and_ref):
    atoms, fns, graph, params = calc_and_ref
    data = prepare_long_range(graph, **LR)
    e, f, s = fns.energy_forces_stress_fn(params, graph, long_range=data)
    assert atoms.get_potential_energy() == pytest.approx(float(e[0]), rel=1e-12)
    np.testing.assert_allclose(
        atoms.get_forces(), f[: len(atoms)], rtol=1e-10, atol=1e-12
    )
    voigt = atoms.get_stress()
    np.testing.assert_allclose(voigt[:3], np.diag(s[0]), rtol=1e-10, atol=1e-12)
    assert voigt[3] == pytest.approx(float(s[0, 1, 2]), abs=1e-12)
    # ASE's own finite-difference check of the forces


def test_charges_dipole_and_born_charges(calc_and_ref):
    atoms, *_ = calc_and_ref
    charges = atoms.get_charges()
    assert charges.shape == (len(atoms),) and np.abs(charges).max() > 1e-3
    bec = atoms.calc.get_property("bec", atoms)
    assert bec.shape == (len(atoms), 3, 3)
    assert np.all(np.isfinite(bec)) and np.abs(bec).max() > 1e-3
    # Born charges of a molecule (direct form) equal finite differences of the dipole
    mol = atoms[:3].copy()
    mol.pbc = False
    mol.cell = None
    mol.calc = Calculator(CONFIG, atoms.calc.params, long_range_options=LR, eps_e=1.0)
    z = mol.calc.get_property("bec", mol)
    h = 1e-5
    for i, b in [(0, 0), (1, 2)]:
        plus, minus = mol.copy(), mol.copy()
        plus.positions[i, b] += h
        minus.positions[i, b] -= h
        plus.calc, minus.calc = mol.calc, mol.calc
        dp = (
            plus.calc.get_property("dipole", plus)
            - minus.calc.get_property("dipole", minus)
        ) / (2 * h)
        np.testing.assert_allclose(z[i, :, b], dp, rtol=1e-5, atol=1e-8)


def test_polarizability_property(calc_and_ref):
    atoms, fns, graph, params = calc_and_ref
    data = prepare_long_range(graph, **LR)
    alpha = fns.outputs_fn(params, graph, long_range=data).alpha[: len(atoms)]
    expected = 1.78 * units.COULOMB * float(alpha.sum()) * np.eye(3)
    np.testing.assert_allclose(
        atoms.calc.get_property("polarizability", atoms), expected, rtol=1e-10
    )


def test_born_charges_only_when_asked(calc_and_ref):
    atoms, *_ = calc_and_ref
    atoms.get_forces()
    assert "bec" not in atoms.calc.results
    assert atoms.calc.get_property("bec", atoms).shape == (len(atoms), 3, 3)


def test_unknown_element_is_a_clear_error(calc_and_ref):
    atoms, *_ = calc_and_ref
    atoms.numbers[0] = 11  # Na: the model knows H and O only
    with pytest.raises(ValueError, match=r"Na \(Z=11\).*H \(Z=1\), O \(Z=8\)"):
        atoms.get_potential_energy()


def test_md_steps_share_compiled_shapes(calc_and_ref):
    """Edge counts change at almost every MD step; capacities are bucketed."""
    atoms, *_ = calc_and_ref
    compiled = atoms.calc._fns["energy_forces_stress"]
    rng = np.random.default_rng(0)
    atoms.get_potential_energy()
    before = compiled._cache_size()
    counts = set()
    for _ in range(6):
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.get_forces()
        counts.add(int(np.asarray(atoms.calc._graph(atoms)[0].edge_mask).sum()))
    assert len(counts) > 1  # the pair count did change
    assert compiled._cache_size() - before <= 1
    # a second calculator of the same model reuses the compiled functions
    other = Calculator(CONFIG, atoms.calc.params, long_range_options=LR, eps_e=1.78)
    assert other._fns["energy_forces_stress"] is compiled


def test_default_dtype_works_without_x64():
    assert not jax.config.jax_enable_x64
    frame = water_box(2, seed=3)
    fns = make_energy_fn(CONFIG, long_range_fn=graph_long_range)
    graph = frames_to_graph([frame], cutoff=CONFIG.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    atoms = ase.Atoms(
        numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True
    )
    # float32: an accuracy above the float32 floor (1e-8 would be refused, clearly)
    atoms.calc = Calculator(CONFIG, params, long_range_options={**LR, "accuracy": 1e-6})
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(ValueError, match="jax_enable_x64"):
        Calculator(CONFIG, params, dtype=np.float64)


def test_from_trained(x64):
    from polmp.config.schema import LongRangeConfig, RunConfig
    from polmp.training.trained import TrainedModel, energy_fns_of

    frame = water_box(2, seed=3)
    fns = energy_fns_of(CONFIG)
    graph = frames_to_graph([frame], cutoff=CONFIG.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    config = RunConfig(
        model=CONFIG,
        long_range=LongRangeConfig(sigma_A=1.0, accuracy=1e-8, method="ewald"),
    )
    trained = TrainedModel(config, params, fns, "tiny")
    atoms = ase.Atoms(
        numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True
    )
    atoms.calc = Calculator.from_trained(trained)
    data = prepare_long_range(graph, **LR)
    e = fns.energy_fn(params, graph, long_range=data)[0]
    assert atoms.get_potential_energy() == pytest.approx(float(e), rel=1e-10)
    with pytest.raises(FileNotFoundError):
        Calculator.from_trained("/nonexistent/model")
