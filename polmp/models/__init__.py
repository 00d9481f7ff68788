"""Equivariant short-range network with latent multipole heads.

Public names: ``ModelConfig``, ``AtomicModel``, ``AtomicOutputs``, ``make_energy_fn``,
``EnergyFns``, ``l2_to_symmetric_traceless``, ``symmetric_traceless_to_l2``,
``fit_reference_energies``, ``count_species``, ``ModelOutputs``; long-range adapter
(``polmp.models.long_range``): ``prepare_long_range``, ``graph_long_range``,
``bind_long_range``, ``LongRangeData``, ``LongRangeOutputs``.
"""

from polmp.models.config import VARIANTS, ModelConfig
from polmp.models.heads import (
    AtomicOutputs,
    count_species,
    fit_reference_energies,
    l2_to_symmetric_traceless,
    symmetric_traceless_to_l2,
)
from polmp.models.long_range import (
    LongRangeData,
    LongRangeOutputs,
    bind_long_range,
    graph_long_range,
    prepare_long_range,
)
from polmp.models.potential import (
    AtomicModel,
    EnergyFns,
    ModelOutputs,
    graph_energies,
    make_energy_fn,
)

__all__ = [
    "VARIANTS",
    "AtomicModel",
    "AtomicOutputs",
    "EnergyFns",
    "LongRangeData",
    "LongRangeOutputs",
    "ModelConfig",
    "ModelOutputs",
    "bind_long_range",
    "count_species",
    "fit_reference_energies",
    "graph_energies",
    "graph_long_range",
    "l2_to_symmetric_traceless",
    "make_energy_fn",
    "prepare_long_range",
    "symmetric_traceless_to_l2",
]
