"""Readers and writer of labelled frames, checked on every structure folder of the
shared reference data.

Counts asserted here were taken from the files themselves (``begin`` lines, header
lines), and each test recounts them from the raw text where that is cheap, so a wrong
reader cannot agree with a wrong constant.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os

import numpy as np
import pytest

from polmp.data import Frame, read_frames, read_runner, write_extxyz
from polmp.units import BOHR, HARTREE
from tests.utils import shared_path

LABEL_FIELDS = (
    "positions", "numbers", "cell", "pbc", "energy", "forces", "stress",
    "total_charge", "dipole", "charges", "bec", "polarizability", "quadrupole",
)  # fmt: skip

_EPS = np.zeros((3, 3, 3))
_EPS[0, 1, 2] = _EPS[1, 2, 0] = _EPS[2, 0, 1] = 1.0
_EPS[0, 2, 1] = _EPS[2, 1, 0] = _EPS[1, 0, 2] = -1.0


def _count_extxyz_frames(path) -> int:
    """Frames in an extxyz file, from the raw text (one Properties= header each)."""
    with open(path) as handle:
        return sum("Properties=" in line for line in handle)


def _count_runner(path) -> tuple[int, int]:
    """(frames, atom lines) of a RuNNer file, counted from the raw text."""
    begins = atoms = 0
    with open(path) as handle:
        for line in handle:
            token = line.split()[:1]
            begins += token == ["begin"]
            atoms += token == ["atom"]
    return begins, atoms


def _min_image_distances(frame: Frame, i: int, js) -> np.ndarray:
    d = frame.positions[js] - frame.positions[i]
    if frame.cell is not None:
        s = d @ np.linalg.inv(frame.cell)
        d = (s - np.round(s)) @ frame.cell
    return np.linalg.norm(d, axis=-1)


def _nearest_oh(frame: Frame) -> np.ndarray:
    """Distance from every H to its nearest O, A (minimum image)."""
    o = np.flatnonzero(frame.numbers == 8)
    return np.array(
        [
            _min_image_distances(frame, h, o).min()
            for h in np.flatnonzero(frame.numbers == 1)
        ]
    )


def _assert_frames_equal(a: Frame, b: Frame, exact=True):
    for name in LABEL_FIELDS:
        u, v = getattr(a, name), getattr(b, name)
        assert (u is None) == (v is None), name
        if u is not None:
            if exact:
                np.testing.assert_array_equal(
                    np.asarray(u), np.asarray(v), err_msg=name
                )
            else:
                np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12, err_msg=name)


def _rotational_residual(frame: Frame, bec: np.ndarray) -> float:
    """Relative residual of sum_i Z*_{i,ab} (w x r_i)_b = (w x P)_a (neutral)."""
    lhs = np.einsum("iab,bcd,id->ac", bec, _EPS, frame.positions)
    rhs = np.einsum("acd,d->ac", _EPS, frame.dipole)
    return float(np.abs(lhs - rhs).max() / np.abs(rhs).max())


# ----------------------------------------------------------------------------- water


def test_lesfit_water_rpbe_d3():
    path = shared_path("lesfit_water_rpbe_d3", "test-H2O_RPBE-D3.xyz")
    frames = read_frames(path, require=("energy", "forces"))
    assert len(frames) == _count_extxyz_frames(path) == 50
    for f in frames:
        assert f.num_atoms == 192
        assert collections.Counter(f.numbers.tolist()) == {8: 64, 1: 128}
        np.testing.assert_allclose(f.cell, 12.429 * np.eye(3))
        assert f.pbc.all() and f.stress is None and f.dipole is None
        assert f.forces.shape == (192, 3)
        # VASP/PAW scale: about -14.5 eV per H2O, i.e. -4.9 eV per atom.
        assert -5.2 < f.energy / 192 < -4.6
    dist = _nearest_oh(frames[0])
    assert 0.9 < dist.min() and dist.max() < 1.15
    # Forces are eV/A as in the file: the first H row of the file.
    np.testing.assert_allclose(
        frames[0].forces[0], [-0.87838526, 0.93070641, 0.79532978]
    )
    assert frames[0].energy == -933.4166530484531


def test_lesfit_md_init_has_no_labels():
    path = shared_path("lesfit_md_init", "liquid-64.xyz")
    (frame,) = read_frames(path)
    assert frame.num_atoms == 192 and frame.energy is None and frame.forces is None
    np.testing.assert_allclose(frame.cell, 12.415238 * np.eye(3))
    assert 0.85 < _nearest_oh(frame).min() and _nearest_oh(frame).max() < 1.15
    with pytest.raises(ValueError, match=r"frame 0 has no 'energy'"):
        read_frames(path, require=("energy",))


# ----------------------------------------------------------------------------- RuNNer


@pytest.mark.parametrize(
    "folder, frames_expected, sizes",
    [
        ("H2O_RPBE-D3_train", 20, {48: 11, 96: 2, 192: 7}),
        ("H2O_RPBE-D3_4G_train", 20, {48: 20}),
    ],
)
def test_runner_water_units(folder, frames_expected, sizes):
    path = shared_path("n2p2_4g_examples", folder, "input.data")
    frames = read_runner(path, require=("energy", "forces", "total_charge"))
    n_begin, n_atoms = _count_runner(path)
    assert len(frames) == n_begin == frames_expected
    assert sum(f.num_atoms for f in frames) == n_atoms
    assert collections.Counter(f.num_atoms for f in frames) == sizes
    for f in frames:
        assert f.pbc.all() and f.cell.shape == (3, 3)
        assert (f.numbers == 8).sum() * 2 == (f.numbers == 1).sum()
        # After Bohr -> A the mean O-H bond is ~0.97-1.0 A (it would be ~1.85 in Bohr).
        dist = _nearest_oh(f)
        assert 0.96 < dist.mean() < 1.02 and 0.7 < dist.min() and dist.max() < 1.3
        # All-electron water: ~ -76.4 Hartree = -2079 eV per H2O.
        per_water = f.energy / (f.num_atoms / 3)
        assert -2085 < per_water < -2075
        assert f.total_charge == 0.0
        assert abs(f.charges.sum()) < 1e-3  # Hirshfeld charges of a neutral cell
        assert np.abs(f.forces).max() < 20.0  # eV/A
    # One value by hand: the first atom line and the energy of the first frame.
    with open(path) as handle:
        lines = [ln.split() for ln in handle if ln.split()]
    first_atom = next(t for t in lines if t[0] == "atom")
    first_energy = next(t for t in lines if t[0] == "energy")
    first_lattice = next(t for t in lines if t[0] == "lattice")
    f0 = frames[0]
    np.testing.assert_allclose(
        f0.forces[0], np.array(first_atom[7:10], float) * HARTREE / BOHR
    )
    np.testing.assert_allclose(f0.positions[0], np.array(first_atom[1:4], float) * BOHR)
    assert f0.charges[0] == float(first_atom[5])
    assert f0.energy == pytest.approx(float(first_energy[1]) * HARTREE, rel=1e-14)
    np.testing.assert_allclose(f0.cell[0], np.array(first_lattice[1:4], float) * BOHR)
    assert f0.info["comment"] == "written by RuNNerDecom"


def test_runner_carbon_chain_total_charge():
    path = shared_path("n2p2_4g_examples", "Carbon_chain_4G_train", "input.data")
    frames = read_frames(path)  # detected as RuNNer by its first keyword
    n_begin, n_atoms = _count_runner(path)
    assert len(frames) == n_begin == 128 and sum(f.num_atoms for f in frames) == n_atoms
    kinds = collections.Counter((f.num_atoms, f.total_charge) for f in frames)
    # C10H2 (neutral) and C10H3+ (charge +1): the non-local charge-transfer test.
    assert kinds == {(12, 0.0): 66, (13, 1.0): 62}
    for f in frames:
        assert f.cell is None and not f.pbc.any()
        assert (f.numbers == 6).sum() == 10
        # Hirshfeld charges add up to the total charge.
        assert f.charges.sum() == pytest.approx(f.total_charge, abs=1e-6)
        # All-electron carbon (~ -37.8 Hartree per C atom) dominates: ~ -38.2 per C.
        assert -38.3 < f.energy / HARTREE / 10 < -38.1
        bonds = [_min_image_distances(f, i, [j]).item() for i in range(f.num_atoms)
                 for j in range(i) if f.numbers[i] == f.numbers[j] == 6]  # fmt: skip
        assert 1.15 < min(bonds) < 1.45  # C-C bonds in A, not Bohr


@pytest.mark.parametrize(
    "folder, count", [("AlAuMgO_4G_train", 18), ("AlAuMgO_4G_predict", 1)]
)
def test_runner_au2mgo_slab(folder, count):
    path = shared_path("n2p2_4g_examples", folder, "input.data")
    frames = read_runner(path)
    assert len(frames) == _count_runner(path)[0] == count
    for f in frames:
        assert f.num_atoms == 110 and f.pbc.all()
        np.testing.assert_allclose(
            f.cell, np.diag([9.04743061, 9.04743061, 26.45886053]), atol=1e-7
        )
        counts = collections.Counter(f.numbers.tolist())
        assert counts[79] == 2 and counts[8] == 54 and counts[12] + counts[13] == 54
        assert f.total_charge == 0.0
    assert collections.Counter(13 in f.numbers for f in frames)[True] == (
        10 if count == 18 else 1
    )


@pytest.mark.parametrize("name", ["1-doped", "1-undoped", "3-doped", "3-undoped"])
def test_au2mgo_xyz_and_runner_agree(name):
    """les_fit converted the .data files to .xyz itself: both readers must agree."""
    xyz = read_frames(shared_path("lesfit_au2mgo_dft_structs", f"{name}.xyz"))
    runner = read_frames(shared_path("lesfit_au2mgo_dft_structs", f"{name}.data"))
    assert len(xyz) == len(runner) == 1
    a, b = xyz[0], runner[0]
    assert a.num_atoms == b.num_atoms == 110
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
    np.testing.assert_allclose(a.cell, b.cell, atol=1e-6)
    # les_fit used CODATA 2018 (27.211386246 eV); ASE's HARTREE is CODATA 2014.
    assert a.energy == pytest.approx(b.energy, rel=2e-8)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-6)
    np.testing.assert_allclose(a.charges, b.charges, atol=1e-8)
    assert (79 in a.numbers) and ((13 in a.numbers) == name.endswith("-doped"))


# ----------------------------------------------------------------------- SPICE / BEC

#: Frames per file, counted from the Properties= header lines.
_SPICE_COUNTS = {
    "des370k_dimers": 121,
    "des370k_monomers": 122,
    "dipeptides": 119,
    "pubchem": 114,
    "qmugs": 84,
    "solvated_amino_acids": 32,
    "water": 81,
}
_SPICE_BEC = tuple(_SPICE_COUNTS)


@pytest.mark.parametrize("name", _SPICE_BEC)
def test_spice_bec_sum_rules_and_order(name):
    path = shared_path("lesfit_spice_bec", f"{name}.xyz")
    frames = read_frames(path, require=("energy", "forces", "dipole", "bec"))
    assert len(frames) == _count_extxyz_frames(path) == _SPICE_COUNTS[name]
    ours, other = [], []
    for f in frames:
        assert f.cell is None and not f.pbc.any()
        assert f.bec.shape == (f.num_atoms, 3, 3)
        # Acoustic sum rule of an isolated molecule: sum_i Z*_i = Q * identity.
        np.testing.assert_allclose(f.bec.sum(0), f.total_charge * np.eye(3), atol=0.02)
        # Prediction columns stay out of the labels.
        assert "MACE_forces" in f.info["arrays"] and "MACE_energy" in f.info
        assert f.energy != f.info["MACE_energy"]
        assert not np.array_equal(f.forces, f.info["arrays"]["MACE_forces"])
        if f.total_charge == 0:
            ours.append(_rotational_residual(f, f.bec))
            other.append(_rotational_residual(f, f.bec.transpose(0, 2, 1)))
    # bec[i, a, b] = dP_a/dr_{i,b}: the rotational sum rule holds with the file's dipole
    # in e*A and positions in A, and fails for the transposed reading.
    ours, other = np.array(ours), np.array(other)
    assert np.median(ours) < 0.05, np.median(ours)
    assert np.median(other) > 5 * np.median(ours), np.median(other)
    assert np.mean(ours < other) > 0.95


def test_spice_bec_water_isotropic_signs_and_order_option():
    path = shared_path("lesfit_spice_bec", "water.xyz")
    frames = read_frames(path)
    iso = np.concatenate([np.trace(f.bec, axis1=1, axis2=2) / 3 for f in frames])
    numbers = np.concatenate([f.numbers for f in frames])
    assert set(numbers.tolist()) == {1, 8}
    assert np.all(iso[numbers == 8] < 0) and np.all(iso[numbers == 1] > 0)
    # O about -2 x H: each molecule's isotropic charges sum to ~0.
    assert np.mean(iso[numbers == 8]) == pytest.approx(
        -2 * np.mean(iso[numbers == 1]), rel=0.05
    )
    # A gas-phase water monomer: |mu| ~ 0.44 e*A (2.1 D).
    mono = next(f for f in frames if f.num_atoms == 3)
    assert 0.35 < np.linalg.norm(mono.dipole) < 0.5
    # The other file order gives the transpose.
    other = read_frames(path, index="0:5", bec_file_order="polarization-major")
    for f, g in zip(frames[:5], other, strict=True):
        np.testing.assert_array_equal(g.bec, f.bec.transpose(0, 2, 1))


def test_prediction_keys_are_never_labels(tmp_path):
    path = tmp_path / "pred.xyz"
    path.write_text(
        "2\nProperties=species:S:1:pos:R:3:MACE_forces:R:3 "
        'MACE_energy=-1.5 pbc="F F F"\n'
        "H 0 0 0 0.1 0.2 0.3\nH 0 0 0.74 -0.1 -0.2 -0.3\n"
    )
    (frame,) = read_frames(path)
    assert frame.energy is None and frame.forces is None
    assert frame.info["MACE_energy"] == -1.5
    with pytest.raises(ValueError, match=r"frame 0 has no 'forces'"):
        read_frames(path, require=("forces",))
    with pytest.raises(ValueError, match="model prediction"):
        read_frames(path, energy_key="MACE_energy")
    with pytest.raises(ValueError, match="model prediction"):
        read_frames(path, forces_key=("forces", "MACE_forces"))


@pytest.mark.parametrize(
    "split, count, has_bec", [("train", 495, False), ("val", 55, True)]
)
def test_spice_dipep_dipolar(split, count, has_bec):
    path = shared_path("lesfit_spice_dipep_dipolar", f"spice-dipep-dipolar_{split}.xyz")
    frames = read_frames(path, require=("energy", "forces", "dipole", "charges"))
    assert len(frames) == _count_extxyz_frames(path) == count
    for f in frames:
        assert 42 <= f.num_atoms <= 51 and f.cell is None
        assert f.forces.shape == (f.num_atoms, 3)  # the column is named 'force'
        assert f.dipole.shape == (3,)  # stored as _JSON [[x, y, z]]
        assert f.quadrupole.shape == (3, 3) and "quadrupole" not in f.info
        np.testing.assert_allclose(f.quadrupole, f.quadrupole.T, atol=1e-5)
        assert f.energy < 0 and f.total_charge == 0.0
        assert abs(f.charges.sum()) < 2e-3  # MBIS charges of neutral dipeptides
        assert (f.bec is not None) == has_bec
        if has_bec:
            np.testing.assert_allclose(f.bec.sum(0), 0.0, atol=0.02)
    if has_bec:
        res = [_rotational_residual(f, f.bec) for f in frames]
        other = [_rotational_residual(f, f.bec.transpose(0, 2, 1)) for f in frames]
        assert np.median(res) < 0.1 < np.median(other)
    # The dipole is in e*A: it follows the MBIS-charge dipole sum_i q_i r_i with slope
    # ~1 (atomic dipoles add scatter; e*Bohr would give 1/BOHR ~ 1.9).
    mu_q = np.concatenate([f.charges @ f.positions for f in frames])
    mu = np.concatenate([f.dipole for f in frames])
    assert 0.85 < (mu_q @ mu) / (mu_q @ mu_q) < 1.15
    # The quadrupole is the second moment in e*A^2: its traceless part follows that
    # of the MBIS charges (slope ~1; e*Bohr^2 would give 1/BOHR^2 ~ 3.6).
    traceless = lambda m: m - np.trace(m) / 3 * np.eye(3)  # noqa: E731
    x = np.concatenate(
        [traceless(np.einsum("i,ia,ib->ab", f.charges, f.positions, f.positions))
         for f in frames]
    ).ravel()  # fmt: skip
    y = np.concatenate([traceless(f.quadrupole) for f in frames]).ravel()
    assert 0.8 < (x @ y) / (x @ x) < 1.2 and np.corrcoef(x, y)[0, 1] > 0.9


def test_spice_bec_dipeptides_labels():
    path = shared_path("lesfit_spice_bec", "dipeptides.xyz")
    frames = read_frames(path, require=("energy", "forces", "dipole", "bec"))
    assert len(frames) == _count_extxyz_frames(path) == 119
    for f in frames:
        assert f.forces.shape == (f.num_atoms, 3) and f.bec.shape == (f.num_atoms, 3, 3)
        assert f.total_charge == f.info.get("total_charge", 0.0) == 0.0
        assert f.quadrupole is None and f.charges is None


# ----------------------------------------------------------------------------- others


def test_cacelr_lode_dimers_with_callable_total_charge():
    folder = shared_path("cacelrfit_lode_dimers")
    files = sorted(glob.glob(os.path.join(folder, "*.xyz")))
    assert len(files) == 12

    def dimer_charge(atoms):
        return atoms.info["chargeA"] + atoms.info["chargeB"]

    total, labels = 0, collections.Counter()
    for path in files:
        frames = read_frames(
            path, total_charge_key=dimer_charge, require=("energy", "forces")
        )
        assert len(frames) == _count_extxyz_frames(path)
        total += len(frames)
        for f in frames:
            np.testing.assert_allclose(f.cell, 30.0 * np.eye(3))
            assert f.total_charge == f.info["chargeA"] + f.info["chargeB"]
            labels[(f.info["label"], f.total_charge)] += 1
    assert total == 78
    assert labels == {("CC", 0): 13, ("PA", 0): 13, ("PP", 0): 13, ("AA", 0): 13,
                      ("CP", -1): 13, ("CA", 1): 13}  # fmt: skip


def test_cacelr_lode_dimers_total_charge_by_default():
    """The default reader sums the fragment charges chargeA + chargeB of the header."""
    files = sorted(glob.glob(os.path.join(shared_path("cacelrfit_lode_dimers"), "*")))
    charges = collections.Counter()
    for path in files:
        for f in read_frames(path, require=("total_charge",)):
            assert f.total_charge == f.info["chargeA"] + f.info["chargeB"]
            charges[f.total_charge] += 1
    assert charges == {0.0: 52, 1.0: 13, -1.0: 13}  # 26 of 78 frames are charged


@pytest.mark.parametrize("key", ["charge", "total_charge"])
def test_extxyz_total_charge_keys(tmp_path, key):
    header = f'Properties=species:S:1:pos:R:3 {key}=-2 chargeA=5 chargeB=5 pbc="F F F"'
    path = _xyz(tmp_path, header, ["O 0 0 0", "O 0 0 1.2"])
    (frame,) = read_frames(path, require=("total_charge",))
    assert frame.total_charge == -2.0  # the stated total wins over fragment charges


def test_kapil_water_dipole_polarizability_and_dipole_unit():
    path = shared_path("kapil_water_bulk_dipole_pol", "water_bulk.xyz")
    frames = read_frames(path, require=("dipole", "polarizability"))
    assert len(frames) == _count_extxyz_frames(path) == 1000
    pol = np.array([f.polarizability for f in frames])
    assert pol.shape == (1000, 3, 3)
    np.testing.assert_allclose(frames[0].cell, 9.67446 * np.eye(3))
    for f in frames:
        assert f.num_atoms == 96 and f.energy is None and f.forces is None
        # Cubic cells of varying size (9.48-10.44 A, liquid densities).
        side = f.cell[0, 0]
        np.testing.assert_allclose(f.cell, side * np.eye(3))
        assert 9.4 < side < 10.5
    # ~1.4 A^3 per molecule (water: 1.45 A^3): REF_polarizability is in A^3.
    per_molecule = np.trace(pol, axis1=1, axis2=2).mean() / 3 / 32
    assert 1.2 < per_molecule < 1.6
    # REF_dipole is in e*Bohr: fitted against SPC/E point-charge dipoles (e*A) the slope
    # is 2.19 if read as e*A (a 5 D molecule, impossible) and 1.16 once converted
    # (liquid-water DFT dipoles are ~1.2 x SPC/E's 2.35 D).
    q = np.where(frames[0].numbers == 8, -0.8476, 0.4238)
    spce = np.array([q @ f.positions for f in frames]).ravel()
    raw = np.array([f.dipole for f in frames]).ravel()
    assert np.polyfit(spce, raw, 1)[0] == pytest.approx(2.19, abs=0.05)
    converted = read_frames(path, units={"dipole": BOHR})
    fitted = np.array([f.dipole for f in converted]).ravel()
    assert 1.0 < np.polyfit(spce, fitted, 1)[0] < 1.4
    np.testing.assert_allclose(fitted, raw * BOHR)


@pytest.mark.parametrize(
    "phase", ["cubic", "tetragonal", "orthorhombic", "delta", "d-delta"]
)
def test_finkler_mapbi3_vsim(phase):
    path = shared_path("finkler_mapbi3_geometries", f"{phase}.ascii")
    (frame,) = read_frames(path, format="v-sim")
    # tetragonal.ascii and orthorhombic.ascii have left-handed cells: negated on read.
    assert frame.info.get("cell_negated", False) == (
        phase in ("tetragonal", "orthorhombic")
    )
    if frame.info.get("cell_negated"):
        with pytest.raises(ValueError, match="left-handed"):
            read_frames(path, format="v-sim", left_handed="error")
    assert frame.num_atoms == 96 and frame.pbc.all() and frame.energy is None
    assert collections.Counter(frame.numbers.tolist()) == {
        82: 8,
        53: 24,
        6: 8,
        7: 8,
        1: 48,
    }
    # 8 formula units at ~250 A^3 each.
    assert 1900 < np.linalg.det(frame.cell) < 2100
    pb = np.flatnonzero(frame.numbers == 82)
    i = np.flatnonzero(frame.numbers == 53)
    assert (
        2.9 < min(_min_image_distances(frame, p, i).min() for p in pb) < 3.4
    )  # Pb-I, A


@pytest.mark.parametrize(
    "material, natoms", [("NaCl", 8), ("MgO", 8), ("ZnO", 4), ("Al2O3", 30)]
)
def test_phonopy_poscar(material, natoms):
    path = shared_path("phonopy_born_nacl_mgo", material, "POSCAR-unitcell")
    (frame,) = read_frames(path, format="vasp")
    assert frame.num_atoms == natoms and frame.pbc.all() and frame.energy is None
    if material == "NaCl":
        np.testing.assert_allclose(frame.cell, 5.69030148 * np.eye(3), atol=1e-6)


@pytest.mark.parametrize("run", ["vasprun.xml-001", "vasprun.xml-002"])
def test_phonopy_vasprun_nacl(run):
    path = shared_path("phonopy_born_nacl_mgo", "NaCl", run)
    (frame,) = read_frames(
        path, format="vasp-xml", require=("energy", "forces", "stress")
    )
    assert frame.num_atoms == 64
    assert collections.Counter(frame.numbers.tolist()) == {11: 32, 17: 32}
    assert -3.45 < frame.energy / 64 < -3.35  # PAW, eV per atom
    np.testing.assert_allclose(
        frame.forces.sum(0), 0.0, atol=1e-4
    )  # one displaced atom
    assert 1e-3 < np.abs(frame.forces).max() < 0.1
    assert frame.stress.shape == (3, 3)
    np.testing.assert_allclose(frame.stress, frame.stress.T)
    assert "free_energy" in frame.info


def test_torchpme_refs_stress_and_input_charges():
    path = shared_path("torchpme_electrostatics_refs", "coulomb_test_frames.xyz")
    frames = read_frames(
        path, charges_key="initial_charges", require=("stress", "charges")
    )
    assert len(frames) == 3
    first_header = open(path).read().splitlines()[1]
    stress9 = first_header.split('stress="')[1].split('"')[0].split()
    np.testing.assert_allclose(frames[0].stress, np.array(stress9, float).reshape(3, 3))
    for f in frames:
        assert sorted(set(f.charges.tolist())) == [-1.0, 1.0] and f.charges.sum() == 0
    # Point charges are inputs, not labels: without the explicit key they stay in info.
    plain = read_frames(path)
    assert plain[0].charges is None and "initial_charges" in plain[0].info["arrays"]


# ------------------------------------------------------------------------ round trip


@pytest.mark.parametrize(
    "folder, name, kwargs",
    [
        ("lesfit_spice_bec", "water.xyz", {}),
        ("lesfit_spice_dipep_dipolar", "spice-dipep-dipolar_val.xyz", {}),
        ("torchpme_electrostatics_refs", "coulomb_test_frames.xyz", {}),
        ("kapil_water_bulk_dipole_pol", "water_bulk.xyz", {"index": "0:40"}),
        ("n2p2_4g_examples", "Carbon_chain_4G_train/input.data", {}),
        ("lesfit_au2mgo_dft_structs", "1-doped.xyz", {}),
    ],
)
def test_write_read_round_trip(tmp_path, folder, name, kwargs):
    frames = read_frames(shared_path(folder, *name.split("/")), **kwargs)
    out = tmp_path / "out.xyz"
    write_extxyz(out, frames)
    again = read_frames(out)
    assert len(again) == len(frames)
    for a, b in zip(frames, again, strict=True):
        _assert_frames_equal(a, b)
        extra = {k for k in a.info if k != "comment"}
        assert extra <= set(b.info)


def test_round_trip_all_labels_synthetic(tmp_path, rng):
    n = 5
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 7.0, 0.0], [0.5, -0.3, 8.0]])
    frame = Frame(
        positions=rng.normal(size=(n, 3)) * 2,
        numbers=np.array([8, 1, 1, 11, 17]),
        cell=cell,
        pbc=np.array([True, True, False]),
        energy=-12.345678901234567,
        forces=rng.normal(size=(n, 3)),
        stress=(lambda s: s + s.T)(rng.normal(size=(3, 3))),
        total_charge=1.0,
        dipole=rng.normal(size=3),
        charges=rng.normal(size=n),
        bec=rng.normal(size=(n, 3, 3)),  # not symmetric: the order must survive
        polarizability=rng.normal(size=(3, 3)),
        quadrupole=rng.normal(size=(3, 3)),
        info={"config_type": "two words", "step": 3, "arrays": {"tag": np.arange(n)}},
    )
    path = tmp_path / "syn.xyz"
    write_extxyz(
        path, [frame, dataclasses.replace(frame, cell=None, pbc=np.zeros(3, bool))]
    )
    a, b = read_frames(path)
    _assert_frames_equal(frame, a)
    assert a.info["config_type"] == "two words" and a.info["step"] == 3
    np.testing.assert_array_equal(a.info["arrays"]["tag"], np.arange(n))
    assert b.cell is None and not b.pbc.any()
    # The file stores bec displacement-major, like the les_fit sets.
    raw = read_frames(path, bec_file_order="polarization-major")[0].bec
    np.testing.assert_array_equal(raw, frame.bec.transpose(0, 2, 1))


# ----------------------------------------------------------------------------- errors


def _xyz(tmp_path, header, rows, name="f.xyz"):
    path = tmp_path / name
    path.write_text(f"{len(rows)}\n{header}\n" + "\n".join(rows) + "\n")
    return path


def test_virial_and_voigt_stress(tmp_path):
    rows = ["H 0 0 0", "H 0 0 0.74"]
    lattice = 'Lattice="4 0 0 0 5 0 0 0 2" Properties=species:S:1:pos:R:3'
    virial = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, 0.1], [0.0, 0.1, 3.0]])
    vstr = " ".join(map(str, virial.ravel()))
    path = _xyz(tmp_path, f'{lattice} virial="{vstr}" pbc="T T T"', rows)
    (frame,) = read_frames(path, require=("stress",))
    np.testing.assert_allclose(frame.stress, -virial / 40.0)
    voigt = _xyz(
        tmp_path, f'{lattice} REF_stress="1 2 3 4 5 6" pbc="T T T"', rows, "v.xyz"
    )
    (frame,) = read_frames(voigt)
    np.testing.assert_allclose(frame.stress, [[1, 6, 5], [6, 2, 4], [5, 4, 3]])
    bad = _xyz(tmp_path, f'{lattice} REF_stress="1 2 3 4" pbc="T T T"', rows, "b.xyz")
    with pytest.raises(ValueError, match="stress"):
        read_frames(bad)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_frames(tmp_path / "missing.xyz")
    with pytest.raises(FileNotFoundError):
        read_runner(tmp_path / "missing.data")
    ok = _xyz(
        tmp_path, 'Properties=species:S:1:pos:R:3 energy=1.0 pbc="F F F"', ["H 0 0 0"]
    )
    with pytest.raises(ValueError, match="format"):
        read_frames(ok, format="no-such-format")
    plain = 'Properties=species:S:1:pos:R:3 pbc="F F F"'
    nan = _xyz(tmp_path, plain, ["H 0 0 0", "H nan 0 1"], "nan.xyz")
    with pytest.raises(ValueError, match="NaN"):
        read_frames(nan)
    bec8 = _xyz(tmp_path, 'Properties=species:S:1:pos:R:3:bec:R:8 pbc="F F F"',
                ["H 0 0 0 1 2 3 4 5 6 7 8"], "bec.xyz")  # fmt: skip
    with pytest.raises(ValueError, match="'bec' has shape"):
        read_frames(bec8)
    dip = _xyz(tmp_path, 'Properties=species:S:1:pos:R:3 dipole="1 2" pbc="F F F"',
               ["H 0 0 0"], "dip.xyz")  # fmt: skip
    with pytest.raises(ValueError, match="'dipole' has shape"):
        read_frames(dip)
    lhs = 'Lattice="4 0 0 0 -5 0 0 0 2" Properties=species:S:1:pos:R:3 pbc="T T T"'
    left = _xyz(tmp_path, lhs, ["H 0 0 0"], "left.xyz")
    with pytest.raises(ValueError, match="left-handed"):
        read_frames(left, left_handed="error")
    (flipped,) = read_frames(left)  # default: the same lattice spanned by -a_i
    np.testing.assert_allclose(flipped.cell, np.diag([-4.0, 5.0, -2.0]))
    assert flipped.info["cell_negated"] is True
    with pytest.raises(ValueError, match="unknown label"):
        read_frames(ok, require=("energies",))
    # A labelled frame followed by an unlabelled one: the error names frame 1.
    two = tmp_path / "two.xyz"
    two.write_text(
        ok.read_text() + '1\nProperties=species:S:1:pos:R:3 pbc="F F F"\nH 0 0 0\n'
    )
    assert len(read_frames(two)) == 2
    with pytest.raises(ValueError, match=r"frame 1 has no 'energy'"):
        read_frames(two, require=("energy",))


_RUNNER_OK = """begin
comment test
lattice 10.0 0.0 0.0
lattice 0.0 10.0 0.0
lattice 0.0 0.0 10.0
atom 0.0 0.0 0.0 O -0.8 0.0 0.01 0.02 0.03
atom 1.8 0.0 0.0 H 0.4 0.0 -0.01 0.0 0.0
atom 0.0 1.8 0.0 H 0.4 0.0 0.0 -0.02 -0.03
energy -76.4
charge 0.0
end
  begin
atom 0.0 0.0 0.0 Na 0.0 0.0 0.0 0.0 0.0
energy -162.0
charge 1.0
end
"""


def test_runner_synthetic_and_errors(tmp_path):
    path = tmp_path / "input.data"
    path.write_text(_RUNNER_OK)
    a, b = read_runner(path)
    np.testing.assert_allclose(a.positions[1], [1.8 * BOHR, 0, 0])
    np.testing.assert_allclose(a.cell, 10 * BOHR * np.eye(3))
    np.testing.assert_allclose(
        a.forces[0], np.array([0.01, 0.02, 0.03]) * HARTREE / BOHR
    )
    assert a.energy == pytest.approx(-76.4 * HARTREE) and a.info["comment"] == "test"
    np.testing.assert_allclose(a.charges, [-0.8, 0.4, 0.4])
    assert (
        b.cell is None and b.total_charge == 1.0 and b.charges is None
    )  # all-zero column
    assert [f.num_atoms for f in read_frames(path, index="1:")] == [1]
    assert [f.num_atoms for f in read_frames(path, format="runner", index=-1)] == [1]
    with pytest.raises(ValueError, match=r"frame 1 has no 'charges'"):
        read_runner(path, require=("charges",))

    def broken(text, match):
        bad = tmp_path / "bad.data"
        bad.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_runner(bad)

    broken(_RUNNER_OK.replace("end\n  begin", "  begin", 1), "missing 'end'")
    broken(_RUNNER_OK.rsplit("end", 1)[0], "has no 'end'")
    broken(_RUNNER_OK.replace(" Na ", " Xx "), "unknown element")
    broken(_RUNNER_OK.replace("lattice 0.0 0.0 10.0\n", ""), "0 or 3 lattice")
    broken(_RUNNER_OK.replace("atom 1.8 0.0 0.0", "atom nan 0.0 0.0"), "NaN")
    broken(_RUNNER_OK.replace("-0.01 0.0 0.0", "-0.01 0.0"), "needs 9 fields")
    broken("atom 0 0 0 H 0 0 0 0 0\n", "outside a begin/end")
    broken(_RUNNER_OK.replace(" Na ", " X "), r"bad.data:13: frame 1: unknown element")
    broken(_RUNNER_OK.rsplit("end", 1)[0], r"frame 1 starting at line 12 has no 'end'")
    broken("", r"bad.data: no frames")
    broken("\n\n", r"bad.data: no frames")
    with pytest.raises(ValueError, match="no frames"):
        read_frames(tmp_path / "bad.data", format="runner")


def test_extxyz_errors_name_file_and_frame(tmp_path):
    """Dummy or unknown symbols, truncated and empty files: clear errors, never []."""
    plain = 'Properties=species:S:1:pos:R:3 energy=1.0 pbc="F F F"'
    good = _xyz(tmp_path, plain, ["O 0 0 0", "H 0 0 1"], "good.xyz").read_text()

    def write(name, text):
        path = tmp_path / name
        path.write_text(text)
        return path

    dummy = write("dummy.xyz", good + good.replace("H 0 0 1", "X 0 0 1"))
    with pytest.raises(ValueError, match=r"dummy.xyz: frame 1: atom 1 has symbol 'X'"):
        read_frames(dummy)
    unknown = write("unknown.xyz", good + good + good.replace("O 0", "Xx 0"))
    for fmt in (None, "extxyz"):
        with pytest.raises(
            ValueError, match=r"unknown.xyz: frame 2: unknown element .*'Xx'"
        ):
            read_frames(unknown, format=fmt)
    truncated = write("truncated.xyz", good + good.replace("2\n", "3\n", 1))
    with pytest.raises(ValueError, match=r"truncated.xyz: frame 1: .*truncated"):
        read_frames(truncated)
    assert len(read_frames(truncated, index="0")) == 1  # the intact frame still reads
    empty = write("empty.xyz", "")
    for fmt in (None, "extxyz", "xyz"):
        with pytest.raises(ValueError, match=r"empty.xyz: empty file"):
            read_frames(empty, format=fmt)
