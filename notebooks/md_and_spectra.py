# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Molecular dynamics and IR / Raman spectra with a trained polmp model
#
# polmp's jax-md front door turns a trained model into the pair jax-md's own
# `energy.*_neighbor_list` factories return, `(neighbor_fn, energy_fn)`, so a plain
# jax-md script runs it. This notebook
# 1. runs NVT water with a jax-md integrator written by hand (the door's energy, a
#    jax-md neighbour list, `quantity.pressure` with the model's virial),
# 2. runs NPT (`simulate.npt_nose_hoover`: the box moves and the energy follows it),
# 3. records the polarization current sum_i Z*_i v_i and the system polarizability
#    inside the MD scan (`polmp.md.simulate.run_md`, what `polmp md` runs) and turns
#    them into IR and Raman spectra, with the experimental liquid-water IR overlaid.
#
# The model is the shipped `water-gfn2-full` (trained by polmp on GFN2-xTB water).
# Set `POLMP_SMOKE=1` for a few-step version (the test suite runs that); the full
# size (a few ps, a few CPU-hours) is for running by hand.

# %%
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from ase.units import bar
from jax_md import quantity, simulate, space

from polmp.config.schema import MDConfig
from polmp.data.embedded import load_water_gfn2
from polmp.md.jaxmd import neighbor_list_energy, thermal_energy, timestep
from polmp.md.simulate import masses_of, run_md
from polmp.observables.spectra import experimental_water_ir, ir_spectrum, raman_spectra
from polmp.training.trained import load_trained

SMOKE = os.environ.get("POLMP_SMOKE") == "1"
NVT_STEPS = 10 if SMOKE else 2000  # 0.5 fs steps
NPT_STEPS = 10 if SMOKE else 4000
SPECTRA_EQUILIBRATION = 0 if SMOKE else 2000
SPECTRA_STEPS = 16 if SMOKE else 20000
CHUNK = 8 if SMOKE else 100

# %% [markdown]
# ## 1. NVT from a plain jax-md script
# A 96-atom box of liquid water from the shipped GFN2 set. jax-md's convention for
# the box is the one `space.periodic_general` takes: *columns* are lattice vectors
# (polmp's `Frame.cell` has them as rows, hence the transpose). Positions are
# Cartesian. The box is 9.67 A wide, so cutoff (4.5 A) + skin must stay below
# half of it: skin 0.3 A.

# %%
model = load_trained("water-gfn2-full")
frame = load_water_gfn2("bulk")[0]
box = jnp.asarray(frame.cell.T, jnp.float32)
R = jnp.asarray(frame.positions, jnp.float32)
species = frame.numbers
mass = jnp.asarray(masses_of(species), jnp.float32)  # (N, 1) amu

# box_scale_range=(1, 1): the box does not move in NVT (the default range, 0.95-1.05,
# is sized for NPT and would need cutoff + skin below half of 0.95 * 9.67 A)
neighbor_fn, energy_fn = neighbor_list_energy(
    model, box, species, skin=0.3, box_scale_range=(1.0, 1.0)
)
displacement_fn, shift_fn = space.periodic_general(box, fractional_coordinates=False)
nbrs = neighbor_fn.allocate(R)

dt, kT = timestep(0.5), thermal_energy(300.0)  # jax-md's internal units
init_fn, apply_fn = simulate.nvt_nose_hoover(
    energy_fn, shift_fn, dt, kT, tau=50.0 * timestep(1.0)
)
state = init_fn(jax.random.PRNGKey(0), R, mass=mass, neighbor=nbrs)


@jax.jit
def nvt_chunk(state, nbrs):
    def body(carry, _):
        state, nbrs = carry
        state = apply_fn(state, neighbor=nbrs)
        nbrs = nbrs.update(state.position)  # the jax-md idiom works on polmp's list
        return (state, nbrs), (
            energy_fn(state.position, neighbor=nbrs),
            quantity.temperature(momentum=state.momentum, mass=state.mass)
            / thermal_energy(1.0),
        )

    return jax.lax.scan(body, (state, nbrs), None, length=CHUNK)


energies, temperatures = [], []
for _ in range(max(1, NVT_STEPS // CHUNK)):
    (new_state, new_nbrs), (e, t) = nvt_chunk(state, nbrs)
    if new_nbrs.did_buffer_overflow:  # jax-md's rule: reallocate, redo the chunk
        nbrs = neighbor_fn.allocate(state.position)
        (new_state, new_nbrs), (e, t) = nvt_chunk(state, nbrs)
    state, nbrs = new_state, new_nbrs
    energies.append(e)
    temperatures.append(t)
energies, temperatures = np.concatenate(energies), np.concatenate(temperatures)
print(
    f"NVT: {len(energies)} steps, mean T {temperatures.mean():.0f} K, "
    f"E_pot {energies[0]:.3f} -> {energies[-1]:.3f} eV"
)

# %% [markdown]
# jax-md's `quantity.pressure` / `quantity.stress` apply a `perturbation` to the
# energy; the door honours it, so the pressure contains the model's virial.

# %%
kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
p = quantity.pressure(energy_fn, state.position, box, kinetic, neighbor=nbrs)
print(f"instantaneous pressure {float(p) / bar:.0f} bar")

# %% [markdown]
# ## 2. NPT
# `npt_nose_hoover` integrates fractional coordinates and moves the box; the door is
# told so (`fractional_coordinates=True`) and prepares its long-range k-set / mesh
# for the largest box of `box_scale_range` (a box outside that range gives NaN, never
# a silently unconverged energy). The neighbour list is updated with the current box.

# %%
npt_neighbor_fn, npt_energy_fn = neighbor_list_energy(
    model,
    box,
    species,
    skin=0.1,
    fractional_coordinates=True,
    box_scale_range=(0.96, 1.1),
)
_, npt_shift_fn = space.periodic_general(box, fractional_coordinates=True)
init_fn, apply_fn = simulate.npt_nose_hoover(
    npt_energy_fn,
    npt_shift_fn,
    dt,
    pressure=1.0 * bar,
    kT=kT,
    barostat_kwargs=dict(tau=500.0 * timestep(1.0)),
    thermostat_kwargs=dict(tau=50.0 * timestep(1.0)),
)
S = space.transform(jnp.linalg.inv(box), state.position)  # Cartesian -> fractional
S = S - jnp.floor(S)
npt_nbrs = npt_neighbor_fn.allocate(S)
npt_state = init_fn(jax.random.PRNGKey(1), S, box, mass=mass, neighbor=npt_nbrs)
total_mass_g = float(mass.sum()) * 1.66053906660e-24


@jax.jit
def npt_chunk(state, nbrs):
    def body(carry, _):
        state, nbrs = carry
        state = apply_fn(state, neighbor=nbrs)
        nbrs = nbrs.update(state.position, box=simulate.npt_box(state))
        return (state, nbrs), jnp.linalg.det(simulate.npt_box(state))

    return jax.lax.scan(body, (state, nbrs), None, length=CHUNK)


volumes = []
for _ in range(max(1, NPT_STEPS // CHUNK)):
    (new_state, new_nbrs), v = npt_chunk(npt_state, npt_nbrs)
    if new_nbrs.did_buffer_overflow:
        npt_nbrs = npt_neighbor_fn.allocate(
            npt_state.position, box=simulate.npt_box(npt_state)
        )
        (new_state, new_nbrs), v = npt_chunk(npt_state, npt_nbrs)
    npt_state, npt_nbrs = new_state, new_nbrs
    volumes.append(v)
volumes = np.concatenate(volumes)
density = total_mass_g / (volumes * 1e-24)  # g/cm^3
print(
    f"NPT: {len(volumes)} steps, density {density[0]:.3f} -> {density[-1]:.3f} g/cm^3 "
    f"(mean {density.mean():.3f})"
)
assert np.all(np.isfinite(volumes))

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(np.arange(1, len(temperatures) + 1) * 0.5, temperatures)
axes[0].set(xlabel="t (fs)", ylabel="T (K)", title="NVT")
axes[1].plot(np.arange(1, len(density) + 1) * 0.5, density)
axes[1].set(xlabel="t (fs)", ylabel="density (g/cm$^3$)", title="NPT, 1 bar")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. IR and Raman spectra
# The IR line shape is the Fourier transform of the autocorrelation of the
# polarization current Pdot = sum_i Z*_i v_i, the Raman line shapes those of the
# isotropic and anisotropic parts of the system polarizability. `run_md` (what
# `polmp md` runs; it uses the same door) records both inside the jitted MD scan by
# forward-mode derivatives of the model's latent charges and dipoles, without
# forming the Born charges.

# %%
run = run_md(
    MDConfig(
        structure="embedded:water-gfn2-bulk",
        ensemble="nvt_nose_hoover",
        temperature_K=300.0,
        timestep_fs=0.5,
        equilibration_steps=SPECTRA_EQUILIBRATION,
        num_steps=SPECTRA_STEPS,
        chunk_steps=CHUNK,
        record_every=2,
        trajectory_every=0,
        skin_A=0.3,
        progress_bar=False,
        output_dir=tempfile.mkdtemp(prefix="polmp-md-"),  # observables.npz, md.json
    ),
    trained=model,
)
records = run.records
interval_fs = 2 * 0.5
print({k: v.shape for k, v in records.items()})
print(
    f"mean T {records['temperature_K'].mean():.0f} K; "
    f"{run.timings['steps_per_s']:.1f} steps/s with observables every 2 steps"
)

# %%
block = 4 if SMOKE else 1024
ir = ir_spectrum(
    records["pdot"],
    interval_fs,
    block_length=block,
    smoothing_fwhm_cm=None if SMOKE else 20.0,
    max_wavenumber=4500.0,
)
has_alpha = "alpha_sys" in records
if has_alpha:
    raman_iso, raman_aniso = raman_spectra(
        records["alpha_sys"], interval_fs, block_length=block, max_wavenumber=4500.0
    )
    # a model with isotropic atomic polarizabilities has alpha_sys proportional to the
    # identity: its anisotropic Raman signal is identically zero, not a spectrum
    aniso_part = records["alpha_sys"] - np.trace(
        records["alpha_sys"], axis1=1, axis2=2
    )[:, None, None] / 3 * np.eye(3)
    aniso_zero = np.abs(aniso_part).max() < 1e-6 * np.abs(records["alpha_sys"]).max()
    print(
        "anisotropic Raman is identically zero (isotropic alpha model)"
        if aniso_zero
        else "anisotropic Raman recorded"
    )

# %% [markdown]
# The experimental curve is n(w) alpha(w) of liquid water from its optical constants
# (Segelstein, CC0, refractiveindex.info). Both curves are area-normalised over the
# plotted range.


# %%
def experimental_ir_path():
    """The shipped experimental water IR, else ../shared/data when present."""
    candidates = [
        pathlib.Path(os.environ.get("POLMP_SHARED_DATA", "../shared/data")),
        pathlib.Path.cwd().parents[1] / "shared" / "data",
    ]
    for root in candidates:
        path = (
            root / "water_ir_optical_constants/refractiveindex_info/H2O_Segelstein.yml"
        )
        if path.exists():
            return path
    return None


def on_axis(spectrum, axis):
    values = np.interp(axis, spectrum.wavenumber, spectrum.intensity, left=0, right=0)
    return values / np.trapezoid(values, axis)


axis = np.linspace(100.0, 4500.0, 800)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].plot(axis, on_axis(ir, axis), label="polmp (water-gfn2-full)")
path = experimental_ir_path()
if path is not None:
    axes[0].plot(
        axis,
        on_axis(experimental_water_ir(path), axis),
        "k--",
        label="experiment (liquid, 298 K)",
    )
else:
    print("experimental water IR not found: overlay skipped")
axes[0].set(xlabel="wavenumber (cm$^{-1}$)", ylabel="IR (normalised)")
axes[0].legend()
if has_alpha:
    axes[1].plot(axis, on_axis(raman_iso, axis), label="isotropic")
    if not aniso_zero:
        axes[1].plot(axis, on_axis(raman_aniso, axis), label="anisotropic")
    axes[1].set(xlabel="wavenumber (cm$^{-1}$)", ylabel="Raman (normalised)")
    axes[1].legend()
fig.tight_layout()
plt.show()
