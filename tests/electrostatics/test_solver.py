"""Prepared solvers: trace-time and checkify validation, cell range, memory guards,
the float32 floor, the split method, and long_range's host-only contract."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from polmp.electrostatics import (
    api,
    kgrid,
    long_range,
    pme,
    prepare_direct,
    prepare_ewald,
    prepare_pme_solver,
    prepare_solver,
)
from tests.electrostatics.systems import random_system

CELL = np.array([[7.0, 0.0, 0.0], [0.8, 7.5, 0.0], [-0.5, 0.6, 8.0]])


def system(rng, n=8, cell=CELL):
    return random_system(rng, n, cell)


@pytest.fixture(scope="module")
def solvers():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield {
            "ewald": prepare_ewald(CELL, accuracy=1e-8, max_cell_scale=1.1),
            "pme": prepare_pme_solver(CELL, accuracy=1e-6, max_multipole_order=1),
            "direct": prepare_direct(),
        }
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("method", ["ewald", "pme", "direct"])
def test_static_errors_at_trace_time(x64, rng, solvers, method):
    """Wrong shapes give a clear ValueError when traced, never a deep TypeError or a
    bare AssertionError."""
    positions, q, mu, _, kappa, alpha = system(rng)
    solver = solvers[method]
    fn = jax.jit(solver.long_range_fn)
    with pytest.raises(ValueError, match=r"q must have shape \(8,\)"):
        fn(positions, CELL, q[:5], mu)
    with pytest.raises(ValueError, match="mu must have shape"):
        fn(positions, CELL, q, mu[:, :2])
    with pytest.raises(ValueError, match="kappa must have shape"):
        fn(positions, CELL, q, mu, None, kappa[:3])
    with pytest.raises(ValueError, match="alpha must have shape"):
        fn(positions, CELL, q, mu, None, kappa, alpha[:, :2])
    with pytest.raises(ValueError, match="positions must be a floating"):
        fn(positions.astype(np.int32), CELL, q)
    if method != "direct":
        with pytest.raises(ValueError, match=r"cell must have shape \(3, 3\)"):
            fn(positions, CELL[:2], q)


def test_pme_kernel_wrong_length_q_is_a_value_error(x64, rng):
    positions, q, *_ = system(rng)
    spec = pme.prepare_pme(CELL, sigma=1.0, accuracy=1e-5, max_multipole_order=0)
    with pytest.raises(ValueError, match=r"q must have shape \(8,\)"):
        pme.pme_energy(positions, CELL, q[:5], None, None, spec, sigma=1.0)


@pytest.mark.parametrize("method", ["ewald", "pme", "direct"])
def test_checkify_catches_bad_values(x64, rng, solvers, method):
    positions, q, mu, theta, kappa, alpha = system(rng)
    solver = solvers[method]
    checked = jax.jit(solver.checked_long_range_fn)
    err, out = checked(positions, CELL, q, mu, theta, kappa, alpha)
    err.throw()  # valid inputs pass
    ref = jax.jit(solver.long_range_fn)(positions, CELL, q, mu, theta, kappa, alpha)
    assert float(out.energy) == float(ref.energy)
    nan_pos = positions.copy()
    nan_pos[3, 0] = np.nan
    skew = alpha.copy()
    skew[:, 0, 1] += 0.1
    cases = [
        ("positions contain NaN", (nan_pos, CELL, q, mu, theta, kappa, alpha)),
        ("kappa must be >= 0", (positions, CELL, q, mu, theta, -kappa, alpha)),
        ("alpha must be symmetric", (positions, CELL, q, mu, theta, kappa, skew)),
        ("positive semi-definite", (positions, CELL, q, mu, theta, kappa, -alpha)),
        (
            "theta must be symmetric",
            (positions, CELL, q, mu, theta + np.triu(np.ones(3)), kappa, alpha),
        ),
    ]
    if method != "direct":
        singular = CELL.copy()
        singular[2] = singular[0] + singular[1]
        cases += [
            ("singular", (positions, singular, q, mu, theta, kappa, alpha)),
            ("left-handed", (positions, CELL[[1, 0, 2]], q, mu, theta, kappa, alpha)),
        ]
    for match, args in cases:
        err, _ = checked(*args)
        with pytest.raises(Exception, match=match):
            err.throw()
    # a padded atom is not checked
    mask = np.arange(8) != 3
    err, _ = checked(nan_pos, CELL, q, mu, theta, kappa, alpha, None, mask)
    err.throw()


def test_cell_range_traced_scaled_cell_matches_fresh_preparation(x64, rng, solvers):
    """k = n @ B(traced cell): prepared for scale 1.1, the energy at a stretched cell
    equals a fresh preparation there within the accuracy; beyond, checkify raises."""
    positions, q, mu, theta, kappa, alpha = system(rng)
    solver = solvers["ewald"]
    frac = positions @ np.linalg.inv(CELL)
    stretch = np.array([[1.08, 0.02, 0.0], [0.0, 1.0, 0.03], [0.0, 0.0, 0.97]])
    for cell in (CELL @ stretch, 1.1 * CELL, 0.9 * CELL):
        pos = frac @ cell
        got = jax.jit(solver.energy_fn)(pos, cell, q, mu, theta)
        fresh = long_range(pos, q, mu, theta, cell=cell, accuracy=1e-8, method="ewald")
        assert float(got) == pytest.approx(float(fresh.energy), rel=1e-7, abs=1e-7)
        assert solver.covers(cell)
        err, _ = jax.jit(solver.checked_long_range_fn)(pos, cell, q, mu, theta)
        err.throw()
    # twice the cell: the k-set no longer converges (it was 8.6 % off), and it says so
    big = 2.0 * CELL
    assert not solver.covers(big)
    err, _ = jax.jit(solver.checked_long_range_fn)(frac @ big, big, q, mu, theta)
    with pytest.raises(Exception, match="leaves the range"):
        err.throw()
    # PME: the mesh is sized for the largest cell of the range
    wide = prepare_pme_solver(
        CELL, accuracy=1e-6, max_multipole_order=0, max_cell_scale=2
    )
    narrow = prepare_pme_solver(CELL, accuracy=1e-6, max_multipole_order=0)
    fresh_big = prepare_pme_solver(big, accuracy=1e-6, max_multipole_order=0)
    assert wide.spec.mesh_shape == fresh_big.spec.mesh_shape
    assert np.all(np.array(wide.spec.mesh_shape) > np.array(narrow.spec.mesh_shape))
    assert wide.covers(big) and not narrow.covers(big)


def test_float32_floor_applies_to_prepared_solvers(rng):
    positions, q, *_ = system(rng)
    previous = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        with pytest.raises(ValueError, match="float32"):  # x64 off: all float32
            prepare_ewald(CELL, accuracy=1e-12)
        jax.config.update("jax_enable_x64", True)
        solver = prepare_ewald(CELL, accuracy=1e-12, max_multipole_order=0)
        fn = jax.jit(solver.energy_fn)
        assert np.isfinite(float(fn(positions, CELL, q)))
        with pytest.raises(ValueError, match="float32"):
            fn(positions.astype(np.float32), CELL, q.astype(np.float32))
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_memory_guards(x64, rng):
    """8 atoms in a 1000 A box: no unbounded k-set; a clear error instead."""
    positions = rng.uniform(0, 1000, (8, 3))
    q = rng.normal(size=8)
    huge = np.eye(3) * 1000.0
    with pytest.raises(ValueError, match="cell=None"):
        long_range(positions, q, cell=huge)
    with pytest.raises(ValueError, match="max_kvectors"):
        prepare_ewald(huge)
    with pytest.raises(ValueError, match="max_kvectors"):
        kgrid.prepare_kgrid(huge)
    with pytest.raises(ValueError, match="max_mesh_points"):
        prepare_pme_solver(huge)
    # the cost model sees memory: Ewald over its cap -> PME, and the reverse
    water = np.eye(3) * 12.429
    assert api.plan_solver(water, 8).method == "ewald"
    assert api.plan_solver(water, 8, max_kvectors=100).method == "pme"
    assert api.plan_solver(water, 10**5, max_mesh_points=100).method == "ewald"


def test_long_range_is_host_only_and_says_so(x64, rng):
    positions, q, mu, *_ = system(rng)
    with pytest.raises(ValueError, match="prepared solver"):
        jax.jit(lambda r: long_range(r, q, mu, cell=CELL).energy)(positions)
    with pytest.raises(ValueError, match="prepared solver"):
        jax.vmap(lambda r: long_range(r, q, cell=CELL).energy)(positions[None])
    # grad tracers carry values: validated exactly as plain arrays
    bad = q.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jax.grad(lambda x: long_range(positions, x, cell=CELL).energy)(bad)
    g = jax.grad(lambda r: long_range(r, q, mu, cell=CELL).energy)(positions)
    assert np.all(np.isfinite(g))


def test_prepare_solver_builds_the_solver_long_range_uses(x64, rng):
    """One rule: method, PME order and mesh of prepare_solver == long_range's."""
    positions, q, mu, theta, kappa, alpha = system(rng, n=12)
    for order, args in ((0, (q,)), (1, (q, mu)), (2, (q, mu, theta))):
        for method in ("auto", "ewald", "pme"):
            solver = prepare_solver(
                CELL, method=method, num_atoms=12, max_multipole_order=order
            )
            if method != "auto":
                assert solver.method == method
            if solver.method == "pme":
                assert solver.spec.order == api.pme_order_for(order)
            out = jax.jit(solver.long_range_fn)(positions, CELL, *args)
            ref = long_range(positions, *args, cell=CELL, method=method)
            np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-13)
            np.testing.assert_allclose(out.phi, ref.phi, rtol=1e-12, atol=1e-14)


def test_split_method_reaches_point_multipoles(x64, rng):
    """method='split': the erfc real-space + reciprocal split.  For sigma > 0 it equals
    the plain Ewald sum (a charged cell: the background term counts), and for point
    multipoles (sigma = 0) its energy does not depend on the split width."""
    positions, q, mu, theta, kappa, alpha = system(rng)
    charged = q + 0.3
    kw = dict(cell=CELL, accuracy=1e-10)
    ewald = long_range(
        positions, charged, mu, theta, kappa, alpha, method="ewald", **kw
    )
    split = long_range(
        positions, charged, mu, theta, kappa, alpha, method="split", **kw
    )
    assert float(split.energy) == pytest.approx(float(ewald.energy), rel=1e-9)
    for name in ("phi", "field", "dq", "dmu"):
        np.testing.assert_allclose(
            getattr(split, name), getattr(ewald, name), rtol=1e-8, atol=1e-9
        )
    point = long_range(positions, q, mu, None, method="split", sigma=0.0, **kw)
    # independent reference: the same split with another width, by hand
    from polmp.electrostatics import ewald as ew
    from polmp.electrostatics import realspace

    s = 1.7
    grid = kgrid.prepare_kgrid(CELL, sigma=s, accuracy=1e-12, max_multipole_order=1)
    pairs = realspace.prepare_realspace(
        positions, CELL, True, realspace.realspace_cutoff(s, 1e-12, 3)
    )
    ref = ew.ewald_energy(positions, CELL, q, mu, None, grid, sigma=s)
    ref = ref + realspace.realspace_energy(
        positions, CELL, q, mu, None, pairs, sigma=0.0, sigma_split=s
    )
    assert float(point.energy) == pytest.approx(float(ref), rel=1e-8)
    with pytest.raises(ValueError, match="method='split'"):
        long_range(positions, q, cell=CELL, sigma=0.0)
