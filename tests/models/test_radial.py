"""Radial basis and cutoff envelope: smooth at r_c, finite at r = 0."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.models.radial import bessel_basis, polynomial_envelope

RC = 4.0


def test_envelope_one_at_origin_zero_beyond_cutoff(x64):
    r = jnp.array([0.0, RC, RC + 1e-3, 2 * RC, 10.0])
    u = polynomial_envelope(r, RC)
    np.testing.assert_allclose(u, [1.0, 0.0, 0.0, 0.0, 0.0], atol=1e-14)
    inner = polynomial_envelope(jnp.linspace(0.0, RC * 0.999, 50), RC)
    assert jnp.all(inner > 0) and jnp.all(inner <= 1)


@pytest.mark.parametrize("p", [3, 6])
def test_envelope_first_two_derivatives_vanish_at_cutoff(x64, p):
    f = lambda r: polynomial_envelope(r, RC, p)  # noqa: E731
    d1, d2, d3 = jax.grad(f), jax.grad(jax.grad(f)), jax.grad(jax.grad(jax.grad(f)))
    for r in (RC - 1e-9, RC + 1e-9):
        assert abs(f(r)) < 1e-12
        assert abs(d1(r)) < 1e-8
        assert abs(d2(r)) < 1e-6
    # ... but not the third (from inside): the test can tell C2 from C-infinity.
    assert abs(d3(RC - 1e-9)) > 0.1


def test_envelope_rejects_low_order():
    with pytest.raises(ValueError):
        polynomial_envelope(jnp.array(1.0), RC, p=1)


def test_bessel_matches_formula_away_from_zero(x64):
    r = jnp.linspace(0.3, RC, 17)
    n = np.arange(1, 7)
    expected = np.sqrt(2 / RC) * np.sin(n * np.pi * r[:, None] / RC) / r[:, None]
    np.testing.assert_allclose(bessel_basis(r, RC, 6), expected, rtol=1e-12)
    assert bessel_basis(r.astype(jnp.float32), RC, 6).dtype == jnp.float32


def test_bessel_finite_value_grad_hessian_at_zero(x64):
    b0 = bessel_basis(jnp.array(0.0), RC, 5)
    np.testing.assert_allclose(
        b0, np.sqrt(2 / RC) * np.arange(1, 6) * np.pi / RC, rtol=1e-12
    )
    g = jax.jacfwd(lambda r: bessel_basis(r, RC, 5))(0.0)
    h = jax.hessian(lambda r: bessel_basis(r, RC, 5))(0.0)
    assert np.all(np.isfinite(g)) and np.all(np.isfinite(h))
    # Even function of r: zero slope at the origin.
    np.testing.assert_allclose(g, 0.0, atol=1e-12)
