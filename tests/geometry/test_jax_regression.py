"""Regression guard for jax-ml/jax#39103 (jax/jaxlib 0.10.2, CPU).

On that release ``jit(vmap(f))`` silently returns wrong rows once the mapped axis
grows past ~16-32k elements; jax-md's Sparse and OrderedSparse neighbour lists,
which vmap the metric over all candidate pairs, then miss pairs with no error.
polmp pins a jax without the bug (pyproject.toml); this test fails loudly if a jax
with it is ever installed.  It builds a periodic soft-sphere system whose neighbour
arrays exceed ~40k elements and compares energies from every jax-md format, and
the raw ``jit(vmap(...))`` distances, against a numpy/vesin reference in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import partition, space

from polmp.geometry.neighbors import neighbor_edges, neighbor_list, neighbor_pairs

pytestmark = pytest.mark.filterwarnings(
    "ignore:scatter inputs have incompatible types:FutureWarning"
)

NUM_ATOMS = 4000
DENSITY = 0.1  # atoms / A^3 (liquid water's atom density)
CUTOFF = 4.2  # A: ~31 neighbours per atom -> ~124k directed pairs


def _soft_sphere(r):
    """Pair energy (1 - r/rc)^2 for r < rc, eV (smooth enough; any f works)."""
    return jnp.where(r < CUTOFF, (1.0 - r / CUTOFF) ** 2, 0.0)


@pytest.fixture(scope="module")
def system():
    rng = np.random.default_rng(39103)
    length = (NUM_ATOMS / DENSITY) ** (1 / 3)
    # mildly triclinic, upper triangular in jax-md's column form
    cell = np.array(
        [[length, 0.0, 0.0], [0.1 * length, length, 0.0], [0.0, -0.05 * length, length]]
    )
    fractional = rng.uniform(size=(NUM_ATOMS, 3))
    positions = fractional @ cell
    i, j, shifts = neighbor_pairs(positions, cell, True, CUTOFF)
    r = np.linalg.norm(positions[j] - positions[i] + shifts @ cell, axis=1)
    reference = 0.5 * np.sum(np.where(r < CUTOFF, (1 - r / CUTOFF) ** 2, 0.0))
    return cell, fractional, positions, (i, j, shifts, r), reference


def test_jit_vmap_large_axis_is_correct(x64, system):
    cell, _, positions, (i, j, shifts, r_ref), _ = system
    assert len(i) > 100_000  # well past the 16-32k rows where the bug starts

    def distance(ri, rj, shift):
        return jnp.linalg.norm(rj - ri + shift @ jnp.asarray(cell))

    r = jax.jit(jax.vmap(distance))(
        jnp.asarray(positions[i]),
        jnp.asarray(positions[j]),
        jnp.asarray(shifts, jnp.float64),
    )
    np.testing.assert_allclose(np.asarray(r), r_ref, rtol=1e-12)


@pytest.mark.parametrize("fmt", ["Sparse", "OrderedSparse", "Dense"])
def test_jax_md_formats_match_vesin(x64, system, fmt):
    cell, fractional, _, (i, _, _, _), reference = system
    box = jnp.asarray(cell.T)  # jax-md: lattice vectors are the box columns
    displacement, _ = space.periodic_general(box, fractional_coordinates=True)
    format_ = getattr(partition.NeighborListFormat, fmt)
    fns = partition.neighbor_list(
        displacement, box, CUTOFF, fractional_coordinates=True, format=format_
    )
    nbrs = fns.allocate(jnp.asarray(fractional))
    assert not nbrs.did_buffer_overflow
    idx = nbrs.idx
    if fmt == "Dense":
        senders = jnp.broadcast_to(jnp.arange(NUM_ATOMS)[:, None], idx.shape).ravel()
        receivers = idx.ravel()
    else:
        receivers, senders = idx[0], idx[1]
    assert receivers.size > 40_000
    mask = receivers < NUM_ATOMS
    clipped = jnp.minimum(receivers, NUM_ATOMS - 1)

    @jax.jit
    def energy(R):
        dR = jax.vmap(displacement)(R[clipped], R[senders])
        r = jnp.sqrt(jnp.sum(dR**2, axis=-1))
        return jnp.sum(jnp.where(mask, _soft_sphere(r), 0.0))

    pairs = int(jnp.sum(mask))
    value = float(energy(jnp.asarray(fractional)))
    if fmt == "OrderedSparse":  # half list: each pair once
        assert pairs == len(i) // 2
    else:
        assert pairs == len(i)
        value *= 0.5
    assert value == pytest.approx(reference, rel=1e-10)


def test_polmp_device_list_matches_vesin(x64, system):
    cell, _, positions, (i, _, _, _), reference = system
    fns = neighbor_list(CUTOFF, cell)
    nbrs = fns.allocate(positions)
    idx_i, idx_j, shifts, mask = neighbor_edges(
        nbrs, jnp.asarray(positions), jnp.asarray(cell)
    )
    assert int(mask.sum()) == len(i)
    vectors = (
        jnp.asarray(positions)[jnp.minimum(idx_j, NUM_ATOMS - 1)]
        - jnp.asarray(positions)[jnp.minimum(idx_i, NUM_ATOMS - 1)]
        + shifts @ jnp.asarray(cell)
    )
    r = jnp.linalg.norm(jnp.where(mask[:, None], vectors, 1.0), axis=-1)
    value = 0.5 * float(jnp.sum(jnp.where(mask, _soft_sphere(r), 0.0)))
    assert value == pytest.approx(reference, rel=1e-10)
