"""Training state: a frozen dataclass pytree, updated with ``dataclasses.replace``.

``TrainState`` holds what the jitted step reads and writes (params, EMA params,
optimiser state, step counter, PRNG key).  ``LoopState`` is the host-side bookkeeping
that exact resumption needs besides it (epoch, position in the epoch's batch order,
early-stopping record); it is plain JSON in checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything the jitted training step carries.

    Attributes:
        step: Int[Array, ''], optimiser steps taken.
        params: model parameters (flax tree).
        ema_params: exponential moving average of ``params`` (evaluated).
        opt_state: optax state of the chain.
        key: PRNG key (uint32 (2,)), split once per step (kept for stochastic
            extensions; checkpointed for exact resumption).
    """

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    key: jax.Array

    @classmethod
    def create(
        cls, params, tx: optax.GradientTransformation, key: jax.Array
    ) -> TrainState:
        """Fresh state at step 0 (EMA starts at ``params``)."""
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            ema_params=jax.tree.map(jnp.array, params),
            opt_state=tx.init(params),
            key=key,
        )

    def as_dict(self) -> dict:
        """Plain dict of the fields (what is written to checkpoints)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        """Inverse of ``as_dict``."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class LoopState:
    """Host bookkeeping for exact resumption (JSON in the checkpoint).

    Attributes:
        epoch: current epoch (0-based).
        batch_in_epoch: batches of ``epoch`` already taken (the order of an epoch is a
            function of (seed, epoch), so this position is the data-order state).
        best_valid_loss: best validation loss so far in the current stage (or None).
        best_epoch: epoch of ``best_valid_loss`` (or -1).
        epochs_without_improvement: for early stopping.
        stage: 1 or 2 (second stage: raised energy weight).
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    best_valid_loss: float | None = None
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    stage: int = 1

    def to_json(self) -> dict:
        """JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LoopState:
        """Inverse of ``to_json``."""
        return cls(**data)
