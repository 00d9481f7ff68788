"""Optimiser chains (optax), learning-rate schedules and the parameter EMA.

``make_optimizer(config, total_steps)`` builds

    clip_by_global_norm(clip_norm) -> scale_by_<optimizer>
        -> scale_by_learning_rate(schedule)

from the explicit registries ``OPTIMIZERS`` and ``SCHEDULES``.  Schedules are a linear
warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then "constant", "cosine"
(to ``final_lr_fraction * learning_rate`` at ``total_steps``) or "exponential"
(geometric decay reaching the same final value at ``total_steps``).

The exponential moving average of the parameters (``ema_update``) is what evaluation
uses.  Its effective decay ramps up as min(decay, (1 + t)/(10 + t)) (t = step), so
early EMA parameters are not dominated by the random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from polmp.config.schema import TrainingConfig

if TYPE_CHECKING:
    from polmp.training.steps import StepConfig

#: optimizer name -> factory of the gradient-scaling transformation (no learning rate)
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "adam": optax.scale_by_adam,
    "amsgrad": optax.scale_by_amsgrad,
}


def _constant(lr, warmup, total, final_fraction):
    del total, final_fraction
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )


def _cosine(lr, warmup, total, final_fraction):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else lr,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(total, warmup + 1),
        end_value=lr * final_fraction,
    )


def _exponential(lr, warmup, total, final_fraction):
    decay_steps = max(total - warmup, 1)
    return optax.warmup_exponential_decay_schedule(
        init_value=0.0 if warmup else lr,
        peak_value=lr,
        warmup_steps=warmup,
        transition_steps=decay_steps,
        decay_rate=final_fraction,
        end_value=lr * final_fraction,
    )


#: schedule name -> f(learning_rate, warmup_steps, total_steps, final_lr_fraction)
SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "exponential": _exponential,
}


def make_schedule(
    config: TrainingConfig | StepConfig, total_steps: int
) -> optax.Schedule:
    """Learning rate as a function of the step (module docstring).

    Args:
        config: training config (learning_rate, schedule, warmup_steps,
            final_lr_fraction).
        total_steps: optimisation steps of the whole run.

    Returns:
        optax schedule ``step -> learning rate``.
    """
    return SCHEDULES[config.schedule](
        config.learning_rate,
        int(config.warmup_steps),
        int(total_steps),
        config.final_lr_fraction,
    )


def make_optimizer(
    config: TrainingConfig | StepConfig, total_steps: int
) -> optax.GradientTransformation:
    """Clipping + optimizer + schedule chain for ``config`` (module docstring).

    Args:
        config: training config.
        total_steps: optimisation steps of the whole run (for the decay).

    Returns:
        ``optax.GradientTransformation``.

    Raises:
        ValueError: unknown optimizer or schedule name.
    """
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {config.optimizer!r}; "
            f"expected one of {sorted(OPTIMIZERS)}"
        )
    if config.schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {config.schedule!r}; expected one of {sorted(SCHEDULES)}"
        )
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    parts.append(OPTIMIZERS[config.optimizer]())
    parts.append(optax.scale_by_learning_rate(make_schedule(config, total_steps)))
    return optax.chain(*parts)


def ema_update(ema_params, params, step: jax.Array, decay: float | None):
    """One EMA step: ema <- d ema + (1 - d) params, d = min(decay, (1+t)/(10+t)).

    Args:
        ema_params: the current average (pytree like ``params``).
        params: the parameters after the optimiser step.
        step: Int[Array, ''], the number of optimiser steps taken before this one.
        decay: the EMA decay, or None (the average is the parameters themselves).

    Returns:
        the new average, in the dtypes of ``ema_params``.
    """
    if decay is None:
        return params
    t = step.astype(jnp.float32)
    d = jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))

    def update(e, p):
        d_ = d.astype(e.dtype)
        return d_ * e + (1 - d_) * p.astype(e.dtype)

    return jax.tree.map(update, ema_params, params)
