"""Reciprocal-space Ewald sum of smeared multipoles, k-grids and self energies.

References independent of polmp's code: a numpy complex k-sum over a full integer cube
(both signs of k, weight 1), the Madelung constant of the simple cubic lattice, the
lattice sum of point dipoles in a cubic cell with tinfoil boundaries, and finite
differences.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.electrostatics import ewald, kgrid, multipoles
from polmp.units import COULOMB, EPSILON0
from tests.electrostatics.systems import random_multipoles
from tests.utils import shared_path

SIGMA = 1.0
#: Madelung constant of one charge in a simple cubic lattice with a uniform background:
#: E = -XI k_e q^2 / (2 L).
XI_SC = 2.837297479480619

TRICLINIC = np.array([[6.0, 0.0, 0.0], [1.2, 6.5, 0.0], [-0.8, 0.9, 7.0]])


def random_system(rng, cell, n=10, *, traceless=True, neutral=True):
    return random_multipoles(rng, n, cell, traceless=traceless, neutral=neutral)


def numpy_reference(positions, cell, q, mu, theta, sigma=SIGMA, n_max=11):
    """Full-cube numpy sum 1/(2 eps0 V) sum_{k!=0} exp(-s^2 k^2/2)/k^2 |S|^2 - Eself."""
    recip = 2.0 * np.pi * np.linalg.inv(cell).T
    r = np.arange(-n_max, n_max + 1)
    n = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    n = n[np.any(n != 0, axis=1)]
    k = n @ recip
    k2 = np.sum(k * k, axis=1)
    amp = q[:, None] + 1j * (mu @ k.T) - 0.5 * np.einsum("ka,nab,kb->nk", k, theta, k)
    s = np.sum(amp * np.exp(1j * positions @ k.T), axis=0)
    e_rec = np.sum(np.exp(-0.5 * sigma**2 * k2) / k2 * np.abs(s) ** 2)
    e_rec /= 2.0 * EPSILON0 * abs(np.linalg.det(cell))
    tr = np.trace(theta, axis1=1, axis2=2)
    # symmetric theta: <(k^T A k)^2> = k^4 (tr^2 + 2|A|^2)/15, cross term -q tr k^2/3
    e_self = np.sum(
        q**2 / sigma
        + (np.sum(mu**2, 1) - q * tr) / (3 * sigma**3)
        + (tr**2 + 2 * np.sum(theta**2, axis=(1, 2))) / (20 * sigma**5)
    ) / (2.0 * EPSILON0 * (2.0 * np.pi) ** 1.5)
    return e_rec - e_self


def energy(positions, cell, q, mu, theta, grid, **kw):
    return float(
        ewald.ewald_energy(positions, cell, q, mu, theta, grid, sigma=SIGMA, **kw)
    )


# ----------------------------------------------------------------------------- k-grid


def test_k_cutoff_tail_and_monotone():
    from scipy.special import gammaincc

    for order in (0, 1, 2):
        kc = kgrid.k_cutoff_for_accuracy(1.0, 1e-6, order)
        assert gammaincc(order + 0.5, kc**2 / 2) <= 1e-6 * (1 + 1e-6)
        assert gammaincc(order + 0.5, (0.99 * kc) ** 2 / 2) > 1e-6
    assert kgrid.k_cutoff_for_accuracy(1.0, 1e-10) > kgrid.k_cutoff_for_accuracy(
        1.0, 1e-6
    )
    # the cutoff scales as 1/sigma
    assert math.isclose(
        kgrid.k_cutoff_for_accuracy(0.5, 1e-6),
        2 * kgrid.k_cutoff_for_accuracy(1.0, 1e-6),
    )


@pytest.mark.parametrize(
    "cell",
    [
        np.diag([60.0, 7.0, 6.0]),  # long cell: n_1 must reach k_c * 60 / (2 pi) ~ 56
        np.array([[5.0, 0, 0], [4.6, 2.0, 0], [0.3, 0.2, 6.0]]),  # strongly sheared
    ],
)
def test_half_space_set_is_the_full_sphere(cell):
    k_c = kgrid.k_cutoff_for_accuracy(1.0, 1e-6, 2)
    idx = kgrid.half_space_indices(cell, k_c)
    recip = 2 * np.pi * np.linalg.inv(cell).T
    # brute force over a generous cube (independent of the per-direction range rule)
    m = np.ceil(k_c / np.min(np.linalg.norm(recip, axis=1)) * 3).astype(int) + 2
    m = min(m, 70)
    r = np.arange(-m, m + 1)
    n = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    k2 = np.sum((n @ recip) ** 2, axis=1)
    full = n[(k2 > 0) & (k2 <= k_c**2)]
    assert 2 * len(idx) == len(full)
    got = {tuple(x) for x in idx.tolist()} | {tuple(x) for x in (-idx).tolist()}
    assert got == {tuple(x) for x in full.tolist()}
    if cell[0, 0] == 60.0:
        assert np.max(np.abs(idx[:, 0])) >= 50


def test_les_compat_is_the_inclusive_sphere():
    cell = np.diag([8.0, 8.0, 8.0])  # |k| = pi exactly for n = (4, 0, 0): on the sphere
    grid = kgrid.prepare_kgrid(cell, les_compat=True)
    assert grid.les_compat and grid.k_cutoff == pytest.approx(np.pi)
    r = np.arange(-6, 7)
    n = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    n2 = np.sum(n * n, axis=1)
    assert 2 * grid.num_kvectors == np.count_nonzero((n2 > 0) & (n2 <= 16))
    assert (4, 0, 0) in {tuple(x) for x in grid.indices.tolist()}


def test_kgrid_covers_and_margin():
    cell = np.diag([10.0, 10.0, 10.0])
    grid = kgrid.prepare_kgrid(cell, accuracy=1e-6, margin=0.03)
    assert kgrid.kgrid_covers(grid, cell)
    assert kgrid.kgrid_covers(grid, cell * 1.02)  # expansion within the margin
    assert kgrid.kgrid_covers(grid, cell * 0.8)  # compression is always covered
    assert not kgrid.kgrid_covers(grid, cell * 1.2)
    tight = kgrid.prepare_kgrid(cell, accuracy=1e-6)
    assert tight.num_kvectors < grid.num_kvectors


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("traceless", [True, False])
def test_matches_numpy_full_cube(x64, rng, traceless):
    positions, q, mu, theta = random_system(rng, TRICLINIC, traceless=traceless)
    grid = kgrid.prepare_kgrid(TRICLINIC, sigma=SIGMA, accuracy=1e-13)
    ref = numpy_reference(positions, TRICLINIC, q, mu, theta)
    got = energy(positions, TRICLINIC, q, mu, theta, grid)
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-10)


def test_each_multipole_term_and_sign(x64, rng):
    """q-only, mu-only and theta-only systems each match (catches sign slips)."""
    positions, q, mu, theta = random_system(rng, TRICLINIC)
    grid = kgrid.prepare_kgrid(TRICLINIC, sigma=SIGMA, accuracy=1e-13)
    z, zm, zt = np.zeros_like(q), np.zeros_like(mu), np.zeros_like(theta)
    for args in [(q, zm, zt), (z, mu, zt), (z, zm, theta), (q, mu, zt), (q, zm, theta)]:
        ref = numpy_reference(positions, TRICLINIC, *args)
        got = energy(positions, TRICLINIC, *args, grid)
        assert got == pytest.approx(ref, rel=1e-10, abs=1e-10)


def test_single_charge_madelung_and_self_energy(x64):
    """One Gaussian charge in a cubic box with background:

    E_bare = E_self + E_Madelung + pi k_e q^2 sigma^2 / V,
    E_Madelung = -XI k_e q^2/(2L),
    E_self = k_e q^2 / (sqrt(2 pi) sigma).
    """
    q = np.array([1.3])
    for length in (12.0, 20.0):
        cell = np.eye(3) * length
        grid = kgrid.prepare_kgrid(
            cell, sigma=SIGMA, accuracy=1e-14, max_multipole_order=0
        )
        bare = float(
            ewald.reciprocal_energy(
                np.zeros((1, 3)), cell, q, None, None, grid, sigma=SIGMA
            )
        )
        e_self = COULOMB * q[0] ** 2 / (math.sqrt(2 * math.pi) * SIGMA)
        assert float(multipoles.self_energy(q, sigma=SIGMA)) == pytest.approx(
            e_self, rel=1e-14
        )
        predicted = (
            e_self
            - XI_SC * COULOMB * q[0] ** 2 / (2 * length)
            + math.pi * COULOMB * q[0] ** 2 * SIGMA**2 / length**3
        )
        assert bare == pytest.approx(predicted, rel=1e-10)


def test_dipole_and_quadrupole_self_energy_coefficients(x64, rng):
    """A lone dipole in a cubic box: E_elec = -2 pi k_e mu^2/(3 V) (tinfoil lattice
    sum); a lone quadrupole: E_elec scales as 1/L^5 (E_self removes exactly the
    L-independent part).
    """
    mu = np.array([[0.3, -0.5, 0.4]])
    for length in (10.0, 16.0):
        cell = np.eye(3) * length
        grid = kgrid.prepare_kgrid(
            cell, sigma=SIGMA, accuracy=1e-14, max_multipole_order=1
        )
        e = float(
            ewald.ewald_energy(
                np.zeros((1, 3)), cell, np.zeros(1), mu, None, grid, sigma=SIGMA
            )
        )
        expected = -2 * math.pi * COULOMB * np.sum(mu**2) / (3 * length**3)
        assert e == pytest.approx(expected, rel=1e-8)
    theta = rng.normal(size=(3, 3))
    theta = theta + theta.T
    theta -= np.trace(theta) * np.eye(3) / 3
    scaled = []
    for length in (9.0, 15.0):
        cell = np.eye(3) * length
        grid = kgrid.prepare_kgrid(cell, sigma=SIGMA, accuracy=1e-14)
        e = float(
            ewald.ewald_energy(
                np.zeros((1, 3)),
                cell,
                np.zeros(1),
                None,
                theta[None],
                grid,
                sigma=SIGMA,
            )
        )
        scaled.append(e * length**5)
    e_self = float(multipoles.self_energy(np.zeros(1), None, theta[None], sigma=SIGMA))
    assert abs(scaled[0]) < 1e-3 * e_self * 9.0**5  # small, not an O(E_self) offset
    assert scaled[0] == pytest.approx(scaled[1], rel=1e-5)


def test_converged_energy_independent_of_accuracy(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC, n=12)
    e_self = float(multipoles.self_energy(q, mu, theta, sigma=SIGMA))
    g8 = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-8)
    g10 = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-10)
    assert g10.num_kvectors > g8.num_kvectors
    e8 = energy(positions, TRICLINIC, q, mu, theta, g8)
    e10 = energy(positions, TRICLINIC, q, mu, theta, g10)
    assert abs(e8 - e10) < 1e-8 * e_self


def test_translation_and_image_invariance(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-10)
    e0 = energy(positions, TRICLINIC, q, mu, theta, grid)
    shifted = positions + np.array([0.37, -1.9, 2.3])
    assert energy(shifted, TRICLINIC, q, mu, theta, grid) == pytest.approx(
        e0, rel=1e-10
    )
    imaged = positions + np.array([1, -2, 3]) @ TRICLINIC  # whole-lattice-vector image
    assert energy(imaged, TRICLINIC, q, mu, theta, grid) == pytest.approx(e0, rel=1e-10)


def test_cell_choice_invariance(x64, rng):
    """Same lattice, different basis (a_3 -> a_3 + a_1 + a_2; a_1 -> a_1 - a_2)."""
    cell = np.diag([6.5, 7.0, 7.5])
    positions, q, mu, theta = random_system(rng, cell)
    other = cell.copy()
    other[2] = cell[2] + cell[0] + cell[1]
    other[0] = cell[0] - cell[1]
    assert np.linalg.det(other) == pytest.approx(np.linalg.det(cell))
    e0 = energy(
        positions, cell, q, mu, theta, kgrid.prepare_kgrid(cell, accuracy=1e-10)
    )
    e1 = energy(
        positions, other, q, mu, theta, kgrid.prepare_kgrid(other, accuracy=1e-10)
    )
    assert e1 == pytest.approx(e0, rel=1e-9)


def test_supercell_gives_n_times_energy(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC, n=6)
    e1 = energy(
        positions,
        TRICLINIC,
        q,
        mu,
        theta,
        kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-10),
    )
    reps = [np.array([i, j, 0]) @ TRICLINIC for i in range(2) for j in range(2)]
    big_pos = np.concatenate([positions + s for s in reps])
    tile = [len(reps)] * 1
    big = TRICLINIC * np.array([[2], [2], [1]])
    e4 = energy(
        big_pos,
        big,
        np.tile(q, tile),
        np.tile(mu, tile + [1]),
        np.tile(theta, tile + [1, 1]),
        kgrid.prepare_kgrid(big, accuracy=1e-10),
    )
    assert e4 == pytest.approx(4 * e1, rel=1e-9)


def test_les_compat_offset_on_water(x64):
    import ase.io

    atoms = ase.io.read(
        shared_path("lesfit_water_rpbe_d3", "test-H2O_RPBE-D3.xyz"), index=0
    )
    cell = np.asarray(atoms.cell[:])
    positions = atoms.get_positions()
    q = np.where(atoms.numbers == 8, -0.8, 0.4)
    les = kgrid.prepare_kgrid(cell, les_compat=True)
    conv = kgrid.prepare_kgrid(cell, accuracy=1e-8, max_multipole_order=0)
    # inclusive sphere |n| <= L/2 of the cubic cell, half of it
    half = cell[0, 0] / 2
    r = np.arange(-7, 8)
    n = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    n2 = np.sum(n * n, axis=1)
    assert 2 * les.num_kvectors == np.count_nonzero((n2 > 0) & (n2 <= half**2))
    e_les = energy(positions, cell, q, None, None, les)
    e_conv = energy(positions, cell, q, None, None, conv)
    rel = abs(e_les - e_conv) / abs(e_conv)
    # Measured: 0.18 % of E_elec (0.62 eV) with these physical charges
    # (docs/method.md#les-compat: ~0.7 % with the reference's latent charges; random
    # neutral charges give 0.6-4 %).  The missing tail is ~erfc(pi sigma/sqrt 2)
    # of E_self.
    assert 0.0012 < rel < 0.003, rel
    e_self = float(multipoles.self_energy(q, sigma=SIGMA))
    tail = math.erfc(math.pi * SIGMA / math.sqrt(2)) * e_self
    assert abs(e_les - e_conv) == pytest.approx(tail, rel=0.3)
    assert e_les < e_conv  # a truncated positive sum minus the full E_self


# ------------------------------------------------------------------------- derivatives


def test_potential_field_match_autodiff(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-6)

    def e_fn(q_, mu_):
        return ewald.ewald_energy(
            positions, TRICLINIC, q_, mu_, theta, grid, sigma=SIGMA
        )

    dq, dmu = jax.grad(e_fn, argnums=(0, 1))(q, mu)
    phi, field = ewald.ewald_potential_field(
        positions, TRICLINIC, q, mu, theta, grid, sigma=SIGMA
    )
    np.testing.assert_allclose(phi, dq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(field, -dmu, rtol=1e-10, atol=1e-12)
    # charges only: mu None means no dipoles, and the field still comes out
    phi0, field0 = ewald.ewald_potential_field(
        positions, TRICLINIC, q, None, None, grid, sigma=SIGMA
    )
    g = jax.grad(
        lambda m: ewald.ewald_energy(
            positions, TRICLINIC, q, m, None, grid, sigma=SIGMA
        )
    )(np.zeros_like(mu))
    np.testing.assert_allclose(field0, -g, rtol=1e-10, atol=1e-12)


def test_channels_match_separate_calls(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC)
    q2 = np.stack([q, 0.5 * q[::-1]], axis=1)
    mu2 = np.stack([mu, -mu], axis=1)
    th2 = np.stack([theta, 2 * theta], axis=1)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-6)
    e, phi, field = ewald.ewald_energy_potential_field(
        positions, TRICLINIC, q2, mu2, th2, grid, sigma=SIGMA
    )
    assert e.shape == (2,) and phi.shape == (10, 2) and field.shape == (10, 2, 3)
    for c in range(2):
        ec, pc, fc = ewald.ewald_energy_potential_field(
            positions, TRICLINIC, q2[:, c], mu2[:, c], th2[:, c], grid, sigma=SIGMA
        )
        assert float(e[c]) == pytest.approx(float(ec), rel=1e-12)
        np.testing.assert_allclose(phi[:, c], pc, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(field[:, c], fc, rtol=1e-11, atol=1e-12)


def test_forces_match_finite_differences(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC, n=6)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-10)

    @jax.jit
    def e_fn(r):
        return ewald.ewald_energy(r, TRICLINIC, q, mu, theta, grid, sigma=SIGMA)

    forces = -np.asarray(jax.grad(e_fn)(positions))
    h = 1e-5
    for i, a in [(0, 0), (3, 1), (5, 2)]:
        dp = np.zeros_like(positions)
        dp[i, a] = h
        fd = -(float(e_fn(positions + dp)) - float(e_fn(positions - dp))) / (2 * h)
        assert forces[i, a] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    # Newton's third law for the k-space sum: total force vanishes
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-9)


def test_stress_matches_finite_strain(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC, n=6)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-10)
    # the latents are carried by the atoms; under a homogeneous strain a rigid dipole
    # would rotate/stretch, but here they are held fixed: the derivative is then the
    # partial strain derivative at fixed multipoles, the same in both evaluations.

    def e_fn(r, c):
        return ewald.ewald_energy(r, c, q, mu, theta, grid, sigma=SIGMA)

    @jax.jit
    def strained(eps):
        f = jnp.eye(3) + eps
        return e_fn(positions @ f, TRICLINIC @ f)

    g_r, g_c = jax.grad(e_fn, argnums=(0, 1))(positions, TRICLINIC)
    virial = positions.T @ np.asarray(g_r) + TRICLINIC.T @ np.asarray(g_c)  # dE/d eps
    np.testing.assert_allclose(
        virial, jax.grad(strained)(jnp.zeros((3, 3))), rtol=1e-10
    )
    h = 1e-6
    for a, b in [(0, 0), (0, 1), (2, 1), (2, 2)]:
        eps = np.zeros((3, 3))
        eps[a, b] = h
        fd = (float(strained(eps)) - float(strained(-eps))) / (2 * h)
        assert virial[a, b] == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_continuity_under_cell_deformation(x64, rng):
    """Default mode: re-preparing at a deformed cell agrees with the fixed set (to the
    accuracy); the les_compat set changes (a jump) when vectors cross its sphere."""
    cell = np.diag([8.0, 8.0, 8.0])
    positions, q, mu, theta = random_system(rng, cell, n=8)
    e_self = float(multipoles.self_energy(q, mu, theta, sigma=SIGMA))
    fixed = kgrid.prepare_kgrid(cell, accuracy=1e-9, margin=0.02)
    for s in (1.001, 1.01):
        deformed = cell * s
        fresh = kgrid.prepare_kgrid(deformed, accuracy=1e-9)
        e_fixed = energy(positions * s, deformed, q, mu, theta, fixed)
        e_fresh = energy(positions * s, deformed, q, mu, theta, fresh)
        assert abs(e_fixed - e_fresh) < 1e-8 * e_self
    # les_compat: cell 8 A puts n = (4,0,0) exactly on the sphere; 8.001 A keeps it,
    # 7.999 A drops it: the reference energy is discontinuous there.
    n_in = kgrid.prepare_kgrid(cell * 1.0001, les_compat=True).num_kvectors
    n_out = kgrid.prepare_kgrid(cell * 0.9999, les_compat=True).num_kvectors
    assert n_in > n_out


# ----------------------------------------------------------------------------- plumbing


def test_chunked_equals_unchunked(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-6)
    outs = [
        ewald.ewald_energy_potential_field(
            positions, TRICLINIC, q, mu, theta, grid, sigma=SIGMA, chunk_size=c
        )
        for c in (grid.num_kvectors, 7, 64)
    ]
    for o in outs[1:]:
        for a, b in zip(o, outs[0], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_padding_invariance_and_finite_gradients(x64, rng, debug_nans):
    positions, q, mu, theta = random_system(rng, TRICLINIC, n=8)
    grid = kgrid.prepare_kgrid(TRICLINIC, accuracy=1e-6)
    e0, phi0, field0 = ewald.ewald_energy_potential_field(
        positions, TRICLINIC, q, mu, theta, grid, sigma=SIGMA
    )
    pad = 3
    pp = np.concatenate([positions, np.zeros((pad, 3))])  # padded atoms stacked at 0
    qp = np.concatenate([q, np.ones(pad)])  # garbage latents on padding
    mp_ = np.concatenate([mu, np.ones((pad, 3))])
    tp = np.concatenate([theta, np.ones((pad, 3, 3))])
    mask = np.arange(8 + pad) < 8

    @jax.jit
    def f(r, c, q_, mu_, th_, m):
        return ewald.ewald_energy_potential_field(
            r, c, q_, mu_, th_, grid, sigma=SIGMA, atom_mask=m
        )

    e1, phi1, field1 = f(pp, TRICLINIC, qp, mp_, tp, mask)
    assert float(e1) == pytest.approx(float(e0), rel=1e-12)
    np.testing.assert_allclose(phi1[:8], phi0, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(field1[:8], field0, rtol=1e-11, atol=1e-12)
    assert np.all(np.asarray(phi1[8:]) == 0) and np.all(np.asarray(field1[8:]) == 0)

    def e_fn(r, c):
        return ewald.ewald_energy(r, c, qp, mp_, tp, grid, sigma=SIGMA, atom_mask=mask)

    g_r, g_c = jax.grad(e_fn, argnums=(0, 1))(pp, TRICLINIC)
    assert np.all(np.asarray(g_r[8:]) == 0)
    assert np.all(np.isfinite(np.asarray(g_c)))


def test_float32_close_to_float64(x64, rng):
    import ase.io

    atoms = ase.io.read(
        shared_path("lesfit_water_rpbe_d3", "test-H2O_RPBE-D3.xyz"), index=0
    )
    cell = np.asarray(atoms.cell[:])
    positions = (
        atoms.get_positions() + 30.0
    )  # far from the origin: phases must not suffer
    q = np.where(atoms.numbers == 8, -0.8, 0.4)
    mu = 0.05 * rng.normal(size=(len(q), 3))
    grid = kgrid.prepare_kgrid(cell, accuracy=1e-6, max_multipole_order=1)
    e64, phi64, f64 = ewald.ewald_energy_potential_field(
        positions, cell, q, mu, None, grid, sigma=SIGMA
    )
    f32 = [np.asarray(x, np.float32) for x in (positions, cell, q, mu)]
    e32, phi32, fl32 = ewald.ewald_energy_potential_field(
        f32[0], f32[1], f32[2], f32[3], None, grid, sigma=SIGMA
    )
    assert e32.dtype == jnp.float32 and phi32.dtype == jnp.float32
    assert float(e32) == pytest.approx(float(e64), rel=1e-5)
    assert np.max(np.abs(phi32 - phi64)) < 1e-5 * np.max(np.abs(phi64)) * 3
    assert np.max(np.abs(fl32 - f64)) < 1e-4 * np.max(np.abs(f64))


def test_structure_factor_matches_numpy(x64, rng):
    positions, q, mu, theta = random_system(rng, TRICLINIC, n=5)
    k = rng.normal(size=(7, 3))
    re, im = multipoles.structure_factor(positions, k, q, mu, theta)
    amp = q[:, None] + 1j * (mu @ k.T) - 0.5 * np.einsum("ka,nab,kb->nk", k, theta, k)
    s = np.sum(amp * np.exp(1j * positions @ k.T), axis=0)
    np.testing.assert_allclose(re, s.real, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(im, s.imag, rtol=1e-12, atol=1e-12)


def test_to_channels_shapes():
    q = jnp.zeros(4)
    m = multipoles.to_channels(q, jnp.zeros((4, 3)), jnp.zeros((4, 3, 3)))
    assert m.q.shape == (4, 1) and m.mu.shape == (4, 1, 3) and not m.has_channels
    m = multipoles.to_channels(
        jnp.zeros((4, 2)), jnp.zeros((4, 3)), jnp.zeros((4, 2, 3, 3))
    )
    assert m.mu.shape == (4, 2, 3) and m.theta.shape == (4, 2, 3, 3) and m.has_channels
    with pytest.raises(ValueError):
        multipoles.to_channels(q, jnp.zeros((4, 2, 3)))
    with pytest.raises(ValueError):
        multipoles.to_channels(jnp.zeros((4, 2)), jnp.zeros((4, 3, 3)))
    with pytest.raises(ValueError):
        multipoles.to_channels(q, jnp.zeros((5, 3)))


@pytest.mark.parametrize(
    "name, key", [("coulomb_test_frames.xyz", "q"), ("dipoles_test_frames.xyz", "mu")]
)
def test_point_multipoles_via_split_match_torchpme(x64, name, key):
    """Point multipoles (sigma = 0) = Ewald(sigma_split) + real-space erfc part, checked
    against torch-pme's stored references (first frame; the files carry ~1e-5 noise)."""
    import ase.io

    from polmp.electrostatics.realspace import (
        prepare_realspace,
        realspace_cutoff,
        realspace_energy,
    )

    atoms = ase.io.read(shared_path("torchpme_electrostatics_refs", name), index=0)
    positions, cell = atoms.get_positions(), np.asarray(atoms.cell[:])
    n = len(atoms)
    if key == "q":
        q, mu = atoms.arrays["initial_charges"], None
    else:
        q, mu = np.zeros(n), atoms.arrays["dipoles"]
    split = 1.2
    pairs = prepare_realspace(positions, cell, True, realspace_cutoff(split, 1e-12, 2))
    grid = kgrid.prepare_kgrid(cell, sigma=split, accuracy=1e-12)
    e_rec = ewald.ewald_energy(positions, cell, q, mu, None, grid, sigma=split)
    e_real = realspace_energy(
        positions, cell, q, mu, None, pairs, sigma=0.0, sigma_split=split
    )
    # neutral cells: no background term pi k_e Q^2 (split^2 - sigma^2)/V
    assert abs(q.sum()) < 1e-12
    e = float(e_rec + e_real)
    assert e == pytest.approx(atoms.calc.results["energy"], rel=3e-5)


def test_batched_cells_share_one_index_set(x64, rng):
    """A union k-set serves a batch of different cells under vmap (static shapes)."""
    cells = np.stack([TRICLINIC, np.diag([6.2, 6.8, 7.3])])
    systems = [random_system(rng, c, n=6) for c in cells]
    union = kgrid.prepare_kgrid(cells, accuracy=1e-10)
    stacked = [np.stack(x) for x in zip(*systems, strict=True)]

    def one(r, c, q, mu, th):
        return ewald.ewald_energy(r, c, q, mu, th, union, sigma=SIGMA)

    batch = jax.vmap(one)(stacked[0], cells, *stacked[1:])
    for g, cell in enumerate(cells):
        own = kgrid.prepare_kgrid(cell, accuracy=1e-10)
        assert union.num_kvectors >= own.num_kvectors
        ref = energy(*systems[g][:1], cell, *systems[g][1:], own)
        assert float(batch[g]) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="les_compat"):
        kgrid.prepare_kgrid(cells, les_compat=True)
