"""The backbone's fast kernels equal the e3nn reference they replace (float64).

``layers.weighted_sh_tensor_product`` replaces ``e3nn.tensor_product(x, Y) * w``
(three-operand einsums plus a Clebsch-Gordan product for the per-irrep weights) for
speed.  These tests pin the replacement to the reference to 1e-10 relative: the kernel
alone, a whole model (energies and forces, one and two layers, periodic), and the
shipped trained model with its own parameters (the parameter layout is unchanged).
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.models import ModelConfig, layers
from polmp.models.potential import AtomicModel
from tests.models.graphs import cluster, make_graph

RTOL = 1e-10


def reference_weighted_tp(x, sh, weights, filter_ir_out):
    """The e3nn formulation the backbone used before (and what the kernel must equal)."""
    return e3nn.tensor_product(x, sh, filter_ir_out=filter_ir_out) * weights


def assert_close(new, ref):
    new, ref = np.asarray(new), np.asarray(ref)
    scale = np.max(np.abs(ref))
    assert scale > 0
    np.testing.assert_allclose(new, ref, rtol=0, atol=RTOL * scale)


@pytest.mark.parametrize(
    "irreps",
    ["4x0e+4x1o+4x2e", "3x0e+2x1o+1x2e+2x1e", "2x1o+3x0e+1x3o"],
)
def test_weighted_tp_equals_e3nn(x64, irreps):
    """Same irreps, same layout, same values; also unsorted/mixed inputs and l = 3."""
    kx, ks, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    x = e3nn.normal(irreps, kx, (11,), dtype=jnp.float64)
    vectors = jax.random.normal(ks, (11, 3), jnp.float64)
    sh = e3nn.spherical_harmonics("0e+1o+2e", vectors, normalize=True)
    filt = e3nn.Irreps("0e+1o+2e+3o")
    irreps_ref = e3nn.tensor_product(x, sh, filter_ir_out=filt).irreps
    w = jax.random.normal(kw, (11, irreps_ref.num_irreps), jnp.float64)
    ref = jax.jit(lambda *a: reference_weighted_tp(*a, filt))(x, sh, w)
    new = jax.jit(lambda *a: layers.weighted_sh_tensor_product(*a, filt))(x, sh, w)
    assert new.irreps == ref.irreps
    assert_close(new.array, ref.array)


def test_weighted_tp_rejects_wrong_weight_count(x64):
    x = e3nn.normal("2x0e", jax.random.PRNGKey(0), (3,), dtype=jnp.float64)
    sh = e3nn.spherical_harmonics("0e+1o", jnp.ones((3, 3)), normalize=True)
    with pytest.raises(ValueError, match="weights have 5 columns"):
        layers.weighted_sh_tensor_product(x, sh, jnp.ones((3, 5)), ["0e", "1o"])


def energies_and_forces(config, params, graph):
    model = AtomicModel(config)

    @jax.jit  # traced afresh per call: the monkeypatched kernel is picked up
    def run(params, graph):
        def total(positions):
            out = model.apply(params, graph, positions)
            return jnp.sum(out.energy), out

        (_, out), grad = jax.value_and_grad(total, has_aux=True)(graph.positions)
        return out, -grad

    return run(params, graph)


def deviations_from_reference(monkeypatch, config, params, graph):
    """Max |new - ref| / max |ref| of every nonzero output and of the forces, with the
    e3nn formulation patched in as the reference."""
    new_out, new_forces = energies_and_forces(config, params, graph)
    with monkeypatch.context() as m:
        m.setattr(layers, "weighted_sh_tensor_product", reference_weighted_tp)
        ref_out, ref_forces = energies_and_forces(config, params, graph)
    pairs = {"forces": (new_forces, ref_forces)}
    for name in ("energy", "q", "mu", "theta", "kappa", "alpha"):
        ref = getattr(ref_out, name, None)
        if ref is not None and np.max(np.abs(np.asarray(ref))) > 0:
            pairs[name] = (getattr(new_out, name), ref)
    return {
        name: float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
        for name, (a, b) in pairs.items()
    }


def test_model_energies_and_forces_unchanged(x64, monkeypatch):
    """A periodic water-like cluster, two layers (scalar and full-irreps inputs).

    The heads only read the backbone features; the shipped-model test below covers a
    model with every head on.
    """
    rng = np.random.default_rng(3)
    positions = cluster(rng, n=9, scale=1.4)
    species = np.array([8, 1, 1] * 3)
    cell = np.eye(3) * 6.0
    graph = make_graph(positions % 6.0, species, 3.0, cell=cell)
    config = ModelConfig(
        species=(1, 8),
        cutoff_A=3.0,
        num_layers=2,
        num_channels=4,
        l_max=2,
        radial_mlp=(8,),
        variant="sr",
    )
    params = jax.jit(AtomicModel(config).init)(jax.random.PRNGKey(1), graph)
    errors = deviations_from_reference(monkeypatch, config, params, graph)
    assert set(errors) == {"energy", "forces"}
    assert max(errors.values()) < RTOL, errors


def test_shipped_model_unchanged(x64, monkeypatch):
    """The shipped model's parameters load and give the reference energies/forces."""
    from polmp.data.water import water_box
    from polmp.training.trained import load_trained

    try:
        trained = load_trained().cast(jnp.float64)
    except FileNotFoundError:
        pytest.skip("shipped model not installed")
    frame = water_box(2)  # 8 molecules, 24 atoms
    graph = make_graph(
        frame.positions, frame.numbers, trained.model_config.cutoff_A, cell=frame.cell
    )
    errors = deviations_from_reference(
        monkeypatch, trained.model_config, trained.params, graph
    )
    # the "full" model: every latent head is compared, not only the energy
    assert {"energy", "forces", "q", "mu", "theta", "kappa", "alpha"} <= set(errors)
    assert max(errors.values()) < RTOL, errors
