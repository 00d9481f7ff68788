"""Irreps <-> Cartesian conversion, reference energies, head constraints."""

from __future__ import annotations

import e3nn_jax as e3nn
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.models.heads import (
    count_species,
    fit_reference_energies,
    l2_to_symmetric_traceless,
    symmetric_traceless_to_l2,
)
from tests.models.equivariance import random_rotation


def test_l2_tensor_is_symmetric_traceless_and_isometric(x64, rng):
    x = jnp.asarray(rng.normal(size=(7, 5)))
    t = np.asarray(l2_to_symmetric_traceless(x))
    assert t.shape == (7, 3, 3)
    np.testing.assert_allclose(t, np.swapaxes(t, -1, -2), atol=1e-15)
    np.testing.assert_allclose(np.trace(t, axis1=-2, axis2=-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(
        np.sum(t**2, axis=(-2, -1)), np.sum(np.asarray(x) ** 2, -1), rtol=1e-13
    )
    np.testing.assert_allclose(symmetric_traceless_to_l2(t), x, atol=1e-14)


@pytest.mark.parametrize("parity", ["2e", "2o"])
def test_l2_tensor_rotates_as_R_T_RT(x64, rng, parity):
    """T(D^2(Q) x) = R T(x) R^T, with D from e3nn (parity only flips the sign of 2o)."""
    x = rng.normal(size=(4, 5))
    for q in (random_rotation(rng), -random_rotation(rng)):
        d = np.asarray(e3nn.Irrep(parity).D_from_matrix(q), dtype=np.float64)
        lhs = np.asarray(l2_to_symmetric_traceless(jnp.asarray(x @ d.T)))
        t = np.asarray(l2_to_symmetric_traceless(jnp.asarray(x)))
        sign = np.linalg.det(q) if parity == "2o" else 1.0
        rhs = sign * np.einsum("ab,nbc,dc->nad", q, t, q)
        np.testing.assert_allclose(lhs, rhs, atol=1e-13)


def test_l2_convention_matches_second_moment_of_a_direction(x64, rng):
    """The traceless second moment n n^T - I/3 is reproduced via its irrep (no 3/2)."""
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    t = np.outer(n, n) - np.eye(3) / 3
    x = symmetric_traceless_to_l2(jnp.asarray(t))
    np.testing.assert_allclose(l2_to_symmetric_traceless(x), t, atol=1e-15)
    # And it is proportional to the l=2 spherical harmonic of n (same irrep).
    y = np.asarray(e3nn.spherical_harmonics("2e", jnp.asarray(n), normalize=True).array)
    cos = np.dot(np.asarray(x), y) / np.linalg.norm(x) / np.linalg.norm(y)
    assert abs(abs(cos) - 1) < 1e-12


def test_l2_conversion_float32_stays_float32():
    x = jnp.ones((2, 5), jnp.float32)
    assert l2_to_symmetric_traceless(x).dtype == jnp.float32


def test_fit_reference_energies_recovers_exact_values(rng):
    truth = np.array([-13.6, -1030.2, -2.5])
    counts = rng.integers(0, 9, size=(12, 3))
    energies = counts @ truth
    np.testing.assert_allclose(
        fit_reference_energies(counts, energies), truth, rtol=1e-12
    )


def test_fit_reference_energies_rank_deficient_reproduces_energies(rng):
    """Every frame H2O-like (2:1): the minimum-norm fit reproduces the energies."""
    k = rng.integers(1, 20, size=8)
    counts = np.stack([2 * k, k], axis=1)
    energies = counts @ np.array([-13.0, -430.0])
    fit = fit_reference_energies(counts, energies)
    np.testing.assert_allclose(counts @ fit, energies, rtol=1e-12)


def test_fit_reference_energies_validates():
    with pytest.raises(ValueError):
        fit_reference_energies(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError):
        fit_reference_energies(np.ones((3, 2)), np.array([1.0, np.nan, 2.0]))


def test_count_species():
    species = np.array([8, 1, 1, 1, 8, 0])
    atom_graph = np.array([0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(
        count_species(species, atom_graph, 3, (1, 8)), [[2, 1], [1, 1], [0, 0]]
    )


def test_count_then_fit_round_trip(rng):
    truth = np.array([-0.5, -7.25])
    species = rng.choice([1, 8], size=40)
    atom_graph = np.sort(rng.integers(0, 6, size=40))
    counts = count_species(species, atom_graph, 6, (1, 8))
    fit = fit_reference_energies(counts, counts @ truth)
    np.testing.assert_allclose(fit, truth, rtol=1e-10)
