"""Public API: long_range, solver bundles, validation, methods, channels, dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.electrostatics import (
    api,
    ewald,
    kgrid,
    long_range,
    prepare_ewald,
    prepare_solver,
)
from polmp.electrostatics.direct import direct_energy
from tests.electrostatics.systems import random_system

CELL = np.array([[7.0, 0.0, 0.0], [0.8, 7.5, 0.0], [-0.5, 0.6, 8.0]])


def system(rng, n=8, cell=CELL):
    return random_system(rng, n, cell)


def test_long_range_assembles_energy_and_response(x64, rng):
    positions, q, mu, theta, kappa, alpha = system(rng)
    e_ext = np.array([0.05, 0.0, -0.1])
    out = long_range(
        positions, q, mu, theta, kappa, alpha, cell=CELL, accuracy=1e-8, e_ext=e_ext
    )
    grid = kgrid.prepare_kgrid(CELL, accuracy=1e-8)
    e, phi, field = ewald.ewald_energy_potential_field(
        positions, CELL, q, mu, theta, grid, sigma=1.0
    )
    np.testing.assert_allclose(out.phi, phi, rtol=1e-12)
    np.testing.assert_allclose(out.field, field, rtol=1e-12)
    np.testing.assert_allclose(out.dq, -kappa * phi, rtol=1e-12)
    tot = field + e_ext
    np.testing.assert_allclose(out.dmu, np.einsum("nab,nb->na", alpha, tot), rtol=1e-12)
    expected = (
        float(e)
        - 0.5 * float(np.sum(kappa * phi**2))
        - 0.5 * float(np.einsum("na,nab,nb->", tot, alpha, tot))
    )
    assert float(out.energy) == pytest.approx(expected, rel=1e-12)
    # without response terms: E_elec only, dq/dmu None
    bare = long_range(positions, q, mu, theta, cell=CELL, accuracy=1e-8)
    assert bare.dq is None and bare.dmu is None
    assert float(bare.energy) == pytest.approx(float(e), rel=1e-12)


def test_methods_agree(x64, rng):
    positions, q, mu, theta, kappa, alpha = system(rng, n=6)
    kw = dict(cell=CELL, accuracy=1e-7)
    e_ew = long_range(positions, q, mu, None, kappa, alpha, method="ewald", **kw)
    e_pme = long_range(positions, q, mu, None, kappa, alpha, method="pme", **kw)
    assert float(e_pme.energy) == pytest.approx(float(e_ew.energy), rel=1e-5)
    np.testing.assert_allclose(e_pme.phi, e_ew.phi, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e_pme.field, e_ew.field, rtol=1e-3, atol=1e-3)
    # non-periodic: auto -> direct (DIRECT's module), same numbers as calling it
    d = long_range(positions, q, mu, theta)
    ref = float(direct_energy(positions, q, mu, theta, sigma=1.0))
    assert float(d.energy) == pytest.approx(ref, rel=1e-12)


def test_channels_add_and_keep_their_axis(x64, rng):
    positions, q, mu, theta, kappa, alpha = system(rng)
    q2 = np.stack([q, -0.5 * q], 1)
    mu2 = np.stack([mu, 2 * mu], 1)
    kw = dict(cell=CELL, accuracy=1e-8)
    both = long_range(positions, q2, mu2, theta, kappa, alpha, **kw)
    assert both.phi.shape == (8, 2) and both.field.shape == (8, 2, 3)
    assert both.dq.shape == (8, 2) and both.dmu.shape == (8, 2, 3)
    # a theta without a channel axis belongs to channel 0 only (counted once)
    parts = [
        long_range(positions, q2[:, c], mu2[:, c], theta * (c == 0), kappa, alpha, **kw)
        for c in range(2)
    ]
    assert float(both.energy) == pytest.approx(
        sum(float(p.energy) for p in parts), rel=1e-12
    )
    np.testing.assert_allclose(both.dmu[:, 1], parts[1].dmu, rtol=1e-12)
    one = long_range(positions, q[:, None], mu[:, None], None, **kw)
    plain = long_range(positions, q, mu, None, **kw)
    assert one.phi.shape == (8, 1) and plain.phi.shape == (8,)
    assert float(one.energy) == pytest.approx(float(plain.energy), rel=1e-13)


def test_solver_bundle_jit_and_cell_gradient(x64, rng):
    positions, q, mu, theta, kappa, alpha = system(rng)
    solver = prepare_ewald(CELL, accuracy=1e-8)

    @jax.jit
    def total(r, c):
        return solver.long_range_fn(r, c, q, mu, theta, kappa, alpha).energy

    ref = long_range(positions, q, mu, theta, kappa, alpha, cell=CELL, accuracy=1e-8)
    assert float(total(positions, CELL)) == pytest.approx(float(ref.energy), rel=1e-12)
    g_jit = jax.grad(total, argnums=1)(positions, CELL)
    g_api = jax.grad(
        lambda c: (
            long_range(
                positions, q, mu, theta, kappa, alpha, cell=c, accuracy=1e-8
            ).energy
        )
    )(jnp.asarray(CELL))
    np.testing.assert_allclose(g_jit, g_api, rtol=1e-10)
    e_only = jax.jit(solver.energy_fn)(positions, CELL, q, mu, theta)
    bare = long_range(positions, q, mu, theta, cell=CELL, accuracy=1e-8)
    assert float(e_only) == pytest.approx(float(bare.energy), rel=1e-12)
    # prepare_solver picks the same method as long_range(auto)
    assert prepare_solver(CELL, num_atoms=8).method == "ewald"  # quadrupoles, small N
    assert prepare_solver(CELL, num_atoms=10**5).method == "pme"
    assert prepare_solver(None).method == "direct"


def test_dtype_follows_positions_and_float32_accuracy(rng):
    positions, q, mu, theta, kappa, alpha = system(rng)
    f32 = [np.asarray(x, np.float32) for x in (positions, q, mu, kappa)]
    out = long_range(*f32[:3], None, f32[3], None, cell=CELL, accuracy=1e-6)
    assert out.energy.dtype == jnp.float32 and out.phi.dtype == jnp.float32


def test_les_compat_flag(x64, rng):
    positions, q, *_ = system(rng)
    les = long_range(positions, q, cell=CELL, les_compat=True)
    grid = kgrid.prepare_kgrid(CELL, les_compat=True, max_multipole_order=0)
    ref = ewald.ewald_energy(positions, CELL, q, None, None, grid, sigma=1.0)
    assert float(les.energy) == pytest.approx(float(ref), rel=1e-12)
    with pytest.raises(ValueError, match="les_compat"):
        long_range(positions, q, cell=CELL, les_compat=True, method="pme")


def _bad(match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        long_range(*args, **kwargs)


def test_validation_errors(x64, rng):
    positions, q, mu, theta, kappa, alpha = system(rng)
    nan_pos = positions.copy()
    nan_pos[2, 1] = np.nan
    _bad("NaN", nan_pos, q, cell=CELL)
    _bad("NaN", positions, np.where(np.arange(8) == 3, np.inf, q), cell=CELL)
    _bad("q must have shape", positions, q[:5], cell=CELL)
    _bad("mu must have shape", positions, q, mu[:, :2], cell=CELL)
    _bad("theta must have shape", positions, q, mu, theta[:4], cell=CELL)
    _bad(
        "theta must be symmetric",
        positions,
        q,
        mu,
        theta + np.triu(np.ones((3, 3))),
        cell=CELL,
    )
    _bad("kappa must be >= 0", positions, q, kappa=-kappa, cell=CELL)
    _bad("kappa must have shape", positions, q, kappa=kappa[:3], cell=CELL)
    skew = alpha.copy()
    skew[:, 0, 1] += 0.1
    _bad("alpha must be symmetric", positions, q, alpha=skew, cell=CELL)
    _bad("positive semi-definite", positions, q, alpha=-alpha, cell=CELL)
    _bad("alpha must be >= 0", positions, q, alpha=-np.ones(8), cell=CELL)
    _bad("alpha must have shape", positions, q, alpha=np.ones((8, 3)), cell=CELL)
    _bad("singular", positions, q, cell=np.diag([5.0, 5.0, 0.0]))
    _bad("left-handed", positions, q, cell=CELL[[1, 0, 2]])
    _bad("unknown method", positions, q, cell=CELL, method="p3m")
    _bad("needs a periodic cell", positions, q, method="ewald")
    _bad("non-periodic", positions, q, cell=CELL, method="direct")
    _bad("sigma must be > 0", positions, q, cell=CELL, sigma=0.0)
    _bad("accuracy", positions, q, cell=CELL, accuracy=0.0)
    _bad("e_ext must have shape", positions, q, cell=CELL, e_ext=np.ones(2))
    _bad("slab_axis", positions, q, cell=CELL, slab_axis=3)
    _bad("atom_mask", positions, q, cell=CELL, atom_mask=np.ones(3, bool))
    p32, q32 = positions.astype(np.float32), q.astype(np.float32)
    _bad("float32", p32, q32, cell=CELL, accuracy=1e-8)
    # inside jit the cell must come through a prepared solver
    with pytest.raises(ValueError, match="prepare_ewald"):
        jax.jit(lambda c: long_range(positions, q, cell=c).energy)(CELL)


def test_auto_method_and_padding(x64, rng):
    positions, q, mu, theta, kappa, alpha = system(rng)
    pad = 2
    pp = np.concatenate([positions, np.zeros((pad, 3))])
    qp = np.concatenate([q, np.ones(pad)])
    mp_ = np.concatenate([mu, np.ones((pad, 3))])
    kp = np.concatenate([kappa, np.ones(pad)])
    ap = np.concatenate([alpha, np.tile(np.eye(3), (pad, 1, 1))])
    mask = np.arange(8 + pad) < 8
    ref = long_range(positions, q, mu, None, kappa, alpha, cell=CELL)
    out = long_range(pp, qp, mp_, None, kp, ap, cell=CELL, atom_mask=mask)
    assert float(out.energy) == pytest.approx(float(ref.energy), rel=1e-12)
    assert np.all(np.asarray(out.dq[8:]) == 0) and np.all(np.asarray(out.dmu[8:]) == 0)
    assert api.choose_method(None, 8) == "direct"
    assert api.choose_method(CELL, 8, max_multipole_order=2) == "ewald"
    water = np.eye(3) * 12.429
    assert (
        api.choose_method(water, 192, max_multipole_order=0) == "pme"
    )  # measured 2 vs 30 ms
    # quadrupoles: order-6 PME needs a fine mesh (Ewald cheaper, 47 vs 89 ms); the
    # default order for quadrupoles is 8 (as long_range uses), whose mesh is cheaper
    assert api.choose_method(water, 192, max_multipole_order=2, pme_order=6) == "ewald"
    assert api.choose_method(water, 192, max_multipole_order=2) == "pme"


def test_slab_axis_adds_correction_to_energy_and_fields(x64, rng):
    from polmp.electrostatics import response

    cell = np.diag([7.0, 7.5, 25.0])
    positions, q, mu, _, kappa, alpha = system(rng, cell=np.diag([7.0, 7.5, 5.0]))
    kw = dict(cell=cell, accuracy=1e-6)
    plain = long_range(positions, q, mu, **kw)
    slab = long_range(positions, q, mu, slab_axis=2, **kw)
    e_slab = response.slab_correction(positions, cell, q, mu, axis=2)
    assert float(slab.energy) == pytest.approx(float(plain.energy + e_slab), rel=1e-12)
    phi_s, field_s = response.slab_potential_field(positions, cell, q, mu, axis=2)
    np.testing.assert_allclose(slab.phi, plain.phi + phi_s, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        slab.field, plain.field + field_s, rtol=1e-12, atol=1e-12
    )
    # the response sees the corrected field
    resp = long_range(positions, q, mu, None, kappa, alpha, slab_axis=2, **kw)
    np.testing.assert_allclose(resp.dq, -kappa * slab.phi, rtol=1e-12)
