"""Molecular dynamics: the jax-md front door (``neighbor_list_energy``), the chunked
driver and ``polmp md``'s ``run_md``."""

from polmp.md.jaxmd import bind, neighbor_list_energy

__all__ = ["bind", "neighbor_list_energy"]
