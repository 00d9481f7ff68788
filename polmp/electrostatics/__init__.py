"""Long-range electrostatics of latent multipoles (method.md sections 2-6).

Public entry points (see ``docs/electrostatics.md``):

* :func:`long_range` - one call: E_lr, phi, field, dq, dmu (Ewald, PME or direct).
* :func:`prepare_ewald`, :func:`prepare_pme_solver`, :func:`prepare_direct`,
  :func:`prepare_solver` - host-side preparation returning a :class:`Solver` bundle of
  pure, jittable closures that take the cell as a traced array (stress by autodiff).

Lower-level modules: ``multipoles`` (structure factor, self energy, channels),
``kgrid`` (host k-vector sets), ``ewald`` (reciprocal sum), ``pme`` (smooth PME),
``direct`` (non-periodic sum), ``realspace`` (erfc split), ``response`` (induced
moments, self-consistent reference, slab correction).
"""

from polmp.electrostatics.api import (  # noqa: F401
    LongRange,
    Solver,
    choose_method,
    long_range,
    prepare_direct,
    prepare_ewald,
    prepare_pme_solver,
    prepare_solver,
)
