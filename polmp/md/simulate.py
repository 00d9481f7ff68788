"""MD of a trained model with spectra observables recorded in the same scan (host driver).

``run_md(MDConfig)`` is what ``polmp md CONFIG`` runs::

    trained model + starting structure + ensemble
      -> jax-md integrator of the bound model (``polmp.md.jaxmd.bind``)
      -> chunks of steps in one jitted ``lax.scan`` (``polmp.md.run.run_chunked``),
         recording every ``record_every`` steps, inside the scan:
           potential and kinetic energy (and the Nose-Hoover invariant),
           Pdot = sum_i Z*_i v_i (e*A/fs; ``polarization_current``, forward mode),
           alpha_sys = eps_e k_e sum_i alpha_i (A^3) when the model has alpha,
           positions (for the trajectory)
      -> <output_dir>/observables.npz, trajectory.extxyz, md.json, config.yaml

``polmp spectra <output_dir>`` turns observables.npz into IR and Raman spectra.

Velocities are drawn from Maxwell-Boltzmann at ``temperature_K`` (jax-md's init);
positions are never wrapped (``unwrapped_shift``), which is what Pdot and the
trajectory want; the neighbour list works in wrapped fractional coordinates.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from polmp import units
from polmp.config.loader import to_dict
from polmp.config.schema import MDConfig
from polmp.data.schema import Frame
from polmp.geometry.neighbors import neighbor_list
from polmp.md.jaxmd import (
    MDSystem,
    bind,
    md_graph,
    prepare_md_long_range,
    thermal_energy,
    timestep,
    unwrapped_shift,
)
from polmp.md.run import run_chunked
from polmp.observables.polarization import (
    polarization_current,
    system_polarizability,
    total_latents,
)
from polmp.training.trained import TrainedModel, load_trained

__all__ = ["MDRun", "load_structure", "make_recorder", "masses_of", "run_md"]


@dataclasses.dataclass(frozen=True)
class MDRun:
    """What ``run_md`` returns.

    Attributes:
        output_dir: where the files were written.
        records: dict of numpy arrays with a leading time axis (every
            ``record_every`` steps of production): ``time_fs``,
            ``potential_energy`` (eV), ``kinetic_energy`` (eV), ``temperature_K``,
            and when recorded ``pdot`` (e*A/fs), ``alpha_sys`` (A^3),
            ``conserved_energy`` (eV, Nose-Hoover invariant or total energy).
        timings: compile and steady-state wall times, steps/s, atom-steps/s.
        num_reallocations: neighbour-list reallocations (the chunk was redone).
        final_state: the jax-md integrator state after the last step.
    """

    output_dir: str
    records: dict
    timings: dict
    num_reallocations: int
    final_state: object = None


def load_structure(spec: str, frame_index: int = 0) -> Frame:
    """The starting structure of ``MDConfig.structure``.  Not jittable.

    ``"water-box:<n>"`` builds n^3 H2O; ``"embedded:<set>"`` picks frame
    ``frame_index`` of a shipped set; anything else is a file for ``read_frames``.
    """
    if spec.startswith("water-box:"):
        from polmp.data.water import water_box

        return water_box(int(spec.removeprefix("water-box:")), seed=frame_index)
    from polmp.data.embedded import EMBEDDED_PREFIX, load_embedded
    from polmp.data.io import read_frames

    if spec.startswith(EMBEDDED_PREFIX):
        frames = load_embedded(spec.removeprefix(EMBEDDED_PREFIX))
    else:
        frames = read_frames(spec)
    if not -len(frames) <= frame_index < len(frames):
        raise ValueError(
            f"frame_index {frame_index} out of range: {spec} has {len(frames)} frames"
        )
    return frames[frame_index]


def masses_of(numbers) -> np.ndarray:
    """(N, 1) atomic masses, amu (ASE's standard atomic weights)."""
    from ase.data import atomic_masses

    return np.asarray(atomic_masses[np.asarray(numbers)], np.float64)[:, None]


def make_recorder(
    trained: TrainedModel,
    system: MDSystem,
    energy_fn,
    long_range_data,
    *,
    eps_e: float = 1.0,
    observables: bool = True,
    invariant_fn=None,
):
    """``record(state, nbrs) -> dict`` of per-step quantities, traced inside the scan.

    Args:
        trained: the model.
        system: the ``MDSystem``.
        energy_fn: the bound jax-md energy function (eV).
        long_range_data: the prepared long-range data shared with ``energy_fn``.
        eps_e: screening of Z* (sqrt) and alpha_sys.
        observables: record ``pdot`` and ``alpha_sys``.
        invariant_fn: optional ``(state, nbrs) -> eV`` conserved quantity (the
            Nose-Hoover invariant); without it the total energy is recorded.
    """
    n = system.num_atoms
    cell = None if system.cell is None else jnp.asarray(system.cell)
    has_latents = trained.model_config.variant != "sr"
    has_alpha = trained.model_config.use_alpha
    outputs_fn = trained.energy_fns.outputs_fn

    def record(state, nbrs):
        from jax_md import quantity

        positions = state.position
        potential = energy_fn(positions, nbrs)
        kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        out = dict(
            potential_energy=potential,
            kinetic_energy=kinetic,
            temperature_K=2.0 * kinetic / (3 * n * units.KB),
            positions=positions,
        )
        out["conserved_energy"] = (
            potential + kinetic if invariant_fn is None else invariant_fn(state, nbrs)
        )
        if not (observables and has_latents):
            return out
        graph = md_graph(system, positions, nbrs)
        padding = graph.positions[n:]

        def outputs_at(r):
            return outputs_fn(
                trained.params,
                graph,
                jnp.concatenate([r, padding]),
                long_range=long_range_data,
            )

        def charges_fn(r):
            outputs = outputs_at(r)
            q, mu = total_latents(outputs)
            # alpha rides along as aux of the Pdot tangents' shared primal pass
            return (q[:n], mu[:n]), outputs.alpha

        velocity = state.velocity * units.FS  # A per internal time unit -> A/fs
        out["pdot"], alpha = polarization_current(
            charges_fn, positions, velocity, cell, eps_e=eps_e, has_aux=True
        )
        if has_alpha:
            out["alpha_sys"] = system_polarizability(alpha[:n], eps_e)
        return out

    return record


class BoundModel(NamedTuple):
    """A trained model bound to one structure for jax-md (``bind_model``)."""

    system: MDSystem
    positions: jax.Array
    neighbor_fns: Any
    neighbors: Any
    long_range_data: Any
    energy_fn: Any


def bind_model(trained: TrainedModel, frame: Frame, *, skin_A: float, dtype):
    """Device neighbour list, long-range data and the bound jax-md energy function
    ``energy_fn(positions, neighbor) -> eV`` of ``trained`` on ``frame``.  Host setup.

    Raises:
        ValueError: species the model does not know, a cell too small for the device
            neighbour list.
    """
    unknown = set(np.unique(frame.numbers).tolist()) - set(trained.model_config.species)
    if unknown:
        raise ValueError(
            f"structure has species {sorted(unknown)} that the model "
            f"{trained.model_config.species} does not know"
        )
    system = MDSystem(frame.numbers, frame.cell, float(frame.total_charge or 0.0))
    positions = jnp.asarray(frame.positions, dtype)
    neighbor_fns = neighbor_list(trained.model_config.cutoff_A, frame.cell, skin=skin_A)
    nbrs = neighbor_fns.allocate(positions)
    data = prepare_md_long_range(system, positions, nbrs, trained.long_range_options)
    energy_fn = bind(
        trained.energy_fns,
        trained.params,
        system,
        positions,
        nbrs,
        long_range_data=data,
    )
    return BoundModel(system, positions, neighbor_fns, nbrs, data, energy_fn)


def _integrator(config: MDConfig, energy_fn):
    from jax_md import simulate

    dt = timestep(config.timestep_fs)
    kT = thermal_energy(config.temperature_K)
    tau = config.thermostat_time_fs * units.FS
    if config.ensemble == "nve":
        init, step = simulate.nve(energy_fn, unwrapped_shift, dt=dt)
        return init, step, None
    if config.ensemble == "nvt_langevin":
        init, step = simulate.nvt_langevin(
            energy_fn, unwrapped_shift, dt=dt, kT=kT, gamma=1.0 / tau
        )
        return init, step, None
    init, step = simulate.nvt_nose_hoover(
        energy_fn, unwrapped_shift, dt=dt, kT=kT, tau=tau
    )

    def invariant(state, nbrs):
        return simulate.nvt_nose_hoover_invariant(energy_fn, state, kT, neighbor=nbrs)

    return init, step, invariant


def _write_trajectory(path, frame: Frame, positions: np.ndarray, times_fs) -> None:
    import ase
    import ase.io

    pbc = frame.cell is not None
    images = [
        ase.Atoms(
            numbers=frame.numbers,
            positions=r,
            cell=frame.cell if pbc else None,
            pbc=pbc,
            info={"time_fs": float(t)},
        )
        for r, t in zip(positions, times_fs, strict=True)
    ]
    ase.io.write(path, images, format="extxyz")


def run_md(
    config: MDConfig,
    *,
    trained: TrainedModel | None = None,
    frame: Frame | None = None,
) -> MDRun:
    """Run the MD of ``config`` and write its files (module docstring).  Host driver.

    Args:
        config: the ``MDConfig``.
        trained: a loaded model instead of ``config.model``.
        frame: a starting structure instead of ``config.structure``.

    Returns:
        ``MDRun``.

    Raises:
        ValueError: species the model does not know, a cell too small for the
            device neighbour list, float64 without x64.
    """
    if config.precision == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "precision 'float64' needs jax_enable_x64 set before jax is used "
            "(the CLI does this)"
        )
    dtype = jnp.float64 if config.precision == "float64" else jnp.float32
    trained = (trained or load_trained(config.model)).cast(dtype)
    frame = frame or load_structure(config.structure, config.frame_index)
    bound = bind_model(trained, frame, skin_A=config.skin_A, dtype=dtype)
    system, positions, neighbor_fns, nbrs, data, energy_fn = bound
    init, step, invariant = _integrator(config, energy_fn)
    record = make_recorder(
        trained,
        system,
        energy_fn,
        data,
        eps_e=config.eps_e,
        observables=config.observables,
        invariant_fn=invariant,
    )
    mass = jnp.asarray(masses_of(frame.numbers), dtype)
    state = init(
        jax.random.PRNGKey(config.seed),
        positions,
        kT=thermal_energy(config.temperature_K),
        mass=mass,
        neighbor=nbrs,
    )

    output_dir = pathlib.Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "config.yaml", "w") as handle:
        yaml.safe_dump(to_dict(config), handle, sort_keys=False)

    chunk_times: list[float] = []

    def on_chunk(step_count, state, records):
        jax.block_until_ready(state.position)
        chunk_times.append(time.perf_counter())

    reallocations = 0
    if config.equilibration_steps:
        equilibrated = run_chunked(
            step,
            state,
            neighbor_fns,
            nbrs,
            num_steps=config.equilibration_steps,
            chunk_steps=config.chunk_steps,
            progress=config.progress_bar,
        )
        state, nbrs = equilibrated.state, equilibrated.neighbor
        reallocations += equilibrated.num_reallocations
    start = time.perf_counter()
    result = run_chunked(
        step,
        state,
        neighbor_fns,
        nbrs,
        num_steps=config.num_steps,
        chunk_steps=config.chunk_steps,
        record_fn=record,
        record_every=config.record_every,
        progress=config.progress_bar,
        on_chunk=on_chunk,
    )
    reallocations += result.num_reallocations
    records = dict(result.records)
    num_records = len(records["potential_energy"])
    records["time_fs"] = (
        np.arange(1, num_records + 1) * config.record_every * config.timestep_fs
    )
    positions_record = records.pop("positions")

    first = chunk_times[0] - start
    steady_steps = config.num_steps - config.chunk_steps
    steady = chunk_times[-1] - chunk_times[0] if steady_steps else float("nan")
    timings = dict(
        first_chunk_s=first,
        steady_s=steady,
        steady_steps=steady_steps,
        steps_per_s=steady_steps / steady if steady_steps else float("nan"),
        atom_steps_per_s=frame.num_atoms * steady_steps / steady
        if steady_steps
        else float("nan"),
    )
    np.savez(
        output_dir / "observables.npz",
        sampling_interval_fs=config.record_every * config.timestep_fs,
        numbers=frame.numbers,
        **records,
    )
    if config.trajectory_every:
        stride = config.trajectory_every // config.record_every
        _write_trajectory(
            output_dir / "trajectory.extxyz",
            frame,
            positions_record[stride - 1 :: stride],
            records["time_fs"][stride - 1 :: stride],
        )
    summary = dict(
        model=trained.source,
        num_atoms=frame.num_atoms,
        num_reallocations=reallocations,
        timings=timings,
        mean_temperature_K=float(np.mean(records["temperature_K"])),
        conserved_energy_drift_eV=float(
            records["conserved_energy"][-1] - records["conserved_energy"][0]
        ),
    )
    with open(output_dir / "md.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    return MDRun(str(output_dir), records, timings, reallocations, result.state)
