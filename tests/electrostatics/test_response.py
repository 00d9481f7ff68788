"""One-shot response (dq, dmu, U_iq, U_iu), self-consistent reference, slab term."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.electrostatics import ewald, kgrid, response
from polmp.units import COULOMB
from tests.electrostatics.systems import random_multipoles, random_psd

SIGMA = 1.0
CELL = np.array([[7.0, 0.0, 0.0], [0.8, 7.5, 0.0], [-0.5, 0.6, 8.0]])


def system(rng, n=10):
    return random_multipoles(rng, n, CELL)


def test_formulas_scalar_and_tensor(x64, rng):
    n = 6
    phi = rng.normal(size=n)
    field = rng.normal(size=(n, 3))
    kappa = rng.uniform(0.0, 0.1, n)
    alpha_t = random_psd(rng, n)
    e_ext = np.array([0.1, -0.2, 0.05])
    res = response.one_shot_response(phi, field, kappa, alpha_t, e_ext)
    e = field + e_ext
    np.testing.assert_allclose(res.dq, -kappa * phi, rtol=1e-14)
    np.testing.assert_allclose(res.dmu, np.einsum("nab,nb->na", alpha_t, e), rtol=1e-13)
    assert float(res.u_q) == pytest.approx(-0.5 * np.sum(kappa * phi**2), rel=1e-13)
    u_mu = -0.5 * np.einsum("na,nab,nb->", e, alpha_t, e)
    assert float(res.u_mu) == pytest.approx(u_mu, rel=1e-13)
    assert (
        float(res.u_mu) < 0 and float(res.u_q) <= 0
    )  # PSD alpha, kappa >= 0: stabilising
    # an isotropic tensor equals the scalar form
    a = rng.uniform(0, 0.1, n)
    iso = response.one_shot_response(
        phi, field, None, a[:, None, None] * np.eye(3), e_ext
    )
    sca = response.one_shot_response(phi, field, None, a, e_ext)
    np.testing.assert_allclose(iso.dmu, sca.dmu, rtol=1e-14)
    assert float(iso.u_mu) == pytest.approx(float(sca.u_mu), rel=1e-14)
    # channels: per-atom kappa/alpha broadcast over channels
    res_c = response.one_shot_response(
        np.stack([phi, 2 * phi], 1), np.stack([field, field], 1), kappa, a
    )
    assert res_c.dq.shape == (n, 2) and res_c.dmu.shape == (n, 2, 3)
    np.testing.assert_allclose(res_c.dq[:, 1], -2 * kappa * phi, rtol=1e-14)
    # padding
    mask = np.arange(n) < 4
    res_m = response.one_shot_response(phi, field, kappa, alpha_t, e_ext, mask)
    assert np.all(np.asarray(res_m.dq[4:]) == 0) and np.all(
        np.asarray(res_m.dmu[4:]) == 0
    )


def test_dipole_in_uniform_field_sign(x64):
    """An isolated polarizable atom in E_ext: dmu along +E_ext, U = -1/2 alpha E^2."""
    res = response.one_shot_response(
        jnp.zeros(1),
        jnp.zeros((1, 3)),
        None,
        jnp.array([0.2]),
        jnp.array([0.0, 0.0, 0.5]),
    )
    np.testing.assert_allclose(res.dmu, [[0.0, 0.0, 0.1]])
    assert float(res.u_mu) == pytest.approx(-0.5 * 0.2 * 0.25)


def test_response_energy_gradients(x64, rng):
    """dE_lr/dkappa_i = -phi_i^2/2 and dE_lr/dalpha_i = -|E_i|^2/2 (scalar alpha)."""
    positions, q, mu, theta = system(rng)
    grid = kgrid.prepare_kgrid(CELL, accuracy=1e-8)
    phi, field = ewald.ewald_potential_field(
        positions, CELL, q, mu, theta, grid, sigma=SIGMA
    )

    def u(kappa, alpha):
        r = response.one_shot_response(phi, field, kappa, alpha)
        return r.u_q + r.u_mu

    gk, ga = jax.grad(u, argnums=(0, 1))(np.zeros(10), np.zeros(10))
    np.testing.assert_allclose(gk, -0.5 * phi**2, rtol=1e-13)
    np.testing.assert_allclose(ga, -0.5 * np.sum(field**2, 1), rtol=1e-13)


def _energy_fn(positions, theta_fixed, grid):
    @jax.jit
    def energy_fn(q, mu, theta):
        return ewald.ewald_energy(positions, CELL, q, mu, theta, grid, sigma=SIGMA)

    return energy_fn


def test_scf_is_stationary(x64, rng):
    positions, q, mu, theta = system(rng)
    grid = kgrid.prepare_kgrid(CELL, accuracy=1e-5)  # identities hold for any k-set
    kappa = rng.uniform(0.0, 0.02, 10)
    alpha = random_psd(rng, 10, 0.01)
    e_ext = np.array([0.0, 0.1, -0.05])
    fn = _energy_fn(positions, theta, grid)
    scf = jax.jit(lambda *a: response.self_consistent_response(fn, *a, tol=1e-12))(
        q, mu, theta, kappa, alpha, e_ext
    )
    assert float(scf.residual) < 1e-9
    # the fields of the *total* (permanent + induced) moments reproduce the induced ones
    phi_t, field_t = ewald.ewald_potential_field(
        positions, CELL, q + scf.dq, mu + scf.dmu, theta, grid, sigma=SIGMA
    )
    np.testing.assert_allclose(scf.dq, -kappa * phi_t, rtol=1e-8, atol=1e-11)
    np.testing.assert_allclose(
        scf.dmu, np.einsum("nab,nb->na", alpha, field_t + e_ext), rtol=1e-8, atol=1e-11
    )

    # the functional F is stationary (and minimal) there: perturbing dq, dmu raises it
    @jax.jit
    def functional(dq, dmu):
        inv = np.linalg.inv(alpha)
        return (
            fn(q + dq, mu + dmu, theta)
            + 0.5 * jnp.sum(dq**2 / kappa)
            + 0.5 * jnp.einsum("na,nab,nb->", dmu, inv, dmu)
            - jnp.sum(dmu * e_ext)
        )

    f0 = float(functional(scf.dq, scf.dmu))
    assert f0 == pytest.approx(float(scf.energy), rel=1e-10)
    g = jax.jit(jax.grad(functional, argnums=(0, 1)))(scf.dq, scf.dmu)
    assert max(float(jnp.max(jnp.abs(x))) for x in g) < 1e-7
    for _ in range(3):
        d = 1e-3 * rng.normal(size=10), 1e-3 * rng.normal(size=(10, 3))
        assert float(functional(scf.dq + d[0], scf.dmu + d[1])) > f0


def test_scf_tends_to_one_shot_for_small_response(x64, rng):
    positions, q, mu, theta = system(rng)
    grid = kgrid.prepare_kgrid(CELL, accuracy=1e-5)
    fn = _energy_fn(positions, theta, grid)
    phi, field = ewald.ewald_potential_field(
        positions, CELL, q, mu, theta, grid, sigma=SIGMA
    )
    errors = []
    solve = jax.jit(lambda *a: response.self_consistent_response(fn, *a, tol=1e-13))
    for scale in (1e-2, 1e-3):
        kappa = np.full(10, 0.5 * scale)
        alpha = np.full(10, scale)
        one = response.one_shot_response(phi, field, kappa, alpha)
        scf = solve(q, mu, theta, kappa, alpha)
        u1 = float(one.u_q + one.u_mu)
        rel = abs(float(scf.response_energy) - u1) / abs(u1)
        errors.append(rel)
        np.testing.assert_allclose(scf.dq, one.dq, rtol=20 * scale, atol=1e-12)
    # the induced-induced coupling is first order in the response: error ~ scale
    assert errors[1] < 0.2 * errors[0] and errors[1] < 1e-2


def test_slab_correction_value_and_derivatives(x64, rng):
    positions, q, mu, _ = system(rng, 6)
    cell = np.diag([6.0, 7.0, 30.0])
    e = response.slab_correction(positions, cell, q, mu, axis=2)
    m_z = np.sum(q * positions[:, 2]) + np.sum(mu[:, 2])
    assert float(e) == pytest.approx(
        2 * math.pi * COULOMB * m_z**2 / np.linalg.det(cell)
    )
    phi, field = response.slab_potential_field(positions, cell, q, mu, axis=2)
    gq, gmu = jax.grad(
        lambda a, b: response.slab_correction(positions, cell, a, b, axis=2),
        argnums=(0, 1),
    )(q, mu)
    np.testing.assert_allclose(phi, gq, rtol=1e-12)
    np.testing.assert_allclose(field, -gmu, rtol=1e-12, atol=1e-14)


def test_slab_correction_removes_vacuum_dependence(x64, rng):
    """A neutral polar slab: with the correction, E barely depends on the gap."""
    n = 8
    positions = rng.uniform(0, 1, (n, 3)) * np.array([6.0, 6.0, 3.0])
    q = np.array([1.0, -1.0] * 4)
    positions[q > 0, 2] += 1.0  # a net dipole along z
    energies = {}
    for lz in (24.0, 48.0):
        cell = np.diag([6.0, 6.0, lz])
        grid = kgrid.prepare_kgrid(cell, accuracy=1e-6, max_multipole_order=0)
        e = float(ewald.ewald_energy(positions, cell, q, None, None, grid, sigma=SIGMA))
        energies[lz] = (
            e,
            e + float(response.slab_correction(positions, cell, q, axis=2)),
        )
    raw = abs(energies[24.0][0] - energies[48.0][0])
    corrected = abs(energies[24.0][1] - energies[48.0][1])
    assert corrected < 0.1 * raw
