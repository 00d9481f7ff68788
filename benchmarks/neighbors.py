"""Neighbour-list build times: host list (vesin) vs ASE, and the jax-md device list.

Liquid water (the first 192-atom frame of the RPBE-D3 test set, or the embedded
water box when ../shared/data is absent) replicated 1x1x1 .. 4x4x4, cutoff 5 A.
For each size the table gives the best-of-k wall time of

* ``polmp.geometry.neighbors.neighbor_pairs`` (vesin, full list with shifts),
* ``ase.neighborlist.neighbor_list("ijS")`` (the peer, same run, same output),
* the jax-md device list through ``polmp.geometry.neighbors.neighbor_list``:
  ``allocate`` (host, after one warm-up call so that compilation is excluded) and
  the jitted ``update`` (after compilation), in float32 (polmp's default dtype).

Run:  python benchmarks/neighbors.py [--sizes 1 2 3 4] [--cutoff 5.0]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

import ase
import ase.io
import jax
from ase.neighborlist import neighbor_list as ase_neighbor_list

from polmp.geometry.neighbors import neighbor_list, neighbor_pairs

SHARED = pathlib.Path(
    os.environ.get(
        "POLMP_SHARED_DATA",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data",
    )
)


def water_frame() -> ase.Atoms:
    path = SHARED / "lesfit_water_rpbe_d3" / "test-H2O_RPBE-D3.xyz"
    if path.exists():
        return ase.io.read(path, index=0)
    from polmp.data.water import water_box

    frame = water_box(4)
    return ase.Atoms(
        numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True
    )


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--cutoff", type=float, default=5.0)
    args = parser.parse_args()

    base = water_frame()
    print(
        f"# machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; "
        f"jax {jax.__version__} ({jax.default_backend()}), ase {ase.__version__}"
    )
    print(f"# cutoff {args.cutoff} A; times in ms (best of k); device list in float32")
    header = (
        f"{'N':>6} {'pairs':>9} {'vesin':>9} {'ase':>9} {'ase/vesin':>9} "
        f"{'jaxmd alloc':>11} {'jaxmd update':>12} {'update/vesin':>12}"
    )
    print(header)
    for n in args.sizes:
        row = measure(base.repeat((n, n, n)), args.cutoff)
        print(
            f"{row['N']:>6} {row['pairs']:>9} {row['vesin']:>9.2f} {row['ase']:>9.1f} "
            f"{row['ase'] / row['vesin']:>9.1f} {row['alloc']:>11.1f} "
            f"{row['update']:>12.1f} {row['update'] / row['vesin']:>12.2f}"
            f"{row['note']}",
            flush=True,
        )


def measure(atoms, cutoff):
    """Times (ms) of the three builders for one structure."""
    positions, cell = atoms.positions, atoms.cell.array
    repeats = 5 if len(atoms) < 3000 else 2
    i, _, _ = neighbor_pairs(positions, cell, True, cutoff)
    t_vesin = best_time(lambda: neighbor_pairs(positions, cell, True, cutoff), repeats)
    t_ase = best_time(
        lambda: ase_neighbor_list("ijS", atoms, cutoff), max(1, repeats - 3)
    )

    fns = neighbor_list(cutoff, cell)
    nbrs = fns.allocate(positions)  # warm-up: compiles the jax-md pieces
    jax.block_until_ready(nbrs.idx)
    t_alloc = best_time(
        lambda: jax.block_until_ready(fns.allocate(positions).idx), repeats
    )
    update = jax.jit(fns.update)
    device_positions = jax.numpy.asarray(positions, jax.numpy.float32)
    jax.block_until_ready(update(device_positions, nbrs).idx)  # compile
    t_update = best_time(
        lambda: jax.block_until_ready(update(device_positions, nbrs).idx), repeats
    )
    assert not nbrs.did_buffer_overflow
    device_pairs = int((nbrs.idx[0] < len(atoms)).sum())
    note = "" if device_pairs == len(i) else f"  (device pairs {device_pairs})"
    return {
        "N": len(atoms),
        "pairs": len(i),
        "vesin": 1e3 * t_vesin,
        "ase": 1e3 * t_ase,
        "alloc": 1e3 * t_alloc,
        "update": 1e3 * t_update,
        "note": note,
    }


if __name__ == "__main__":
    main()
