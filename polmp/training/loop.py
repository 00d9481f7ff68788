"""Training and evaluation drivers: ``train(config) -> RunResult``, ``evaluate``.

``train`` (host driver; the jitted parts are the train and eval steps, jitted once
each at this outermost level):

The parts live beside it: data sources (files, globs, ``embedded:`` sets, the
``pbc`` override) in ``polmp.data.sources``; the jitted steps and the ``StepConfig``
that keys their compile cache in ``polmp.training.steps``; the run-directory lock and
overwrite rules in ``polmp.training.rundir``; ``provenance.json`` in
``polmp.training.provenance``; verified orbax checkpoints in
``polmp.training.checkpoints``.

0. validate config and data, then lock the run directory (a second writer, or a
   directory holding a run without ``resume``/``overwrite``, is refused);
1. read and split the data (``DataConfig``), refuse unusable data
   (``pipeline.check_datasets``), fit per-species reference energies by least squares
   on the training set (``fit_reference_energies``) into ``ModelConfig``;
2. build ``EnergyFns`` (E = E_sr, plus E_lr through ``graph_long_range`` for variants
   with latents; each batch's ``Batch.long_range`` is passed on as ``long_range=``);
3. for each epoch, plan the batch order from (seed, epoch), cut each batch over the
   D devices of the mesh, and take optimiser steps (weighted MSE, clipping, optimiser,
   schedule, EMA); validate the EMA parameters every epoch, log one JSON line per epoch,
   keep the best EMA parameters, stop early after ``patience`` epochs without
   improvement; checkpoint with orbax (exact resume, ``resume=True``; on resume the
   newest intact checkpoint is used and metrics lines of the epochs after it are
   dropped, as those epochs run again);
4. at the end, evaluate the best EMA parameters on every set, write parity plots and
   ``metrics.json``.

Run directory (``RunConfig.output_dir``)::

    config.yaml          resolved config (fitted reference energies included)
    provenance.json      git hash (if any), package versions, devices, precision
    metrics.jsonl        one line per epoch
    metrics.json         final error tables (meV/atom, meV/A, meV/A^3)
    checkpoints/<step>/  orbax: TrainState + loop state (+ polmp-sha256.json)
    best/                orbax: best EMA parameters (+ polmp-sha256.json)
    .polmp.lock          held by the process that trains (pid, host)
    parity_energy.png, parity_forces.png

Precision: ``RunConfig.precision == "float64"`` needs ``jax_enable_x64`` on (the CLI
sets it before anything is built; library code never changes ``jax.config``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from polmp.config.loader import load_config, to_dict
from polmp.config.schema import DataConfig, RunConfig
from polmp.data.batching import frames_to_batch
from polmp.data.schema import Frame
from polmp.data.sources import read_sources
from polmp.models import (
    ModelConfig,
    count_species,
    fit_reference_energies,
)
from polmp.training import checkpoints, distributed, pipeline, sharding
from polmp.training.losses import LossWeights, host_total_loss
from polmp.training.metrics import format_table, parity_plot, summarize, to_host
from polmp.training.optim import make_optimizer, make_schedule
from polmp.training.provenance import write_provenance
from polmp.training.rundir import claim_run_dir, truncate_history
from polmp.training.state import LoopState, TrainState
from polmp.training.steps import (
    StepConfig,
    clear_compiled,
    compiled_eval,
    compiled_steps,
)
from polmp.training.trained import energy_fns_of, load_trained, long_range_options_of

__all__ = [
    "Evaluation",
    "RunResult",
    "clear_compiled",
    "evaluate",
    "fit_model_reference_energies",
    "load_datasets",
    "train",
]


@dataclasses.dataclass(frozen=True, repr=False)
class RunResult:
    """What ``train`` returns.

    Attributes:
        run_dir: the run directory.
        model_config: the model config actually trained (fitted reference energies).
        params: best EMA parameters (lowest validation loss; final if no validation).
        history: one dict per finished epoch (the lines of metrics.jsonl).
        step_losses: training loss of every optimiser step taken in this call.
        metrics: final error tables, set name ("train", "valid", "test") -> dict.
        best_epoch: epoch of the best validation loss (-1 if none).
        best_valid_loss: that loss, or None.
        num_steps: optimiser steps taken in total (including resumed ones).
        num_compiled_shapes: distinct batch shapes of the training step.
        num_eval_shapes: distinct batch shapes of the evaluation step.
        stopped_early: whether early stopping ended the run.
    """

    run_dir: str
    model_config: ModelConfig
    params: Any
    history: tuple[dict, ...]
    step_losses: tuple[float, ...]
    metrics: dict[str, dict]
    best_epoch: int
    best_valid_loss: float | None
    num_steps: int
    num_compiled_shapes: int
    num_eval_shapes: int
    stopped_early: bool

    def __repr__(self) -> str:
        """A few lines: where, what, how far, how good (not the parameters)."""
        count = sum(int(np.size(x)) for x in jax.tree.leaves(self.params))
        rows = ", ".join(
            f"{name}: E {_fmt_metric(m.get('energy_rmse_meV_per_atom'))} meV/atom, "
            f"F {_fmt_metric(m.get('forces_rmse_meV_per_A'))} meV/A"
            for name, m in self.metrics.items()
        )
        return (
            f"RunResult(run_dir={self.run_dir!r}, variant="
            f"{self.model_config.variant!r}, {count} parameters, {self.num_steps} "
            f"steps, {len(self.history)} epochs this call, best_epoch="
            f"{self.best_epoch}, stopped_early={self.stopped_early}; RMSE {rows})"
        )


def _fmt_metric(value) -> str:
    return "-" if value is None else f"{value:.4g}"


class Evaluation(NamedTuple):
    """What ``evaluate`` returns: the error table and its printable form."""

    metrics: dict
    table: str


# --------------------------------------------------------------------------- data


def load_datasets(data: DataConfig) -> tuple[list[Frame], list[Frame], list[Frame]]:
    """Read and split the data sets of ``data``.  Not jittable.

    Returns:
        (train, valid, test) lists of frames.

    Raises:
        ValueError: no ``train_path``, or an empty/too small data set.
    """
    if data.train_path is None:
        raise ValueError("data.train_path is not set (no training data)")
    keys = {
        name: value
        for name, value in (
            ("energy_key", data.energy_key),
            ("forces_key", data.forces_key),
            ("stress_key", data.stress_key),
        )
        if value is not None
    }

    def read(paths):
        return read_sources(paths, data.index, data.format, pbc=data.pbc, **keys)

    frames = read(data.train_path)
    valid_fraction = 0.0 if data.valid_path else data.valid_fraction
    test_fraction = 0.0 if data.test_path else data.test_fraction
    train, valid, test = pipeline.split_frames(
        frames, valid_fraction, test_fraction, data.split_seed
    )
    if data.valid_path:
        valid = read(data.valid_path)
    if data.test_path:
        test = read(data.test_path)
    return train, valid, test


def fit_model_reference_energies(
    model: ModelConfig, frames: Sequence[Frame]
) -> ModelConfig:
    """``model`` with reference energies fitted by least squares on ``frames``.

    Frames without an energy are skipped.  Not jittable.
    """
    labelled = [f for f in frames if f.energy is not None]
    if not labelled:
        return model
    species = np.concatenate([np.asarray(f.numbers) for f in labelled])
    atom_graph = np.concatenate(
        [np.full(f.num_atoms, g) for g, f in enumerate(labelled)]
    )
    counts = count_species(species, atom_graph, len(labelled), model.species)
    energies = np.array([float(f.energy) for f in labelled])
    reference = fit_reference_energies(counts, energies)
    return dataclasses.replace(
        model, reference_energies_eV=tuple(float(e) for e in reference)
    )


def _long_range_prepare(config: RunConfig, frames: Sequence[Frame]):
    """Host function (graph, kind) -> LongRangeData with capacities pinned over
    ``frames`` (every data set the compiled steps see), for variants with latents;
    None for "sr"."""
    options = long_range_options_of(config)
    if options is None:
        return None
    return pipeline.PinnedLongRange.for_frames(frames, options)


def _dtype(precision: str, *, strict: bool = True):
    if precision == "float64":
        if jax.config.jax_enable_x64:
            return np.float64
        if strict:
            raise ValueError(
                "precision 'float64' needs jax_enable_x64 set before jax is used "
                "(the CLI does this; in Python: "
                "jax.config.update('jax_enable_x64', True))"
            )
        warnings.warn("x64 is off: evaluating a float64 run in float32", stacklevel=3)
    return np.float32


# --------------------------------------------------------------------------- eval


class _Evaluator(NamedTuple):
    steps: list
    cache: pipeline.BatchCache


def _make_evaluator(
    frames, config: RunConfig, dtype, mesh, lr_prepare, num_devices, pool
):
    """Size-ordered evaluation steps over ``frames``; ``pool`` is shared by the
    evaluators of one run so that they reuse each other's compiled shapes."""
    if not frames:
        return None
    steps = pipeline.make_step_plans(
        frames,
        config.cutoff_A,
        config.training.batch_size,
        num_devices,
        pool,
        edge_counts=pipeline.edge_counts_of(frames, config.cutoff_A),
        max_shapes=config.data.max_shapes,
        kinds=None if lr_prepare is None else pipeline.frame_kinds(frames),
    )
    cache = pipeline.BatchCache(frames, config.cutoff_A, dtype, mesh, lr_prepare)
    return _Evaluator(steps, cache)


def _run_eval(evaluator: _Evaluator, eval_step, params, *, parity: bool = False):
    """(host sums dict, parity data or None) over all steps of ``evaluator``."""
    total = None
    e_ref, e_pred, f_ref, f_pred = [], [], [], []
    for step in evaluator.steps:
        batch = evaluator.cache.get(step)
        sums, energy, forces = eval_step(params, batch)
        total = sums if total is None else total + sums
        if parity:
            g = batch.graph
            n = np.asarray(
                jax.vmap(
                    lambda m, ag, G=g.num_graphs: jax.ops.segment_sum(
                        m.astype(jnp.int32), ag, num_segments=G
                    )
                )(g.atom_mask, g.atom_graph)
            )
            emask = np.asarray(batch.energy_mask & g.graph_mask)
            safe = np.maximum(n, 1)
            e_ref.append((np.asarray(batch.energy) / safe)[emask])
            e_pred.append((np.asarray(energy) / safe)[emask])
            fmask = np.asarray(batch.forces_mask & g.atom_mask)
            f_ref.append(np.asarray(batch.forces)[fmask].ravel())
            f_pred.append(np.asarray(forces)[fmask].ravel())
    data = None
    if parity:
        data = tuple(
            np.concatenate(x) if x else np.zeros(0)
            for x in (e_ref, e_pred, f_ref, f_pred)
        )
    return to_host(total), data


# --------------------------------------------------------------------------- run dir


def _write_run_files(run_dir: pathlib.Path, config: RunConfig, mesh) -> None:
    with open(run_dir / "config.yaml", "w") as handle:
        yaml.safe_dump(to_dict(config), handle, sort_keys=False)
    write_provenance(
        run_dir / "provenance.json", config.precision, mesh.devices.ravel()
    )


def _weights(config, epoch: int) -> tuple[int, LossWeights]:
    t = config
    stage2 = t.stage2_start_epoch is not None and epoch >= t.stage2_start_epoch
    energy = t.stage2_energy_weight if stage2 else t.energy_weight
    return (2 if stage2 else 1), LossWeights.create(
        energy, t.forces_weight, t.stress_weight
    )


# --------------------------------------------------------------------------- train


def train(
    config: RunConfig,
    *,
    datasets: tuple[Sequence[Frame], Sequence[Frame], Sequence[Frame]] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Train the model of ``config`` (module docstring).  Host driver.

    Everything is validated before anything is written; the run directory is then
    locked for this process (``polmp.training.rundir``).

    Args:
        config: the run configuration.
        datasets: (train, valid, test) frames to use instead of ``config.data``'s files
            (valid/test may be empty).
        resume: continue from the newest intact checkpoint in ``config.output_dir``
            (the resumed run is bit-identical to an uninterrupted one; a corrupted
            newest checkpoint is skipped with a warning).
        overwrite: replace a run that ``config.output_dir`` already holds.

    Returns:
        ``RunResult``.

    Raises:
        ValueError: empty data, missing labels, unknown species, precision without
            x64, too few devices, ``resume`` without a checkpoint, or a directory that
            holds a run while neither ``resume`` nor ``overwrite`` is set.
        RunDirectoryBusy: another process trains in the same directory.
        CorruptCheckpointError: ``resume`` and no intact checkpoint.
    """
    config = distributed.setup_training(config)  # no-op for one process
    t = config.training
    dtype = _dtype(config.precision)
    if datasets is None:
        train_frames, valid_frames, test_frames = load_datasets(config.data)
    else:
        train_frames, valid_frames, test_frames = (list(d) for d in datasets)
    others = {"validation": valid_frames, "test": test_frames}
    pipeline.check_datasets(
        train_frames,
        {k: v for k, v in others.items() if v},
        model_species=config.model.species,
        energy_weight=max(t.energy_weight, t.stage2_energy_weight or 0.0),
        forces_weight=t.forces_weight,
        stress_weight=t.stress_weight,
    )
    manager_dir = pathlib.Path(config.output_dir).resolve() / "checkpoints"
    has_checkpoints = manager_dir.exists() and any(manager_dir.iterdir())
    if resume and not has_checkpoints:
        raise ValueError(f"resume=True but there is no checkpoint in {manager_dir}")
    with claim_run_dir(config.output_dir, resume=resume, overwrite=overwrite) as path:
        return _train(
            config, path, (train_frames, valid_frames, test_frames), dtype, resume
        )


def _train(
    config: RunConfig, run_dir: pathlib.Path, datasets, dtype, resume: bool
) -> RunResult:
    """``train`` in the claimed, locked ``run_dir`` (data validated)."""
    t = config.training
    train_frames, valid_frames, test_frames = datasets
    manager_dir = run_dir / "checkpoints"
    if resume:
        # the trained model config (with its fitted references) comes from the run
        model_cfg = load_config(RunConfig, run_dir / "config.yaml").model
    elif t.fit_reference_energies:
        model_cfg = fit_model_reference_energies(config.model, train_frames)
    else:
        model_cfg = config.model
    config = dataclasses.replace(config, model=model_cfg)

    mesh = sharding.make_mesh(t.num_devices)
    _write_run_files(run_dir, config, mesh)
    fns = energy_fns_of(model_cfg)
    lr_prepare = _long_range_prepare(
        config, [*train_frames, *valid_frames, *test_frames]
    )
    cutoff = config.cutoff_A

    # data: per-epoch plans (from (seed, epoch)) over a shared shape pool
    train_edges = pipeline.edge_counts_of(train_frames, cutoff)
    train_kinds = None if lr_prepare is None else pipeline.frame_kinds(train_frames)
    pool = pipeline.ShapePool()
    eval_pool = pipeline.ShapePool()

    def epoch_plans(epoch):
        return pipeline.make_step_plans(
            train_frames,
            cutoff,
            t.batch_size,
            t.num_devices,
            pool,
            edge_counts=train_edges,
            rng=np.random.default_rng([t.seed, epoch]),
            max_shapes=config.data.max_shapes,
            kinds=train_kinds,
        )

    train_cache = pipeline.BatchCache(train_frames, cutoff, dtype, mesh, lr_prepare)
    steps_per_epoch = -(-len(train_frames) // t.batch_size)
    total_steps = t.num_epochs * steps_per_epoch

    # model, optimiser, state
    key = jax.random.PRNGKey(t.seed)
    init_key, state_key = jax.random.split(key)
    example = frames_to_batch(train_frames[:1], cutoff, long_range=None)
    example_graph = jax.tree.map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
        example.graph,
    )
    params = jax.jit(fns.model.init)(init_key, example_graph)
    tx = make_optimizer(t, total_steps)
    schedule = make_schedule(t, total_steps)
    state = TrainState.create(params, tx, state_key)
    loop = LoopState()
    manager = checkpoints.make_manager(manager_dir)
    if resume:
        state, loop, _ = checkpoints.restore_checkpoint(manager, state, fallback=True)
        # replay the planning of finished epochs so the shape pool (and with it every
        # padded shape, hence every float sum) is exactly that of an unbroken run
        for epoch in range(loop.epoch):
            epoch_plans(epoch)
    state = sharding.put_replicated(state, mesh)
    train_step, eval_step = compiled_steps(
        model_cfg, StepConfig.of(t), total_steps, mesh
    )
    valid_eval = _make_evaluator(
        valid_frames, config, dtype, mesh, lr_prepare, t.num_devices, eval_pool
    )

    history_path = run_dir / "metrics.jsonl"
    # epochs after the restored checkpoint run again: drop their lines written
    # before the interruption (no metrics line is duplicated)
    truncate_history(history_path, loop.epoch)
    history: list[dict] = []
    step_losses: list[float] = []
    best_path = run_dir / "best"
    stopped_early = False
    step = int(np.asarray(state.step))

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps if t.max_steps is None else min(total_steps, t.max_steps),
        initial=step,
        disable=not t.progress_bar,
        desc="train",
        unit="step",
        file=sys.stderr,
    )
    done = False
    try:
        while loop.epoch < t.num_epochs and not done:
            epoch = loop.epoch
            stage, weights = _weights(t, epoch)
            if stage != loop.stage:
                # a new stage changes the loss: restart the early-stopping record
                loop = dataclasses.replace(
                    loop,
                    stage=stage,
                    best_valid_loss=None,
                    epochs_without_improvement=0,
                )
            weights = sharding.put_replicated(weights, mesh)
            plans = epoch_plans(epoch)
            start = time.perf_counter()
            epoch_sums = None
            losses = []
            for plan in plans[loop.batch_in_epoch :]:
                batch = train_cache.get(plan)
                state, (loss, sums) = train_step(state, batch, weights)
                epoch_sums = sums if epoch_sums is None else epoch_sums + sums
                losses.append(loss)
                step += 1
                loop = dataclasses.replace(loop, batch_in_epoch=loop.batch_in_epoch + 1)
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss):.4g}", epoch=epoch)
                if t.max_steps is not None and step >= t.max_steps:
                    done = True
                    break
            step_losses.extend(float(x) for x in jax.device_get(losses))
            if done and loop.batch_in_epoch < len(plans):
                break  # stopped inside an epoch: no end-of-epoch work
            record = {
                "epoch": epoch,
                "step": step,
                "stage": stage,
                "learning_rate": float(schedule(step)),
                "energy_weight": float(weights.energy),
                "forces_weight": float(weights.forces),
                "stress_weight": float(weights.stress),
            }
            if epoch_sums is not None:
                host = to_host(epoch_sums)
                record["train_loss"] = host_total_loss(host, weights)
                record.update({f"train_{k}": v for k, v in summarize(host).items()})
            valid_loss = None
            if valid_eval is not None:
                vsums, _ = _run_eval(valid_eval, eval_step, state.ema_params)
                valid_loss = host_total_loss(vsums, weights)
                record["valid_loss"] = valid_loss
                record.update({f"valid_{k}": v for k, v in summarize(vsums).items()})
            # best parameters and early stopping on the validation loss
            improved = valid_loss is None or (
                loop.best_valid_loss is None or valid_loss < loop.best_valid_loss
            )
            if improved:
                loop = dataclasses.replace(
                    loop,
                    best_valid_loss=valid_loss,
                    best_epoch=epoch,
                    epochs_without_improvement=0,
                )
                checkpoints.save_params(best_path, state.ema_params)
            else:
                loop = dataclasses.replace(
                    loop, epochs_without_improvement=loop.epochs_without_improvement + 1
                )
            record["num_compiled_shapes"] = len(train_cache.signatures)
            record["time_s"] = time.perf_counter() - start
            history.append(record)
            with open(history_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            loop = dataclasses.replace(loop, epoch=epoch + 1, batch_in_epoch=0)
            if (
                t.patience is not None
                and valid_loss is not None
                and loop.epochs_without_improvement >= t.patience
            ):
                stopped_early = True
                done = True
            every = t.checkpoint_every_epochs
            if every and (epoch + 1) % every == 0 and not done:
                checkpoints.save_checkpoint(manager, state, loop)
    finally:
        bar.close()
    checkpoints.save_checkpoint(manager, state, loop)

    # final evaluation of the best EMA parameters
    if best_path.exists():
        best = checkpoints.load_params(best_path, jax.device_get(state.ema_params))
    else:
        best = jax.device_get(state.ema_params)
    best = sharding.put_replicated(best, mesh)
    tables: dict[str, dict] = {}
    parity_data = None
    sets = [("train", train_frames), ("valid", valid_frames), ("test", test_frames)]
    parity_set = "test" if test_frames else ("valid" if valid_frames else "train")
    for name, frames in sets:
        if not frames:
            continue
        evaluator = (
            valid_eval
            if name == "valid"
            else _make_evaluator(
                frames, config, dtype, mesh, lr_prepare, t.num_devices, eval_pool
            )
        )
        want = t.parity_plots and name == parity_set
        sums, data = _run_eval(evaluator, eval_step, best, parity=want)
        tables[name] = summarize(sums)
        if want:
            parity_data = data
    if parity_data is not None:
        e_ref, e_pred, f_ref, f_pred = parity_data
        parity_plot(
            e_ref,
            e_pred,
            run_dir / "parity_energy.png",
            label=f"energy ({parity_set})",
            unit="eV/atom",
        )
        parity_plot(
            f_ref,
            f_pred,
            run_dir / "parity_forces.png",
            label=f"force components ({parity_set})",
            unit="eV/A",
        )
    num_eval_shapes = len(valid_eval.cache.signatures) if valid_eval is not None else 0
    summary = {
        "tables": tables,
        "best_epoch": loop.best_epoch,
        "best_valid_loss": loop.best_valid_loss,
        "num_steps": step,
        "num_compiled_shapes": len(train_cache.signatures),
        "num_eval_shapes_valid": num_eval_shapes,
        "stopped_early": stopped_early,
    }
    with open(run_dir / "metrics.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    return RunResult(
        run_dir=str(run_dir),
        model_config=model_cfg,
        params=jax.device_get(best),
        history=tuple(history),
        step_losses=tuple(step_losses),
        metrics=tables,
        best_epoch=loop.best_epoch,
        best_valid_loss=loop.best_valid_loss,
        num_steps=step,
        num_compiled_shapes=len(train_cache.signatures),
        num_eval_shapes=num_eval_shapes,
        stopped_early=stopped_early,
    )


# --------------------------------------------------------------------------- evaluate


#: |mean signed energy error| above which (and above 90 % of the energy RMSE) the
#: error is an offset, i.e. data from another level of theory: eV/atom
OFFSET_WARN_EV_PER_ATOM = 0.05


def evaluate(
    run_dir_or_checkpoint,
    frames: Sequence[Frame],
    *,
    batch_size: int | None = None,
    parity_dir=None,
) -> Evaluation:
    """Error table of a trained run on ``frames``.  Host driver.

    Uses the best EMA parameters of the run directory, or the EMA parameters of the
    given checkpoint (``<run>/checkpoints/<step>``), or a shipped model's name.

    The metrics include ``energy_mean_error_meV_per_atom``, the signed mean of
    (E_pred - E_ref)/N_atoms.  When it accounts for the energy error (at least 90 % of
    the RMSE and above ``OFFSET_WARN_EV_PER_ATOM``), the data most likely come from
    another level of theory than the model's training data (other reference energies):
    a ``UserWarning`` says so, since the energy RMSE then measures the offset, not the
    model.

    Args:
        run_dir_or_checkpoint: a run directory, one checkpoint step directory, an
            exported model or a shipped model name.
        frames: labelled frames (energies and/or forces, stress).
        batch_size: frames per evaluation batch (default: the run's batch size).
        parity_dir: if given, write ``parity_energy.png`` (eV/atom) and
            ``parity_forces.png`` (eV/A) there (created if needed).

    Returns:
        ``Evaluation(metrics, table)``: the ``summarize`` dict (meV units) plus the
        mean signed energy error, and a printable table.

    Raises:
        ValueError: no frames, or species the model does not know.
        FileNotFoundError: not a run directory or checkpoint.
        CorruptCheckpointError: damaged parameters (the file is named).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("no frames to evaluate")
    trained = load_trained(run_dir_or_checkpoint)
    config = trained.config
    unknown = pipeline.species_of(frames) - set(config.model.species)
    if unknown:
        raise ValueError(
            f"frames contain species {sorted(unknown)} that the model "
            f"{config.model.species} was not trained on"
        )
    if batch_size is not None:
        config = dataclasses.replace(
            config, training=dataclasses.replace(config.training, batch_size=batch_size)
        )
    dtype = _dtype(config.precision, strict=False)
    mesh = sharding.make_mesh(1)
    lr_prepare = _long_range_prepare(config, frames)
    params = trained.cast(dtype).params
    evaluator = _make_evaluator(
        frames, config, dtype, mesh, lr_prepare, 1, pipeline.ShapePool()
    )
    eval_step = compiled_eval(
        config.model, config.training.loss, config.training.huber_delta, mesh
    )
    params = sharding.put_replicated(params, mesh)
    sums, (e_ref, e_pred, f_ref, f_pred) = _run_eval(
        evaluator, eval_step, params, parity=True
    )
    metrics = summarize(sums)
    offset = float(np.mean(e_pred - e_ref)) if e_ref.size else None
    metrics["energy_mean_error_meV_per_atom"] = None if offset is None else 1e3 * offset
    rmse = metrics["energy_rmse_meV_per_atom"]
    if offset is not None and abs(offset) > OFFSET_WARN_EV_PER_ATOM:
        if 1e3 * abs(offset) >= 0.9 * rmse:
            warnings.warn(
                f"the energy error is an offset: predictions are {offset:+.4g} eV/atom "
                f"from the references on average (energy RMSE {rmse / 1e3:.4g} "
                "eV/atom). The data probably come from another level of theory than "
                "the model's training data (other reference energies); compare "
                "forces, or refit the reference energies on these data.",
                UserWarning,
                stacklevel=2,
            )
    if parity_dir is not None:
        parity_dir = pathlib.Path(parity_dir)
        parity_dir.mkdir(parents=True, exist_ok=True)
        parity_plot(
            e_ref, e_pred, parity_dir / "parity_energy.png", label="energy",
            unit="eV/atom",
        )  # fmt: skip
        parity_plot(
            f_ref, f_pred, parity_dir / "parity_forces.png",
            label="force components", unit="eV/A",
        )  # fmt: skip
    return Evaluation(metrics, format_table({"eval": metrics}))
