"""safe_norm / safe_divide: exact away from 0, finite to second order at 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.geometry.safe import safe_divide, safe_norm


def test_naive_norm_hessian_is_nan_at_zero(x64):
    # the failure safe_norm exists to avoid (so the tests below can fail)
    hessian = jax.hessian(lambda x: jnp.linalg.norm(x))(jnp.zeros(3))
    assert not np.all(np.isfinite(hessian))


@pytest.mark.usefixtures("x64", "debug_nans")
def test_safe_norm_finite_to_second_order_at_zero():
    x = jnp.zeros(3)
    assert safe_norm(x) == 0.0
    np.testing.assert_array_equal(jax.grad(safe_norm)(x), np.zeros(3))
    np.testing.assert_array_equal(jax.hessian(safe_norm)(x), np.zeros((3, 3)))
    # masked use on a padded edge: grad/Hessian of a smooth function of r
    f = lambda v: jnp.exp(-safe_norm(v)) * safe_divide(1.0, safe_norm(v))  # noqa: E731
    assert np.all(np.isfinite(jax.hessian(f)(x)))


def test_safe_norm_exact_away_from_zero(x64, rng):
    x = jnp.asarray(rng.normal(size=(5, 3)))
    np.testing.assert_allclose(safe_norm(x), np.linalg.norm(x, axis=-1), rtol=1e-15)
    assert safe_norm(x, keepdims=True).shape == (5, 1)
    assert safe_norm(x, axis=0).shape == (3,)
    v = x[0]
    np.testing.assert_allclose(
        jax.grad(safe_norm)(v), v / np.linalg.norm(v), rtol=1e-14
    )
    r = np.linalg.norm(v)
    expected = (np.eye(3) - np.outer(v, v) / r**2) / r
    np.testing.assert_allclose(
        jax.hessian(safe_norm)(v), expected, rtol=1e-12, atol=1e-14
    )


def test_safe_norm_eps_threshold(x64):
    x = jnp.array([1e-3, 0.0, 0.0])
    assert safe_norm(x, eps=1e-2) == 0.0
    assert safe_norm(x, eps=1e-4) == pytest.approx(1e-3)


def test_safe_norm_float32_dtype():
    x = jnp.ones((2, 3), jnp.float32)
    assert safe_norm(x).dtype == jnp.float32


@pytest.mark.usefixtures("x64", "debug_nans")
def test_safe_divide():
    num, den = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 0.0, -1.0])
    np.testing.assert_array_equal(safe_divide(num, den), [0.5, 0.0, -3.0])
    np.testing.assert_array_equal(
        safe_divide(num, den, fill_value=7.0), [0.5, 7.0, -3.0]
    )
    hess = jax.hessian(lambda d: jnp.sum(safe_divide(1.0, d)))(jnp.zeros(3))
    np.testing.assert_array_equal(hess, np.zeros((3, 3)))
    grad = jax.grad(lambda d: safe_divide(1.0, d))(2.0)
    assert grad == pytest.approx(-0.25)
