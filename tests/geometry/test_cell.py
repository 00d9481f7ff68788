"""Cell helpers: reciprocal duality, fractional round trips, wrapping, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.geometry import cell as cellmod

TRICLINIC = np.array([[5.0, 0.0, 0.0], [1.3, 4.2, 0.0], [-0.7, 0.9, 6.1]])


def test_reciprocal_duality(x64):
    b = cellmod.reciprocal_cell(jnp.asarray(TRICLINIC))
    np.testing.assert_allclose(
        TRICLINIC @ np.asarray(b).T, 2 * math.pi * np.eye(3), atol=1e-12
    )
    np.testing.assert_allclose(
        cellmod.volume(jnp.asarray(TRICLINIC)), np.linalg.det(TRICLINIC)
    )


def test_fractional_round_trip_and_wrap(x64, rng):
    r = rng.normal(size=(20, 3)) * 10
    s = cellmod.fractional_coordinates(jnp.asarray(r), jnp.asarray(TRICLINIC))
    np.testing.assert_allclose(np.asarray(s) @ TRICLINIC, r, atol=1e-12)
    w = np.asarray(cellmod.wrap_positions(jnp.asarray(r), jnp.asarray(TRICLINIC)))
    sw = w @ np.linalg.inv(TRICLINIC)
    assert np.all(sw >= -1e-12) and np.all(sw < 1 + 1e-12)
    # wrapping moves each atom by a lattice vector
    n = (r - w) @ np.linalg.inv(TRICLINIC)
    np.testing.assert_allclose(n, np.round(n), atol=1e-9)


def test_wrap_respects_pbc(x64):
    r = jnp.array([[12.0, -3.0, 7.5]])
    w = cellmod.wrap_positions(r, jnp.eye(3) * 5.0, pbc=(True, False, True))
    np.testing.assert_allclose(w, [[2.0, -3.0, 2.5]])


def test_volume_is_differentiable(x64):
    g = jax.grad(cellmod.volume)(jnp.asarray(TRICLINIC))
    # d det(M)/dM = det(M) inv(M)^T
    np.testing.assert_allclose(
        g, np.linalg.det(TRICLINIC) * np.linalg.inv(TRICLINIC).T, rtol=1e-12
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.eye(2), "shape"),
        (np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, np.nan]]), "NaN"),
        (np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]]), "singular"),
        (np.diag([1.0, 1.0, -1.0]), "left-handed"),
    ],
)
def test_validate_cell_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        cellmod.validate_cell(bad)


def test_validate_positions_errors():
    with pytest.raises(ValueError, match="shape"):
        cellmod.validate_positions(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        cellmod.validate_positions(np.array([[0.0, np.inf, 0.0]]))
    with pytest.raises(ValueError, match="expected 3"):
        cellmod.validate_positions(np.zeros((4, 3)), num_atoms=3)
    assert cellmod.validate_positions(np.zeros((4, 3))).shape == (4, 3)
