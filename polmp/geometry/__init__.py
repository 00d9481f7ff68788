"""Geometry layer: cells, neighbour lists and padded graphs (sits on units only)."""

from polmp.geometry.cell import (  # noqa: F401
    fractional_coordinates,
    reciprocal_cell,
    validate_cell,
    validate_positions,
    volume,
    wrap_positions,
)
