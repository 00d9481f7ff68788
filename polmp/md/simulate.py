"""MD of a trained model with spectra observables recorded in the same scan (host driver).

``run_md(MDConfig)`` is what ``polmp md CONFIG`` runs::

    trained model + starting structure + ensemble
      -> jax-md integrator of the model behind the front door (``polmp.md.jaxmd.bind``,
         the same door as ``polmp.neighbor_list_energy``); NPT moves the box, which
         the energy, the neighbour list and the records follow
      -> chunks of steps in one jitted ``lax.scan`` (``polmp.md.run.run_chunked``),
         recording every ``record_every`` steps, inside the scan:
           potential and kinetic energy (and the Nose-Hoover invariant),
           Pdot = sum_i Z*_i v_i (e*A/fs; ``polarization_current``, forward mode),
           alpha_sys = eps_e k_e sum_i alpha_i (A^3) when the model has alpha,
           positions (for the trajectory), the cell and the volume
      -> <output_dir>/observables.npz, trajectory.extxyz, md.json, config.yaml

``polmp spectra <output_dir>`` turns observables.npz into IR and Raman spectra.

Velocities are drawn from Maxwell-Boltzmann at ``temperature_K`` (jax-md's init).
NVE/NVT: positions are Cartesian and never wrapped (``unwrapped_shift``); the
neighbour list works in wrapped fractional coordinates.  NPT (``npt_nose_hoover``,
isotropic): positions are fractional (jax-md's convention for a moving box), the
list is rebuilt with the current box, and the long-range k-set / mesh are prepared
for the largest box of ``box_scale_range`` (the run stops if the box leaves it).
A state that turns non-finite stops the run with ``MDBlowUp`` (a RuntimeError naming
the step) after the records before it are written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from polmp import units
from polmp.config.loader import to_dict
from polmp.config.schema import MDConfig
from polmp.data.schema import Frame
from polmp.md.jaxmd import BoundModel, bind, thermal_energy, timestep, unwrapped_shift
from polmp.md.run import MDBlowUp, run_chunked
from polmp.observables.polarization import (
    polarization_current,
    system_polarizability,
)
from polmp.training.trained import TrainedModel, load_trained

__all__ = ["MDRun", "load_structure", "make_recorder", "masses_of", "run_md"]

#: g/cm^3 of 1 amu/A^3
_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


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
    bound: BoundModel,
    energy_fn,
    *,
    eps_e: float = 1.0,
    observables: bool = True,
    invariant_fn=None,
    box_fn=None,
    e_ext=None,
):
    """``record(state, nbrs) -> dict`` of per-step quantities, traced inside the scan.

    Args:
        bound: the model bound for jax-md (``polmp.md.jaxmd.bind``).
        energy_fn: the energy the integrator uses (eV).
        eps_e: screening of Z* (sqrt) and alpha_sys.
        observables: record ``pdot`` and ``alpha_sys``.
        invariant_fn: optional ``(state, nbrs) -> eV`` conserved quantity (the
            Nose-Hoover invariant); without it the total energy is recorded.
        box_fn: ``box_fn(state) -> box`` for a moving box (NPT), else None.
        e_ext: external field (3,), V/A, or None.
    """
    n = bound.species.shape[0]
    has_latents = bound.trained.model_config.variant != "sr"
    has_alpha = bound.trained.model_config.use_alpha
    periodic = bound.box is not None

    def record(state, nbrs):
        from jax_md import quantity

        box = None if box_fn is None else box_fn(state)
        kw = {} if box is None else {"box": box}
        potential = energy_fn(state.position, nbrs, **kw)
        kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        charges_fn, positions, cell = bound.latents_fn(
            state.position, nbrs, e_ext=e_ext, **kw
        )
        out = dict(
            potential_energy=potential,
            kinetic_energy=kinetic,
            temperature_K=2.0 * kinetic / (3 * n * units.KB),
            positions=positions,
        )
        if periodic:
            out["cell"] = cell
            out["volume_A3"] = jnp.abs(jnp.linalg.det(cell))
        out["conserved_energy"] = (
            potential + kinetic if invariant_fn is None else invariant_fn(state, nbrs)
        )
        if not (observables and has_latents):
            return out
        velocity = state.velocity * units.FS  # A per internal time unit -> A/fs
        out["pdot"], alpha = polarization_current(
            charges_fn, positions, velocity, cell, eps_e=eps_e, has_aux=True
        )
        if has_alpha:
            out["alpha_sys"] = system_polarizability(alpha, eps_e)
        return out

    return record


def _integrator(config: MDConfig, energy_fn, box):
    """(init, step, invariant or None, box_fn or None) of ``config.ensemble``."""
    from jax_md import simulate, space

    dt = timestep(config.timestep_fs)
    kT = thermal_energy(config.temperature_K)
    tau = config.thermostat_time_fs * units.FS
    if config.ensemble == "nve":
        init, step = simulate.nve(energy_fn, unwrapped_shift, dt=dt)
        return init, step, None, None
    if config.ensemble == "nvt_langevin":
        init, step = simulate.nvt_langevin(
            energy_fn, unwrapped_shift, dt=dt, kT=kT, gamma=1.0 / tau
        )
        return init, step, None, None
    if config.ensemble == "npt":
        import ase.units

        pressure = config.pressure_bar * ase.units.bar  # eV/A^3
        _, shift = space.periodic_general(box, fractional_coordinates=True)
        init, step = simulate.npt_nose_hoover(
            energy_fn,
            shift,
            dt=dt,
            pressure=pressure,
            kT=kT,
            barostat_kwargs=dict(tau=config.barostat_time_fs * units.FS),
            thermostat_kwargs=dict(tau=tau),
        )

        def npt_invariant(state, nbrs):
            return simulate.npt_nose_hoover_invariant(
                energy_fn, state, pressure, kT, neighbor=nbrs
            )

        return init, step, npt_invariant, simulate.npt_box
    init, step = simulate.nvt_nose_hoover(
        energy_fn, unwrapped_shift, dt=dt, kT=kT, tau=tau
    )

    def invariant(state, nbrs):
        return simulate.nvt_nose_hoover_invariant(energy_fn, state, kT, neighbor=nbrs)

    return init, step, invariant, None


def _write_trajectory(path, frame: Frame, positions, times_fs, cells=None) -> None:
    import ase
    import ase.io

    pbc = frame.cell is not None
    images = [
        ase.Atoms(
            numbers=frame.numbers,
            positions=r,
            cell=(frame.cell if cells is None else cells[k]) if pbc else None,
            pbc=pbc,
            info={"time_fs": float(t)},
        )
        for k, (r, t) in enumerate(zip(positions, times_fs, strict=True))
    ]
    ase.io.write(path, images, format="extxyz")


def _check_npt(config: MDConfig, frame: Frame) -> None:
    if config.ensemble == "npt" and frame.cell is None:
        raise ValueError("ensemble 'npt' needs a periodic structure (a cell)")


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
            device neighbour list, float64 without x64, NPT without a cell.
        MDBlowUp: the state became non-finite (the records before it are written).
    """
    if config.precision == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            "precision 'float64' needs jax_enable_x64 set before jax is used "
            "(the CLI does this)"
        )
    # TODO(checkify): validate the first chunk with the electrostatics solvers'
    # opt-in checkify checks once they exist.
    dtype = jnp.float64 if config.precision == "float64" else jnp.float32
    trained = (trained or load_trained(config.model)).cast(dtype)
    frame = frame or load_structure(config.structure, config.frame_index)
    _check_npt(config, frame)
    npt = config.ensemble == "npt"
    box = None if frame.cell is None else np.asarray(frame.cell, np.float64).T
    bound = bind(
        trained,
        box,
        frame.numbers,
        skin=config.skin_A,
        fractional_coordinates=npt,
        box_scale_range=config.box_scale_range if npt else (1.0, 1.0),
        total_charge=float(frame.total_charge or 0.0),
        eps_e=config.eps_e,
    )
    e_ext = (
        None
        if config.external_field_V_per_A is None
        else jnp.asarray(config.external_field_V_per_A, dtype)
    )
    energy_fn = bound.energy_fn
    if e_ext is not None:
        energy_fn = functools.partial(bound.energy_fn, e_ext=e_ext)
    positions = np.asarray(frame.positions, np.float64)
    if npt:
        s = positions @ np.linalg.inv(frame.cell)
        positions = s - np.floor(s)
    positions = jnp.asarray(positions, dtype)
    nbrs = bound.neighbor_fn.allocate(positions)
    init, step, invariant, box_fn = _integrator(config, energy_fn, box)
    record = make_recorder(
        bound,
        energy_fn,
        eps_e=config.eps_e,
        observables=config.observables,
        invariant_fn=invariant,
        box_fn=box_fn,
        e_ext=e_ext,
    )
    mass = jnp.asarray(masses_of(frame.numbers), dtype)
    key = jax.random.PRNGKey(config.seed)
    kT = thermal_energy(config.temperature_K)
    if npt:
        state = init(key, positions, jnp.asarray(box, dtype), mass=mass, neighbor=nbrs)
    else:
        state = init(key, positions, kT=kT, mass=mass, neighbor=nbrs)

    output_dir = pathlib.Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "config.yaml", "w") as handle:
        yaml.safe_dump(to_dict(config), handle, sort_keys=False)

    chunk_times: list[float] = []

    def on_chunk(step_count, state, records):
        jax.block_until_ready(state.position)
        chunk_times.append(time.perf_counter())

    common = dict(
        chunk_steps=config.chunk_steps,
        progress=config.progress_bar,
        box_fn=box_fn,
    )
    reallocations = 0
    try:
        if config.equilibration_steps:
            equilibrated = run_chunked(
                step,
                state,
                bound.neighbor_fn,
                nbrs,
                num_steps=config.equilibration_steps,
                **common,
            )
            state, nbrs = equilibrated.state, equilibrated.neighbor
            reallocations += equilibrated.num_reallocations
        start = time.perf_counter()
        result = run_chunked(
            step,
            state,
            bound.neighbor_fn,
            nbrs,
            num_steps=config.num_steps,
            record_fn=record,
            record_every=config.record_every,
            on_chunk=on_chunk,
            first_step=config.equilibration_steps,
            **common,
        )
    except MDBlowUp as error:
        if error.records is not None:
            _write_outputs(
                config,
                frame,
                trained,
                dict(error.records),
                output_dir,
                {
                    "error": str(error),
                    "blow_up_step": error.step,
                    "num_reallocations": reallocations,
                },
            )
        else:
            with open(output_dir / "md.json", "w") as handle:
                json.dump(
                    dict(model=trained.source, error=str(error)), handle, indent=2
                )
        raise
    reallocations += result.num_reallocations
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
    records = _write_outputs(
        config,
        frame,
        trained,
        dict(result.records),
        output_dir,
        dict(num_reallocations=reallocations, timings=timings),
    )
    return MDRun(str(output_dir), records, timings, reallocations, result.state)


def _write_outputs(config, frame, trained, records, output_dir, summary) -> dict:
    """observables.npz, trajectory.extxyz and md.json of the records; the records
    (time axis added, positions and cells moved out) are returned."""
    num_records = len(records["potential_energy"])
    records["time_fs"] = (
        np.arange(1, num_records + 1) * config.record_every * config.timestep_fs
    )
    positions_record = records.pop("positions")
    np.savez(
        output_dir / "observables.npz",
        sampling_interval_fs=config.record_every * config.timestep_fs,
        numbers=frame.numbers,
        **records,
    )
    if config.trajectory_every and num_records:
        stride = config.trajectory_every // config.record_every
        cells = records.get("cell")
        _write_trajectory(
            output_dir / "trajectory.extxyz",
            frame,
            positions_record[stride - 1 :: stride],
            records["time_fs"][stride - 1 :: stride],
            None if cells is None else cells[stride - 1 :: stride],
        )
    finite = np.isfinite(records["temperature_K"])
    summary = dict(model=trained.source, num_atoms=frame.num_atoms, **summary)
    if finite.any():
        summary["mean_temperature_K"] = float(np.mean(records["temperature_K"][finite]))
        conserved = records["conserved_energy"][finite]
        summary["conserved_energy_drift_eV"] = float(conserved[-1] - conserved[0])
    if "volume_A3" in records and finite.any():
        mass_amu = float(masses_of(frame.numbers).sum())
        density = mass_amu * _AMU_PER_A3_TO_G_PER_CM3 / records["volume_A3"][finite]
        summary["mean_density_g_per_cm3"] = float(np.mean(density))
        summary["initial_density_g_per_cm3"] = float(
            mass_amu * _AMU_PER_A3_TO_G_PER_CM3 / abs(np.linalg.det(frame.cell))
        )
    with open(output_dir / "md.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    return records
