"""ASE calculator for a polmp model: energy, forces, stress, charges, dipole, Born charges.

    from polmp.ase import Calculator
    atoms.calc = Calculator(config, params, long_range_options=dict(sigma=1.0))
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
    atoms.calc.get_property("bec", atoms)      # (N, 3, 3) Born effective charges, e

Each call builds the padded single-structure Graph on the host (vesin neighbour list)
and the static long-range data, then evaluates jitted functions (compiled once per
shape).  Properties:

* ``energy``/``free_energy`` (eV), ``forces`` (eV/A), ``stress`` (Voigt, eV/A^3,
  ASE sign; periodic cells only);
* ``charges`` (e): total latent charge q + dq per atom (channels summed);
* ``dipole`` (e*A): P = sum_i (q_i + dq_i) r_i + sum_i (mu_i + dmu_i), mean charge
  removed (method.md §7), unscreened;
* ``bec`` (e): Z*_{i,ab} = sqrt(eps_e) dP_a/dr_{i,b} by autodiff through the latents
  and the response (phase form for periodic cells).

The compute dtype follows ``dtype`` (float64 needs ``jax_enable_x64``, which this
module never sets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from polmp.data.batching import frames_to_graph
from polmp.data.schema import Frame
from polmp.observables.polarization import born_charges, polarization, total_latents


def make_observables(outputs_fn, eps_e):
    """Jitted (charges, dipole, bec) of a padded single-structure graph."""

    def observables(params, graph, data, periodic):
        def charges_fn(positions):
            outputs = outputs_fn(params, graph, positions, long_range=data)
            if outputs.q is None:  # "sr": no latents
                zeros = jnp.zeros_like(positions[:, 0])
                return zeros, jnp.zeros_like(positions)
            return total_latents(outputs)

        mask = graph.atom_mask
        charges, _ = charges_fn(graph.positions)
        dipole = polarization(charges_fn, graph.positions, mask)
        cell = graph.cell[0] if periodic else None
        bec = born_charges(
            charges_fn, graph.positions, cell, eps_e=eps_e, atom_mask=mask
        )
        return charges, dipole, bec

    return jax.jit(observables, static_argnums=3)


class Calculator(_AseCalculator):
    """ASE calculator wrapping ``polmp.models.make_energy_fn`` (module docstring).

    Args:
        config: the ``ModelConfig`` of the trained model.
        params: its parameters.
        long_range_options: keyword arguments of ``prepare_long_range`` (sigma,
            accuracy, method, ...); ignored for variant "sr".
        eps_e: electronic screening of Born charges (1 in vacuum, eps_inf in bulk).
        dtype: compute dtype (np.float32 or np.float64).
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "charges",
        "dipole",
        "bec",
    ]

    def __init__(
        self,
        config,
        params,
        *,
        long_range_options=None,
        eps_e=1.0,
        dtype=np.float64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        from polmp.models.long_range import graph_long_range
        from polmp.models.potential import make_energy_fn

        self.config = config
        self.params = params
        self.eps_e = float(eps_e)
        self.dtype = np.dtype(dtype)
        self.long_range_options = dict(long_range_options or {})
        self._has_long_range = config.variant != "sr"
        self._fns = make_energy_fn(
            config, long_range_fn=graph_long_range if self._has_long_range else None
        )
        self._energy_forces_stress = jax.jit(self._fns.energy_forces_stress_fn)
        self._observables = make_observables(self._fns.outputs_fn, self.eps_e)

    def _graph(self, atoms):
        pbc = np.asarray(atoms.pbc, bool)
        frame = Frame(
            positions=np.asarray(atoms.positions, np.float64),
            numbers=np.asarray(atoms.numbers),
            cell=np.asarray(atoms.cell.array, np.float64) if pbc.any() else None,
            pbc=pbc,
            total_charge=float(atoms.get_initial_charges().sum()),
        )
        graph = frames_to_graph([frame], cutoff=self.config.cutoff_A)
        if self.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise ValueError(
                "dtype float64 needs jax_enable_x64 (set it before building)"
            )
        graph = jax.tree_util.tree_map(
            lambda x: (
                x.astype(self.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
            ),
            graph,
        )
        data = None
        if self._has_long_range:
            from polmp.models.long_range import prepare_long_range

            data = prepare_long_range(graph, **self.long_range_options)
        return graph, data

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        n = len(atoms)
        graph, data = self._graph(atoms)
        energy, forces, stress = self._energy_forces_stress(
            self.params, graph, long_range=data
        )
        self.results["energy"] = self.results["free_energy"] = float(energy[0])
        self.results["forces"] = np.asarray(forces[:n], np.float64)
        if np.all(atoms.pbc):
            s = np.asarray(stress[0], np.float64)
            self.results["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]

        periodic = bool(np.all(atoms.pbc))
        charges, dipole, bec = self._observables(self.params, graph, data, periodic)
        self.results["charges"] = np.asarray(charges[:n], np.float64)
        self.results["dipole"] = np.asarray(dipole, np.float64)
        self.results["bec"] = np.asarray(bec[:n], np.float64)
