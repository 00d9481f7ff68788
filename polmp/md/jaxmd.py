"""The jax-md front door: a trained polmp model as a jax-md energy function.

``neighbor_list_energy(model, box, species)`` is shaped like jax-md's own
``energy.*_neighbor_list`` factories and returns ``(neighbor_fn, energy_fn)``::

    import polmp
    from jax_md import simulate, space
    neighbor_fn, energy_fn = polmp.neighbor_list_energy("water-gfn2-full", box, Z)
    nbrs = neighbor_fn.allocate(R)
    init, step = simulate.nvt_nose_hoover(energy_fn, shift_fn, dt, kT)
    state = init(key, R, mass=m, neighbor=nbrs)

Conventions are jax-md's: ``box`` is what ``space.periodic_general`` takes (a scalar,
a (3,) vector or a (3, 3) matrix whose *columns* are the lattice vectors; None for
free space), converted to polmp's row cells in one place
(``geometry.neighbors.box_to_cell``); ``R`` is Cartesian (may be unwrapped) or, with
``fractional_coordinates=True``, fractional (what ``npt_nose_hoover`` needs).

``energy_fn(R, neighbor=nbrs, box=None, perturbation=None, e_ext=None, **kw)``:

* ``box``: the current box; the cell enters the traced graph, so the energy follows
  the box continuously.  The long-range k-set / PME mesh are fixed at construction
  for the largest box of ``box_scale_range`` (every smaller box of the same shape is
  then converged too); a box outside that range gives a NaN energy (never a silently
  unconverged one) and ``polmp md`` stops with a message.
* ``perturbation``: the deformation jax-md's ``quantity.stress`` / ``pressure`` and
  ``npt_nose_hoover`` apply to every displacement (dR -> P dR, P a scalar or 3x3),
  so those quantities include the model's virial.
* ``e_ext``: a uniform external field, V/A.  It enters the induced dipoles and U_iu
  (docs/method.md#external-field), and the forces gain the field's force on the ions,
  F_i += Z*_i^T E_ext with Z* = sqrt(eps_e) dP/dr_i (section 7).  That force is not
  the gradient of an energy in a periodic cell; it is added to the gradient jax-md
  takes through a term whose value is zero.
* the integrator's own keywords (kT, mass, pressure, ...) are ignored; anything else
  raises a ``TypeError``.
* a neighbour list that overflowed (or whose cells became too small for the box)
  gives a NaN energy: reallocate it (``neighbor_fn.allocate``).

``bind(...)`` returns the same pair plus what ``polmp md`` records (latents,
long-range data) as a ``BoundModel``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from polmp import units
from polmp.geometry.cell import validate_cell
from polmp.geometry.graph import Graph
from polmp.geometry.neighbors import (
    box_to_cell,
    list_overflowed,
    neighbor_edges,
    neighbor_list,
)

__all__ = [
    "INTEGRATOR_KEYWORDS",
    "BoundModel",
    "bind",
    "check_species",
    "neighbor_list_energy",
    "thermal_energy",
    "timestep",
    "unwrapped_shift",
]

#: Keywords jax-md integrators and quantities thread through ``energy_fn`` (ignored).
INTEGRATOR_KEYWORDS = frozenset(
    {"kT", "mass", "pressure", "dt", "gamma", "tau", "velocity", "momentum", "t"}
)

_LONG_RANGE_KEYWORDS = frozenset(
    {"sigma", "accuracy", "method", "max_multipole_order", "les_compat", "pme_order"}
)


def check_species(species, model_species) -> np.ndarray:
    """``species`` as an int array, or a ValueError naming unknown elements.  Host."""
    from ase.data import chemical_symbols

    species = np.asarray(species)
    if species.ndim != 1 or species.size == 0:
        raise ValueError(f"species must be a non-empty 1D array, got {species.shape}")
    if not np.issubdtype(species.dtype, np.integer) or np.any(species <= 0):
        raise ValueError("species must be atomic numbers (integers > 0)")
    unknown = sorted(set(species.tolist()) - set(int(z) for z in model_species))

    def names(zs):
        return ", ".join(
            f"{chemical_symbols[z] if z < len(chemical_symbols) else '?'} (Z={z})"
            for z in zs
        )

    if unknown:
        raise ValueError(
            f"the structure has element(s) {names(unknown)} that the model does not "
            f"know; the model's species are {names(sorted(model_species))}"
        )
    return species.astype(np.int32)


class BoundModel(NamedTuple):
    """A trained model bound to one system for jax-md (``bind``).

    Attributes:
        neighbor_fn: jax-md ``NeighborListFns`` (``allocate``, ``update``).
        energy_fn: ``energy_fn(R, neighbor, box=None, perturbation=None,
            e_ext=None, **integrator_kwargs) -> eV`` (module docstring).
        latents_fn: ``latents_fn(R, neighbor, box=None, e_ext=None) ->
            (charges_fn, X, cell)``: ``charges_fn(x) -> ((q (N,), mu (N, 3)), alpha)``
            the total latents at Cartesian positions x (the contract of
            ``observables.polarization``), X the Cartesian positions, cell the rows
            (None in free space).  For Pdot / Born charges inside a scan.
        trained: the ``TrainedModel``.
        species: (N,) atomic numbers.
        box: the reference box (jax-md convention, float64 numpy) or None.
        long_range_data: the prepared ``LongRangeData`` (None for "sr").
        box_scale_range: (lo, hi) linear box scales the energy accepts.
        fractional_coordinates: whether R is fractional.
    """

    neighbor_fn: Any
    energy_fn: Callable
    latents_fn: Callable
    trained: Any
    species: np.ndarray
    box: np.ndarray | None
    long_range_data: Any
    box_scale_range: tuple[float, float]
    fractional_coordinates: bool


def _as_trained(model):
    from polmp.training.trained import TrainedModel, load_trained

    if isinstance(model, TrainedModel):
        return model
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return load_trained(model)
    raise TypeError(
        f"model must be a TrainedModel or a name/path load_trained accepts, got "
        f"{type(model).__name__}"
    )


def _template_graph(species, cell, total_charge) -> Graph:
    """Concrete single-structure Graph (N + 1 atoms, 2 graphs) for host preparation."""
    n = species.shape[0]
    periodic = cell is not None
    cells = np.stack([cell if periodic else np.eye(3), np.eye(3)])
    return Graph(
        positions=np.zeros((n + 1, 3)),
        species=np.concatenate([species, [0]]).astype(np.int32),
        atom_graph=np.concatenate([np.zeros(n), [1]]).astype(np.int32),
        idx_i=np.full(1, n, np.int32),
        idx_j=np.full(1, n, np.int32),
        shifts=np.zeros((1, 3), np.int32),
        cell=cells,
        pbc=np.array([[periodic] * 3, [False] * 3]),
        atom_mask=np.arange(n + 1) < n,
        edge_mask=np.zeros(1, bool),
        graph_mask=np.array([True, False]),
        total_charge=np.array([total_charge, 0.0]),
    )


def bind(
    model,
    box,
    species,
    *,
    skin: float = 0.5,
    fractional_coordinates: bool = False,
    box_scale_range: tuple[float, float] = (0.95, 1.05),
    total_charge: float = 0.0,
    eps_e: float = 1.0,
    capacity_multiplier: float = 1.25,
    **long_range,
) -> BoundModel:
    """A trained model bound to one system for jax-md (module docstring).  Host.

    Args:
        model: a ``TrainedModel`` or a name/path ``load_trained`` accepts.
        box: jax-md box (columns are lattice vectors), A, or None for free space.
        species: (N,) atomic numbers.
        skin: neighbour-list skin, A.
        fractional_coordinates: R is fractional (periodic only; NPT integrators).
        box_scale_range: (lo, hi), the linear scales of ``box`` the energy accepts
            (lo <= 1 <= hi): the k-set / mesh are prepared for ``hi * box`` and the
            neighbour list checks its width at ``lo * box``.
        total_charge: e.
        eps_e: electronic screening of the Born charges of the field force.
        capacity_multiplier: neighbour-list buffer over the observed pair count.
        **long_range: overrides of the model's ``prepare_long_range`` options
            (sigma, accuracy, method, max_multipole_order, les_compat, pme_order).

    Returns:
        ``BoundModel``.

    Raises:
        ValueError: unknown elements, a bad box or range, long-range options for a
            model without a long-range part.
        TypeError: an unknown keyword.
    """
    from jax_md import space

    from polmp.models.long_range import prepare_long_range
    from polmp.observables.polarization import born_charges, total_latents

    trained = _as_trained(model)
    config = trained.model_config
    species = check_species(species, config.species)
    n = species.shape[0]
    unknown = set(long_range) - _LONG_RANGE_KEYWORDS
    if unknown:
        raise TypeError(
            f"unknown keyword(s) {sorted(unknown)}; long-range options are "
            f"{sorted(_LONG_RANGE_KEYWORDS)}"
        )
    lo, hi = (float(x) for x in box_scale_range)
    if not 0 < lo <= 1 <= hi:
        raise ValueError(
            f"box_scale_range must satisfy 0 < lo <= 1 <= hi, got {(lo, hi)}"
        )
    periodic = box is not None
    if fractional_coordinates and not periodic:
        raise ValueError("fractional_coordinates needs a periodic box")
    box_np = cell = None
    if periodic:
        box_np = np.asarray(box, np.float64)
        cell = validate_cell(np.asarray(box_to_cell(box_np)))
    neighbor_fn = neighbor_list(
        config.cutoff_A,
        cell,
        skin=skin,
        capacity_multiplier=capacity_multiplier,
        fractional_coordinates=fractional_coordinates,
        min_box_scale=lo,
    )
    options = trained.long_range_options
    data = None
    if options is None:
        if long_range:
            raise ValueError(
                f"model variant {config.variant!r} has no long-range part; drop "
                f"{sorted(long_range)}"
            )
    else:
        options = {**options, **long_range}
        prep_cell = None if cell is None else hi * cell
        data = prepare_long_range(
            _template_graph(species, prep_cell, float(total_charge)), **options
        )
    has_latents = config.variant != "sr"
    fns = trained.energy_fns
    params_by_dtype = {}

    def params_for(dtype):
        key = jnp.dtype(dtype).name
        if key not in params_by_dtype:
            # concrete even when first asked for inside a trace (no leaked tracers)
            with jax.ensure_compile_time_eval():
                params_by_dtype[key] = trained.cast(dtype).params
        return params_by_dtype[key]

    inverse_ref = None if cell is None else np.linalg.inv(cell)

    def cartesian(R, box):
        """(Cartesian positions, cell rows or None) of R in the given/reference box."""
        dtype = R.dtype
        if not periodic:
            if box is not None:
                raise ValueError(
                    "a box was passed to the energy of a free-space system"
                )
            return R, None
        cell_now = box_to_cell(jnp.asarray(box_np if box is None else box, dtype))
        if fractional_coordinates:
            # jax-md's transform: gradients w.r.t. fractional R come out Cartesian
            return space.transform(cell_now.T, R), cell_now
        return R, cell_now

    def assemble(x, c, edges) -> Graph:
        idx_i, idx_j, shifts, edge_mask = edges
        dtype = x.dtype
        cells = jnp.stack(
            [c if periodic else jnp.eye(3, dtype=dtype), jnp.eye(3, dtype=dtype)]
        )
        return Graph(
            positions=jnp.concatenate([x, jnp.zeros((1, 3), dtype)]),
            species=jnp.asarray(np.concatenate([species, [0]]), jnp.int32),
            atom_graph=jnp.asarray(np.r_[np.zeros(n), 1], jnp.int32),
            idx_i=idx_i,
            idx_j=idx_j,
            shifts=shifts,
            cell=cells,
            pbc=jnp.array([[periodic] * 3, [False] * 3]),
            atom_mask=jnp.arange(n + 1) < n,
            edge_mask=edge_mask,
            graph_mask=jnp.array([True, False]),
            total_charge=jnp.asarray([total_charge, 0.0], dtype),
        )

    def field_of(e_ext, dtype):
        if e_ext is None:
            return None
        if not has_latents:
            raise ValueError(
                f"model variant {config.variant!r} has no latent charges: an "
                "external field e_ext has nothing to act on"
            )
        e_ext = jnp.asarray(e_ext, dtype)
        if e_ext.shape != (3,):
            raise ValueError(f"e_ext must have shape (3,), V/A; got {e_ext.shape}")
        return e_ext

    def latents_fn(R, neighbor, box=None, e_ext=None, induced_dipoles=True):
        x0, c = cartesian(R, box)
        edges = neighbor_edges(neighbor, x0, c)
        field = field_of(e_ext, x0.dtype)
        params = params_for(x0.dtype)

        def charges_fn(x):
            graph = assemble(x, c, edges)
            outputs = fns.outputs_fn(params, graph, long_range=data, e_ext=field)
            q, mu = total_latents(outputs)
            if not induced_dipoles and outputs.dmu is not None:
                dmu = outputs.dmu
                mu = mu - (dmu.sum(1) if dmu.ndim == 3 else dmu)
            alpha = None if outputs.alpha is None else outputs.alpha[:n]
            return (q[:n], mu[:n]), alpha

        return charges_fn, x0, c

    def out_of_range(c):
        """Traced bool: the cell left the prepared range of linear scales."""
        m = jax.lax.stop_gradient(jnp.asarray(inverse_ref, c.dtype) @ c)
        sv = jnp.linalg.svd(m, compute_uv=False)
        tol = 1e-9 if c.dtype == jnp.float64 else 1e-5
        return (sv.min() < lo * (1 - tol)) | (sv.max() > hi * (1 + tol))

    def energy_fn(R, neighbor=None, box=None, perturbation=None, e_ext=None, **kwargs):
        unexpected = set(kwargs) - INTEGRATOR_KEYWORDS
        if unexpected:
            raise TypeError(
                f"energy_fn got unexpected keyword(s) {sorted(unexpected)}; it takes "
                "neighbor, box, perturbation, e_ext and ignores the integrator's "
                f"{sorted(INTEGRATOR_KEYWORDS)}"
            )
        if neighbor is None:
            raise ValueError(
                "energy_fn needs neighbor=nbrs (from neighbor_fn.allocate(R))"
            )
        R = jnp.asarray(R)
        if R.shape != (n, 3):
            raise ValueError(f"R must have shape ({n}, 3), got {R.shape}")
        dtype = R.dtype
        x0, c0 = cartesian(R, box)
        edges = neighbor_edges(neighbor, x0, c0)
        x, c = x0, c0
        if perturbation is not None:
            # jax-md deforms every displacement, dR -> P dR (column vectors)
            p = jnp.asarray(perturbation, dtype)
            if p.ndim == 0:
                x = x * p
                c = None if c is None else c * p
            else:
                x = x @ p.T
                c = None if c is None else c @ p.T
        field = field_of(e_ext, dtype)
        params = params_for(dtype)
        energy = fns.energy_fn(
            params, assemble(x, c, edges), long_range=data, e_ext=field
        )[0]
        if field is not None:
            from polmp.observables.polarization import field_forces

            # The induced dipoles' share of Z*^T E_ext is already the gradient of
            # U_iu, whose dmu = alpha (E + E_ext) sees the field (the solver got
            # e_ext above); adding it again would count it twice.  So the explicit
            # term carries the Born charges of q + dq and the permanent mu only.
            charges_fn, _, _ = latents_fn(
                R, neighbor, box, e_ext, induced_dipoles=False
            )
            z = born_charges(
                lambda r: charges_fn(r)[0],
                jax.lax.stop_gradient(x0),
                None if c0 is None else jax.lax.stop_gradient(c0),
                eps_e=eps_e,
            )
            f_field = jax.lax.stop_gradient(field_forces(z, field))
            # value 0, gradient -F_field: jax-md's forces -dE/dR gain Z*^T E_ext
            energy = energy - jnp.sum(f_field * (x0 - jax.lax.stop_gradient(x0)))
        bad = list_overflowed(neighbor)
        if periodic and box is not None:
            bad = bad | out_of_range(c0)
        return jnp.where(bad, jnp.asarray(jnp.nan, energy.dtype), energy)

    return BoundModel(
        neighbor_fn,
        energy_fn,
        latents_fn,
        trained,
        species,
        box_np,
        data,
        (lo, hi),
        bool(fractional_coordinates),
    )


def neighbor_list_energy(
    model,
    box,
    species,
    *,
    skin: float = 0.5,
    fractional_coordinates: bool = False,
    **kwargs,
):
    """``(neighbor_fn, energy_fn)`` of a trained model, as jax-md's
    ``energy.*_neighbor_list`` factories (module docstring).  Host factory.

    Args:
        model: a ``TrainedModel`` or a name/path ``load_trained`` accepts
            (``"water-gfn2-full"``).
        box: jax-md box (what ``space.periodic_general`` takes: columns are lattice
            vectors), A; None for free space.
        species: (N,) atomic numbers.
        skin: neighbour-list skin, A.
        fractional_coordinates: R is fractional (as ``npt_nose_hoover`` wants).
        **kwargs: ``box_scale_range``, ``total_charge``, ``eps_e``,
            ``capacity_multiplier`` and long-range options of ``bind``.

    Returns:
        ``(neighbor_fn, energy_fn)``: ``neighbor_fn.allocate(R)`` /
        ``neighbor_fn.update(R, nbrs)`` / ``nbrs.update(R)``, and
        ``energy_fn(R, neighbor=nbrs, box=None, perturbation=None, e_ext=None)``.
    """
    bound = bind(
        model,
        box,
        species,
        skin=skin,
        fractional_coordinates=fractional_coordinates,
        **kwargs,
    )
    return bound.neighbor_fn, bound.energy_fn


def unwrapped_shift(positions, displacement, **kwargs):
    """jax-md ``shift_fn`` that never wraps: positions stay continuous (for spectra).

    Periodic images are handled by the neighbour list (fractional coordinates), so
    wrapping is not needed for the energy.
    """
    del kwargs
    return positions + displacement


def timestep(timestep_fs: float) -> float:
    """A time step in fs in the internal unit sqrt(amu A^2 / eV) that jax-md integrates in."""
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    return timestep_fs * units.FS


def thermal_energy(temperature_K: float) -> float:
    """kT in eV for a temperature in K."""
    if not temperature_K >= 0:
        raise ValueError(f"temperature_K must be >= 0, got {temperature_K}")
    return units.KB * temperature_K
