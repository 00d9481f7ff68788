"""Label Na8Cl8 and Na9Cl8+ clusters with GFN2-xTB (tblite) for ``embedded:nacl-gfn2``.

The classic non-local charge-transfer benchmark (Ko et al., Nat. Commun. 12, 398 (2021);
the LES and polarizable-multipole papers): clusters near the rock-salt geometry whose
total charge is 0 or +1.  Structures are built here from ideal rock-salt blocks
(no outside structure source), relaxed once with GFN2-xTB, then distorted:

* ``cuboid``       Na8Cl8, a 4 x 2 x 2 rock-salt cuboid, thermally distorted (Q = 0).
* ``block``        Na9Cl8+, a 3 x 3 x 2 block (Na at the corners) with one Cl of the
                   long edge removed, thermally distorted (Q = +1).
* ``block_minus``  Na8Cl8, the same distorted ``block`` geometry with its corner Na
                   farthest from the vacancy removed (Q = 0): for every atom but the
                   removed one the local geometry is identical to a ``block`` frame, so
                   the energies and forces differ only through the charge state.
* ``adatom``       Na9Cl8+, a thermally distorted ``cuboid`` plus one extra Na at a
                   distance d = 2.6-10 A from the nearest cluster atom, on one of
                   several sites (above a face, an edge, a corner, along the long axis):
                   the extra Na carries the positive charge (Na+ next to a neutral
                   cluster) at a distance the short-range cutoff may or may not reach.

Thermal distortion: every coordinate displaced by N(0, s^2) with s drawn uniformly from
0.02-0.15 A, and the cluster scaled isotropically by a factor from 0.97-1.03.
Labels: energy (eV), forces (eV/A), total charge (e), and the dipole (e*A, about the
origin of the coordinates) for the neutral frames only (the dipole of a charged frame
depends on the origin).  Every frame records method, tblite version, all settings and
its kind, seed and distortion in its header; the adatom frames also
``extra_na_index``, ``extra_na_site`` and ``extra_na_distance_A``.

Frames whose SCF does not converge (a few adatom frames with the extra Na far away,
where Na+ and a neutral Na are nearly degenerate) are skipped and listed in
``WORK/failed.txt``; the settings are never changed per frame.

Usage (one core, low priority; a restart skips the frames already in the partial file)::

    OMP_NUM_THREADS=1 nice -n 10 python experiments/data/label_nacl_gfn2.py \\
        --per-kind 100 --work /tmp/polmp_nacl_work --out polmp/data/embedded
    python experiments/data/label_nacl_gfn2.py --time-one    # seconds per frame
    python experiments/data/label_nacl_gfn2.py --pack-only --work /tmp/polmp_nacl_work
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import lzma  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_water_gfn2 import SETTINGS, tblite_version  # noqa: E402

NA, CL = 11, 17
#: Na-Cl nearest-neighbour distance of the ideal starting blocks, A (relaxed after).
SPACING = 2.70
KINDS = ("cuboid", "block", "block_minus", "adatom")
CHARGE = {"cuboid": 0, "block": 1, "block_minus": 0, "adatom": 1}
SIGMA_RANGE = (0.02, 0.15)  # A, thermal displacement per coordinate
SCALE_RANGE = (0.97, 1.03)
ADATOM_DISTANCE = (2.6, 10.0)  # A, to the nearest cluster atom
SEED = 20261204
OUT_NAME = "nacl_gfn2.extxyz"


# ----------------------------------------------------------------- calculations


def singlepoint(numbers, positions, charge: int):
    """Non-periodic GFN2-xTB single point: (energy eV, forces eV/A, dipole e*A).

    Closed shell (uhf = 0) with ``SETTINGS`` (tblite's ASE calculator defaults).
    """
    from ase.units import Bohr, Hartree, kB
    from tblite.interface import Calculator

    calc = Calculator(
        SETTINGS["method"],
        np.asarray(numbers),
        np.asarray(positions, float) / Bohr,
        float(charge),
        0,
    )
    calc.set("accuracy", SETTINGS["accuracy"])
    calc.set("temperature", SETTINGS["electronic_temperature"] * kB / Hartree)
    calc.set("max-iter", SETTINGS["max_iterations"])
    calc.set("mixer", SETTINGS["mixer"])
    calc.set("guess", {"sad": 0, "eeq": 1, "eeqbc": 2}[SETTINGS["guess"]])
    calc.set("mixer-damping", SETTINGS["mixer_damping"])
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    energy = float(res["energy"]) * Hartree
    forces = -np.asarray(res["gradient"]) * Hartree / Bohr
    dipole = np.asarray(res["dipole"]) * Bohr
    return energy, forces, dipole


def header_info(kind: str) -> dict:
    return {
        "method": SETTINGS["method"],
        "code": "tblite",
        "tblite_version": tblite_version(),
        "accuracy": SETTINGS["accuracy"],
        "electronic_temperature_K": SETTINGS["electronic_temperature"],
        "max_iterations": SETTINGS["max_iterations"],
        "mixer": SETTINGS["mixer"],
        "mixer_damping": SETTINGS["mixer_damping"],
        "initial_guess": SETTINGS["guess"],
        "total_charge_setting": CHARGE[kind],
        "unpaired_electrons": 0,
        "solvation": "none",
        "units": "energy eV, forces eV/A, dipole e*A (neutral frames only)",
        "structure_source": "built by experiments/data/label_nacl_gfn2.py",
        "kind": kind,
    }


# ----------------------------------------------------------------- structures


def rock_salt_block(shape, corner=NA):
    """(numbers, positions) of an ideal rock-salt block of shape (nx, ny, nz) sites."""
    grid = np.stack(
        np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1
    ).reshape(-1, 3)
    parity = grid.sum(1) % 2
    numbers = np.where(parity == 0, corner, NA + CL - corner)
    positions = SPACING * (grid - (np.asarray(shape) - 1) / 2)
    return numbers.astype(np.int64), positions.astype(float)


def base_cuboid():
    """Na8Cl8, 4 x 2 x 2 sites."""
    return rock_salt_block((4, 2, 2))


def base_block():
    """Na9Cl8+: 3 x 3 x 2 sites, Na at (0,0,0), minus the Cl at edge site (1, 0, 0).

    Returns (numbers, positions, index of the corner Na farthest from the vacancy).
    """
    numbers, positions = rock_salt_block((3, 3, 2))
    vacancy = SPACING * (np.array([1, 0, 0]) - np.array([1, 1, 0.5]))
    keep = np.linalg.norm(positions - vacancy, axis=1) > 1e-6
    numbers, positions = numbers[keep], positions[keep]
    assert (numbers == NA).sum() == 9 and (numbers == CL).sum() == 8
    d = np.linalg.norm(positions - vacancy, axis=1)
    far_na = int(np.argmax(np.where(numbers == NA, d, -1)))
    return numbers, positions, far_na


def relax(numbers, positions, charge, fmax=0.02, steps=200):
    """GFN2-xTB local minimum (ASE BFGS on this module's single point)."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    class _GFN2(Calculator):
        implemented_properties = ("energy", "forces")

        def calculate(self, atoms=None, properties=("energy",), changes=all_changes):
            super().calculate(atoms, properties, changes)
            e, f, _ = singlepoint(self.atoms.numbers, self.atoms.positions, charge)
            self.results = {"energy": e, "forces": f}

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = _GFN2()
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return np.array(atoms.positions)


def distort(positions, rng):
    """Thermal distortion: isotropic scale about the centroid + Gaussian noise."""
    sigma = rng.uniform(*SIGMA_RANGE)
    scale = rng.uniform(*SCALE_RANGE)
    centre = positions.mean(0)
    out = centre + scale * (positions - centre)
    out = out + rng.normal(scale=sigma, size=positions.shape)
    return out, {"distortion_sigma_A": round(sigma, 5), "scale": round(scale, 5)}


#: adatom sites: outward directions from the cuboid centre (long axis is x)
ADATOM_SITES = {
    "face_z": (0.0, 0.0, 1.0),
    "face_y": (0.0, 1.0, 0.0),
    "end_x": (1.0, 0.0, 0.0),
    "edge_yz": (0.0, 1.0, 1.0),
    "corner": (1.0, 1.0, 1.0),
}


def place_adatom(numbers, positions, site: str, distance: float):
    """Append a Na at ``distance`` A from the nearest atom, along the site direction.

    The Na starts at the centroid and moves outward along the (unit) site direction,
    offset sideways by half a spacing so that it does not sit on a lattice line; the
    position is then scaled along that ray (bisection) until the nearest-atom distance
    equals ``distance``.
    """
    direction = np.asarray(ADATOM_SITES[site], float)
    direction /= np.linalg.norm(direction)
    centre = positions.mean(0) + 0.25 * SPACING * np.roll(direction, 1)

    def nearest(t):
        return np.linalg.norm(positions - (centre + t * direction), axis=1).min()

    lo, hi = 0.0, 50.0
    for _ in range(100):  # nearest(t) grows once t is outside the cluster
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if nearest(mid) < distance else (lo, mid)
    new = centre + hi * direction
    return np.append(numbers, NA), np.vstack([positions, new]), float(nearest(hi))


class Builder:
    """Relaxed base geometries (computed once) and the per-frame recipes."""

    def __init__(self):
        n, p = base_cuboid()
        self.cuboid = (n, relax(n, p, 0))
        n, p, far = base_block()
        self.block = (n, relax(n, p, 1), far)

    def frame_geometry(self, kind: str, k: int, seed: int):
        """(numbers, positions, info) of frame k of kind; depends only on (seed, k)."""
        rng = np.random.default_rng([seed, KINDS.index(kind), k])
        info = {"frame_id": k, "seed": seed}
        if kind == "cuboid":
            numbers, base = self.cuboid
            positions, extra = distort(base, rng)
        elif kind in ("block", "block_minus"):
            numbers, base, far = self.block
            # block_minus frame k has the geometry of block frame k minus one Na.
            rng = np.random.default_rng([seed, KINDS.index("block"), k])
            positions, extra = distort(base, rng)
            if kind == "block_minus":
                keep = np.arange(len(numbers)) != far
                numbers, positions = numbers[keep], positions[keep]
                info["removed_na_of_block_frame"] = k
        else:
            numbers, base = self.cuboid
            positions, extra = distort(base, rng)
            site = list(ADATOM_SITES)[k % len(ADATOM_SITES)]
            # distances spread evenly over the range, in a shuffled-but-fixed order
            distance = ADATOM_DISTANCE[0] + (
                ADATOM_DISTANCE[1] - ADATOM_DISTANCE[0]
            ) * ((k * 0.618034) % 1.0)
            numbers, positions, d = place_adatom(numbers, positions, site, distance)
            extra.update(
                extra_na_index=len(numbers) - 1,
                extra_na_site=site,
                extra_na_distance_A=round(d, 4),
            )
        info.update(extra)
        return numbers, positions, info


def label(builder: Builder, kind: str, k: int, seed: int):
    """A labelled ``Frame`` of kind ``kind``, number ``k``."""
    from polmp.data.schema import Frame

    numbers, positions, extra = builder.frame_geometry(kind, k, seed)
    energy, forces, dipole = singlepoint(numbers, positions, CHARGE[kind])
    info = header_info(kind)
    info.update(extra)
    return Frame(
        positions=positions,
        numbers=numbers,
        energy=energy,
        forces=forces,
        total_charge=float(CHARGE[kind]),
        dipole=dipole if CHARGE[kind] == 0 else None,
        info=info,
    )


# ----------------------------------------------------------------- driver


def _frame_text(frame) -> str:
    import tempfile

    from polmp.data.io import write_extxyz

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame.extxyz"
        write_extxyz(path, [frame])
        return path.read_text()


def _done(partial: Path) -> set[tuple[str, int]]:
    if not partial.exists():
        return set()
    from polmp.data.io import read_frames

    return {(f.info["kind"], int(f.info["frame_id"])) for f in read_frames(partial)}


def plan(per_kind: int) -> list[tuple[str, int]]:
    """Frames interleaved by kind, so that a partial run covers every kind."""
    return [(kind, k) for k in range(per_kind) for kind in KINDS]


def pack(work: Path, out: Path) -> int:
    """Sort the partial file by (kind, frame_id) into ``OUT/nacl_gfn2.extxyz.xz``."""
    from polmp.data.io import read_frames, write_extxyz

    frames = read_frames(work / "nacl.partial.extxyz")
    frames.sort(key=lambda f: (KINDS.index(f.info["kind"]), int(f.info["frame_id"])))
    tmp = out / OUT_NAME
    write_extxyz(tmp, frames)
    with (
        open(tmp, "rb") as src,
        lzma.open(
            out / (OUT_NAME + ".xz"), "wb", preset=9 | lzma.PRESET_EXTREME
        ) as dst,
    ):
        dst.write(src.read())
    tmp.unlink()
    return len(frames)


def run(args) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    partial = work / "nacl.partial.extxyz"
    failed = work / "failed.txt"
    done = _done(partial)
    if failed.exists():
        done |= {
            (line.split()[0], int(line.split()[1]))
            for line in failed.read_text().splitlines()
        }
    todo = [t for t in plan(args.per_kind) if t not in done]
    print(f"{len(done)} done, {len(todo)} to do", flush=True)
    t0 = time.time()
    builder = Builder()
    print(f"relaxed base geometries in {time.time() - t0:.0f} s", flush=True)
    for count, (kind, k) in enumerate(todo, 1):
        t1 = time.process_time()
        try:
            frame = label(builder, kind, k, args.seed)
        except Exception as err:  # SCF failures: recorded, skipped, not retried
            with open(failed, "a") as handle:
                handle.write(f"{kind} {k} {type(err).__name__}: {err}\n")
            print(f"FAILED {kind} {k}: {err}", flush=True)
            continue
        with open(partial, "a") as handle:
            handle.write(_frame_text(frame))
        print(
            f"{kind} {k}: {frame.num_atoms} atoms, cpu {time.process_time() - t1:.2f} s,"
            f" done {count}/{len(todo)}, wall {time.time() - t0:.0f} s",
            flush=True,
        )
    print(f"packed {pack(work, Path(args.out))} frames", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "polmp/data/embedded"))
    parser.add_argument("--work", default="/tmp/polmp_nacl_work")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--pack-only", action="store_true")
    parser.add_argument("--time-one", action="store_true")
    args = parser.parse_args(argv)
    if args.time_one:
        numbers, positions = base_cuboid()
        t = time.process_time()
        singlepoint(np.append(numbers, NA), np.vstack([positions, [9, 0, 0]]), 1)
        singlepoint(numbers, positions, 0)
        print(f"two single points (17 + 16 atoms): {time.process_time() - t:.2f} s cpu")
        return
    if args.pack_only:
        print(f"packed {pack(Path(args.work), Path(args.out))} frames")
        return
    run(args)


if __name__ == "__main__":
    main()
