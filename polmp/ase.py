"""ASE calculator for a polmp model: energy, forces, stress, charges, dipole, Born
charges, polarizability.

    from polmp.ase import Calculator
    atoms.calc = Calculator.from_trained("water-gfn2-full")
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
    atoms.calc.get_property("bec", atoms)      # (N, 3, 3) Born effective charges, e

Each call builds the padded single-structure Graph on the host (vesin neighbour list,
any cell, mixed pbc, cells shorter than twice the cutoff) and the static long-range
data, then evaluates jitted functions.  The edge capacity is rounded up onto a coarse
ladder (``round_capacity``, as training does), so an MD run recompiles only when its
pair count crosses a bucket, and the jitted functions are shared by every calculator
of the same model configuration.  Properties:

* ``energy``/``free_energy`` (eV), ``forces`` (eV/A), ``stress`` (Voigt, eV/A^3,
  ASE sign; periodic cells only);
* ``charges`` (e): total latent charge q + dq per atom (channels summed);
* ``dipole`` (e*A): P = sum_i (q_i + dq_i) r_i + sum_i (mu_i + dmu_i), mean charge
  removed (docs/method.md#born-charges), unscreened;
* ``bec`` (e): Z*_{i,ab} = sqrt(eps_e) dP_a/dr_{i,b} by autodiff through the latents
  and the response (phase form for periodic cells); computed only when asked for;
* ``polarizability`` (A^3, 3x3): alpha_sys = eps_e k_e sum_i alpha_i (models with
  alpha).

The compute dtype is float64 when jax's x64 mode is on, else float32 (``dtype=``
chooses; float64 needs ``jax.config.update("jax_enable_x64", True)`` first, which
this module never sets).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from polmp.data.batching import frames_to_graph, round_capacity
from polmp.data.schema import Frame
from polmp.geometry.neighbors import neighbor_pairs
from polmp.md.jaxmd import check_species
from polmp.observables.polarization import (
    born_charges,
    polarization,
    system_polarizability,
    total_latents,
)


def _charges_fn(outputs_fn, params, graph, data):
    def charges_fn(positions):
        outputs = outputs_fn(params, graph, positions, long_range=data)
        if outputs.q is None:  # "sr": no latents
            zeros = jnp.zeros_like(positions[:, 0])
            return zeros, jnp.zeros_like(positions)
        return total_latents(outputs)

    return charges_fn


@functools.lru_cache(maxsize=16)
def _compiled(config, eps_e: float):
    """Jitted functions of one model configuration, shared by all calculators."""
    from polmp.training.trained import energy_fns_of

    fns = energy_fns_of(config)

    def observables(params, graph, data):
        charges_fn = _charges_fn(fns.outputs_fn, params, graph, data)
        charges, _ = charges_fn(graph.positions)
        dipole = polarization(charges_fn, graph.positions, graph.atom_mask)
        outputs = fns.outputs_fn(params, graph, long_range=data)
        alpha = None
        if outputs.alpha is not None:
            alpha = system_polarizability(outputs.alpha, eps_e, graph.atom_mask)
        return charges, dipole, alpha

    def bec(params, graph, data, periodic):
        charges_fn = _charges_fn(fns.outputs_fn, params, graph, data)
        cell = graph.cell[0] if periodic else None
        return born_charges(
            charges_fn, graph.positions, cell, eps_e=eps_e, atom_mask=graph.atom_mask
        )

    return dict(
        energy_forces_stress=jax.jit(fns.energy_forces_stress_fn),
        observables=jax.jit(observables),
        bec=jax.jit(bec, static_argnums=3),
    )


class Calculator(_AseCalculator):
    """ASE calculator wrapping ``polmp.models.make_energy_fn`` (module docstring).

    Args:
        config: the ``ModelConfig`` of the trained model.
        params: its parameters.
        long_range_options: keyword arguments of ``prepare_long_range`` (sigma,
            accuracy, method, ...); ignored for variant "sr".
        eps_e: electronic screening of Born charges and alpha_sys (1 in vacuum,
            eps_inf in bulk).
        dtype: compute dtype; default float64 under jax's x64 mode, else float32.
    """

    implemented_properties = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "charges",
        "dipole",
        "bec",
        "polarizability",
    ]

    def __init__(
        self,
        config,
        params,
        *,
        long_range_options=None,
        eps_e=1.0,
        dtype=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        x64 = bool(jax.config.jax_enable_x64)
        if dtype is None:
            dtype = np.float64 if x64 else np.float32
        self.dtype = np.dtype(dtype)
        if self.dtype == np.float64 and not x64:
            raise ValueError(
                "dtype float64 needs jax's x64 mode: call "
                'jax.config.update("jax_enable_x64", True) before using jax, or pass '
                "dtype=np.float32"
            )
        self.config = config
        self.eps_e = float(eps_e)
        self.params = jax.tree.map(
            lambda x: (
                jnp.asarray(x, self.dtype)
                if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
                else jnp.asarray(x)
            ),
            params,
        )
        self.long_range_options = dict(long_range_options or {})
        self._has_long_range = config.variant != "sr"
        self._fns = _compiled(config, self.eps_e)

    @classmethod
    def from_trained(cls, model="water-gfn2-full", **kwargs) -> Calculator:
        """Calculator of a trained model: a ``TrainedModel`` or a name/path
        ``load_trained`` accepts (a run directory, checkpoint, exported model or
        shipped name), with the long-range options it was trained with.

        Args:
            model: ``TrainedModel`` or name/path.
            **kwargs: ``eps_e``, ``dtype`` and ASE calculator keywords.
        """
        from polmp.training.trained import TrainedModel, load_trained

        trained = model if isinstance(model, TrainedModel) else load_trained(model)
        return cls(
            trained.model_config,
            trained.params,
            long_range_options=trained.long_range_options,
            **kwargs,
        )

    def _graph(self, atoms):
        numbers = check_species(np.asarray(atoms.numbers), self.config.species)
        pbc = np.asarray(atoms.pbc, bool)
        frame = Frame(
            positions=np.asarray(atoms.positions, np.float64),
            numbers=numbers,
            cell=np.asarray(atoms.cell.array, np.float64) if pbc.any() else None,
            pbc=pbc,
            total_charge=float(atoms.get_initial_charges().sum()),
        )
        cutoff = self.config.cutoff_A
        num_pairs = neighbor_pairs(frame.positions, frame.cell, pbc, cutoff)[0].size
        # a coarse ladder of edge capacities: MD steps share one compiled shape
        graph = frames_to_graph(
            [frame], cutoff=cutoff, num_edges=round_capacity(num_pairs, 64)
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
        energy, forces, stress = self._fns["energy_forces_stress"](
            self.params, graph, long_range=data
        )
        self.results["energy"] = self.results["free_energy"] = float(energy[0])
        self.results["forces"] = np.asarray(forces[:n], np.float64)
        periodic = bool(np.all(atoms.pbc))
        if periodic:
            s = np.asarray(stress[0], np.float64)
            self.results["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        wanted = set(properties)
        if wanted & {"charges", "dipole", "polarizability"}:
            charges, dipole, alpha = self._fns["observables"](self.params, graph, data)
            self.results["charges"] = np.asarray(charges[:n], np.float64)
            self.results["dipole"] = np.asarray(dipole, np.float64)
            if "polarizability" in wanted:
                if alpha is None:
                    raise ValueError(
                        f"model variant {self.config.variant!r} has no "
                        "polarizabilities (alpha)"
                    )
                self.results["polarizability"] = np.asarray(alpha, np.float64)
        if "bec" in wanted:
            bec = self._fns["bec"](self.params, graph, data, periodic)
            self.results["bec"] = np.asarray(bec[:n], np.float64)
