"""Run configuration: frozen dataclasses for ``polmp train`` (host side).

A run is ``RunConfig(model, data, training, long_range, precision, output_dir)``; the
model part is :class:`polmp.models.ModelConfig` itself (not a copy).  Load one with the
strict loader::

    from polmp.config.loader import load_config
    config = load_config(RunConfig, "run.yaml", ["training.learning_rate=1e-3"])

Units are in the field names (``cutoff_A``, ``learning_rate`` is per step in parameter
units, weights multiply losses in (eV/atom)^2, (eV/A)^2 and (eV/A^3)^2).  Every class
validates itself in ``__post_init__`` so a bad value fails at load time with the
dotted path (the loader wraps ``ValueError`` into ``ConfigError``).

Registries of names live next to the code that implements them and are mirrored here
as tuples so the schema can validate without importing jax:
``OPTIMIZER_NAMES`` (``polmp.training.optim.OPTIMIZERS``), ``SCHEDULE_NAMES``
(``polmp.training.optim.SCHEDULES``), ``LOSS_NAMES``
(``polmp.training.losses.PENALTIES``).
"""

from __future__ import annotations

import dataclasses

from polmp.models.config import ModelConfig

#: optimizer names (keys of ``polmp.training.optim.OPTIMIZERS``)
OPTIMIZER_NAMES: tuple[str, ...] = ("adam", "amsgrad")
#: learning-rate schedule names (keys of ``polmp.training.optim.SCHEDULES``)
SCHEDULE_NAMES: tuple[str, ...] = ("constant", "cosine", "exponential")
#: per-component penalties (keys of ``polmp.training.losses.PENALTIES``)
LOSS_NAMES: tuple[str, ...] = ("mse", "huber")
#: accepted ``RunConfig.precision`` values
PRECISIONS: tuple[str, ...] = ("float32", "float64")
#: accepted ``LongRangeConfig.method`` values
LONG_RANGE_METHODS: tuple[str, ...] = ("auto", "ewald", "pme")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the labelled frames come from and how they are split and batched.

    Either give explicit ``valid_path`` / ``test_path`` files, or let the validation
    and test sets be drawn from ``train_path`` by a seeded permutation
    (``valid_fraction``, ``test_fraction``, ``split_seed``).  An explicit file wins
    over its fraction.

    Attributes:
        train_path: training file (extxyz, RuNNer input.data, anything ASE reads),
            or a shipped set ``embedded:<name>`` (``polmp.data.embedded.EMBEDDED_SETS``,
            e.g. ``embedded:water-gfn2``), a glob pattern (``data/train-*.xyz``, files
            in sorted order) or a list of these (frames concatenated); the same holds
            for the other paths.
        valid_path: validation file, or None (split off ``train_path``).
        test_path: test file, or None (split off ``train_path`` if
            ``test_fraction > 0``, else no test set).
        format: reader format (``polmp.data.io.read_frames``), None guesses.
        index: ASE-style frame selection applied to every file, e.g. ``":"``,
            ``"0:100"``.
        valid_fraction: fraction of ``train_path`` frames held out for validation.
        test_fraction: fraction of ``train_path`` frames held out for testing.
        split_seed: seed of the permutation that splits ``train_path``.
        cutoff_A: neighbour-list cutoff of the batches, A; None -> the model's
            ``cutoff_A`` (must not be smaller than it).
        energy_key: header key of the total energy (None: the reader's defaults).
        forces_key: per-atom key of the forces (None: the reader's defaults).
        stress_key: header key of the stress (None: the reader's defaults).
        max_shapes: the most distinct padded batch shapes (compiles) per data set.
        pbc: ``"file"`` keeps each frame's periodicity as read; ``"none"`` treats every
            frame as an isolated molecule/cluster (pbc False, stress dropped): for
            molecules that a DFT code needed in a large vacuum box, whose images
            should not interact (all-pairs long-range sum instead of Ewald/PME).
    """

    train_path: str | tuple[str, ...] | None = None
    valid_path: str | tuple[str, ...] | None = None
    test_path: str | tuple[str, ...] | None = None
    format: str | None = None
    index: str = ":"
    valid_fraction: float = 0.1
    test_fraction: float = 0.0
    split_seed: int = 0
    cutoff_A: float | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    max_shapes: int = 8
    pbc: str = "file"

    def __post_init__(self):
        if self.pbc not in ("file", "none"):
            raise ValueError(f"data.pbc must be 'file' or 'none', got {self.pbc!r}")
        _check_fraction("valid_fraction", self.valid_fraction)
        _check_fraction("test_fraction", self.test_fraction)
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "valid_fraction + test_fraction must leave training frames, got "
                f"{self.valid_fraction} + {self.test_fraction}"
            )
        if self.cutoff_A is not None and not self.cutoff_A > 0:
            raise ValueError(f"cutoff_A must be positive, got {self.cutoff_A}")
        if self.max_shapes < 1:
            raise ValueError(f"max_shapes must be >= 1, got {self.max_shapes}")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, loss weights, schedule and bookkeeping of a training run.

    The loss is (``polmp.training.losses``)
    ``energy_weight * <((E - E_ref)/N_atoms)^2> + forces_weight * <(F - F_ref)^2>
    + stress_weight * <(sigma - sigma_ref)^2>`` with means over the labelled graphs,
    force components and stress components.  From epoch ``stage2_start_epoch`` on
    (0-based) the energy weight is ``stage2_energy_weight`` (as in the
    paper, docs/method.md#training).  Weights are traced arrays, so the
    switch does not recompile.

    Attributes:
        optimizer: key of ``OPTIMIZER_NAMES`` ("adam", "amsgrad").
        learning_rate: peak learning rate (after warm-up).
        schedule: "constant", "cosine" (to ``final_lr_fraction * learning_rate`` at
            the last step) or "exponential" (geometric decay to the same value).
        warmup_steps: linear warm-up steps from 0 to ``learning_rate``.
        final_lr_fraction: learning rate at the last step / ``learning_rate``.
        clip_norm: global-norm gradient clipping threshold, or None (no clipping).
        ema_decay: decay of the exponential moving average of the parameters (the
            evaluated parameters), or None (evaluate the raw parameters).
        batch_size: frames per optimisation step (over all devices).
        num_epochs: passes over the training set.
        max_steps: stop after this many optimisation steps in total (a checkpoint is
            written), or None; the schedule still spans ``num_epochs``.
        loss: per-component penalty, a key of ``LOSS_NAMES``.
        huber_delta: threshold of the "huber" penalty (in each label's unit).
        energy_weight: weight of the per-atom energy MSE, 1/(eV/atom)^2.
        forces_weight: weight of the force-component MSE, 1/(eV/A)^2.
        stress_weight: weight of the stress-component MSE, 1/(eV/A^3)^2.
        stage2_energy_weight: energy weight of the second stage, or None.
        stage2_start_epoch: first epoch of the second stage (0-based), or None.
        patience: stop when the validation loss has not improved for this many
            epochs, or None (no early stopping).
        seed: seed of the parameter init, the PRNG key and the batch order.
        fit_reference_energies: fit per-species reference energies by least squares
            on the training set before training (replaces the model's values).
        num_devices: devices of the data-parallel mesh (1: no sharding).
        checkpoint_every_epochs: write a checkpoint every this many epochs (and at
            the end); 0 writes only at the end.
        progress_bar: show a tqdm bar over the optimisation steps.
        parity_plots: write energy and force parity PNGs at the end.
        distributed: train data-parallel over several processes
            (``polmp.training.distributed``; also switched on by the coordinates
            below or their ``POLMP_*`` environment variables).
        coordinator_address: ``host:port`` of process 0, or None (environment or
            JAX's cluster detection).
        num_processes: number of processes P, or None.
        process_id: this process's index in 0..P-1, or None.
    """

    optimizer: str = "amsgrad"
    learning_rate: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    final_lr_fraction: float = 0.01
    clip_norm: float | None = 10.0
    ema_decay: float | None = 0.99
    batch_size: int = 4
    num_epochs: int = 100
    max_steps: int | None = None
    loss: str = "mse"
    huber_delta: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 0.0
    stage2_energy_weight: float | None = None
    stage2_start_epoch: int | None = None
    patience: int | None = None
    seed: int = 0
    fit_reference_energies: bool = True
    num_devices: int = 1
    checkpoint_every_epochs: int = 1
    progress_bar: bool = True
    parity_plots: bool = True
    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; expected one of "
                f"{OPTIMIZER_NAMES}"
            )
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; expected one of {SCHEDULE_NAMES}"
            )
        if self.loss not in LOSS_NAMES:
            raise ValueError(
                f"unknown loss {self.loss!r}; expected one of {LOSS_NAMES}"
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}"
            )
        if not 0.0 < self.final_lr_fraction <= 1.0:
            raise ValueError("final_lr_fraction must be in (0, 1]")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(
                f"clip_norm must be positive or null, got {self.clip_norm}"
            )
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"ema_decay must be in [0, 1) or null, got {self.ema_decay}"
            )
        for name in ("batch_size", "num_epochs", "num_devices"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or null, got {self.patience}")
        if not self.huber_delta > 0:
            raise ValueError("huber_delta must be positive")
        for name in ("energy_weight", "forces_weight", "stress_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.energy_weight + self.forces_weight + self.stress_weight == 0:
            raise ValueError("at least one loss weight must be positive")
        if (self.stage2_energy_weight is None) != (self.stage2_start_epoch is None):
            raise ValueError(
                "stage2_energy_weight and stage2_start_epoch go together "
                "(give both or neither)"
            )
        if self.stage2_energy_weight is not None and self.stage2_energy_weight < 0:
            raise ValueError("stage2_energy_weight must be >= 0")
        if self.stage2_start_epoch is not None and self.stage2_start_epoch < 0:
            raise ValueError("stage2_start_epoch must be >= 0")


@dataclasses.dataclass(frozen=True)
class LongRangeConfig:
    """Settings of E_lr (``polmp.models.long_range.prepare_long_range``).

    Used only when ``model.variant != "sr"``.

    Attributes:
        sigma_A: pair-kernel width sigma, A (kernel erf(r/(sqrt(2) sigma))/r).
        accuracy: relative accuracy of the k-space sums.
        method: "auto", "ewald" or "pme" for the periodic graphs.
        les_compat: the reference implementation's truncated k-set.
    """

    sigma_A: float = 1.0
    accuracy: float = 1e-6
    method: str = "auto"
    les_compat: bool = False

    def __post_init__(self):
        if not self.sigma_A > 0:
            raise ValueError(f"sigma_A must be positive, got {self.sigma_A}")
        if not 0 < self.accuracy < 1:
            raise ValueError(f"accuracy must be in (0, 1), got {self.accuracy}")
        if self.method not in LONG_RANGE_METHODS:
            raise ValueError(
                f"unknown method {self.method!r}; expected one of {LONG_RANGE_METHODS}"
            )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: model, data, training, long range, precision, output.

    Attributes:
        model: the model (``polmp.models.ModelConfig``).
        data: the data sets (``DataConfig``).
        training: optimisation (``TrainingConfig``).
        long_range: E_lr settings (``LongRangeConfig``), used for variants with latents.
        precision: "float32" or "float64"; ``jax_enable_x64`` must be on for
            float64 (the CLI sets it; library code never touches ``jax.config``).
        output_dir: run directory (config, checkpoints, metrics, plots).
    """

    model: ModelConfig
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    long_range: LongRangeConfig = dataclasses.field(default_factory=LongRangeConfig)
    precision: str = "float32"
    output_dir: str = "runs/run"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; expected one of {PRECISIONS}"
            )
        if self.data.cutoff_A is not None and self.data.cutoff_A < self.model.cutoff_A:
            raise ValueError(
                f"data.cutoff_A = {self.data.cutoff_A} A is smaller than the model "
                f"cutoff {self.model.cutoff_A} A"
            )

    @property
    def cutoff_A(self) -> float:
        """Neighbour-list cutoff of the batches, A."""
        return self.model.cutoff_A if self.data.cutoff_A is None else self.data.cutoff_A


#: accepted ``MDConfig.ensemble`` values
ENSEMBLES: tuple[str, ...] = ("nve", "nvt_nose_hoover", "nvt_langevin", "npt")


@dataclasses.dataclass(frozen=True)
class MDConfig:
    """One molecular-dynamics run with observables (``polmp md CONFIG``).

    Attributes:
        model: a run directory, checkpoint, exported model directory or shipped model
            name (``polmp.training.trained.load_trained``).
        structure: the starting structure: ``"water-box:<n>"`` (n^3 H2O at 0.997
            g/cm^3, ``polmp.data.water.water_box``), ``"embedded:<set>"`` (a frame of a
            shipped set) or a file any polmp reader reads.
        frame_index: which frame of ``structure`` (files and embedded sets).
        ensemble: "nve", "nvt_nose_hoover", "nvt_langevin" or "npt" (jax-md
            integrators; "npt" is ``npt_nose_hoover``, isotropic, periodic only).
        temperature_K: initial Maxwell-Boltzmann temperature and thermostat target, K.
        timestep_fs: integration time step, fs.
        equilibration_steps: steps run first and not recorded (same ensemble).
        num_steps: recorded production steps (a multiple of ``chunk_steps``).
        chunk_steps: steps per jitted ``lax.scan`` (neighbour-list check in between).
        record_every: observables are recorded every this many steps (divides
            ``chunk_steps``); the spectra's sampling interval is
            ``record_every * timestep_fs``.
        trajectory_every: positions are written every this many steps (a multiple of
            ``record_every``), 0 for no trajectory.
        thermostat_time_fs: Nose-Hoover chain time constant, or 1/friction of the
            Langevin thermostat, fs.
        observables: record the polarization current Pdot = sum_i Z*_i v_i (e*A/fs)
            and alpha_sys (A^3) in the same scan as the MD steps (IR/Raman input).
        eps_e: electronic screening of the Born charges and alpha_sys (1: unscreened).
        skin_A: neighbour-list skin, A.
        pressure_bar: NPT target pressure, bar (1 bar = 1e-4 GPa).
        barostat_time_fs: NPT barostat (Nose-Hoover chain) time constant, fs.
        box_scale_range: NPT: (lo, hi) linear box scales the run may visit; the
            long-range k-set / mesh are prepared for the largest box and the run stops
            with an error if the box leaves the range.
        external_field_V_per_A: uniform external field (3 components), V/A, or None;
            it polarizes the model and pushes the ions with F_i += Z*_i^T E (field MD).
        seed: seed of the initial velocities (and the Langevin noise).
        precision: "float32" or "float64" (float64 needs x64; the CLI sets it).
        progress_bar: show a tqdm bar.
        output_dir: directory for config.yaml, observables.npz, trajectory.extxyz,
            md.json.
    """

    model: str = "water-gfn2-full"
    structure: str = "water-box:4"
    frame_index: int = 0
    ensemble: str = "nvt_nose_hoover"
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    equilibration_steps: int = 0
    num_steps: int = 1000
    chunk_steps: int = 100
    record_every: int = 4
    trajectory_every: int = 100
    thermostat_time_fs: float = 50.0
    observables: bool = True
    eps_e: float = 1.0
    skin_A: float = 0.5
    pressure_bar: float = 1.0
    barostat_time_fs: float = 500.0
    box_scale_range: tuple[float, float] = (0.9, 1.1)
    external_field_V_per_A: tuple[float, float, float] | None = None
    seed: int = 0
    precision: str = "float32"
    progress_bar: bool = True
    output_dir: str = "runs/md"

    def __post_init__(self):
        if self.ensemble not in ENSEMBLES:
            raise ValueError(
                f"unknown ensemble {self.ensemble!r}; expected one of {ENSEMBLES}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; expected one of {PRECISIONS}"
            )
        for name in ("temperature_K", "skin_A"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        lo, hi = self.box_scale_range
        if not 0 < lo <= 1 <= hi:
            raise ValueError(
                f"box_scale_range must satisfy 0 < lo <= 1 <= hi, got {self.box_scale_range}"
            )
        for name in ("timestep_fs", "thermostat_time_fs", "eps_e", "barostat_time_fs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("chunk_steps", "record_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("equilibration_steps", "num_steps", "trajectory_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.chunk_steps % self.record_every:
            raise ValueError(
                f"record_every ({self.record_every}) must divide chunk_steps "
                f"({self.chunk_steps})"
            )
        for name in ("num_steps", "equilibration_steps"):
            if getattr(self, name) % self.chunk_steps:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be a multiple of chunk_steps "
                    f"({self.chunk_steps})"
                )
        if self.trajectory_every % self.record_every:
            raise ValueError(
                f"trajectory_every ({self.trajectory_every}) must be a multiple of "
                f"record_every ({self.record_every})"
            )
