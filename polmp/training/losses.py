"""Masked error sums and the weighted loss of a padded ``Batch`` (pure, jittable).

The loss of a step is built from *sums* and *counts* rather than means, so that a batch
split over devices (or over several sub-batches) gives exactly the loss of the whole
batch: sums add over sub-batches and the division happens once at the end.

    L = w_E <p((E_g - E_g^ref) / N_g)>_g + w_F <p(F_ia - F_ia^ref)>_{i,a}
        + w_S <p(sigma_gab - sigma_gab^ref)>_{g,a,b}

where p is the per-component penalty (``PENALTIES``: "mse" r^2, "huber"), N_g the atom
count of graph g, and each mean runs over the labelled entries only (``Batch`` masks);
a term without any label contributes 0.  Units: energies eV (per atom: eV/atom),
forces eV/A, stress eV/A^3.  Weights are a traced pytree (``LossWeights``), so a
second training stage with another energy weight reuses the compiled step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax

from polmp.data.batching import Batch


def _squared(r: jax.Array, delta: float) -> jax.Array:
    del delta
    return r * r


def _huber(r: jax.Array, delta: float) -> jax.Array:
    # optax.huber_loss is 0.5 r^2 below delta; x2 so that it equals r^2 there (as mse)
    return 2.0 * optax.huber_loss(r, delta=delta)


#: per-component penalty p(residual, delta) registry (``TrainingConfig.loss``)
PENALTIES: dict[str, Callable[[jax.Array, float], jax.Array]] = {
    "mse": _squared,
    "huber": _huber,
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Loss weights as traced scalars (changing them does not recompile).

    Attributes:
        energy: Float[Array, ''], 1/(eV/atom)^2.
        forces: Float[Array, ''], 1/(eV/A)^2.
        stress: Float[Array, ''], 1/(eV/A^3)^2.
    """

    energy: jax.Array
    forces: jax.Array
    stress: jax.Array

    @classmethod
    def create(cls, energy: float, forces: float, stress: float) -> LossWeights:
        """Weights from Python floats (float32 arrays; cast where used)."""
        return cls(*(jnp.asarray(w, jnp.float32) for w in (energy, forces, stress)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ErrorSums:
    """Masked sums of penalties, squared and absolute errors, and their counts.

    All fields are scalars (or have a common leading axis before ``reduce``).  The
    ``*_loss`` fields hold sums of the penalty, ``*_se`` of squared errors, ``*_ae``
    of absolute errors; energies are per atom (eV/atom), forces per component (eV/A),
    stress per component (eV/A^3).  ``*_count`` are the numbers of terms.
    """

    energy_loss: jax.Array
    energy_se: jax.Array
    energy_ae: jax.Array
    energy_count: jax.Array
    forces_loss: jax.Array
    forces_se: jax.Array
    forces_ae: jax.Array
    forces_count: jax.Array
    stress_loss: jax.Array
    stress_se: jax.Array
    stress_ae: jax.Array
    stress_count: jax.Array

    def reduce(self, axis=0) -> ErrorSums:
        """Sum every field over ``axis`` (devices, sub-batches)."""
        return jax.tree.map(lambda x: jnp.sum(x, axis=axis), self)

    def __add__(self, other: ErrorSums) -> ErrorSums:
        return jax.tree.map(jnp.add, self, other)

    @classmethod
    def zeros(cls) -> ErrorSums:
        """All-zero sums (float64 where x64 is on)."""
        zero = jnp.zeros((), jnp.result_type(float))
        return cls(*([zero] * len(dataclasses.fields(cls))))


def _masked_sums(residual, mask, penalty, delta):
    """(penalty sum, squared sum, abs sum, count) of ``residual`` where ``mask``."""
    mask = mask.astype(residual.dtype)
    while mask.ndim < residual.ndim:
        mask = mask[..., None]
    mask = jnp.broadcast_to(mask, residual.shape)
    # double where: padded entries are exact zeros before the penalty, too
    r = jnp.where(mask > 0, residual, jnp.zeros_like(residual))
    return (
        jnp.sum(mask * penalty(r, delta)),
        jnp.sum(mask * r * r),
        jnp.sum(mask * jnp.abs(r)),
        jnp.sum(mask),
    )


def error_sums(
    energy: jax.Array,
    forces: jax.Array,
    stress: jax.Array,
    batch: Batch,
    *,
    penalty: str = "mse",
    delta: float = 0.01,
) -> ErrorSums:
    """Masked error sums of predictions against the labels of ``batch``.

    Args:
        energy: Float[Array, 'G'], eV, predicted total energy per graph.
        forces: Float[Array, 'N 3'], eV/A.
        stress: Float[Array, 'G 3 3'], eV/A^3.
        batch: the padded ``Batch`` with labels and label masks.
        penalty: key of ``PENALTIES``.
        delta: threshold of the huber penalty (label units).

    Returns:
        ``ErrorSums`` of scalars, in the dtype of ``energy``.
    """
    graph = batch.graph
    p = PENALTIES[penalty]
    dtype = energy.dtype
    num_atoms = jax.ops.segment_sum(
        graph.atom_mask.astype(dtype), graph.atom_graph, num_segments=graph.num_graphs
    )  # (G,)
    e_mask = batch.energy_mask & graph.graph_mask & (num_atoms > 0)
    safe_n = jnp.where(e_mask, num_atoms, jnp.ones_like(num_atoms))
    e_res = (energy - batch.energy.astype(dtype)) / safe_n  # (G,) eV/atom
    f_res = forces - batch.forces.astype(dtype)  # (N, 3)
    s_res = stress - batch.stress.astype(dtype)  # (G, 3, 3)
    f_mask = batch.forces_mask & graph.atom_mask
    s_mask = batch.stress_mask & graph.graph_mask
    return ErrorSums(
        *_masked_sums(e_res, e_mask, p, delta),
        *_masked_sums(f_res, f_mask, p, delta),
        *_masked_sums(s_res, s_mask, p, delta),
    )


def _mean(total, count):
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.zeros_like(total))


def total_loss(sums: ErrorSums, weights: LossWeights) -> jax.Array:
    """Weighted loss from (reduced) ``ErrorSums``: sum_t w_t * penalty_sum_t / count_t.

    Args:
        sums: scalar ``ErrorSums`` (reduce over devices first).
        weights: ``LossWeights``.

    Returns:
        Float[Array, ''], dimensionless (weights carry the inverse units).
    """
    dtype = sums.energy_loss.dtype
    return (
        weights.energy.astype(dtype) * _mean(sums.energy_loss, sums.energy_count)
        + weights.forces.astype(dtype) * _mean(sums.forces_loss, sums.forces_count)
        + weights.stress.astype(dtype) * _mean(sums.stress_loss, sums.stress_count)
    )


def host_total_loss(sums: dict, weights: LossWeights) -> float:
    """``total_loss`` on the host from a ``metrics.to_host`` dict (Python floats)."""

    def mean(name):
        count = sums[f"{name}_count"]
        return sums[f"{name}_loss"] / count if count > 0 else 0.0

    return (
        float(weights.energy) * mean("energy")
        + float(weights.forces) * mean("forces")
        + float(weights.stress) * mean("stress")
    )


def make_loss_fn(
    energy_forces_stress_fn: Callable, *, penalty: str = "mse", delta: float = 0.01
) -> Callable:
    """Loss of a device-stacked batch: ``loss_fn(params, batch, weights)``.

    The batch leaves carry a leading device axis D (``polmp.training.sharding``); the
    model is vmapped over it and the error sums are added over D before the division,
    so the loss equals that of the same frames in one batch.  ``batch.long_range`` (if
    not None) is passed on as ``long_range=`` so E_lr plugs in unchanged.

    Args:
        energy_forces_stress_fn: ``EnergyFns.energy_forces_stress_fn``.
        penalty: key of ``PENALTIES``.
        delta: huber threshold.

    Returns:
        ``loss_fn(params, batch, weights) -> (loss, ErrorSums)`` (scalar loss; sums
        reduced over devices).
    """
    if penalty not in PENALTIES:
        raise ValueError(
            f"unknown loss {penalty!r}; expected one of {sorted(PENALTIES)}"
        )

    def one(params, batch: Batch) -> ErrorSums:
        energy, forces, stress = energy_forces_stress_fn(
            params, batch.graph, long_range=batch.long_range
        )
        return error_sums(energy, forces, stress, batch, penalty=penalty, delta=delta)

    def loss_fn(params, batch: Batch, weights: LossWeights):
        sums = jax.vmap(partial(one, params))(batch).reduce(0)
        return total_loss(sums, weights), sums

    return loss_fn
