"""The one shared equivariance helper of the test suite.

``assert_equivariant(fn, positions, kinds, rng)`` checks that

    fn(positions @ Q^T) == transform(fn(positions), Q)

for a random rotation Q = R and a random rotation with inversion Q = -R, drawn in
float64 and re-orthonormalised (``e3nn.rand_matrix`` returns float32 even under x64,
which limits checks to ~1e-7).  ``fn`` returns a dict name -> array; ``kinds`` says
how each output transforms:

    * an e3nn irreps string ("0e", "1o", "2e", "3x0e + 1o"): the last axis rotates by
      the Wigner matrix D(Q) of those irreps (parity included, so "1o" flips under
      inversion and "1e" does not);
    * "cartesian2": a (..., 3, 3) Cartesian rank-2 tensor, T -> Q T Q^T.

``fn`` receives the transformed positions and the matrix Q (to rotate a cell as
``cell @ Q.T``, rows being lattice vectors).
"""

from __future__ import annotations

import e3nn_jax as e3nn
import numpy as np


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A random proper rotation (det +1), float64, orthonormal to machine precision."""
    a = rng.normal(size=(3, 3))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # Haar measure
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    # One more Gram-Schmidt pass: the result is orthonormal to ~1e-16.
    q, _ = np.linalg.qr(q)
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    assert np.allclose(q @ q.T, np.eye(3), atol=1e-14)
    return q


def transform_output(value, kind: str, q: np.ndarray) -> np.ndarray:
    """Apply the O(3) element ``q`` to an output of the given kind."""
    value = np.asarray(value, dtype=np.float64)
    if kind == "cartesian2":
        assert value.shape[-2:] == (3, 3), value.shape
        return np.einsum("ab,...bc,dc->...ad", q, value, q)
    irreps = e3nn.Irreps(kind)
    assert value.shape[-1] == irreps.dim, (value.shape, irreps)
    d = np.asarray(irreps.D_from_matrix(q), dtype=np.float64)
    return np.einsum("ij,...j->...i", d, value)


def assert_equivariant(
    fn,
    positions,
    kinds: dict[str, str],
    rng: np.random.Generator,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    inversion: bool = True,
):
    """Assert that every output of ``fn`` transforms as ``kinds`` says.

    Args:
        fn: ``fn(positions, q) -> dict[name, array]``.
        positions: (N, 3) float64 positions.
        kinds: name -> irreps string or "cartesian2"; outputs not named are ignored.
        rng: numpy Generator for the random rotation.
        rtol, atol: tolerances (float64 defaults).
        inversion: also check Q = -R (parity).

    Raises:
        AssertionError naming the output and the transformation that failed.
    """
    positions = np.asarray(positions, dtype=np.float64)
    reference = fn(positions, np.eye(3))
    rotation = random_rotation(rng)
    matrices = {"rotation": rotation}
    if inversion:
        matrices["rotation+inversion"] = -rotation
    for label, q in matrices.items():
        moved = fn(positions @ q.T, q)
        for name, kind in kinds.items():
            expected = transform_output(reference[name], kind, q)
            got = np.asarray(moved[name], dtype=np.float64)
            np.testing.assert_allclose(
                got,
                expected,
                rtol=rtol,
                atol=atol,
                err_msg=f"output {name!r} ({kind}) is not equivariant under {label}",
            )
