"""Born charges, polarization and polarizability from autodiff (docs/method.md)."""

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
        phase = pol.born_charges(fn, r + 20.0, cell, form="phase")
        errors.append(float(jnp.abs(phase - direct).max()))
        # the local (minimum-image) form is the direct form here, to rounding
        local = pol.born_charges(fn, r + 20.0, cell)
        np.testing.assert_allclose(local, direct, rtol=0, atol=1e-12)
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
        z = pol.born_charges(_toy_charges_fn(q0, cell=big), r, big, form="phase")
        violations.append(float(jnp.abs(pol.acoustic_sum_rule_violation(z)).max()))
    assert (
        violations[1] < 1e-2 and violations[0] / violations[1] > 10
    )  # ~16 = (80/20)^2
    # a charged system violates it by the net charge; enforcement removes it
    charged = lambda x: (q0 + 0.1, jnp.zeros_like(x))  # noqa: E731
    zc = pol.born_charges(charged, r, cell, form="phase")
    # mean of q is removed before differentiating, so even this sums to zero
    assert np.abs(pol.acoustic_sum_rule_violation(zc)).max() < 1e-10
    zf = pol.born_charges(
        lambda x: (q0 * (1 + 0.01 * x[:, 0]), jnp.zeros_like(x)),
        r,
        cell,
        enforce_sum_rule=True,
        form="phase",
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
    """Pdot == sum_i Z*_i v_i in the direct, local and phase forms."""
    r, q0 = water_like
    v = jnp.asarray(rng.normal(size=r.shape))
    cell = jnp.array([[6.0, 0, 0], [0.8, 5.5, 0], [0.4, -0.3, 6.5]])
    for c, form in ((None, "auto"), (cell, "local"), (cell, "phase")):
        fn = _toy_charges_fn(q0, cell=None if c is None else jnp.eye(3) * 40.0)
        z = pol.born_charges(fn, r, c, eps_e=1.78, form=form)
        expected = jnp.einsum("iab,ib->a", z, v)
        current = pol.polarization_current(fn, r, v, c, eps_e=1.78, form=form)
        np.testing.assert_allclose(current, expected, rtol=1e-12, atol=1e-13)
        # the charge-transfer part matters (not just sum_i q_i v_i)
        assert np.abs(expected - np.sqrt(1.78) * (q0 - q0.mean()) @ v).max() > 1e-3
        # has_aux: the same current, and the aux of the primal pass at r

        def with_aux(x, fn=fn):
            q, mu = fn(x)
            return (q, mu), {"sq": jnp.sum(x**2, axis=1) * q}

        current_aux, aux = pol.polarization_current(
            with_aux, r, v, c, eps_e=1.78, has_aux=True, form=form
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


# ------------------------------------------------------------------ local (minimum image)


def _switch(r, rc):
    """Smooth pair weight (1 - r^2/rc^2)^3 for r < rc, 0 beyond (C^2 at rc)."""
    x = jnp.clip(1.0 - r**2 / rc**2, 0.0, None)
    return x**3


def _split_charge_fn(chi, cell, rc, c_mu=0.05):
    """A local model whose charges are conserved (split charges, range rc):

    q_j = sum_k t(|d_jk|) (chi_k - chi_j), mu_j = c_mu sum_k t(|d_jk|) d_jk,
    d_jk = mic(r_k - r_j); sum_j q_j = 0 identically.  Exact periodic model while
    2 rc is below the cell width (each pair then has one image within rc).
    """

    def fn(r):
        d = pol.minimum_image(r[None, :, :] - r[:, None, :], cell)  # [j, k]
        dist = jnp.sqrt((d**2).sum(-1) + jnp.eye(len(r)))
        t = _switch(dist, rc) * (1 - jnp.eye(len(r)))
        q = (t * (chi[None, :] - chi[:, None])).sum(1)
        mu = c_mu * (t[:, :, None] * d).sum(1)
        return q, mu

    return fn


def _split_charge_born_reference(chi, r, cell, rc, images=2):
    """Born charges of the infinite crystal of ``_split_charge_fn`` (numpy, no image
    convention): every image n of atom i that lies within rc of j contributes its own
    flux d/dr_{i,n} q_j weighted by its own displacement r_j - (r_i + n M)."""
    r, cell, chi = (np.asarray(x, np.float64) for x in (r, cell, chi))
    n_atoms = len(r)
    shifts = (
        np.array(
            [
                (a, b, c)
                for a in range(-images, images + 1)
                for b in range(-images, images + 1)
                for c in range(-images, images + 1)
            ]
        )
        @ cell
    )
    q = np.zeros(n_atoms)
    z = np.zeros((n_atoms, 3, 3))
    for j in range(n_atoms):
        for i in range(n_atoms):
            for shift in shifts:
                sep = r[i] + shift - r[j]  # image of i seen from j
                dist = np.linalg.norm(sep)
                if dist == 0.0 or dist >= rc:
                    continue
                x = 1 - dist**2 / rc**2
                t, dt = x**3, -6 * x**2 / rc**2  # dt = (dt/d dist) / dist
                q[j] += t * (chi[i] - chi[j])
                grad = dt * sep * (chi[i] - chi[j])  # d q_j / d r_{i,n}
                z[i] += np.outer(-sep, grad)  # (r_j - r_{i,n}) (x) grad
                z[j] -= np.outer(np.zeros(3), grad)  # r_j - r_j = 0
    z += q[:, None, None] * np.eye(3)
    return z


def _dense_random_cell(rng, n, length):
    cell = length * np.array([[1.0, 0, 0], [0.12, 0.97, 0], [-0.08, 0.1, 1.03]])
    frac = rng.uniform(0, 1, size=(n, 3))
    return jnp.asarray(frac @ cell), jnp.asarray(cell)


def test_local_form_exact_for_conserved_local_charges(x64, rng):
    """Against the explicit image sum of the infinite crystal, while 2 rc < width;
    the sum rule then holds without the projection, and the phase form misses both."""
    r, cell = _dense_random_cell(rng, 14, 7.0)
    chi = jnp.asarray(rng.normal(size=14))
    rc = 3.0
    assert 2 * rc < float(pol.cell_widths(cell).min())
    fn = _split_charge_fn(chi, cell, rc, c_mu=0.0)
    reference = _split_charge_born_reference(chi, r, cell, rc)
    raw = pol.local_born_charges(fn, r, cell)
    np.testing.assert_allclose(raw, reference, rtol=0, atol=1e-12)
    assert np.abs(raw.sum(0)).max() < 1e-12  # no projection needed
    np.testing.assert_allclose(pol.born_charges(fn, r, cell), reference, atol=1e-12)
    # the flux is large here (not just q_i I), and the phase form gets it wrong
    q, _ = fn(r)
    assert np.abs(reference - np.asarray(q)[:, None, None] * np.eye(3)).max() > 0.1
    phase = pol.born_charges(fn, r, cell, form="phase")
    assert np.abs(phase - reference).max() > 1e-2
    # with dipoles (translation invariant vectors: their term sums to zero by itself)
    fn_mu = _split_charge_fn(chi, cell, rc, c_mu=0.07)
    assert np.abs(pol.local_born_charges(fn_mu, r, cell).sum(0)).max() < 1e-12


def test_local_form_warns_when_the_receptive_field_wraps(x64, rng):
    """2 rc >= width: a pair can feel two images; the form says so and is approximate."""
    r, cell = _dense_random_cell(rng, 14, 5.0)
    chi = jnp.asarray(rng.normal(size=14))
    rc = 3.0
    assert 2 * rc > float(pol.cell_widths(cell).min())
    fn = _split_charge_fn(chi, cell, rc, c_mu=0.0)
    with pytest.warns(UserWarning, match="receptive field"):
        z = pol.born_charges(fn, r, cell, receptive_field=rc)
    reference = _split_charge_born_reference(chi, r, cell, rc)
    assert np.abs(np.asarray(z) - reference).max() > 1e-3
    with pytest.raises(ValueError, match="needs a periodic cell"):
        pol.born_charges(fn, r, None, form="local")
    with pytest.raises(ValueError, match="form must be"):
        pol.born_charges(fn, r, cell, form="berry")


def test_local_form_is_image_independent(x64, rng):
    r, cell = _dense_random_cell(rng, 12, 7.0)
    chi = jnp.asarray(rng.normal(size=12))
    fn = _split_charge_fn(chi, cell, 3.0)
    shifted = r + jnp.asarray(rng.integers(-2, 3, size=(12, 3))) @ cell
    np.testing.assert_allclose(
        pol.born_charges(fn, shifted, cell), pol.born_charges(fn, r, cell), atol=1e-12
    )


def test_minimum_image_in_a_skewed_cell(x64, rng):
    cell = jnp.array([[5.0, 0, 0], [1.5, 4.5, 0], [0.8, -1.0, 4.6]])
    v = jnp.asarray(rng.uniform(-10, 10, size=(200, 3)))
    mic = np.asarray(pol.minimum_image(v, cell))
    shifts = np.array(
        [(a, b, c) for a in range(-4, 5) for b in range(-4, 5) for c in range(-4, 5)]
    ) @ np.asarray(cell)
    brute = np.asarray(v)[:, None, :] + shifts[None]
    best = np.linalg.norm(brute, axis=-1).min(1)
    np.testing.assert_allclose(np.linalg.norm(mic, axis=-1), best, rtol=1e-12)
    # mic differs from v by a lattice vector
    frac = np.linalg.solve(np.asarray(cell).T, (mic - np.asarray(v)).T).T
    np.testing.assert_allclose(frac, np.round(frac), atol=1e-10)


@pytest.fixture(scope="module")
def latent_model():
    """A random (untrained) latent model with induced charges and dipoles."""
    from polmp.models.long_range import graph_long_range
    from polmp.models.potential import make_energy_fn
    from tests.training.morse import tiny_latent_model

    with jax.enable_x64(True):
        config = tiny_latent_model(cutoff_A=3.0, avg_num_neighbors=4.0)
        fns = make_energy_fn(config, long_range_fn=graph_long_range)
        from polmp.data.batching import frames_to_graph
        from polmp.data.water import water_box

        graph = frames_to_graph([water_box(1, seed=0)], cutoff=config.cutoff_A)
        params = jax.jit(fns.model.init)(jax.random.PRNGKey(1), graph)
    return config, fns, params


def _model_charges_fn(latent_model, frame):
    from polmp.data.batching import frames_to_graph
    from polmp.models.long_range import prepare_long_range

    config, fns, params = latent_model
    graph = frames_to_graph([frame], cutoff=config.cutoff_A)
    data = prepare_long_range(graph, sigma=1.0, accuracy=1e-8, method="ewald")
    n = frame.num_atoms

    def charges_fn(r):
        padded = graph.positions.at[:n].set(r)
        out = fns.outputs_fn(params, graph, padded, long_range=data)
        q, mu = pol.total_latents(out)
        return q[:n], mu[:n]

    return charges_fn, jnp.asarray(graph.positions[:n]), jnp.asarray(frame.cell)


@pytest.mark.slow
def test_trained_like_model_local_form(x64, latent_model):
    """Random q+mu+dq+dmu model: sum rule to 1e-10 in a periodic water box; for a
    molecule in a large box the local form is the direct form, wherever its atoms
    are stored."""
    import dataclasses

    from polmp.data.water import water_box

    frame = water_box(2, seed=3)  # 24 atoms, periodic
    fn, r, cell = _model_charges_fn(latent_model, frame)
    z = pol.born_charges(fn, r, cell)
    assert np.abs(pol.acoustic_sum_rule_violation(z)).max() < 1e-10
    q, _ = fn(r)
    assert np.abs(z - (q - q.mean())[:, None, None] * np.eye(3)).max() > 1e-2

    molecule = water_box(1, seed=0)
    n = molecule.num_atoms
    positions = molecule.positions[:3] - molecule.positions[:3].mean(0)
    box = dataclasses.replace(
        molecule,
        positions=positions + 0.2,  # straddles the corner of the cell
        numbers=molecule.numbers[:3],
        cell=np.eye(3) * 16.0,
    )
    del n
    fn, r, cell = _model_charges_fn(latent_model, box)
    wrapped = jnp.mod(r - 1.0, 16.0)  # some atoms wrapped to the far side
    direct = pol.born_charges(fn, r, cell, form="direct")
    np.testing.assert_allclose(pol.born_charges(fn, r, cell), direct, atol=1e-10)
    np.testing.assert_allclose(pol.born_charges(fn, wrapped, cell), direct, atol=1e-10)
    # the phase form is off by O((2 pi d / L)^2)
    phase = pol.born_charges(fn, r, cell, form="phase")
    assert 1e-5 < np.abs(phase - direct).max() < 0.05
