"""A water box polmp builds itself (host side): the embedded default structure.

No external data is needed: molecules with the experimental gas-phase geometry
(r_OH = 0.9572 A, HOH = 104.52 deg) are placed on a simple cubic lattice at liquid
density with random orientations from a seeded generator, so the result is the same
on every machine.  It is a starting structure for demos and MD equilibration, not an
equilibrated liquid.
"""

from __future__ import annotations

import math

import numpy as np

from polmp.data.schema import Frame

#: Mass of one water molecule in g (18.01528 g/mol / Avogadro).
_WATER_MASS_G = 18.01528 / 6.02214076e23
_R_OH = 0.9572  # A
_ANGLE_HOH = math.radians(104.52)
#: Smallest accepted intermolecular distance when placing molecules, A.
_MIN_CONTACT = 1.6


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def water_box(
    molecules_per_side: int = 4, density_g_cm3: float = 0.997, seed: int = 0
) -> Frame:
    """Periodic cubic box of n^3 water molecules at the given density.  Not jittable.

    Args:
        molecules_per_side: n; the box holds n^3 molecules (4 -> 64 H2O, 192 atoms).
        density_g_cm3: mass density in g/cm^3 (sets the cubic box length).
        seed: seed of the orientation generator.

    Returns:
        A periodic ``Frame`` (atoms ordered O, H, H per molecule; no labels).
    """
    if molecules_per_side < 1:
        raise ValueError(f"molecules_per_side must be >= 1, got {molecules_per_side}")
    if not density_g_cm3 > 0:
        raise ValueError(f"density must be positive, got {density_g_cm3}")
    n = molecules_per_side
    length = (n**3 * _WATER_MASS_G / density_g_cm3) ** (1.0 / 3.0) * 1e8  # cm -> A
    half = 0.5 * _ANGLE_HOH
    # Molecule frame: O at the origin, H atoms in the xz plane.
    local = np.array(
        [
            [0.0, 0.0, 0.0],
            [_R_OH * math.sin(half), 0.0, _R_OH * math.cos(half)],
            [-_R_OH * math.sin(half), 0.0, _R_OH * math.cos(half)],
        ]
    )
    rng = np.random.default_rng(seed)
    spacing = length / n
    placed = np.zeros((0, 3))
    for ix in range(n):
        for iy in range(n):
            for iz in range(n):
                centre = (np.array([ix, iy, iz]) + 0.5) * spacing
                # Re-draw the orientation until no atom comes closer than
                # _MIN_CONTACT to an already placed molecule (minimum image).
                for _ in range(200):
                    molecule = centre + local @ _random_rotation(rng).T
                    if len(placed) == 0:
                        break
                    d = molecule[:, None, :] - placed[None, :, :]
                    d -= length * np.round(d / length)
                    if np.sqrt((d**2).sum(-1)).min() > _MIN_CONTACT:
                        break
                placed = np.concatenate([placed, molecule])
    positions = placed
    numbers = np.tile([8, 1, 1], n**3)
    return Frame(
        positions=positions,
        numbers=numbers,
        cell=np.eye(3) * length,
        pbc=np.ones(3, bool),
        info={
            "source": f"polmp.data.water.water_box(n={n}, density={density_g_cm3}, seed={seed})"
        },
    )
