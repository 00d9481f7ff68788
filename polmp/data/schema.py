"""A labelled frame: a structure plus whatever reference labels it carries (host side).

``Frame`` is a plain frozen dataclass of numpy arrays in polmp's internal units
(eV, A, e).  Readers in ``polmp.data.io`` produce frames; ``polmp.data.batching``
turns lists of frames into padded ``Graph`` batches.  Missing labels are ``None``.

Fields (N atoms):
    positions      (N, 3) A
    numbers        (N,)   atomic numbers (int)
    cell           (3, 3) A, rows are lattice vectors, or None for a non-periodic frame
    pbc            (3,)   bool
    energy         ()     eV, total energy
    forces         (N, 3) eV/A
    stress         (3, 3) eV/A^3, ASE sign convention (positive = tensile), or None
    total_charge   ()     e (0 unless the source says otherwise)
    dipole         (3,)   e*A
    charges        (N,)   e, per-atom reference charges (e.g. Hirshfeld), if present
    bec            (N, 3, 3) e, Born effective charges Z*_{i,ab} = dP_a/dr_{i,b}
    polarizability (3, 3) A^3
    quadrupole     (3, 3) e*A^2, second moment of the charge density
                   sum_i q_i r_i r_i^T (not traceless) about the file's origin
    info           dict of any other scalar header entries (strings, numbers)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Frame:
    """One labelled structure in internal units (see module docstring)."""

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None = None
    pbc: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    total_charge: float = 0.0
    dipole: np.ndarray | None = None
    charges: np.ndarray | None = None
    bec: np.ndarray | None = None
    polarizability: np.ndarray | None = None
    quadrupole: np.ndarray | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def periodic(self) -> bool:
        return bool(np.any(self.pbc))

    def __repr__(self) -> str:
        """One line: formula, atoms, cell, which labels are present (not the arrays)."""
        from collections import Counter

        from ase.data import chemical_symbols

        counts = Counter(int(z) for z in np.asarray(self.numbers).ravel())
        formula = "".join(
            f"{chemical_symbols[z] if 0 <= z < len(chemical_symbols) else z}"
            f"{n if n > 1 else ''}"
            for z, n in sorted(counts.items())
        )
        if self.cell is not None and self.periodic:
            lengths = np.linalg.norm(np.asarray(self.cell, float), axis=1)
            pbc = "".join("T" if p else "F" for p in np.asarray(self.pbc, bool))
            where = "cell " + "x".join(f"{x:.4g}" for x in lengths) + f" A, pbc {pbc}"
        else:
            where = "no cell"
        labels = [
            name
            for name in (
                "energy", "forces", "stress", "dipole", "charges", "bec",
                "polarizability", "quadrupole",
            )
            if getattr(self, name) is not None
        ]  # fmt: skip
        energy = "" if self.energy is None else f", energy={float(self.energy):.6g} eV"
        charge = (
            f", total_charge={float(self.total_charge):g}" if self.total_charge else ""
        )
        info = f", {len(self.info)} info entries" if self.info else ""
        return (
            f"Frame({formula}, {self.num_atoms} atoms, {where}{energy}{charge}, "
            f"labels {labels or 'none'}{info})"
        )
