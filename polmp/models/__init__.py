"""Equivariant short-range network with latent multipole heads (issue 5).

Public names: ``ModelConfig``, ``AtomicModel``, ``AtomicOutputs``, ``make_energy_fn``,
``EnergyFns``, ``l2_to_symmetric_traceless``, ``symmetric_traceless_to_l2``,
``fit_reference_energies``, ``count_species``.
"""

from polmp.models.config import VARIANTS, ModelConfig
from polmp.models.heads import (
    AtomicOutputs,
    count_species,
    fit_reference_energies,
    l2_to_symmetric_traceless,
    symmetric_traceless_to_l2,
)
from polmp.models.potential import (
    AtomicModel,
    EnergyFns,
    graph_energies,
    make_energy_fn,
)

__all__ = [
    "VARIANTS",
    "AtomicModel",
    "AtomicOutputs",
    "EnergyFns",
    "ModelConfig",
    "count_species",
    "fit_reference_energies",
    "graph_energies",
    "l2_to_symmetric_traceless",
    "make_energy_fn",
    "symmetric_traceless_to_l2",
]
