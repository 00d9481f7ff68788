"""polmp: machine-learning interatomic potentials with learned polarizable atomic multipoles.

Curated re-exports only; importing polmp has no side effects and never touches
``jax.config`` (the CLI sets precision; tests and notebooks set it themselves).
"""

__version__ = "0.1.0.dev0"

from polmp import units  # noqa: E402,F401
