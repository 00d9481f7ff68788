"""The shipped GFN2-xTB NaCl cluster set: loads, counts, charges, and re-labels.

The last test re-runs GFN2-xTB (tblite) on one frame of each kind with the labelling
script's settings (skipped when tblite is not installed).
"""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from polmp.data.embedded import load_embedded, load_nacl_gfn2

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "polmp" / "data" / "embedded" / "README.md"
NA, CL = 11, 17
#: kind -> (Na, Cl, total charge)
COMPOSITION = {
    "cuboid": (8, 8, 0.0),
    "block": (9, 8, 1.0),
    "block_minus": (8, 8, 0.0),
    "adatom": (9, 8, 1.0),
}


@pytest.fixture(scope="module")
def frames():
    return load_nacl_gfn2()


def test_counts_match_readme_and_embedded_name(frames):
    match = re.search(r"^- nacl frames: (\d+)\s*$", README.read_text(), re.M)
    assert match, "README.md has no '- nacl frames: N' line"
    assert len(frames) == int(match.group(1)) > 0
    assert len(load_embedded("nacl-gfn2")) == len(frames)


def test_composition_charge_and_labels(frames):
    kinds = {kind: 0 for kind in COMPOSITION}
    for frame in frames:
        kind = frame.info["kind"]
        kinds[kind] += 1
        na, cl, charge = COMPOSITION[kind]
        assert (frame.numbers == NA).sum() == na and (frame.numbers == CL).sum() == cl
        # Na+ / Cl-: the formal charge is the total charge.
        assert frame.total_charge == charge == frame.info["total_charge_setting"]
        assert frame.cell is None and not frame.periodic
        assert frame.forces.shape == (frame.num_atoms, 3)
        assert np.isfinite(frame.energy) and np.all(np.isfinite(frame.forces))
        # Dipoles only where they do not depend on the origin (neutral frames).
        assert (frame.dipole is not None) == (charge == 0)
        assert frame.info["method"] == "GFN2-xTB" and "tblite_version" in frame.info
        d = np.linalg.norm(frame.positions[:, None] - frame.positions[None], axis=-1)
        assert d[np.triu_indices(frame.num_atoms, 1)].min() > 1.5
    assert min(kinds.values()) >= 20, kinds


def test_block_minus_is_block_without_one_na(frames):
    by_kind = {}
    for frame in frames:
        by_kind.setdefault(frame.info["kind"], {})[frame.info["frame_id"]] = frame
    pairs = set(by_kind["block"]) & set(by_kind["block_minus"])
    assert len(pairs) >= 20
    for k in sorted(pairs)[:10]:
        full, minus = by_kind["block"][k], by_kind["block_minus"][k]
        kept = [
            i
            for i in range(full.num_atoms)
            if np.min(np.linalg.norm(minus.positions - full.positions[i], axis=1))
            < 1e-8
        ]
        assert len(kept) == minus.num_atoms == full.num_atoms - 1


def test_adatom_distances_span_near_and_far(frames):
    d = [f.info["extra_na_distance_A"] for f in frames if f.info["kind"] == "adatom"]
    assert min(d) < 3.5 and max(d) > 9.0
    for frame in frames:
        if frame.info["kind"] == "adatom":
            i = frame.info["extra_na_index"]
            assert frame.numbers[i] == NA
            others = np.delete(frame.positions, i, axis=0)
            nearest = np.linalg.norm(others - frame.positions[i], axis=1).min()
            assert nearest == pytest.approx(frame.info["extra_na_distance_A"], abs=1e-3)


@pytest.mark.skipif(
    importlib.util.find_spec("tblite") is None, reason="tblite not installed"
)
def test_relabelled_frames_agree_with_stored_labels(frames):
    sys.path.insert(0, str(ROOT / "experiments" / "data"))
    try:
        from label_nacl_gfn2 import singlepoint
    finally:
        sys.path.pop(0)
    seen = set()
    for frame in frames:
        kind = frame.info["kind"]
        if kind in seen:
            continue
        seen.add(kind)
        energy, forces, dipole = singlepoint(
            frame.numbers, frame.positions, int(frame.total_charge)
        )
        assert energy == pytest.approx(frame.energy, abs=1e-6)
        np.testing.assert_allclose(forces, frame.forces, atol=1e-6)
        if frame.dipole is not None:
            np.testing.assert_allclose(dipole, frame.dipole, atol=1e-6)
    assert seen == set(COMPOSITION)
