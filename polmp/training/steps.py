"""The jitted training and evaluation steps, and the part of the config they read.

``StepConfig`` holds exactly the training settings that enter the compiled train step
(optimiser chain, schedule, EMA decay, loss penalty); ``StepConfig.of(training)`` takes
them from a ``TrainingConfig``.  The step builders read nothing else, so a
``StepConfig`` is a complete key for the cache of compiled steps: two runs that differ
only in batch order, loss weights, epochs or bookkeeping reuse one compilation, and a
setting that changes the step can never be missing from the key (a builder that reads
a field ``StepConfig`` lacks fails at once).

* ``make_train_step(fns, tx, step_config)``: pure ``(state, batch, weights) ->
  (state, (loss, sums))``.
* ``make_eval_step(fns, penalty, delta)``: pure ``(params, batch) -> (sums, energy,
  forces)`` over the devices of a batch.
* ``compiled_steps`` / ``compiled_eval``: the same, jitted with shardings and cached;
  ``clear_compiled`` drops them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import optax

from polmp.config.schema import TrainingConfig
from polmp.models import ModelConfig
from polmp.training import sharding
from polmp.training.losses import LossWeights, error_sums, make_loss_fn
from polmp.training.optim import ema_update, make_optimizer
from polmp.training.state import TrainState
from polmp.training.trained import energy_fns_of

__all__ = [
    "StepConfig",
    "clear_compiled",
    "compiled_eval",
    "compiled_steps",
    "make_eval_step",
    "make_train_step",
]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The settings of ``TrainingConfig`` that enter the compiled train step.

    Attributes (as in ``TrainingConfig``): optimizer, learning_rate, schedule,
    warmup_steps, final_lr_fraction, clip_norm (the optax chain), ema_decay, loss,
    huber_delta (the penalty).
    """

    optimizer: str
    learning_rate: float
    schedule: str
    warmup_steps: int
    final_lr_fraction: float
    clip_norm: float | None
    ema_decay: float | None
    loss: str
    huber_delta: float

    @classmethod
    def of(cls, training: TrainingConfig) -> StepConfig:
        """The step's part of ``training``."""
        return cls(
            **{f.name: getattr(training, f.name) for f in dataclasses.fields(cls)}
        )


def make_train_step(fns, tx: optax.GradientTransformation, config: StepConfig) -> Any:
    """Pure training step ``(state, batch, weights) -> (state, (loss, sums))``.

    Not jitted here: ``compiled_steps`` jits it once with shardings.
    """
    loss_fn = make_loss_fn(
        fns.energy_forces_stress_fn, penalty=config.loss, delta=config.huber_delta
    )
    ema_decay = config.ema_decay

    def train_step(state: TrainState, batch, weights: LossWeights):
        key, _ = jax.random.split(state.key)
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, weights
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        new = dataclasses.replace(
            state,
            step=state.step + 1,
            params=params,
            ema_params=ema,
            opt_state=opt_state,
            key=key,
        )
        return new, (loss, sums)

    return train_step


def make_eval_step(fns, *, penalty: str = "mse", delta: float = 0.01):
    """Pure evaluation ``(params, batch) -> (sums, energy (D,G), forces (D,N,3))``."""

    def one(params, batch):
        energy, forces, stress = fns.energy_forces_stress_fn(
            params, batch.graph, long_range=batch.long_range
        )
        sums = error_sums(energy, forces, stress, batch, penalty=penalty, delta=delta)
        return sums, energy, forces

    def eval_step(params, batch):
        sums, energy, forces = jax.vmap(functools.partial(one, params))(batch)
        return sums.reduce(0), energy, forces

    return eval_step


def clear_compiled() -> None:
    """Drop every compiled train/eval step (this module's caches and jax's).

    A process that trains many models in a row (``polmp sweep``) otherwise keeps the
    machine code of every one of them: on CPU each compiled shape holds memory
    mappings, and a sweep of ~5 long-range models x 16 shapes exhausted the kernel's
    per-process map limit (``vm.max_map_count``, "LLVM ERROR: Unable to allocate
    section memory" or a segmentation fault while compiling the next model).
    """
    compiled_steps.cache_clear()
    compiled_eval.cache_clear()
    jax.clear_caches()


@functools.lru_cache(maxsize=8)
def compiled_steps(
    model_cfg: ModelConfig, step_config: StepConfig, total_steps: int, mesh
):
    """Jitted (train_step, eval_step) for a model, step config and mesh.

    Cached on these hashable, frozen arguments so that repeated ``train`` calls in one
    process (resume, sweeps, tests) reuse the compiled code instead of retracing.
    """
    fns = energy_fns_of(model_cfg)
    tx = make_optimizer(step_config, total_steps)
    repl = sharding.replicated(mesh)
    data_sh = sharding.data_sharded(mesh)
    train_step = jax.jit(
        make_train_step(fns, tx, step_config),
        in_shardings=(repl, data_sh, repl),
        out_shardings=(repl, repl),
    )
    return train_step, compiled_eval(
        model_cfg, step_config.loss, step_config.huber_delta, mesh
    )


@functools.lru_cache(maxsize=8)
def compiled_eval(model_cfg: ModelConfig, loss: str, delta: float, mesh):
    """Jitted eval_step (cached like ``compiled_steps``; shared with ``evaluate``)."""
    fns = energy_fns_of(model_cfg)
    return jax.jit(
        make_eval_step(fns, penalty=loss, delta=delta),
        in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
        out_shardings=(
            sharding.replicated(mesh),
            sharding.data_sharded(mesh),
            sharding.data_sharded(mesh),
        ),
    )
