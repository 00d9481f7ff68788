"""Long-range electrostatics of latent multipoles (docs/method.md).

Public entry points (see ``docs/electrostatics.md``):

* :class:`Solver` - the one long-range kernel: prepared on the host
  (:func:`prepare_solver`, :func:`prepare_ewald`, :func:`prepare_pme_solver`,
  :func:`prepare_direct`), pure jittable functions of positions, cell and latents,
  opt-in ``checkify`` value checks, a cell range for NPT (``max_cell_scale``).
* :func:`plan_solver` - the one rule that chooses method, PME order, mesh and k-sets
  (cost and memory); :func:`choose_method` its method.
* :func:`long_range` - one host call: E_lr, phi, field, dq, dmu (Ewald, PME, direct, or
  the Ewald ``"split"`` with the real-space erfc sum, for point multipoles).

Lower-level modules: ``multipoles`` (structure factor, self energy, channels),
``kgrid`` (host k-vector sets), ``ewald`` (reciprocal sum), ``pme`` (smooth PME),
``direct`` (non-periodic sum), ``realspace`` (erfc split), ``response`` (induced
moments, self-consistent reference, slab correction).
"""

from polmp.electrostatics.api import (  # noqa: F401
    FLOAT32_MIN_ACCURACY,
    LongRange,
    Solver,
    SolverPlan,
    choose_method,
    long_range,
    plan_solver,
    pme_order_for,
    prepare_direct,
    prepare_ewald,
    prepare_pme_solver,
    prepare_solver,
)
