"""Label water structures with GFN2-xTB (tblite) for polmp's embedded data set.

Structures come from the MIT-licensed bulk-water set of V. Kapil
(``shared/data/kapil_water_bulk_dipole_pol/water_bulk.xyz``: 1000 frames of 32 H2O in a
cubic box).  Two kinds of frames are produced:

* ``bulk``: evenly spaced source frames (96 atoms, periodic), labelled with energy
  (eV), forces (eV/A) and stress (eV/A^3, ASE sign).  Periodic xTB dipoles, fields and
  Born charges are not meaningful and are not labelled.
* ``clusters``: 4-12 whole water molecules nearest to a random centre molecule of a
  random source frame, unwrapped across the periodic boundary (non-periodic), labelled
  with energy (eV), forces (eV/A), dipole (e*A) and Born effective charges
  ``bec[i, a, b] = Z*_{i,ab} = dP_a/dr_{i,b}`` (e), obtained by central finite
  differences of the forces in a uniform electric field:
  ``Z*_{i,ab} = dF_{i,b}/dE_a`` (Maxwell relation: d^2 E/dE_a dr_{i,b} with
  dE/dE_a = -P_a and dE/dr_{i,b} = -F_{i,b}).

xTB polarizabilities are far too small and are not labelled.

Every frame records the method, the tblite version and all settings in its header.
Results are appended to ``WORK/<kind>.partial.extxyz`` (``--work``, default ``--out``)
as they arrive (a restart skips the frames already there), then packed, sorted, into
``OUT/water_gfn2_<kind>.extxyz.xz``.

Usage (2 worker processes, low priority, one OpenMP thread each)::

    OMP_NUM_THREADS=1 nice -n 19 python experiments/data/label_water_gfn2.py \\
        --bulk 300 --clusters 250 --out polmp/data/embedded \\
        --work /tmp/polmp_gfn2_work --workers 2
    python experiments/data/label_water_gfn2.py --out polmp/data/embedded \\
        --work /tmp/polmp_gfn2_work --pack-only
    python experiments/data/label_water_gfn2.py --verify   # BEC checks on one cluster
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import lzma  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO.parent / "shared/data/kapil_water_bulk_dipole_pol/water_bulk.xyz"
SOURCE_NAME = "kapil_water_bulk_dipole_pol/water_bulk.xyz"
SOURCE_ORIGIN = (
    "venkatkapil24/ML-quantum-vibrational-spectroscopy@1a66b3b0 water_bulk.xyz (MIT)"
)

#: GFN2-xTB settings; the values are those of tblite's ASE calculator defaults.
SETTINGS = {
    "method": "GFN2-xTB",
    "accuracy": 1.0,
    "electronic_temperature": 300.0,  # K
    "max_iterations": 250,
    "mixer": "broyden",
    "mixer_damping": 0.4,
    "guess": "sad",
}
#: Field step of the Born-charge finite differences (V/A).
FIELD_STEP = 0.01
#: Range of cluster sizes (molecules).
CLUSTER_SIZES = (4, 12)
SEED = 20260605


def tblite_version() -> str:
    from importlib.metadata import version

    return version("tblite")


def header_info(kind: str) -> dict:
    """Header entries (extxyz info keys) common to every frame of ``kind``."""
    info = {
        "method": SETTINGS["method"],
        "code": "tblite",
        "tblite_version": tblite_version(),
        "accuracy": SETTINGS["accuracy"],
        "electronic_temperature_K": SETTINGS["electronic_temperature"],
        "max_iterations": SETTINGS["max_iterations"],
        "mixer": SETTINGS["mixer"],
        "mixer_damping": SETTINGS["mixer_damping"],
        "initial_guess": SETTINGS["guess"],
        "total_charge_setting": 0,
        "multiplicity": 1,
        "solvation": "none",
        "units": "energy eV, forces eV/A, stress eV/A^3 (ASE sign), dipole e*A, bec e",
        "structure_source": SOURCE_NAME,
        "structure_licence": "MIT",
        "kind": kind,
    }
    if kind == "clusters":
        info["bec_method"] = "central finite difference of forces in a uniform field"
        info["bec_convention"] = "bec[i,a,b]=dF_ib/dE_a=dP_a/dr_ib"
        info["bec_field_step_V_per_A"] = FIELD_STEP
    return info


# ----------------------------------------------------------------- calculations


def _api_calculator(numbers, positions, cell=None, pbc=None, field=None):
    """Low-level tblite calculator with ``SETTINGS`` (the ASE calculator's recipe).

    ``field`` is a uniform electric field in V/A (3,), passed as a plain list of
    floats (tblite 0.8.0's ASE ``electric_field`` option fails on arrays and lists).
    """
    from ase.units import Bohr, Hartree, kB
    from tblite.interface import Calculator

    numbers = np.asarray(numbers)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, float)
    pbc = np.zeros(3, bool) if pbc is None else np.asarray(pbc, bool)
    calc = Calculator(
        SETTINGS["method"],
        numbers,
        np.asarray(positions, float) / Bohr,
        0,
        0,
        cell / Bohr,
        pbc,
    )
    calc.set("accuracy", SETTINGS["accuracy"])
    calc.set("temperature", SETTINGS["electronic_temperature"] * kB / Hartree)
    calc.set("max-iter", SETTINGS["max_iterations"])
    calc.set("mixer", SETTINGS["mixer"])
    calc.set("guess", {"sad": 0, "eeq": 1, "eeqbc": 2}[SETTINGS["guess"]])
    calc.set("mixer-damping", SETTINGS["mixer_damping"])
    calc.set("verbosity", 0)
    if field is not None:
        calc.add("electric-field", [float(f) * Bohr / Hartree for f in field])
    return calc


def api_singlepoint(numbers, positions, field=None):
    """Non-periodic GFN2 single point: (energy eV, forces eV/A, dipole e*A)."""
    from ase.units import Bohr, Hartree

    res = _api_calculator(numbers, positions, field=field).singlepoint()
    energy = float(res["energy"]) * Hartree
    forces = -np.asarray(res["gradient"]) * Hartree / Bohr
    dipole = np.asarray(res["dipole"]) * Bohr
    return energy, forces, dipole


def ase_singlepoint(atoms):
    """Energy, forces (+ stress if periodic, + dipole if not) via tblite.ase.TBLite.

    One fresh calculator per call.  Returns a dict in eV, A, e (ASE units: the ASE
    calculator returns the dipole in e*A and the stress in Voigt order, eV/A^3).
    """
    from tblite.ase import TBLite

    atoms = atoms.copy()
    atoms.calc = TBLite(
        method=SETTINGS["method"],
        charge=0,
        multiplicity=1,
        accuracy=SETTINGS["accuracy"],
        electronic_temperature=SETTINGS["electronic_temperature"],
        max_iterations=SETTINGS["max_iterations"],
        mixer=SETTINGS["mixer"],
        mixer_damping=SETTINGS["mixer_damping"],
        guess=SETTINGS["guess"],
        verbosity=0,
    )
    out = {
        "energy": float(atoms.get_potential_energy()),
        "forces": np.array(atoms.get_forces()),
    }
    if atoms.pbc.any():
        out["stress"] = np.array(atoms.get_stress(voigt=False))
    else:
        out["dipole"] = np.array(atoms.calc.results["dipole"])
    return out


def born_charges(numbers, positions, step=FIELD_STEP):
    """Z*[i, a, b] = dF_{i,b}/dE_a (e) by central differences in a field (V/A)."""
    n = len(numbers)
    bec = np.zeros((n, 3, 3))
    for a in range(3):
        field = np.zeros(3)
        field[a] = step
        _, f_plus, _ = api_singlepoint(numbers, positions, field=field)
        _, f_minus, _ = api_singlepoint(numbers, positions, field=-field)
        bec[:, a, :] = (f_plus - f_minus) / (2 * step)
    return bec


def label_bulk(atoms, source_index: int):
    """A labelled periodic ``Frame`` (energy, forces, stress)."""
    from polmp.data.schema import Frame

    out = ase_singlepoint(atoms)
    info = header_info("bulk")
    info["source_index"] = int(source_index)
    return Frame(
        positions=np.array(atoms.positions, float),
        numbers=np.array(atoms.numbers, np.int64),
        cell=np.array(atoms.cell[:], float),
        pbc=np.ones(3, bool),
        energy=out["energy"],
        forces=out["forces"],
        stress=out["stress"],
        total_charge=0.0,
        info=info,
    )


def label_cluster(atoms, extra_info: dict | None = None, with_bec: bool = True):
    """A labelled non-periodic ``Frame`` (energy, forces, dipole, Born charges)."""
    from polmp.data.schema import Frame

    atoms = atoms.copy()
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    out = ase_singlepoint(atoms)
    bec = born_charges(atoms.numbers, atoms.positions) if with_bec else None
    info = header_info("clusters")
    info.update(extra_info or {})
    return Frame(
        positions=np.array(atoms.positions, float),
        numbers=np.array(atoms.numbers, np.int64),
        cell=None,
        pbc=np.zeros(3, bool),
        energy=out["energy"],
        forces=out["forces"],
        total_charge=0.0,
        dipole=out["dipole"],
        bec=bec,
        info=info,
    )


# ----------------------------------------------------------------- structures


def read_source(path):
    import ase.io

    return ase.io.read(os.fspath(path), ":")


def molecules(atoms) -> list[list[int]]:
    """[O, H, H] index triples: each H goes to its nearest O (minimum image)."""
    from ase.geometry import get_distances

    o = np.where(atoms.numbers == 8)[0]
    h = np.where(atoms.numbers == 1)[0]
    _, d = get_distances(
        atoms.positions[h], atoms.positions[o], cell=atoms.cell, pbc=atoms.pbc
    )
    owner = d.argmin(axis=1)
    mols = [
        [int(oi)] + [int(h[k]) for k in np.where(owner == j)[0]]
        for j, oi in enumerate(o)
    ]
    if any(len(m) != 3 for m in mols) or d.min(axis=1).max() > 1.3:
        raise ValueError("source frame is not made of intact H2O molecules")
    return mols


def cut_cluster(atoms, n_mol: int, centre: int):
    """The ``n_mol`` molecules whose O is nearest to molecule ``centre``'s O, unwrapped.

    Every atom is placed at its minimum image relative to the centre O (H relative to
    its own O), so the cluster is a contiguous piece of the liquid.  Raises ValueError
    when the selection radius reaches half the box (ambiguous images).
    Returns (ase.Atoms, radius): radius = distance of the farthest selected O (A).
    """
    from ase import Atoms

    mols = molecules(atoms)
    cell = np.array(atoms.cell[:])
    inv = np.linalg.inv(cell)

    def mic(vec):
        frac = vec @ inv
        return (frac - np.round(frac)) @ cell

    pos = atoms.positions
    o_centre = pos[mols[centre][0]]
    o_vec = np.array([mic(pos[m[0]] - o_centre) for m in mols])
    dist = np.linalg.norm(o_vec, axis=1)
    order = np.argsort(dist, kind="stable")[:n_mol]
    radius = float(dist[order[-1]])
    half = 0.5 * min(np.linalg.norm(cell, axis=1))
    if radius >= half - 0.3:
        raise ValueError(
            f"cluster radius {radius:.2f} A too close to half box {half:.2f}"
        )
    new_pos, new_num = [], []
    for j in order:
        o_pos = o_centre + o_vec[j]
        for k in mols[j]:
            new_pos.append(o_pos + mic(pos[k] - pos[mols[j][0]]))
            new_num.append(atoms.numbers[k])
    return Atoms(numbers=new_num, positions=np.array(new_pos), pbc=False), radius


def bulk_plan(n_bulk: int, n_source: int) -> list[int]:
    """Evenly spaced source indices, in an order that spreads any prefix evenly."""
    n_bulk = min(n_bulk, n_source)
    idx = [int(round(k * n_source / n_bulk)) for k in range(n_bulk)]
    # bit-reversal (van der Corput) order: a partial run still covers the range
    bits = max(1, (len(idx) - 1).bit_length())
    key = [int(format(k, f"0{bits}b")[::-1], 2) for k in range(len(idx))]
    return [idx[k] for k in np.argsort(key, kind="stable")]


def cluster_plan(n_clusters: int, n_source: int, seed: int = SEED) -> list[dict]:
    """Deterministic cluster specs; spec k depends only on (seed, k)."""
    plan = []
    for k in range(n_clusters):
        rng = np.random.default_rng([seed, k])
        plan.append(
            {
                "cluster_id": k,
                "source_index": int(rng.integers(n_source)),
                "centre_molecule": int(rng.integers(32)),
                "n_molecules": int(
                    rng.integers(CLUSTER_SIZES[0], CLUSTER_SIZES[1] + 1)
                ),
            }
        )
    return plan


# ----------------------------------------------------------------- workers

_SOURCE = None


def _init_worker(source_path):
    global _SOURCE
    os.environ["OMP_NUM_THREADS"] = "1"
    _SOURCE = read_source(source_path)


def _work(task):
    kind, spec = task
    t0 = time.process_time()
    try:
        if kind == "bulk":
            frame = label_bulk(_SOURCE[spec], spec)
            key = spec
        else:
            atoms = _SOURCE[spec["source_index"]]
            n_mol = spec["n_molecules"]
            while True:
                try:
                    cluster, radius = cut_cluster(atoms, n_mol, spec["centre_molecule"])
                    break
                except ValueError:
                    n_mol -= 1
                    if n_mol < CLUSTER_SIZES[0]:
                        raise
            extra = dict(spec)
            extra["n_molecules"] = n_mol
            extra["cut_radius_A"] = round(radius, 4)
            frame = label_cluster(cluster, extra)
            key = spec["cluster_id"]
    except Exception as err:  # keep the run going; report the failure
        return kind, spec, None, f"{type(err).__name__}: {err}", 0.0
    return kind, key, frame, None, time.process_time() - t0


def _frame_text(frame) -> str:
    """One frame as extxyz text (``write_extxyz`` writes to a path)."""
    import tempfile

    from polmp.data.io import write_extxyz

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frame.extxyz"
        write_extxyz(path, [frame])
        return path.read_text()


def _done_keys(partial: Path, kind: str) -> set[int]:
    if not partial.exists():
        return set()
    from polmp.data.io import read_frames

    key = "source_index" if kind == "bulk" else "cluster_id"
    try:
        return {int(f.info[key]) for f in read_frames(partial)}
    except Exception as err:  # a truncated last frame: keep the valid prefix
        raise SystemExit(f"cannot read {partial}: {err}; repair or remove it") from err


def pack(work: Path, out: Path, kind: str) -> int:
    """Sort ``WORK/<kind>.partial.extxyz`` into ``OUT/water_gfn2_<kind>.extxyz.xz``."""
    from polmp.data.io import read_frames, write_extxyz

    partial = work / f"{kind}.partial.extxyz"
    if not partial.exists():
        return 0
    frames = read_frames(partial)
    key = "source_index" if kind == "bulk" else "cluster_id"
    frames.sort(key=lambda f: int(f.info[key]))
    tmp = out / f"water_gfn2_{kind}.extxyz"
    write_extxyz(tmp, frames)
    with (
        open(tmp, "rb") as src,
        lzma.open(
            out / f"water_gfn2_{kind}.extxyz.xz", "wb", preset=9 | lzma.PRESET_EXTREME
        ) as dst,
    ):
        dst.write(src.read())
    tmp.unlink()
    return len(frames)


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or args.out)
    work.mkdir(parents=True, exist_ok=True)
    source = read_source(args.source)
    n_source = len(source)
    tasks = []
    partials = {}
    for kind, n in (("clusters", args.clusters), ("bulk", args.bulk)):
        if n <= 0:
            continue
        partials[kind] = work / f"{kind}.partial.extxyz"
        done = _done_keys(partials[kind], kind)
        if kind == "bulk":
            todo = [i for i in bulk_plan(n, n_source) if i not in done]
        else:
            todo = [
                s
                for s in cluster_plan(n, n_source, args.seed)
                if s["cluster_id"] not in done
            ]
        print(f"{kind}: {len(done)} done, {len(todo)} to do", flush=True)
        tasks += [(kind, t) for t in todo]
    ctx = multiprocessing.get_context("spawn")
    t_start = time.time()
    count = 0
    with ctx.Pool(
        args.workers, initializer=_init_worker, initargs=(str(args.source),)
    ) as pool:
        for kind, key, frame, err, cpu in pool.imap(_work, tasks, chunksize=1):
            if err is not None:
                print(f"FAILED {kind} {key}: {err}", flush=True)
                continue
            with open(partials[kind], "a") as handle:
                handle.write(_frame_text(frame))
                handle.flush()
                os.fsync(handle.fileno())
            count += 1
            print(
                f"{kind} {key}: {frame.num_atoms} atoms, cpu {cpu:.1f} s, "
                f"done {count}/{len(tasks)}, wall {time.time() - t_start:.0f} s",
                flush=True,
            )
    for kind in partials:
        print(f"packed {pack(work, out, kind)} {kind} frames", flush=True)


# ----------------------------------------------------------------- verification


def verify(args) -> dict:
    """On one small cluster: BEC from field derivatives of forces vs dipole derivatives.

    Also compares the low-level zero-field forces with the ASE calculator's and checks
    the acoustic sum rule.  Prints and returns a summary dict.
    """
    source = read_source(args.source)
    cluster, _ = cut_cluster(source[0], args.verify_molecules, 0)
    numbers, pos = cluster.numbers, cluster.positions
    ase_out = ase_singlepoint(cluster)
    e0, f0, p0 = api_singlepoint(numbers, pos)
    bec_field = born_charges(numbers, pos)
    h = 1e-3  # A
    bec_disp = np.zeros_like(bec_field)
    for i in range(len(numbers)):
        for b in range(3):
            plus, minus = pos.copy(), pos.copy()
            plus[i, b] += h
            minus[i, b] -= h
            bec_disp[i, :, b] = (
                api_singlepoint(numbers, plus)[2] - api_singlepoint(numbers, minus)[2]
            ) / (2 * h)
    rel = np.linalg.norm(bec_field - bec_disp) / np.linalg.norm(bec_disp)
    rel_t = np.linalg.norm(bec_field.transpose(0, 2, 1) - bec_disp) / np.linalg.norm(
        bec_disp
    )
    asr = np.abs(bec_field.sum(0)).max() / np.abs(bec_field).max()
    summary = {
        "atoms": int(len(numbers)),
        "ase_vs_api_energy_eV": abs(ase_out["energy"] - e0),
        "ase_vs_api_forces_max_eV_per_A": float(np.abs(ase_out["forces"] - f0).max()),
        "ase_vs_api_dipole_max_eA": float(np.abs(ase_out["dipole"] - p0).max()),
        "bec_field_vs_dipole_derivative_rel": float(rel),
        "bec_field_transposed_vs_dipole_derivative_rel": float(rel_t),
        "bec_max_abs_diff_e": float(np.abs(bec_field - bec_disp).max()),
        "asr_max_sum_over_max_bec": float(asr),
        "mean_diag_bec_O": float(
            np.mean(
                [
                    np.trace(z) / 3
                    for z, n in zip(bec_field, numbers, strict=True)
                    if n == 8
                ]
            )
        ),
        "mean_diag_bec_H": float(
            np.mean(
                [
                    np.trace(z) / 3
                    for z, n in zip(bec_field, numbers, strict=True)
                    if n == 1
                ]
            )
        ),
    }
    print(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bulk", type=int, default=0, help="number of bulk frames")
    parser.add_argument("--clusters", type=int, default=0, help="number of clusters")
    parser.add_argument("--out", default=str(REPO / "polmp/data/embedded"))
    parser.add_argument(
        "--work", default=None, help="folder of the partial files (default: --out)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--pack-only", action="store_true")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--verify-molecules", type=int, default=4)
    args = parser.parse_args(argv)
    if args.verify:
        verify(args)
        return
    if args.pack_only:
        for kind in ("clusters", "bulk"):
            work = Path(args.work or args.out)
            print(f"packed {pack(work, Path(args.out), kind)} {kind} frames")
        return
    run(args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
