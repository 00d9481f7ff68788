"""Random multipoles and response parameters for the electrostatics and model tests."""

from __future__ import annotations

import numpy as np


def random_multipoles(
    rng,
    n,
    cell=None,
    *,
    spread=2.0,
    neutral=True,
    traceless=True,
    mu_scale=0.3,
    theta_scale=0.2,
):
    """positions (n, 3) A, q (n,) e, mu (n, 3) e A, theta (n, 3, 3) e A^2 (symmetric).

    Positions are uniform in ``cell`` (rows are lattice vectors), or normal with
    standard deviation ``spread`` (A) for ``cell=None`` (a cluster).
    """
    if cell is None:
        positions = rng.normal(size=(n, 3)) * spread
    else:
        positions = rng.uniform(0.0, 1.0, (n, 3)) @ np.asarray(cell)
    q = rng.normal(size=n)
    if neutral:
        q -= q.mean()
    mu = mu_scale * rng.normal(size=(n, 3))
    theta = theta_scale * rng.normal(size=(n, 3, 3))
    theta = theta + theta.transpose(0, 2, 1)
    if traceless:
        theta -= np.trace(theta, axis1=1, axis2=2)[:, None, None] * np.eye(3) / 3.0
    return positions, q, mu, theta


def random_psd(rng, n, scale=0.05, shift=0.1):
    """n symmetric positive-definite 3x3 tensors scale (A A^T + shift I) (alpha)."""
    a = rng.normal(size=(n, 3, 3))
    return scale * (np.einsum("nab,ncb->nac", a, a) + shift * np.eye(3))


def random_system(rng, n, cell):
    """positions, q (neutral), mu, theta (traceless), kappa (n,), alpha (n, 3, 3)."""
    positions, q, mu, theta = random_multipoles(rng, n, cell)
    return positions, q, mu, theta, rng.uniform(0, 0.05, n), random_psd(rng, n, 0.02)
