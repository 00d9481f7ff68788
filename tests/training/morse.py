"""Tiny labelled data for training tests: small H/O molecules with a Morse potential.

E = sum_s n_s e_s + sum_{i<j} D [(1 - exp(-a (r_ij - r0)))^2 - 1], forces analytic;
``REFERENCE`` are the per-species offsets e_s (eV) that the least-squares fit should
recover.  Non-periodic frames, 3-6 atoms; optionally periodic frames with a stress.
"""

from __future__ import annotations

import numpy as np

from polmp.data.schema import Frame
from polmp.models import ModelConfig

REFERENCE = {1: -13.6, 8: -432.0}
D, A, R0 = 0.2, 1.5, 1.1


def morse(positions, numbers, cell=None):
    """(energy eV, forces eV/A, stress eV/A^3 or None); minimum image if ``cell``."""
    n = len(numbers)
    energy = sum(REFERENCE[int(z)] for z in numbers)
    forces = np.zeros((n, 3))
    virial = np.zeros((3, 3))
    for i in range(n):
        for j in range(i + 1, n):
            d = positions[j] - positions[i]
            if cell is not None:
                frac = d @ np.linalg.inv(cell)
                d = (frac - np.round(frac)) @ cell
            r = np.linalg.norm(d)
            x = np.exp(-A * (r - R0))
            energy += D * ((1 - x) ** 2 - 1)
            dE_dr = 2 * D * (1 - x) * A * x
            g = dE_dr * d / r  # dE/d(r_j)
            forces[j] -= g
            forces[i] += g
            virial += np.outer(d, g)
    stress = None if cell is None else virial / abs(np.linalg.det(cell))
    return energy, forces, stress


def molecules(count=8, seed=0, min_atoms=3, max_atoms=6, species=(1, 8)):
    """``count`` random non-periodic molecules with Morse labels."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        n = int(rng.integers(min_atoms, max_atoms + 1))
        numbers = rng.choice(species, size=n)
        numbers[0] = species[-1]
        pos = [np.zeros(3)]
        while len(pos) < n:
            trial = pos[int(rng.integers(len(pos)))] + rng.normal(size=3) * 0.7
            if min(np.linalg.norm(trial - p) for p in pos) > 0.8:
                pos.append(trial)
        pos = np.array(pos)
        e, f, _ = morse(pos, numbers)
        frames.append(
            Frame(positions=pos, numbers=numbers.astype(np.int32), energy=e, forces=f)
        )
    return frames


def tiny_model(**overrides) -> ModelConfig:
    """l_max 1, 8 channels, 1 layer, variant "sr"."""
    kwargs = dict(
        species=(1, 8),
        cutoff_A=3.0,
        l_max=1,
        num_channels=8,
        num_layers=1,
        num_basis=4,
        radial_mlp=(8,),
        readout_hidden=8,
        avg_num_neighbors=3.0,
        variant="sr",
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def tiny_latent_model(**overrides) -> ModelConfig:
    """``tiny_model`` with charges, dipoles and induced terms of visible size.

    Variant "q+mu+dq+dmu", 4 channels, cutoff 3.5 A; the output scales are raised so
    that the latents (and so Born charges, Pdot, E_lr) are far from zero untrained.
    """
    kwargs = dict(
        cutoff_A=3.5,
        num_channels=4,
        avg_num_neighbors=8.0,
        variant="q+mu+dq+dmu",
        q_scale=0.5,
        mu_scale=0.2,
        kappa_scale=0.05,
        alpha_scale=0.05,
    )
    kwargs.update(overrides)
    return tiny_model(**kwargs)
