"""Total-charge shift of the latent charges: constraint, optimality, model-level physics."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.data.batching import frames_to_graph
from polmp.data.schema import Frame
from polmp.models.config import ModelConfig
from polmp.models.long_range import graph_long_range, prepare_long_range
from polmp.models.potential import make_energy_fn
from polmp.models.total_charge import graph_charges, shift_to_total_charge
from tests.models.graphs import cluster

CUTOFF = 3.0


def config(shift: str, variant: str = "q", channels: int = 1) -> ModelConfig:
    return ModelConfig(
        species=(1, 8),
        cutoff_A=CUTOFF,
        l_max=1,
        num_channels=4,
        num_layers=1,
        num_basis=4,
        radial_mlp=(8,),
        readout_hidden=8,
        avg_num_neighbors=3.0,
        variant=variant,
        num_charge_channels=channels,
        q_scale=0.5,
        total_charge_shift=shift,
    )


# ------------------------------------------------------------------ the projection


def padded_layout():
    """Three graphs of 3, 1, 4 real atoms, two padding atoms, two padding graphs."""
    atom_graph = np.array([0, 0, 0, 1, 2, 2, 2, 2, 3, 4])
    atom_mask = np.arange(10) < 8
    total_charge = np.array([1.0, -1.0, 0.5, 0.0, 0.0])
    return jnp.asarray(atom_graph), jnp.asarray(atom_mask), jnp.asarray(total_charge)


@pytest.mark.parametrize("kind", ["uniform", "softness"])
def test_constraint_is_exact_with_padding(x64, rng, kind):
    atom_graph, atom_mask, total_charge = padded_layout()
    q = jnp.asarray(rng.normal(size=(10, 3)))  # garbage on padding atoms too
    w = jnp.ones(10) if kind == "uniform" else jnp.asarray(rng.uniform(0.1, 3, 10))
    shifted = shift_to_total_charge(q, w, atom_graph, atom_mask, total_charge)
    sums = np.asarray(graph_charges(shifted, atom_graph, atom_mask, 5))
    expected = np.zeros((5, 3))
    expected[:, 0] = np.asarray(total_charge)
    np.testing.assert_allclose(sums, expected, atol=1e-14)
    assert np.all(np.asarray(shifted[8:]) == 0)  # padding atoms
    # Gradients stay finite through the padding graphs (w_sum = 0 there).
    grad = jax.grad(
        lambda q: jnp.sum(
            shift_to_total_charge(q, w, atom_graph, atom_mask, total_charge) ** 2
        )
    )(q)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_shift_is_the_weighted_least_change(x64, rng):
    """KKT: (q - qt)_i / s_i is one multiplier per graph and channel; q = qt if met."""
    atom_graph, atom_mask, total_charge = padded_layout()
    q = rng.normal(size=(10, 2)) * np.asarray(atom_mask)[:, None]
    w = rng.uniform(0.1, 3, 10)
    shifted = np.asarray(
        shift_to_total_charge(
            jnp.asarray(q), jnp.asarray(w), atom_graph, atom_mask, total_charge
        )
    )
    ratio = (shifted - q)[:8] / w[:8, None]
    for g in range(3):
        rows = ratio[np.asarray(atom_graph)[:8] == g]
        np.testing.assert_allclose(
            rows, np.broadcast_to(rows[0], rows.shape), atol=1e-14
        )
    # Already satisfied -> unchanged (a projection).
    again = shift_to_total_charge(
        jnp.asarray(shifted), jnp.asarray(w), atom_graph, atom_mask, total_charge
    )
    np.testing.assert_allclose(np.asarray(again), shifted, atol=1e-14)
    # And the change differs from the uniform one (the weights matter).
    uniform = np.asarray(
        shift_to_total_charge(
            jnp.asarray(q), jnp.ones(10), atom_graph, atom_mask, total_charge
        )
    )
    assert np.abs(uniform - shifted).max() > 1e-3


# ----------------------------------------------------------------- the model

#: one padded shape for every model evaluation below (one compilation per model)
CAPACITY = dict(num_atoms=16, num_edges=48, num_graphs=4)
LONG_RANGE = dict(
    sigma=1.0, accuracy=1e-10, num_periodic=0, num_free=3, atoms_per_graph=8
)
#: the model set-ups: shift -> (variant, charge channels)
SETUPS = {"none": ("q", 1), "uniform": ("q+mu", 1), "softness": ("q+mu", 2)}


def frames(rng, charges=(1.0, 0.0, -1.0)):
    """Water-like clusters (3, 4, 3 atoms) with the given total charges."""
    out = []
    for q, numbers in zip(charges, ([8, 1, 1], [8, 1, 1, 1], [8, 1, 1]), strict=True):
        out.append(
            Frame(
                positions=cluster(rng, n=len(numbers)),
                numbers=np.array(numbers),
                total_charge=q,
            )
        )
    return out


def padded(batch_frames):
    """(graph, long-range data) of frames at the one pinned shape."""
    graph = frames_to_graph(batch_frames, CUTOFF, **CAPACITY)
    return graph, prepare_long_range(graph, **LONG_RANGE)


@pytest.fixture(scope="module")
def models():
    """shift -> (jitted EnergyFns, params), float64, built once for the module."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        graph, _ = padded(frames(np.random.default_rng(0)))
        built = {}
        for shift, (variant, channels) in SETUPS.items():
            fns = make_energy_fn(
                config(shift, variant, channels), long_range_fn=graph_long_range
            )
            params = jax.jit(fns.model.init)(jax.random.PRNGKey(1), graph)
            fns = fns._replace(
                energy_fn=jax.jit(fns.energy_fn),
                outputs_fn=jax.jit(fns.outputs_fn),
                energy_forces_stress_fn=jax.jit(fns.energy_forces_stress_fn),
            )
            built[shift] = (fns, params)
        yield built
    finally:
        jax.config.update("jax_enable_x64", previous)


def outputs(models, shift, batch_frames):
    fns, params = models[shift]
    graph, data = padded(batch_frames)
    return graph, fns.outputs_fn(params, graph, long_range=data)


@pytest.mark.parametrize("shift", ["uniform", "softness"])
def test_model_charges_sum_to_total_charge_in_padded_batches(x64, models, shift):
    channels = SETUPS[shift][1]
    graph, out = outputs(models, shift, frames(np.random.default_rng(5)))
    sums = np.asarray(graph_charges(out.q, graph.atom_graph, graph.atom_mask, 4))
    expected = np.zeros((4, channels))
    expected[:3, 0] = [1.0, 0.0, -1.0]
    np.testing.assert_allclose(sums, expected, atol=1e-12)
    assert np.all(np.asarray(out.q)[~np.asarray(graph.atom_mask)] == 0)


def test_free_charges_do_not_sum_to_total_charge(x64, models):
    """The default (paper) leaves q free: the constraint test above can fail."""
    graph, out = outputs(models, "none", frames(np.random.default_rng(5)))
    sums = np.asarray(graph_charges(out.q, graph.atom_graph, graph.atom_mask, 4))
    assert np.abs(sums[:3, 0] - [1.0, 0.0, -1.0]).max() > 1e-2


def test_forces_are_the_exact_gradient(x64, models):
    """Softness weights: the shift depends on positions through q and s (uniform is
    the special case s = 1)."""
    fns, params = models["softness"]
    graph, data = padded(frames(np.random.default_rng(7)))
    _, forces, _ = fns.energy_forces_stress_fn(params, graph, long_range=data)
    h = 1e-5
    for atom, axis in [(0, 0), (1, 2), (4, 1), (8, 0)]:
        step = jnp.zeros_like(graph.positions).at[atom, axis].set(h)
        ep = jnp.sum(
            fns.energy_fn(params, graph, graph.positions + step, long_range=data)
        )
        em = jnp.sum(
            fns.energy_fn(params, graph, graph.positions - step, long_range=data)
        )
        fd = -(ep - em) / (2 * h)
        assert float(forces[atom, axis]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("shift", ["uniform", "softness"])
def test_energies_do_not_depend_on_batching(x64, models, shift):
    fns, params = models[shift]

    def energies(batch_frames):
        graph, data = padded(batch_frames)
        return np.asarray(fns.energy_fn(params, graph, long_range=data))

    fr = frames(np.random.default_rng(9))
    together, swapped = energies(fr), energies(fr[::-1])
    for i, frame in enumerate(fr):
        alone = energies([frame])
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-12)
        np.testing.assert_allclose(swapped[len(fr) - 1 - i], alone[0], rtol=1e-12)


def test_cation_and_neutral_molecule_get_different_long_range_energies(x64, models):
    """Same structure, Q = +1 vs 0: the shift separates them, free charges cannot."""
    neutral = frames(np.random.default_rng(11))[1]
    cation = dataclasses.replace(neutral, total_charge=1.0)
    for shift in ("none", "uniform", "softness"):
        _, out = outputs(models, shift, [cation, neutral])
        e_cation, e_neutral = np.asarray(out.long_range_energy[:2])
        if shift == "none":
            assert e_cation == e_neutral
        else:
            # +1 e spread over 4 atoms within ~2 A costs ~ k_e Q^2 / (2 R) ~ eV.
            assert abs(e_cation - e_neutral) > 0.3


def test_two_distant_ions_interact_as_point_charges(x64, models):
    """With C = 2 channels, shifted latents of Q = +1 and -1 ions interact as -k_e / d.

    Channel 0 carries Q and channel 1 is neutral, so the channel-summed Coulomb
    interaction of the two latent distributions tends to k_e Q_A Q_B / d.
    """
    fr = frames(np.random.default_rng(13))
    a, b = fr[0], fr[2]
    _, out = outputs(models, "softness", [a, b])
    qa = np.asarray(out.q)[: a.num_atoms]
    qb = np.asarray(out.q)[a.num_atoms : a.num_atoms + b.num_atoms]
    assert np.abs(qa[:, 1]).max() > 1e-3  # the neutral channel is not trivially 0
    k_e = 14.399645
    for d in (200.0, 400.0):
        rb = b.positions + np.array([d, 0, 0])
        r = np.linalg.norm(a.positions[:, None] - rb[None], axis=-1)
        interaction = k_e * np.einsum("ic,jc,ij->", qa, qb, 1 / r)
        assert interaction == pytest.approx(-k_e / d, rel=0.02)


def test_config_validation():
    with pytest.raises(ValueError, match="total_charge_shift"):
        config("neutral")
    with pytest.raises(ValueError, match="has none"):
        config("uniform", variant="sr")
    assert config("none").total_charge_shift == "none"


def test_softness_head_has_parameters_only_when_used(models):
    assert "softness" in models["softness"][1]["params"]["heads"]
    assert "softness" not in models["uniform"][1]["params"]["heads"]
