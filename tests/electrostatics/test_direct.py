"""Radial kernels, pair contractions and the non-periodic direct sum.

References used here are independent of polmp's code: scipy quadrature of the integral
form of B_l, a numpy double loop over Gaussian (erf) or point charges, and charge
clouds whose Richardson-extrapolated energies define point dipoles and quadrupoles in
the convention of S(k) = sum [q + i k.mu - 1/2 k^T Theta k] exp(i k.r).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from polmp.electrostatics import kernels
from polmp.electrostatics.direct import direct_energy, direct_potential_field
from polmp.units import COULOMB, EPSILON0
from tests.electrostatics import systems

# ----------------------------------------------------------------------------- helpers


def random_multipoles(rng, n, *, scale=2.0, traceless=True):
    return systems.random_multipoles(
        rng,
        n,
        spread=scale,
        neutral=False,
        traceless=traceless,
        mu_scale=0.4,
        theta_scale=0.3,
    )


def numpy_charge_energy(positions, q, sigma):
    """k_e/2 sum_{i != j} q_i q_j g(r_ij), a plain double loop (erf or 1/r)."""
    energy = 0.0
    n = len(q)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = np.linalg.norm(positions[j] - positions[i])
            g = 1.0 / r if sigma == 0 else special.erf(r / (math.sqrt(2.0) * sigma)) / r
            energy += q[i] * q[j] * g
    return 0.5 * COULOMB * energy


def cloud(center, mu=None, theta=None, h=1e-2):
    """Point charges whose first moments are mu, or second moment Theta (traceless).

    Dipole: +-|mu|/h at center +- h/2 mu_hat.  Quadrupole: for Theta = sum_k lam_k v_k v_k^T
    (sum lam_k = 0), charges lam_k/(2 h^2) at center +- h v_k: net charge 0, dipole 0,
    primitive second moment sum c s s^T = Theta.
    """
    pos, chg = [], []
    if mu is not None:
        norm = np.linalg.norm(mu)
        u = mu / norm
        pos += [center + 0.5 * h * u, center - 0.5 * h * u]
        chg += [norm / h, -norm / h]
    if theta is not None:
        lam, vec = np.linalg.eigh(theta)
        for k in range(3):
            c = lam[k] / (2.0 * h * h)
            pos += [center + h * vec[:, k], center - h * vec[:, k]]
            chg += [c, c]
    return np.array(pos), np.array(chg)


def numpy_cross_energy(pos_a, q_a, pos_b, q_b, sigma):
    """k_e sum_{a in A, b in B} q_a q_b g(r_ab) between two disjoint groups (numpy)."""
    r = np.linalg.norm(pos_b[None, :, :] - pos_a[:, None, :], axis=-1)
    g = 1.0 / r if sigma == 0 else special.erf(r / (math.sqrt(2.0) * sigma)) / r
    return COULOMB * float(q_a @ g @ q_b)


def cloud_interaction(clouds, others_pos, others_q, sigma, h):
    """Interaction energy of charge clouds with other charges and with each other.

    Only pairs between different groups are summed: the huge internal energies of the
    clouds (~ c^2/h) never enter, so nothing cancels catastrophically.
    """
    groups = [cloud(*c, h=h) for c in clouds]
    energy = 0.0
    for a in range(len(groups)):
        energy += numpy_cross_energy(*groups[a], others_pos, others_q, sigma)
        for b in range(a + 1, len(groups)):
            energy += numpy_cross_energy(*groups[a], *groups[b], sigma)
    return energy


def double_factorial(n):
    """(2l-1)!! with (-1)!! = 1 (scipy's factorial2 returns 0 there)."""
    return float(np.prod(np.arange(n, 0, -2))) if n > 0 else 1.0


def richardson(fn, h):
    return (4.0 * fn(h / 2.0) - fn(h)) / 3.0


# ----------------------------------------------------------------------------- kernels


def b_quadrature(r, sigma, l):
    """B_l = sqrt(2/pi) sigma^-(2l+1) int_0^1 t^(2l) exp(-x t^2) dt, x = r^2/(2 sigma^2)."""
    x = r * r / (2.0 * sigma**2)
    val, _ = integrate.quad(lambda t: t ** (2 * l) * math.exp(-x * t * t), 0.0, 1.0, epsabs=0, epsrel=1.2e-14)
    return math.sqrt(2.0 / math.pi) * sigma ** (-(2 * l + 1)) * val


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_gaussian_radial_matches_quadrature(x64, sigma):
    radii = [0.0, 1e-5, 0.3, 1.0, 1.99 * sigma, 2.0 * sigma, 2.01 * sigma, 3.0, 7.0, 20.0]
    B = kernels.gaussian_radial(jnp.asarray(np.square(radii)), sigma, kernels.MAX_ORDER)
    for l in range(kernels.MAX_ORDER + 1):
        ref = np.array([b_quadrature(r, sigma, l) for r in radii])
        np.testing.assert_allclose(np.asarray(B[l]), ref, rtol=2e-14, err_msg=f"l={l}")
    # closed form at the origin and the point limit far away
    for l in range(kernels.MAX_ORDER + 1):
        assert float(B[l][0]) == pytest.approx(
            math.sqrt(2 / math.pi) * sigma ** (-(2 * l + 1)) / (2 * l + 1), rel=1e-15
        )
        assert float(B[l][-1]) == pytest.approx(
            double_factorial(2 * l - 1) / 20.0 ** (2 * l + 1), rel=1e-14
        )


def test_screened_radial_matches_closed_form(x64):
    """erfc kernel and erf differences against 1/r - quadrature and scipy erfc at large r."""
    s, split = 0.6, 1.3
    radii = np.array([0.4, 1.5, 2.5, 3.8, 6.0, 9.0])
    Bc = kernels.screened_radial(jnp.asarray(radii**2), 0.0, split, 4)
    Bd = kernels.screened_radial(jnp.asarray(radii**2), s, split, 4)
    a = 1.0 / (math.sqrt(2.0) * split)
    np.testing.assert_allclose(np.asarray(Bc[0]), special.erfc(a * radii) / radii, rtol=1e-13)
    for l in range(5):
        point = double_factorial(2 * l - 1) / radii ** (2 * l + 1)
        ref_c = np.array([p - b_quadrature(r, split, l) for p, r in zip(point, radii)])
        ref_d = np.array([b_quadrature(r, s, l) - b_quadrature(r, split, l) for r in radii])
        close = radii < 6  # beyond, 1/r - quadrature itself has lost the digits
        np.testing.assert_allclose(np.asarray(Bc[l])[close], ref_c[close], rtol=1e-11)
        np.testing.assert_allclose(np.asarray(Bd[l])[close], ref_d[close], rtol=1e-11)
    # the tail keeps its relative accuracy: compare with erfc_split - erfc_s at r = 9
    r = radii[-1]
    tail = special.erfc(a * r) / r - special.erfc(r / (math.sqrt(2) * s)) / r
    assert float(Bd[0][-1]) == pytest.approx(tail, rel=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "coulomb", "erfc", "difference"])
def test_radial_recursion_equals_autodiff(x64, kind):
    """B_{l+1} = -(1/r) dB_l/dr = -2 dB_l/d(r^2), on both sides of the series switch."""
    fns = {
        "gaussian": lambda r2: kernels.gaussian_radial(r2, 0.9, 5),
        "coulomb": lambda r2: kernels.coulomb_radial(r2, 5),
        "erfc": lambda r2: kernels.screened_radial(r2, 0.0, 1.1, 5),
        "difference": lambda r2: kernels.screened_radial(r2, 0.5, 1.1, 5),
    }
    fn = fns[kind]
    radii = [0.2, 0.9, 1.2, 1.8, 2.3, 3.0, 5.0] if kind != "gaussian" else [0.0, 0.5, 1.27, 1.28, 2.5, 6.0]
    r2 = jnp.asarray(np.square(radii))
    B = fn(r2)
    for l in range(5):
        dB = jax.vmap(jax.grad(lambda x, l=l: fn(x)[l]))(r2)
        np.testing.assert_allclose(np.asarray(-2.0 * dB), np.asarray(B[l + 1]), rtol=1e-11)


def test_smeared_kernel_smooth_at_origin(x64):
    """Values, gradients and Hessians are finite at r = 0 (coincident or padded atoms)."""
    def g(d):
        return kernels.gaussian_radial(jnp.sum(d * d), 1.0, 4)[4]

    d0 = jnp.zeros(3)
    assert np.isfinite(float(g(d0)))
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.grad(g))(d0))))
    assert np.all(np.isfinite(np.asarray(jax.jit(jax.hessian(g))(d0))))


def test_self_energy_convention(x64, rng):
    """1/2 D_i D_i g(0) equals E_self: fixes the 1/2 Theta convention vs S(k)."""
    sigma = 0.8
    _, q, mu, theta = random_multipoles(rng, 4)
    B = kernels.gaussian_radial(jnp.zeros(4), sigma, 4)
    e = 0.5 * COULOMB * kernels.pair_energy(jnp.zeros((4, 3)), B, q, q, mu, mu, theta, theta)
    ref = (q**2 / sigma + np.sum(mu**2, 1) / (3 * sigma**3) + np.sum(theta**2, (1, 2)) / (10 * sigma**5)) / (
        2 * EPSILON0 * (2 * math.pi) ** 1.5
    )
    np.testing.assert_allclose(np.asarray(e), ref, rtol=1e-13)


def test_pair_energy_is_symmetric(x64, rng):
    """Swapping i and j (d -> -d) leaves the pair energy unchanged, for any symmetric Theta."""
    pos, q, mu, theta = random_multipoles(rng, 2, traceless=False)
    d = jnp.asarray(pos[1] - pos[0])
    B = kernels.gaussian_radial(jnp.sum(d * d), 0.7, 4)
    e_ij = kernels.pair_energy(d, B, q[0], q[1], mu[0], mu[1], theta[0], theta[1])
    e_ji = kernels.pair_energy(-d, B, q[1], q[0], mu[1], mu[0], theta[1], theta[0])
    assert float(e_ij) == pytest.approx(float(e_ji), rel=1e-14)


# ------------------------------------------------------------- energies vs references


@pytest.mark.parametrize("sigma", [0.0, 0.8])
def test_charges_match_numpy_double_loop(x64, rng, sigma):
    pos, q, _, _ = random_multipoles(rng, 9)
    e = direct_energy(jnp.asarray(pos), jnp.asarray(q), sigma=sigma, chunk_size=4)
    assert float(e) == pytest.approx(numpy_charge_energy(pos, q, sigma), rel=1e-13)


@pytest.mark.parametrize("sigma", [0.0, 0.8])
@pytest.mark.parametrize("which", ["dipole", "quadrupole", "both"])
def test_multipoles_are_limits_of_charge_clouds(x64, rng, sigma, which):
    """Point dipoles/quadrupoles (and Gaussian-smeared ones) = limits of nearby charges.

    Two multipole sites interact with each other and with three charges; the clouds'
    interaction energy (numpy double loop, Richardson-extrapolated in h) must equal
    direct_energy with mu and/or the traceless primitive moment Theta.
    """
    pos, q, mu, theta = random_multipoles(rng, 5, scale=2.5)
    use_mu, use_th = which in ("dipole", "both"), which in ("quadrupole", "both")
    sites = [(pos[k], mu[k] if use_mu else None, theta[k] if use_th else None) for k in (0, 1)]
    others_pos, others_q = pos[2:], q[2:]

    ref = richardson(lambda h: cloud_interaction(sites, others_pos, others_q, sigma, h), 4e-2)

    mu_all = np.zeros((5, 3))
    th_all = np.zeros((5, 3, 3))
    q_all = np.concatenate([[0.0, 0.0], others_q])
    if use_mu:
        mu_all[:2] = mu[:2]
    if use_th:
        th_all[:2] = theta[:2]
    args = dict(sigma=sigma, chunk_size=2)
    e = direct_energy(
        jnp.asarray(pos), jnp.asarray(q_all), jnp.asarray(mu_all), jnp.asarray(th_all), **args
    )
    e0 = direct_energy(jnp.asarray(pos[2:]), jnp.asarray(others_q), **args)
    assert float(e - e0) == pytest.approx(ref, rel=1e-7, abs=1e-9)


# ----------------------------------------------------------- potentials and fields


@pytest.mark.parametrize(
    "sigma, terms", [(0.0, "q+mu+theta"), (1.0, "q"), (1.0, "q+mu"), (1.0, "q+mu+theta")]
)
def test_potential_field_equal_autodiff(x64, rng, sigma, terms):
    pos, q, mu, theta = map(jnp.asarray, random_multipoles(rng, 11))
    mu = mu if "mu" in terms else None
    theta = theta if "theta" in terms else None
    mask = jnp.arange(11) < 9
    kw = dict(sigma=sigma, atom_mask=mask, chunk_size=4)
    phi, field = jax.jit(lambda: direct_potential_field(pos, q, mu, theta, **kw))()
    mu0 = jnp.zeros_like(pos) if mu is None else mu
    energy = jax.jit(jax.grad(lambda q_, m: direct_energy(pos, q_, m, theta, **kw), argnums=(0, 1)))
    phi_ad, minus_field_ad = energy(q, mu0)
    field_ad = -minus_field_ad
    np.testing.assert_allclose(np.asarray(phi), np.asarray(phi_ad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(field), np.asarray(field_ad), rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(phi)[9:] == 0) and np.all(np.asarray(field)[9:] == 0)


# ---------------------------------------------------------- invariances and plumbing


def test_chunking_padding_and_mask(x64, rng):
    pos, q, mu, theta = map(jnp.asarray, random_multipoles(rng, 13))
    e_ref = direct_energy(pos, q, mu, theta, sigma=1.0)
    for chunk in (1, 5):
        e = direct_energy(pos, q, mu, theta, sigma=1.0, chunk_size=chunk)
        assert float(e) == pytest.approx(float(e_ref), rel=1e-13)
    # padding: extra atoms, one on top of a real atom and one at the origin with
    # nonzero latents, must change nothing and feel no force, with sigma = 0 too.
    extra = 3
    pos_p = jnp.concatenate([pos, jnp.stack([pos[0], jnp.zeros(3), pos[5] + 0.1])])
    q_p = jnp.concatenate([q, jnp.ones(extra)])
    mu_p = jnp.concatenate([mu, jnp.ones((extra, 3))])
    th_p = jnp.concatenate([theta, jnp.tile(theta[:1], (extra, 1, 1))])
    mask = jnp.arange(13 + extra) < 13
    for sigma in (0.0, 1.0):
        e_ref, grad_ref = jax.jit(jax.value_and_grad(direct_energy), static_argnames="sigma")(
            pos, q, mu, theta, sigma=sigma
        )
        e, grad = jax.jit(jax.value_and_grad(direct_energy), static_argnames=("sigma", "chunk_size"))(
            pos_p, q_p, mu_p, th_p, sigma=sigma, atom_mask=mask, chunk_size=4
        )
        assert float(e) == pytest.approx(float(e_ref), rel=1e-13)
        grad = np.asarray(grad)
        assert np.all(np.isfinite(grad)) and np.all(grad[13:] == 0.0)
        np.testing.assert_allclose(grad[:13], np.asarray(grad_ref), rtol=1e-12)


def test_rotation_translation_permutation_invariance(x64, rng):
    pos, q, mu, theta = random_multipoles(rng, 8)
    e0 = float(direct_energy(*map(jnp.asarray, (pos, q, mu, theta)), sigma=0.9))
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot *= np.sign(np.linalg.det(rot))  # proper rotation
    for R in (rot, -rot):  # rotation and rotation x inversion
        e = direct_energy(
            jnp.asarray(pos @ R.T + 3.0),
            jnp.asarray(q),
            jnp.asarray(mu @ R.T),
            jnp.asarray(np.einsum("ab,nbc,dc->nad", R, theta, R)),
            sigma=0.9,
        )
        assert float(e) == pytest.approx(e0, rel=1e-13)
    perm = rng.permutation(8)
    e = direct_energy(*map(jnp.asarray, (pos[perm], q[perm], mu[perm], theta[perm])), sigma=0.9)
    assert float(e) == pytest.approx(e0, rel=1e-13)
    # and a wrong transformation of theta is detected (the test can fail)
    e_bad = direct_energy(
        jnp.asarray(pos @ rot.T), jnp.asarray(q), jnp.asarray(mu @ rot.T), jnp.asarray(theta), sigma=0.9
    )
    assert abs(float(e_bad) - e0) > 1e-6


def test_forces_finite_differences_and_coincident_atoms(x64, rng):
    pos, q, mu, theta = map(jnp.asarray, random_multipoles(rng, 5))
    for sigma in (0.0, 0.7):
        energy = jax.jit(lambda p, sigma=sigma: direct_energy(p, q, mu, theta, sigma=sigma))
        grad = np.asarray(jax.jit(jax.grad(energy))(pos))
        h = 1e-5
        for atom, axis in [(0, 0), (2, 1), (4, 2)]:
            step = jnp.zeros_like(pos).at[atom, axis].set(h)
            fd = (float(energy(pos + step)) - float(energy(pos - step))) / (2 * h)
            assert grad[atom, axis] == pytest.approx(fd, rel=1e-7, abs=1e-9)
    # two real atoms on top of each other: the smeared energy is finite and smooth
    pos2 = pos.at[1].set(pos[0])
    e, g = jax.jit(jax.value_and_grad(lambda p: direct_energy(p, q, mu, theta, sigma=0.7)))(pos2)
    assert np.isfinite(float(e)) and np.all(np.isfinite(np.asarray(g)))


def test_jit_dtype_and_none_paths(rng):
    pos, q, _, _ = random_multipoles(rng, 6)
    pos32, q32 = jnp.asarray(pos, jnp.float32), jnp.asarray(q, jnp.float32)
    f = jax.jit(lambda p, c: direct_energy(p, c, sigma=1.0, chunk_size=4))
    e = f(pos32, q32)
    assert e.dtype == jnp.float32
    assert float(e) == pytest.approx(numpy_charge_energy(pos, q, 1.0), rel=1e-5)
    # zero dipoles/quadrupoles give exactly the charge-only energy
    e_full = direct_energy(pos32, q32, jnp.zeros((6, 3)), jnp.zeros((6, 3, 3)), sigma=1.0)
    assert float(e_full) == pytest.approx(float(e), rel=1e-6)
    phi, field = direct_potential_field(pos32, q32, sigma=1.0)
    assert phi.dtype == jnp.float32 and field.shape == (6, 3)
