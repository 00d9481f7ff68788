"""Born charges, polarization and polarizability from autodiff (method.md §7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp import units
from polmp.observables import polarization as pol


def _toy_charges_fn(q0, cell=None, width=1.5, c_q=0.3, c_mu=0.05):
    """Position-dependent, translation-invariant charges and dipoles.

    q_i = q0_i + c_q sum_j exp(-r_ij^2/w^2) (then neutralised), mu_i = c_mu sum_j r_ij exp(...);
    minimum image when a cubic cell is given.
    """

    def fn(r):
        d = r[None, :, :] - r[:, None, :]  # d[i, j] = r_j - r_i
        if cell is not None:
            length = cell[0, 0]
            d = d - length * jnp.round(d / length)
        g = jnp.exp(-(d**2).sum(-1) / width**2) * (1 - jnp.eye(len(r)))
        q = q0 + c_q * g.sum(1)
        q = q - q.mean() + q0.mean()  # conserve the total charge of q0
        mu = c_mu * (g[:, :, None] * d).sum(1)
        return q, mu

    return fn


@pytest.fixture
def water_like(rng):
    r = rng.uniform(0, 4, size=(6, 3))
    q0 = jnp.array([-0.8, 0.4, 0.4, -0.8, 0.4, 0.4])
    return jnp.asarray(r), q0


def test_rigid_point_charges_give_q_identity(x64, water_like):
    r, q0 = water_like
    rigid = lambda x: (q0, jnp.zeros_like(x))  # noqa: E731
    z = pol.born_charges(rigid, r)
    np.testing.assert_allclose(z, q0[:, None, None] * np.eye(3), atol=1e-14)
    cell = jnp.array([[8.0, 0, 0], [1.0, 7.0, 0], [0.5, -0.4, 9.0]])
    zp = pol.born_charges(rigid, r, cell)
    np.testing.assert_allclose(zp, q0[:, None, None] * np.eye(3), atol=1e-12)


def test_bec_equals_finite_differences_of_polarization(x64, water_like):
    r, q0 = water_like
    fn = _toy_charges_fn(q0)
    z = np.asarray(pol.born_charges(fn, r, eps_e=1.78))
    h = 1e-5
    for i in (0, 4):
        for b in range(3):
            dr = jnp.zeros_like(r).at[i, b].set(h)
            fd = (pol.polarization(fn, r + dr) - pol.polarization(fn, r - dr)) / (2 * h)
            np.testing.assert_allclose(
                z[i, :, b], np.sqrt(1.78) * np.asarray(fd), rtol=1e-8, atol=1e-10
            )
    # the charge derivative matters: these are not just q0 * I
    assert np.abs(z - np.sqrt(1.78) * q0[:, None, None] * np.eye(3)).max() > 1e-2


def test_phase_form_equals_direct_form_in_large_box(x64, water_like):
    r, q0 = water_like
    fn = _toy_charges_fn(q0)
    # The phase form differs from the direct one by O((2 pi d / L)^2) for a molecule
    # of size d: ~3e-3 relative at L = 200 A, ~3e-5 at L = 2000 A.
    direct = pol.born_charges(fn, r + 20.0)
    errors = []
    for scale in (200.0, 2000.0):
        cell = scale * jnp.array([[1.0, 0, 0], [0.15, 0.95, 0], [0.05, 0.025, 1.05]])
        phase = pol.born_charges(fn, r + 20.0, cell)
        errors.append(float(jnp.abs(phase - direct).max()))
    assert errors[1] < 1e-5
    assert errors[0] / errors[1] == pytest.approx(100.0, rel=0.1)


def test_acoustic_sum_rule_neutral_periodic(x64, rng):
    q0 = jnp.array([-0.8, 0.4, 0.4, -0.8, 0.4, 0.4])
    cell = jnp.eye(3) * 5.0
    r = jnp.asarray(rng.uniform(0, 5, size=(6, 3)))
    rigid = lambda x: (q0, jnp.zeros_like(x))  # noqa: E731
    assert (
        np.abs(pol.acoustic_sum_rule_violation(pol.born_charges(rigid, r, cell))).max()
        < 1e-12
    )
    # With charge transfer of range w the phase form satisfies the sum rule only to
    # O((2 pi w / L)^2): the violation falls as the cell grows around the same cluster.
    violations = []
    for length in (20.0, 80.0):
        big = jnp.eye(3) * length
        z = pol.born_charges(_toy_charges_fn(q0, cell=big), r, big)
        violations.append(float(jnp.abs(pol.acoustic_sum_rule_violation(z)).max()))
    assert (
        violations[1] < 1e-2 and violations[0] / violations[1] > 10
    )  # ~16 = (80/20)^2
    # a charged system violates it by the net charge; enforcement removes it
    charged = lambda x: (q0 + 0.1, jnp.zeros_like(x))  # noqa: E731
    zc = pol.born_charges(charged, r, cell)
    # mean of q is removed before differentiating, so even this sums to zero
    assert np.abs(pol.acoustic_sum_rule_violation(zc)).max() < 1e-10
    zf = pol.born_charges(
        lambda x: (q0 * (1 + 0.01 * x[:, 0]), jnp.zeros_like(x)),
        r,
        cell,
        enforce_sum_rule=True,
    )
    assert np.abs(pol.acoustic_sum_rule_violation(zf)).max() < 1e-12


def test_padding_atoms_do_not_change_born_charges(x64, water_like):
    r, q0 = water_like
    fn = _toy_charges_fn(q0)
    z = pol.born_charges(fn, r)
    r_pad = jnp.concatenate([r, jnp.zeros((2, 3))])
    mask = jnp.arange(8) < 6

    def fn_pad(x):
        q, mu = fn(x[:6])
        return jnp.concatenate([q, jnp.array([5.0, -3.0])]), jnp.concatenate(
            [mu, jnp.ones((2, 3))]
        )

    zp = pol.born_charges(fn_pad, r_pad, atom_mask=mask)
    np.testing.assert_allclose(zp[:6], z, atol=1e-12)
    assert np.all(np.asarray(zp[6:]) == 0)


def test_system_polarizability_and_screening(x64):
    alpha_iso = jnp.array([0.1, 0.2, 0.3])
    a = pol.system_polarizability(alpha_iso, eps_e=2.0)
    np.testing.assert_allclose(a, 2.0 * units.COULOMB * 0.6 * np.eye(3), rtol=1e-14)
    alpha_aniso = jnp.stack([jnp.diag(jnp.array([0.1, 0.2, 0.3]))] * 2)
    np.testing.assert_allclose(
        pol.system_polarizability(alpha_aniso),
        units.COULOMB * np.diag([0.2, 0.4, 0.6]),
        rtol=1e-14,
    )
    eps = pol.electronic_screening(1.78, alpha_iso, volume=1000.0)
    chi = 0.6 / (units.EPSILON0 * 1000.0)
    assert float(eps) == pytest.approx(1.78 / (1 + chi), rel=1e-14)
    with pytest.raises(ValueError, match="volume"):
        pol.electronic_screening(1.78, alpha_iso)


def test_field_forces_are_minus_gradient_of_field_energy(x64, water_like):
    # U = -P(R).E  =>  F_i = -dU/dr_i = Z*_i^T E
    r, q0 = water_like
    fn = _toy_charges_fn(q0)
    field = jnp.array([0.1, -0.2, 0.05])
    forces = pol.field_forces(pol.born_charges(fn, r), field)
    expected = jax.grad(lambda x: pol.polarization(fn, x) @ field)(r)
    np.testing.assert_allclose(forces, expected, rtol=1e-12, atol=1e-14)


def test_polarization_current_equals_born_charges_times_velocities(
    x64, water_like, rng
):
    """Pdot from forward-mode tangents == sum_i Z*_i v_i, direct and phase forms."""
    r, q0 = water_like
    v = jnp.asarray(rng.normal(size=r.shape))
    cell = jnp.array([[6.0, 0, 0], [0.8, 5.5, 0], [0.4, -0.3, 6.5]])
    for c in (None, cell):
        fn = _toy_charges_fn(q0, cell=None if c is None else jnp.eye(3) * 40.0)
        z = pol.born_charges(fn, r, c, eps_e=1.78)
        expected = jnp.einsum("iab,ib->a", z, v)
        current = pol.polarization_current(fn, r, v, c, eps_e=1.78)
        np.testing.assert_allclose(current, expected, rtol=1e-12, atol=1e-13)
        # the charge-transfer part matters (not just sum_i q_i v_i)
        assert np.abs(expected - np.sqrt(1.78) * (q0 - q0.mean()) @ v).max() > 1e-3
        # has_aux: the same current, and the aux of the primal pass at r

        def with_aux(x, fn=fn):
            q, mu = fn(x)
            return (q, mu), {"sq": jnp.sum(x**2, axis=1) * q}

        current_aux, aux = pol.polarization_current(
            with_aux, r, v, c, eps_e=1.78, has_aux=True
        )
        np.testing.assert_allclose(current_aux, current, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(aux["sq"], with_aux(r)[1]["sq"], rtol=1e-14)
    # padded atoms (with any velocity) do not contribute
    r_pad = jnp.concatenate([r, jnp.zeros((2, 3))])
    v_pad = jnp.concatenate([v, jnp.ones((2, 3))])
    mask = jnp.arange(8) < 6
    fn = _toy_charges_fn(q0)

    def padded_fn(x):
        q, mu = fn(x[:6])
        return jnp.concatenate([q, jnp.zeros(2)]), jnp.concatenate(
            [mu, jnp.ones((2, 3))]
        )

    np.testing.assert_allclose(
        pol.polarization_current(padded_fn, r_pad, v_pad, cell, atom_mask=mask),
        pol.polarization_current(fn, r, v, cell),
        rtol=1e-12,
    )
