"""The assembled short-range model: symmetry, padding, smoothness, constraints, dtypes.

One tiny model (C = 4 channels, l_max = 2, 1 layer) is initialised once per module under
x64; its parameters are float32 (the model casts them where used).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.models.config import ModelConfig
from polmp.models.potential import AtomicModel, graph_energies
from tests.models.equivariance import assert_equivariant
from tests.models.graphs import cluster, make_graph

CUTOFF = 3.0
CONFIG = ModelConfig(
    species=(1, 8),
    cutoff_A=CUTOFF,
    l_max=2,
    num_channels=4,
    num_layers=1,
    num_basis=4,
    radial_mlp=(8,),
    readout_hidden=8,
    avg_num_neighbors=3.0,
    variant="full",
    alpha_kind="anisotropic",
    num_charge_channels=2,
    # Large output scales so that every head is far above round-off in the checks.
    q_scale=1.0,
    mu_scale=1.0,
    theta_scale=1.0,
    kappa_scale=1.0,
    alpha_scale=1.0,
)
SPECIES = np.array([8, 1, 1, 8, 1])

KINDS = {
    "energy": "0e",
    "q": "2x0e",
    "mu": "1o",
    "theta": "cartesian2",
    "kappa": "0e",
    "alpha": "cartesian2",
}


def as_dict(out):
    """AtomicOutputs -> dict of numpy arrays; (N,) outputs get a trailing irreps
    axis."""
    d = {}
    for f in dataclasses.fields(out):
        v = getattr(out, f.name)
        if v is not None:
            v = np.asarray(v)
            d[f.name] = v[:, None] if v.ndim == 1 else v
    return d


@pytest.fixture(scope="module")
def setup():
    """(model, params, apply) built once, under x64."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        rng = np.random.default_rng(7)
        graph = make_graph(cluster(rng), SPECIES, CUTOFF)
        model = AtomicModel(CONFIG)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), graph)
        # Perturb the weights so that the 1o/2e channels are not negligible at init.
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        leaves = [
            (p + 0.5 * jax.random.normal(k, p.shape)).astype(p.dtype)
            for p, k in zip(leaves, keys, strict=True)
        ]
        params = jax.tree.unflatten(tree, leaves)
        apply = jax.jit(model.apply)
        yield model, params, apply
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_params_are_float32_outputs_follow_positions(x64, setup):
    _, params, apply = setup
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    g = make_graph(cluster(np.random.default_rng(1)), SPECIES, CUTOFF)
    out64 = apply(params, g)
    assert all(v.dtype == jnp.float64 for v in jax.tree.leaves(out64))
    g32 = make_graph(g.positions[:5], SPECIES, CUTOFF, dtype=np.float32)
    out32 = apply(params, g32)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(out32))
    np.testing.assert_allclose(out32.energy, out64.energy, rtol=1e-4, atol=1e-5)
    # Every head is there and non-trivial.
    d = as_dict(out64)
    assert set(d) == set(KINDS)
    for name, v in d.items():
        assert np.abs(v[:5]).max() > 1e-3, name


@pytest.mark.parametrize("periodic", [False, True])
def test_rotation_inversion_equivariance_of_every_output(x64, setup, rng, periodic):
    _, params, apply = setup
    pos = cluster(rng)
    cell = (
        np.array([[4.0, 0.3, 0.0], [0.2, 3.8, 0.1], [0.0, -0.4, 4.2]])
        if periodic
        else None
    )
    graph = make_graph(pos, SPECIES, CUTOFF, cell=cell)
    if periodic:  # small cell: several images of the same atom are neighbours
        assert int(graph.edge_mask.sum()) > 20

    def fn(positions, q):
        padded = np.zeros((graph.num_atoms, 3))
        padded[:5] = positions
        out = apply(params, graph, jnp.asarray(padded), graph.cell @ jnp.asarray(q).T)
        return {k: v[:5] for k, v in as_dict(out).items()}

    assert_equivariant(fn, pos, KINDS, rng)


def test_equivariance_check_can_fail(x64, setup, rng):
    """The helper rejects a wrong rule (mu treated as a pseudovector 1e)."""
    _, params, apply = setup
    pos = cluster(rng)
    graph = make_graph(pos, SPECIES, CUTOFF)

    def fn(positions, q):
        padded = np.zeros((graph.num_atoms, 3))
        padded[:5] = positions
        return as_dict(apply(params, graph, jnp.asarray(padded)))

    with pytest.raises(AssertionError, match="rotation\\+inversion"):
        assert_equivariant(fn, pos, {"mu": "1e"}, rng)


def test_translation_invariance(x64, setup, rng):
    _, params, apply = setup
    pos = cluster(rng)
    a = as_dict(apply(params, make_graph(pos, SPECIES, CUTOFF)))
    b = as_dict(
        apply(params, make_graph(pos + np.array([3.1, -7.2, 0.4]), SPECIES, CUTOFF))
    )
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_permutation_equivariance(x64, setup, rng):
    _, params, apply = setup
    pos = cluster(rng)
    perm = np.array([3, 0, 4, 1, 2])
    a = as_dict(apply(params, make_graph(pos, SPECIES, CUTOFF)))
    b = as_dict(apply(params, make_graph(pos[perm], SPECIES[perm], CUTOFF)))
    for k in a:
        np.testing.assert_allclose(
            b[k][:5], a[k][perm], rtol=1e-10, atol=1e-12, err_msg=k
        )


def test_padding_invariance_and_zero_padding_outputs(x64, setup, rng):
    _, params, apply = setup
    pos = cluster(rng)
    g1 = make_graph(pos, SPECIES, CUTOFF, pad_atoms=1, pad_edges=1)
    g2 = make_graph(pos, SPECIES, CUTOFF, pad_atoms=4, pad_edges=9)
    a, b = as_dict(apply(params, g1)), as_dict(apply(params, g2))
    for k in a:
        np.testing.assert_allclose(
            b[k][:5], a[k][:5], rtol=1e-12, atol=1e-14, err_msg=k
        )
        assert np.all(b[k][5:] == 0), k

    def total(positions, graph):
        return graph_energies(apply(params, graph, positions).energy, graph)[0]

    f1 = jax.grad(total)(g1.positions, g1)
    f2 = jax.grad(total)(g2.positions, g2)
    np.testing.assert_allclose(f2[:5], f1[:5], rtol=1e-10, atol=1e-12)
    assert np.all(np.asarray(f2[5:]) == 0)
    assert np.all(np.isfinite(np.asarray(f2)))
    np.testing.assert_allclose(
        total(g1.positions, g1), a["energy"][:5].sum(), rtol=1e-12
    )


@pytest.mark.slow  # ~13 s on 2 shared cores
def test_hessian_finite_with_padded_zero_length_edges(x64, setup):
    _, params, apply = setup
    pos = np.array([[0.0, 0.0, 0.0], [1.1, 0.4, -0.3]])
    g = make_graph(pos, SPECIES[:2], CUTOFF, pad_atoms=1, pad_edges=2)
    assert int(g.edge_mask.sum()) == 2

    def total(positions):
        return jnp.sum(apply(params, g, positions).energy)

    h = jax.hessian(total)(g.positions)
    assert np.all(np.isfinite(np.asarray(h)))
    assert np.all(np.asarray(h)[2] == 0)  # the padding atom
    assert np.abs(np.asarray(h)[:2]).max() > 0


def test_smooth_across_the_cutoff(x64, setup):
    """Two atoms at distance d: outputs equal the isolated-atom values for d >= r_c and
    approach them at least as (r_c - d)^3 (energy) and (r_c - d)^2 (force): C2 at r_c.

    (Measured: order 4 and 3, because the Bessel basis also vanishes at r_c and the
    radial
    MLP has no bias; the envelope alone guarantees order 3.)"""
    _, params, apply = setup
    species = np.array([8, 1])

    def graph_at(d, with_edges=True):
        pos = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0]])
        # Neighbour list built with a skin so that the edge exists on both sides of r_c.
        g = make_graph(pos, species, CUTOFF + 1.0 if with_edges else 0.5)
        return g

    def energy(d, g):
        pos = g.positions.at[1, 0].set(d)
        return jnp.sum(apply(params, g, pos).energy)

    g = graph_at(CUTOFF)
    assert int(g.edge_mask.sum()) == 2
    isolated = float(energy(CUTOFF + 0.5, graph_at(CUTOFF + 0.5, with_edges=False)))
    for d in (CUTOFF, CUTOFF + 1e-6, CUTOFF + 0.3):
        assert float(energy(d, g)) == pytest.approx(isolated, abs=1e-14)
        assert float(jax.grad(energy)(d, g)) == pytest.approx(0.0, abs=1e-14)
    gaps = np.array([4e-2, 2e-2, 1e-2])
    de = np.array([float(energy(CUTOFF - h, g)) - isolated for h in gaps])
    df = np.array([float(jax.grad(energy)(CUTOFF - h, g)) for h in gaps])
    assert np.all(np.abs(de) > 0) and np.all(np.abs(df) > 0)
    # Halving the gap divides the energy change by >= 2^3 and the force by >= 2^2.
    order_e = np.log2(de[:-1] / de[1:])
    order_f = np.log2(df[:-1] / df[1:])
    assert np.all(order_e > 2.8) and np.all(order_f > 1.8), (order_e, order_f)
    # The latents are continuous too.
    a = as_dict(apply(params, g, g.positions.at[1, 0].set(CUTOFF - 1e-4)))
    b = as_dict(apply(params, g, g.positions.at[1, 0].set(CUTOFF + 1e-4)))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-9, err_msg=k)


def test_kappa_nonnegative_alpha_psd_for_random_params(x64, setup, rng):
    model, params, apply = setup
    g = make_graph(cluster(rng), SPECIES, CUTOFF)
    anisotropic = False
    for seed in range(3):
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(100 + seed), len(leaves))
        leaves = [
            3.0 * jax.random.normal(k, p.shape, p.dtype)
            for p, k in zip(leaves, keys, strict=True)
        ]
        out = apply(jax.tree.unflatten(tree, leaves), g)
        assert np.all(np.asarray(out.kappa) >= 0)
        alpha = np.asarray(out.alpha)
        np.testing.assert_allclose(alpha, np.swapaxes(alpha, 1, 2), atol=1e-14)
        eig = np.linalg.eigvalsh(alpha[:5])  # ascending
        # PSD up to round-off relative to the largest eigenvalue (a0 may underflow to
        # ~0).
        assert np.all(eig[:, 0] >= -1e-12 * eig[:, -1]), eig
        assert np.all(eig[:, -1] > 0)
        anisotropic |= bool(np.any(eig[:, -1] > 1.5 * eig[:, 0]))
        theta = np.asarray(out.theta)
        np.testing.assert_allclose(np.trace(theta, axis1=1, axis2=2), 0, atol=1e-12)
    assert anisotropic  # the check saw genuinely anisotropic tensors


def test_unknown_species_gives_nan_energy(x64, setup, rng):
    _, params, apply = setup
    out = apply(params, make_graph(cluster(rng), np.array([8, 1, 6, 8, 1]), CUTOFF))
    e = np.asarray(out.energy)
    assert np.isnan(e[2]) and np.all(np.isfinite(e[[0, 1, 3, 4, 5]]))


def test_reference_energies_are_added_per_species(x64, setup, rng):
    model, params, apply = setup
    g = make_graph(cluster(rng), SPECIES, CUTOFF)
    cfg = dataclasses.replace(CONFIG, reference_energies_eV=(-13.6, -432.1))
    shifted = jax.jit(AtomicModel(cfg).apply)(params, g).energy
    expected = apply(params, g).energy + jnp.asarray(
        [-432.1, -13.6, -13.6, -432.1, -13.6, 0.0]
    )
    np.testing.assert_allclose(shifted, expected, rtol=1e-13)


def test_switched_off_heads_have_no_parameters_isotropic_alpha(x64, rng):
    cfg = dataclasses.replace(
        CONFIG, variant="q+mu+dmu", alpha_kind="isotropic", l_max=1
    )
    g = make_graph(cluster(rng), SPECIES, CUTOFF)
    model = AtomicModel(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(3), g)
    names = " ".join(
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)
    )
    assert "2e" not in names and "alpha_iso" in names and "alpha_vectors" not in names
    apply = jax.jit(model.apply)
    out = apply(params, g)
    assert out.theta is None and out.kappa is None
    assert out.alpha.shape == (6,) and np.all(np.asarray(out.alpha) >= 0)
    assert out.q.shape == (6, 2) and out.mu.shape == (6, 3)

    def fn(positions, q):
        padded = np.zeros((g.num_atoms, 3))
        padded[:5] = positions
        out = apply(params, g, jnp.asarray(padded))
        return {k: v[:5] for k, v in as_dict(out).items()}

    kinds = {"mu": "1o", "alpha": "0e", "q": "2x0e"}
    assert_equivariant(fn, np.asarray(g.positions[:5]), kinds, rng)


def test_sr_variant_has_energy_only(x64, rng):
    cfg = dataclasses.replace(CONFIG, variant="sr", l_max=1)
    g = make_graph(cluster(rng), SPECIES, CUTOFF)
    model = AtomicModel(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(3), g)
    out = jax.jit(model.apply)(params, g)
    assert out.q is None and out.mu is None and out.alpha is None
    assert len(jax.tree.leaves(params["params"]["heads"])) == 4  # energy MLP only
