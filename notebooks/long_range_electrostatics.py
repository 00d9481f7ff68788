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
# # Long-range electrostatics of latent multipoles
#
# This notebook uses only polmp's public API. It builds a water box, gives it fixed
# point-charge-like latents, and shows
# 1. that polmp's default k-space sum is converged (and the reference
#    implementation's truncated k-set is not),
# 2. Ewald vs smooth PME vs the non-periodic direct sum,
# 3. forces and stress by autodiff through a prepared solver,
# 4. Born effective charges of the same latents.
#
# Set `POLMP_SMOKE=1` to run a shortened version (used by the test suite).

# %%
import os

import jax

jax.config.update("jax_enable_x64", True)  # digits are compared below

import jax.numpy as jnp
import numpy as np

from polmp.data.water import water_box
from polmp.electrostatics import long_range, prepare_ewald
from polmp.observables.polarization import born_charges

SMOKE = os.environ.get("POLMP_SMOKE") == "1"
frame = water_box(2 if SMOKE else 4, seed=0)
positions = jnp.asarray(frame.positions)
cell = jnp.asarray(frame.cell)
q = jnp.asarray(np.where(frame.numbers == 8, -0.834, 0.417))
print(frame.num_atoms, "atoms, cell", float(cell[0, 0]), "A")

# %% [markdown]
# ## 1. Convergence of the k-space sum

# %%
for accuracy in (1e-4, 1e-6, 1e-8):
    e = long_range(positions, q, cell=cell, method="ewald", accuracy=accuracy).energy
    print(f"accuracy {accuracy:.0e}: E = {float(e):.10f} eV")
e_compat = long_range(positions, q, cell=cell, les_compat=True).energy
e_conv = long_range(positions, q, cell=cell, method="ewald", accuracy=1e-10).energy
print(f"les_compat k-set: {float(e_compat):.10f} eV "
      f"({100 * float((e_compat - e_conv) / e_conv):+.3f} % from converged)")

# %% [markdown]
# ## 2. Ewald, PME and a cluster

# %%
e_pme = long_range(positions, q, cell=cell, method="pme", accuracy=1e-8).energy
print("PME - Ewald:", float(e_pme - e_conv), "eV")
assert abs(float(e_pme - e_conv)) < 1e-5 * abs(float(e_conv))
e_cluster = long_range(positions[:3], q[:3], cell=None).energy
print("one isolated molecule (direct sum):", float(e_cluster), "eV")

# %% [markdown]
# ## 3. Forces and stress through a prepared solver
# `prepare_ewald` fixes the integer k-set from the concrete cell; the returned
# functions take the cell as a traced array, so the strain derivative is autodiff.

# %%
solver = prepare_ewald(cell, sigma=1.0, accuracy=1e-8)


def energy(r, h):
    return solver.energy_fn(r, h, q)


forces = -jax.grad(energy, argnums=0)(positions, cell)
strain = jnp.zeros((3, 3))
stress = jax.grad(
    lambda e: energy(positions @ (jnp.eye(3) + e), cell @ (jnp.eye(3) + e))
)(strain) / jnp.linalg.det(cell)
print("max |F| =", float(jnp.abs(forces).max()), "eV/A;  sum F =", np.asarray(forces.sum(0)))
print("stress (eV/A^3):\n", np.asarray(stress))

# %% [markdown]
# ## 4. Born effective charges
# For rigid latent charges Z*_i = q_i I exactly, in both the direct and the periodic
# phase form.

# %%
z = born_charges(lambda r: (q, jnp.zeros_like(r)), positions, cell)
print("Z*(O) =\n", np.asarray(z[0]))
assert np.allclose(z[0], -0.834 * np.eye(3))
