"""The compile cache of the training step is keyed by exactly what enters the step."""

from __future__ import annotations

import dataclasses

from polmp.config.schema import TrainingConfig
from polmp.training.optim import make_optimizer
from polmp.training.steps import StepConfig, make_train_step


def test_step_config_keeps_only_what_enters_the_step():
    base = TrainingConfig()
    # bookkeeping, data order and loss weights are traced or host-side: same key
    for change in (
        dict(seed=3),
        dict(batch_size=7),
        dict(num_epochs=5, max_steps=4, patience=2),
        dict(energy_weight=3.0, forces_weight=0.5, stress_weight=1.0),
        dict(stage2_energy_weight=9.0, stage2_start_epoch=2),
        dict(checkpoint_every_epochs=3, progress_bar=False, parity_plots=False),
        dict(fit_reference_energies=False, num_devices=2),
    ):
        assert StepConfig.of(dataclasses.replace(base, **change)) == StepConfig.of(base)
    # every setting of the optimiser chain, the EMA and the penalty changes the key
    for change in (
        dict(optimizer="adam"),
        dict(learning_rate=2e-3),
        dict(schedule="constant"),
        dict(warmup_steps=5),
        dict(final_lr_fraction=0.5),
        dict(clip_norm=None),
        dict(ema_decay=None),
        dict(loss="huber"),
        dict(huber_delta=0.5),
    ):
        assert StepConfig.of(dataclasses.replace(base, **change)) != StepConfig.of(base)


def test_step_builders_read_nothing_outside_step_config():
    """The builders take a StepConfig: a field they read that it lacks would raise."""

    class Fns:
        energy_forces_stress_fn = None

    step_config = StepConfig.of(TrainingConfig(loss="huber", clip_norm=None))
    tx = make_optimizer(step_config, 10)
    assert callable(make_train_step(Fns(), tx, step_config))
