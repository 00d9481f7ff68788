"""polmp: machine-learning interatomic potentials with learned polarizable atomic multipoles.

Curated re-exports, imported lazily on first use (importing polmp stays cheap and
has no side effects; it never touches ``jax.config``: the CLI sets precision, tests
and notebooks set it themselves)::

    import polmp
    neighbor_fn, energy_fn = polmp.neighbor_list_energy("water-gfn2-full", box, Z)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0.dev0"

#: public name -> module that defines it
_EXPORTS = {
    "load_trained": "polmp.training.trained",
    "load_model": "polmp.training.trained",
    "TrainedModel": "polmp.training.trained",
    "neighbor_list_energy": "polmp.md.jaxmd",
    "run_md": "polmp.md.simulate",
    "long_range": "polmp.electrostatics",
    "born_charges": "polmp.observables.polarization",
    "polarization_current": "polmp.observables.polarization",
    "system_polarizability": "polmp.observables.polarization",
    "ir_spectrum": "polmp.observables.spectra",
    "raman_spectra": "polmp.observables.spectra",
    "Calculator": "polmp.ase",
}
_ALIASES = {"load_model": "load_trained"}

__all__ = ["units", *_EXPORTS]


def __getattr__(name):
    if name == "units":
        return importlib.import_module("polmp.units")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'polmp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _ALIASES.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
