"""Masked error sums, weighted loss, device-stacked reduction (no model compile)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polmp.data.batching import frames_to_batch
from polmp.data.schema import Frame
from polmp.training import sharding
from polmp.training.losses import (
    LossWeights,
    error_sums,
    host_total_loss,
    make_loss_fn,
    total_loss,
)
from polmp.training.metrics import format_table, summarize, to_host
from polmp.training.pipeline import padding_batch


def _frames(rng):
    cell = np.eye(3) * 6.0
    periodic = Frame(
        positions=rng.uniform(0, 6, size=(4, 3)),
        numbers=np.array([8, 1, 1, 8]),
        cell=cell,
        pbc=np.ones(3, bool),
        energy=-3.0,
        forces=rng.normal(size=(4, 3)),
        stress=rng.normal(size=(3, 3)) * 0.01,
    )
    molecule = Frame(
        positions=rng.normal(size=(3, 3)),
        numbers=np.array([8, 1, 1]),
        energy=-2.0,
        forces=rng.normal(size=(3, 3)),
    )
    no_forces = Frame(
        positions=rng.normal(size=(5, 3)) * 2, numbers=np.ones(5, int), energy=1.0
    )
    return [periodic, molecule, no_forces]


def test_error_sums_against_numpy(x64, rng):
    frames = _frames(rng)
    batch = frames_to_batch(frames, 2.5, 16, 64, 5)
    n, g = batch.graph.num_atoms, batch.graph.num_graphs
    energy = jnp.asarray(rng.normal(size=g))
    forces = jnp.asarray(rng.normal(size=(n, 3)))
    stress = jnp.asarray(rng.normal(size=(g, 3, 3)))
    sums = error_sums(energy, forces, stress, batch)
    counts = np.array([4, 3, 5])
    e_res = (np.asarray(energy)[:3] - np.array([-3.0, -2.0, 1.0])) / counts
    f_ref = np.concatenate([frames[0].forces, frames[1].forces])
    f_res = np.asarray(forces)[:7] - f_ref
    s_res = np.asarray(stress)[0] - frames[0].stress
    np.testing.assert_allclose(sums.energy_se, np.sum(e_res**2), rtol=1e-12)
    np.testing.assert_allclose(sums.energy_ae, np.sum(np.abs(e_res)), rtol=1e-12)
    assert float(sums.energy_count) == 3
    np.testing.assert_allclose(sums.forces_se, np.sum(f_res**2), rtol=1e-12)
    assert float(sums.forces_count) == 21  # the third frame has no forces
    np.testing.assert_allclose(sums.stress_se, np.sum(s_res**2), rtol=1e-12)
    assert float(sums.stress_count) == 9  # only the periodic frame has a stress
    weights = LossWeights.create(2.0, 3.0, 4.0)
    expected = 2 * np.mean(e_res**2) + 3 * np.mean(f_res**2) + 4 * np.mean(s_res**2)
    np.testing.assert_allclose(total_loss(sums, weights), expected, rtol=1e-6)
    np.testing.assert_allclose(
        host_total_loss(to_host(sums), weights), expected, rtol=1e-6
    )
    table = summarize(sums)
    np.testing.assert_allclose(
        table["forces_rmse_meV_per_A"], 1e3 * np.sqrt(np.mean(f_res**2)), rtol=1e-10
    )
    np.testing.assert_allclose(
        table["energy_mae_meV_per_atom"], 1e3 * np.mean(np.abs(e_res)), rtol=1e-10
    )
    assert "meV/atom" in format_table({"valid": table})


def test_padding_and_missing_labels_do_not_count(x64, rng):
    frames = _frames(rng)
    batch = frames_to_batch(frames[1:2], 2.5, 8, 16, 3)
    n, g = batch.graph.num_atoms, batch.graph.num_graphs
    # garbage on padding atoms/graphs and a stress on a non-periodic frame: all masked
    forces = jnp.zeros((n, 3)).at[3:].set(1e6)
    energy = jnp.zeros(g).at[1:].set(1e6)
    sums = error_sums(energy, forces, jnp.full((g, 3, 3), 1e6), batch)
    assert float(sums.stress_count) == 0 and float(sums.stress_se) == 0
    assert float(sums.forces_count) == 9
    np.testing.assert_allclose(sums.forces_se, np.sum(frames[1].forces ** 2))
    empty = summarize(sums)
    assert empty["stress_rmse_meV_per_A3"] is None and empty["num_stress"] == 0


def _toy_fn(params, graph, positions=None, cell=None, *, long_range=None):
    """E_g = p * sum over edges of |r_ij|^2 (masked); forces by autodiff, stress 0."""
    del cell, long_range

    def energy(pos):
        d = pos[graph.idx_j] - pos[graph.idx_i]
        e = params * jnp.sum(d * d, axis=-1) * graph.edge_mask
        return jax.ops.segment_sum(
            e, graph.atom_graph[graph.idx_i], num_segments=graph.num_graphs
        )

    pos = graph.positions
    e = energy(pos)
    f = -jax.grad(lambda r: jnp.sum(energy(r)))(pos)
    return e, f, jnp.zeros((graph.num_graphs, 3, 3), pos.dtype)


@pytest.mark.parametrize("penalty", ["mse", "huber"])
def test_stacked_subbatches(x64, rng, penalty):
    """Loss and gradient of D sub-batches (one padded to nothing) = the whole batch."""
    frames = _frames(rng) + _frames(rng)[:2]
    loss_fn = make_loss_fn(_toy_fn, penalty=penalty, delta=0.5)
    weights = LossWeights.create(1.0, 10.0, 3.0)
    whole = sharding.stack_batches([frames_to_batch(frames, 2.5, 32, 256, 6)])
    parts = sharding.stack_batches(
        [
            frames_to_batch(frames[:3], 2.5, 24, 128, 4),
            frames_to_batch(frames[3:], 2.5, 24, 128, 4),
            padding_batch((24, 128, 4)),
        ]
    )
    params = jnp.asarray(0.3)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (l1, s1), g1 = grad_fn(params, whole, weights)
    (l2, s2), g2 = grad_fn(params, parts, weights)
    np.testing.assert_allclose(l2, l1, rtol=1e-12)
    np.testing.assert_allclose(g2, g1, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert float(l1) > 0 and float(g1) != 0


def test_weights_are_traced_no_recompile(x64, rng):
    frames = _frames(rng)
    batch = sharding.stack_batches([frames_to_batch(frames, 2.5, 16, 64, 5)])
    traces = []

    def fn(params, b, w):
        traces.append(1)
        return make_loss_fn(_toy_fn)(params, b, w)[0]

    jitted = jax.jit(fn)
    a = jitted(jnp.asarray(0.3), batch, LossWeights.create(1.0, 1.0, 0.0))
    b = jitted(jnp.asarray(0.3), batch, LossWeights.create(5.0, 1.0, 0.0))
    assert len(traces) == 1 and float(a) != float(b)


def test_stack_batches_refuses_different_shapes(rng):
    frames = _frames(rng)
    with pytest.raises(ValueError, match="pin the capacities"):
        sharding.stack_batches(
            [
                frames_to_batch(frames[:1], 2.5, 8, 64, 3),
                frames_to_batch(frames[1:2], 2.5, 16, 64, 3),
            ]
        )


def test_unknown_penalty():
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss_fn(_toy_fn, penalty="l4")


def test_weights_dataclass_is_frozen():
    w = LossWeights.create(1.0, 2.0, 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.energy = 2.0
