"""The shipped GFN2-xTB water set loads, matches its README, and its labels are sane.

The last tests run the labelling code of experiments/data/label_water_gfn2.py on one
water molecule (skipped when tblite is not installed).
"""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from polmp.data.embedded import WATER_GFN2_FILES, load_water_gfn2, water_gfn2_path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "polmp" / "data" / "embedded" / "README.md"
#: GFN2-xTB energy of one water molecule (eV), for the per-molecule sanity check.
E_H2O_GFN2 = -137.97


@pytest.fixture(scope="module")
def bulk():
    return load_water_gfn2("bulk")


@pytest.fixture(scope="module")
def clusters():
    return load_water_gfn2("clusters")


def _readme_count(kind: str) -> int:
    match = re.search(rf"^- {kind} frames: (\d+)\s*$", README.read_text(), re.M)
    assert match, f"README.md has no '- {kind} frames: N' line"
    return int(match.group(1))


def _oh_nearest(frame) -> np.ndarray:
    """Distance from every H to its nearest O (minimum image for periodic frames)."""
    pos = frame.positions
    o, h = pos[frame.numbers == 8], pos[frame.numbers == 1]
    d = h[:, None, :] - o[None, :, :]
    if frame.cell is not None:
        frac = d @ np.linalg.inv(frame.cell)
        d = (frac - np.round(frac)) @ frame.cell
    return np.linalg.norm(d, axis=-1).min(axis=1)


def test_files_are_package_resources():
    for kind, name in WATER_GFN2_FILES.items():
        resource = water_gfn2_path(kind)
        assert resource.name == name and resource.is_file()
    with pytest.raises(ValueError, match="kind"):
        load_water_gfn2("liquid")


@pytest.mark.parametrize("kind", ["bulk", "clusters"])
def test_counts_match_readme(kind, bulk, clusters):
    frames = bulk if kind == "bulk" else clusters
    assert len(frames) == _readme_count(kind) > 0


def test_headers_carry_method_and_source(bulk, clusters):
    for frames, kind in ((bulk, "bulk"), (clusters, "clusters")):
        for f in frames:
            assert f.info["method"] == "GFN2-xTB" and f.info["code"] == "tblite"
            assert re.fullmatch(r"\d+\.\d+\.\d+", str(f.info["tblite_version"]))
            assert f.info["kind"] == kind and f.info["structure_licence"] == "MIT"
            assert 0 <= int(f.info["source_index"]) < 1000
            assert float(f.info["electronic_temperature_K"]) == 300.0
    # bulk frames are distinct source frames, clusters distinct ids
    assert len({f.info["source_index"] for f in bulk}) == len(bulk)
    assert len({f.info["cluster_id"] for f in clusters}) == len(clusters)


def test_bulk_frames(bulk):
    energies = np.array([f.energy / f.num_atoms for f in bulk])
    for f in bulk:
        assert f.num_atoms == 96 and f.periodic and f.cell is not None
        assert np.count_nonzero(f.numbers == 8) == 32
        assert f.stress is not None and f.stress.shape == (3, 3)
        np.testing.assert_allclose(f.stress, f.stress.T, atol=1e-10)
        assert np.abs(f.stress).max() < 0.1  # eV/A^3 (0.1 eV/A^3 = 16 GPa)
        assert f.dipole is None and f.bec is None  # not labelled for periodic xTB
        assert 0.65 < _oh_nearest(f).min() and _oh_nearest(f).max() < 1.35
        rms = np.sqrt(np.mean(f.forces**2))
        assert 0.5 < rms < 5.0 and np.abs(f.forces).max() < 40.0  # eV/A
        np.testing.assert_allclose(f.forces.sum(0), 0.0, atol=1e-6)
    # same composition: energy per atom is consistent, near the GFN2 monomer
    assert energies.std() < 0.02
    assert abs(energies.mean() * 3 - E_H2O_GFN2) < 1.0


def test_cluster_frames(clusters):
    for f in clusters:
        n = f.num_atoms
        n_mol = int(f.info["n_molecules"])
        assert n == 3 * n_mol and 4 <= n_mol <= 12
        assert not f.periodic and f.cell is None and f.stress is None
        assert f.dipole.shape == (3,) and f.bec.shape == (n, 3, 3)
        assert f.forces.shape == (n, 3) and np.abs(f.forces).max() < 40.0
        assert 0.65 < _oh_nearest(f).min() and _oh_nearest(f).max() < 1.35
        # energy per molecule: near the monomer energy (distorted geometries, binding)
        assert abs(f.energy / n_mol - E_H2O_GFN2) < 1.0
        assert np.linalg.norm(f.dipole) < 0.7 * n_mol  # e*A: below all aligned
        # acoustic sum rule (neutral): sum_i Z*_i = 0
        assert np.abs(f.bec.sum(0)).max() < 1e-3 * np.abs(f.bec).max()
        diag = np.einsum("iaa->i", f.bec) / 3
        assert np.all(diag[f.numbers == 8] < 0) and np.all(diag[f.numbers == 1] > 0)


# ----------------------------------------------------------------- labelling code


def _labeller():
    pytest.importorskip("tblite")
    path = ROOT / "experiments" / "data" / "label_water_gfn2.py"
    spec = importlib.util.spec_from_file_location("label_water_gfn2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _water(periodic: bool):
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.rotate(30, "x")
    atoms.rotate(20, "y")
    if periodic:
        atoms.cell = np.diag([4.0, 4.5, 5.0])
        atoms.pbc = True
        atoms.center()
    return atoms


def test_label_cluster_one_molecule(tmp_path):
    lab = _labeller()
    atoms = _water(periodic=False)
    frame = lab.label_cluster(atoms, {"cluster_id": 0})
    assert frame.info["method"] == "GFN2-xTB" and not frame.periodic
    assert frame.energy == pytest.approx(E_H2O_GFN2, abs=0.1)
    # GFN2 dipole of water: 0.48 e*A = 2.3 D (e*A as in ASE; not Debye, not e*Bohr)
    assert 0.4 < np.linalg.norm(frame.dipole) < 0.55
    bec = frame.bec
    assert np.abs(bec.sum(0)).max() < 1e-6
    # Maxwell relation: the field derivative of forces equals dP_a/dr_{i,b}
    h, num = 1e-3, atoms.numbers
    for i, b in ((0, 0), (1, 2), (2, 1)):
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[i, b] += h
        minus[i, b] -= h
        dp = (
            lab.api_singlepoint(num, plus)[2] - lab.api_singlepoint(num, minus)[2]
        ) / (2 * h)
        np.testing.assert_allclose(bec[i, :, b], dp, atol=2e-3)
    # the frame round-trips through the extxyz writer/reader with every label
    from polmp.data.io import read_frames

    path = tmp_path / "one.extxyz"
    path.write_text(lab._frame_text(frame))
    (back,) = read_frames(path, require=("energy", "forces", "dipole", "bec"))
    np.testing.assert_array_equal(back.bec, frame.bec)
    np.testing.assert_array_equal(back.dipole, frame.dipole)
    assert back.info["method"] == "GFN2-xTB" and back.info["cluster_id"] == 0


def test_label_bulk_stress_is_ase_sign():
    lab = _labeller()
    atoms = _water(periodic=True)
    frame = lab.label_bulk(atoms, source_index=7)
    assert frame.info["source_index"] == 7 and frame.periodic
    volume = atoms.get_volume()
    h = 1e-4
    for a in range(3):
        energies = []
        for s in (h, -h):
            strained = atoms.copy()
            eps = np.eye(3)
            eps[a, a] += s
            strained.set_cell(atoms.cell[:] @ eps, scale_atoms=True)
            energies.append(lab.ase_singlepoint(strained)["energy"])
        # ASE: stress = (1/V) dE/d(strain)
        dE = (energies[0] - energies[1]) / (2 * h) / volume
        assert frame.stress[a, a] == pytest.approx(dE, abs=2e-6)
