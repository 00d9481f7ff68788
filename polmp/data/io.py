"""Reading and writing labelled frames (host side, not jittable).

This is the only module that converts units: every reader returns ``Frame`` objects in
polmp's internal units (eV, A, e; see ``polmp.data.schema``).

Readers:
    * ``read_frames(path, index=":", format=None, ...)``: extended XYZ and anything ASE
      reads (``format="v-sim"``, ``"vasp"``, ``"vasp-xml"``, ...); RuNNer ``input.data``
      is detected by content (first keyword ``begin``) or with ``format="runner"``.
    * ``read_runner(path)``: RuNNer/n2p2 ``input.data`` (Bohr, Hartree) -> A, eV.
Writer:
    * ``write_extxyz(path, frames)``: extended XYZ that ``read_frames`` reads back with
      every label (floats written with ``repr``, so the round trip is exact).

Where labels are looked up (extxyz via ASE): ASE moves header ``energy``/``stress``/
``dipole`` and ``forces``/``charges`` columns into ``atoms.calc.results``; everything
else stays in ``atoms.info`` (header) or ``atoms.arrays`` (columns).  For each label a
*key spec* says where to look: a key name, a sequence of names tried in order (the
first one present wins), a callable ``f(atoms) -> value or None`` (e.g. to add two
header entries), or ``None`` to ignore that label.  The defaults list common label
names (``energy``, ``REF_energy``, ``DFT_energy`` ...) and never a model prediction:
keys that start with a prediction prefix (``MACE_``, ``NequIP_``, ``Allegro_``,
``pred_``, ...) are refused even when asked for explicitly, so a column such as
``MACE_forces`` can never become a label; it is kept, untouched, in ``frame.info``
(header entries) or ``frame.info["arrays"]`` (per-atom columns).

Conventions of the labels:
    * stress (3, 3) eV/A^3 in ASE's sign (positive = tensile); files may give the 6
      Voigt numbers (xx yy zz yz xz xy), 9 numbers or a 3x3 matrix.  A ``virial`` W
      (eV) is accepted when no stress is present: stress = -W / V.
    * Born effective charges: ``frame.bec[i, a, b] = Z*_{i,ab} = dP_a / dr_{i,b}``
      (a is the polarization component, b the displacement direction).  The les_fit
      files (``lesfit_spice_bec``, ``lesfit_spice_dipep_dipolar``) store the 9 numbers
      per atom *displacement-major*: number ``3 b + a`` is dP_a/dr_{i,b}.  This was
      established from the data, not assumed: only that reading satisfies the
      rotational sum rule of an isolated molecule,
      sum_i Z*_{i,ab} (w x r_i)_b = (w x P)_a, with the file's dipole in e*A (median
      relative residual 1e-3 to 3e-2 per file, against 0.13 to 1.5 for the other
      order); the acoustic sum rule sum_i Z*_i = Q I holds for both orders and cannot
      tell them apart.  ``bec_file_order="polarization-major"`` reads files that
      store ``3 a + b``.
    * polarizability (3, 3) A^3 from 9 numbers, row-major (or 6 Voigt numbers).
    * quadrupole (3, 3) e*A^2, the second moment sum_i q_i r_i r_i^T (not traceless):
      the SPICE dipeptide files (``lesfit_spice_dipep_dipolar``) store it under
      ``quadrupole`` as a ``_JSON`` 3x3 list in e*A^2, established from the data (its
      traceless part regresses on that of the MBIS-charge second moment with slope
      0.93, against 3.6 / 0.28 were it in e*Bohr^2 / read as Bohr).
    * per-frame ``total_charge`` in e from ``total_charge`` / ``charge`` keys or, for
      files of charged dimers, the sum of per-fragment ``chargeA``, ``chargeB``, ...
      (only with the default ``total_charge_key``); 0 when the file gives none.
    * per-atom charges: ``charges`` or MBIS / Hirshfeld columns (``mbi_charges``,
      ``hirshfeld_charges``, ...); forces: ``forces`` or ``force``.
    * ``pbc`` comes from the file; a frame with no periodic direction has
      ``cell=None``.  A left-handed cell is negated by default (same lattice).

Units of the files: extxyz and ASE formats are assumed to be in eV, A, e already
(ASE converts the formats it knows, e.g. vasprun.xml).  ``units={"dipole": BOHR}``
multiplies a label by a factor into internal units when a file uses others (the kapil
water set stores ``REF_dipole`` in e*Bohr; see tests/data/test_io.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from polmp.data.schema import Frame
from polmp.geometry.cell import validate_cell, validate_positions
from polmp.units import BOHR, HARTREE

__all__ = [
    "LABELS",
    "PREDICTION_PREFIXES",
    "read_frames",
    "read_runner",
    "write_extxyz",
]

#: A key spec: a key, keys tried in order, a callable ``f(atoms) -> value``, or None.
KeySpec = str | Sequence[str] | Callable[[Any], Any] | None

#: Label names accepted by ``require`` (``Frame`` fields a file may or may not give).
LABELS = (
    "energy",
    "forces",
    "stress",
    "total_charge",
    "dipole",
    "charges",
    "bec",
    "polarizability",
    "quadrupole",
)

#: Key prefixes of model predictions; such keys are never read as labels.
PREDICTION_PREFIXES = (
    "MACE_",
    "mace_",
    "NequIP_",
    "nequip_",
    "Allegro_",
    "allegro_",
    "CACE_",
    "cace_",
    "LES_",
    "les_",
    "pred_",
    "predicted_",
    "ML_",
    "ml_",
    "model_",
)

_DEFAULT_ENERGY = ("energy", "REF_energy", "DFT_energy", "dft_energy", "total_energy")
_DEFAULT_FORCES = ("forces", "force", "REF_forces", "DFT_forces", "dft_forces")
_DEFAULT_STRESS = ("stress", "REF_stress", "DFT_stress", "dft_stress")
_DEFAULT_VIRIAL = ("virial", "REF_virial", "DFT_virial", "dft_virial")
_DEFAULT_TOTAL_CHARGE = ("total_charge", "charge", "REF_total_charge", "REF_charge")
_DEFAULT_DIPOLE = ("dipole", "REF_dipole", "DFT_dipole", "dft_dipole")
_DEFAULT_CHARGES = (
    "charges",
    "REF_charges",
    "DFT_charges",
    "hirshfeld_charges",
    "mbi_charges",
    "mbis_charges",
)
_DEFAULT_BEC = ("bec", "REF_bec", "born_charges", "born_effective_charges", "BEC")
_DEFAULT_POLARIZABILITY = ("polarizability", "REF_polarizability", "DFT_polarizability")
_DEFAULT_QUADRUPOLE = ("quadrupole", "REF_quadrupole", "DFT_quadrupole")

_BEC_ORDERS = ("displacement-major", "polarization-major")
_RUNNER_FORMATS = ("runner", "input.data", "n2p2")
#: Voigt order used by ASE: xx yy zz yz xz xy.
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


# --------------------------------------------------------------------------- helpers


def voigt_to_matrix(values) -> np.ndarray:
    """Symmetric 3x3 matrix from 6 Voigt numbers (xx yy zz yz xz xy, ASE order).

    Args:
        values: (6,) array.

    Returns:
        (3, 3) symmetric array.
    """
    v = np.asarray(values, dtype=np.float64).reshape(6)
    out = np.empty((3, 3))
    for k, (a, b) in enumerate(_VOIGT):
        out[a, b] = out[b, a] = v[k]
    return out


def _as_3x3(value, name: str) -> np.ndarray:
    """A 3x3 matrix from 9 numbers (row-major), a 3x3 array or 6 Voigt numbers."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 9:
        return arr.reshape(3, 3)
    if arr.size == 6:
        return voigt_to_matrix(arr)
    raise ValueError(
        f"{name} must have 9 (3x3) or 6 (Voigt) entries, got shape {arr.shape}"
    )


def _is_prediction_key(key: str) -> bool:
    return any(key.startswith(p) for p in PREDICTION_PREFIXES)


def _normalize_spec(spec: KeySpec, name: str) -> tuple[str, ...] | Callable | None:
    if spec is None or callable(spec):
        return spec
    keys = (spec,) if isinstance(spec, str) else tuple(spec)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{name}: keys must be strings, got {key!r}")
        if _is_prediction_key(key):
            raise ValueError(
                f"{name}={key!r} names a model prediction (prefix in "
                "PREDICTION_PREFIXES), not a reference label"
            )
    return keys


def _lookup(atoms, spec, where: tuple[str, ...]):
    """Return (store, key, value) of the first key present, else (None, None, None).

    ``where`` names the stores searched, in order: "calc" (atoms.calc.results),
    "info" (atoms.info) and "arrays" (atoms.arrays).
    """
    if spec is None:
        return None, None, None
    if callable(spec):
        value = spec(atoms)
        return ("callable", None, value) if value is not None else (None, None, None)
    results = {}
    if atoms.calc is not None and getattr(atoms.calc, "results", None):
        results = atoms.calc.results
    stores = {"calc": results, "info": atoms.info, "arrays": atoms.arrays}
    for key in spec:
        for store in where:
            if key in stores[store]:
                return store, key, stores[store][key]
    return None, None, None


def _check_finite(value: np.ndarray, label: str, where: str) -> None:
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{where}: label {label!r} contains NaN or inf")


def _check_require(frames: Sequence[Frame], require: Sequence[str], found, where: str):
    """Raise ValueError naming the first frame that lacks a required label."""
    require = (require,) if isinstance(require, str) else tuple(require)
    unknown = [r for r in require if r not in LABELS]
    if unknown:
        raise ValueError(
            f"unknown label(s) in require: {unknown}; choose from {LABELS}"
        )
    for k, frame in enumerate(frames):
        for label in require:
            present = (
                found[k].get(label, False)
                if found is not None
                else (label == "total_charge" or getattr(frame, label) is not None)
            )
            if not present:
                raise ValueError(
                    f"{where}: frame {k} has no {label!r} label (required)"
                )


def _check_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected a file, got a directory: {path}")
    return path


def _looks_like_runner(path: str) -> bool:
    """True when the first keyword of the file is RuNNer's ``begin``."""
    with open(path, errors="replace") as handle:
        for line in handle:
            token = line.split()
            if token:
                return token[0] == "begin"
    return False


def select_frames(frames: list, index) -> list:
    """Apply an ASE-style index (int, slice or string such as ':' or '-1' or '2:5')."""
    if isinstance(index, str):
        if ":" in index:
            parts = [int(p) if p.strip() else None for p in index.split(":")]
            if len(parts) > 3:
                raise ValueError(f"bad index {index!r}")
            return frames[slice(*parts)]
        index = int(index)
    if isinstance(index, slice):
        return frames[index]
    return [frames[int(index)]]


# --------------------------------------------------------------------------- RuNNer


def read_runner(path, *, require: Sequence[str] = ()) -> list[Frame]:
    """Read a RuNNer / n2p2 ``input.data`` file into frames (not jittable).

    Format (whitespace separated, one keyword per line, atomic units)::

        begin
        comment free text                      (optional)
        lattice ax ay az                       (0 or 3 lines, Bohr)
        atom x y z element charge energy fx fy fz   (Bohr, e, Hartree, Hartree/Bohr)
        energy E                               (Hartree)
        charge Q                               (e)
        end

    Args:
        path: file name.
        require: labels every frame must carry (names from ``LABELS``).

    Returns:
        list of ``Frame``: positions (N, 3) A (Bohr * BOHR), cell (3, 3) A with
        ``pbc`` all True when the frame has lattice lines, else ``cell=None`` and
        ``pbc`` all False; energy eV (Hartree * HARTREE); forces (N, 3) eV/A (Hartree/
        Bohr * HARTREE / BOHR); charges (N,) e (None when every atom has exactly 0, the
        RuNNer placeholder for "no charges"); total_charge e; ``info["comment"]`` when
        present.  The per-atom energy column (unused by RuNNer) is dropped.

    Raises:
        FileNotFoundError: missing file.
        ValueError: an empty file, a malformed or truncated file (the message gives the
            line and the frame number), an unknown element or a dummy atom ``X``,
            a lattice with other than 3 vectors, NaN positions, a bad cell, or a frame
            lacking a required label.
    """
    frames, found = _read_runner(path)
    _check_require(frames, require, found, os.fspath(path))
    return frames


def _read_runner(path) -> tuple[list[Frame], list[dict]]:
    """Parse RuNNer input.data; also return which labels each frame gave."""
    from ase.data import atomic_numbers

    path = _check_path(path)
    frames: list[Frame] = []
    found: list[dict] = []
    current: dict | None = None

    def fail(lineno, msg):
        frame = f" frame {len(frames)}:" if current is not None else ""
        raise ValueError(f"{path}:{lineno}:{frame} {msg}")

    with open(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            key = tokens[0]
            if key == "begin":
                if current is not None:
                    fail(lineno, "'begin' inside a frame (missing 'end')")
                current = {
                    "lattice": [],
                    "atoms": [],
                    "energy": None,
                    "charge": None,
                    "comment": None,
                    "start": lineno,
                }
                continue
            if current is None:
                fail(lineno, f"{key!r} outside a begin/end block")
            try:
                if key == "comment":
                    text = line.strip()[len("comment") :].strip()
                    current["comment"] = (
                        text
                        if current["comment"] is None
                        else (current["comment"] + "\n" + text)
                    )
                elif key == "lattice":
                    if len(tokens) != 4:
                        fail(lineno, "lattice needs 3 numbers")
                    current["lattice"].append([float(t) for t in tokens[1:4]])
                elif key == "atom":
                    if len(tokens) != 10:
                        fail(
                            lineno,
                            f"atom line needs 9 fields, got {len(tokens) - 1}",
                        )
                    element = tokens[4]
                    if atomic_numbers.get(element, 0) <= 0:
                        fail(lineno, f"unknown element {element!r}")
                    values = [float(t) for t in tokens[1:4] + tokens[5:10]]
                    current["atoms"].append((atomic_numbers[element], values))
                elif key == "energy":
                    current["energy"] = float(tokens[1])
                elif key == "charge":
                    current["charge"] = float(tokens[1])
                elif key == "end":
                    frame, has = _runner_frame(current, path, lineno, fail)
                    frames.append(frame)
                    found.append(has)
                    current = None
                else:
                    fail(lineno, f"unknown keyword {key!r}")
            except (IndexError, ValueError) as err:
                if str(err).startswith(path):
                    raise
                fail(lineno, f"cannot parse {line.strip()!r} ({err})")
    if current is not None:
        raise ValueError(
            f"{path}: frame {len(frames)} starting at line {current['start']} has "
            "no 'end' (truncated file?)"
        )
    if not frames:
        raise ValueError(f"{path}: no frames (no begin/end block) in the file")
    return frames, found


def _runner_frame(block: dict, path: str, lineno: int, fail) -> tuple[Frame, dict]:
    if not block["atoms"]:
        fail(lineno, "frame without atoms")
    numbers = np.array([z for z, _ in block["atoms"]], dtype=np.int64)
    values = np.array([v for _, v in block["atoms"]], dtype=np.float64)  # (N, 8)
    positions = validate_positions(
        values[:, 0:3] * BOHR, name=f"{path} frame positions"
    )
    charges = values[:, 3]
    forces = values[:, 5:8] * (HARTREE / BOHR)
    _check_finite(forces, "forces", f"{path}:{lineno}")
    if len(block["lattice"]) not in (0, 3):
        fail(lineno, f"expected 0 or 3 lattice lines, got {len(block['lattice'])}")
    if block["lattice"]:
        try:
            cell = validate_cell(np.array(block["lattice"]) * BOHR)
        except ValueError as err:
            fail(lineno, str(err))
        pbc = np.ones(3, bool)
    else:
        cell, pbc = None, np.zeros(3, bool)
    energy = None if block["energy"] is None else block["energy"] * HARTREE
    if energy is not None and not math.isfinite(energy):
        fail(lineno, "energy is NaN or inf")
    info = {} if block["comment"] is None else {"comment": block["comment"]}
    has_charges = bool(np.any(charges != 0.0))
    frame = Frame(
        positions=positions,
        numbers=numbers,
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=forces,
        total_charge=0.0 if block["charge"] is None else float(block["charge"]),
        charges=charges.copy() if has_charges else None,
        info=info,
    )
    has = {
        "energy": energy is not None,
        "forces": True,
        "total_charge": block["charge"] is not None,
        "charges": has_charges,
    }
    return frame, has


# ------------------------------------------------------------------ ASE / extxyz


def read_frames(
    path,
    index=":",
    format: str | None = None,
    *,
    require: Sequence[str] = (),
    energy_key: KeySpec = _DEFAULT_ENERGY,
    forces_key: KeySpec = _DEFAULT_FORCES,
    stress_key: KeySpec = _DEFAULT_STRESS,
    virial_key: KeySpec = _DEFAULT_VIRIAL,
    total_charge_key: KeySpec = _DEFAULT_TOTAL_CHARGE,
    dipole_key: KeySpec = _DEFAULT_DIPOLE,
    charges_key: KeySpec = _DEFAULT_CHARGES,
    bec_key: KeySpec = _DEFAULT_BEC,
    polarizability_key: KeySpec = _DEFAULT_POLARIZABILITY,
    quadrupole_key: KeySpec = _DEFAULT_QUADRUPOLE,
    bec_file_order: str = "displacement-major",
    units: Mapping[str, float] | None = None,
    left_handed: str = "flip",
) -> list[Frame]:
    """Read labelled frames from extxyz, RuNNer or any format ASE reads (not jittable).

    Args:
        path: file name.
        index: which frames, ASE style: ``":"`` (all), ``"2:10"``, ``-1``, a slice.
        format: ASE format name (``"extxyz"``, ``"v-sim"``, ``"vasp"``, ``"vasp-xml"``,
            ...), ``"runner"`` for RuNNer input.data, or None to guess (RuNNer is
            recognised by its first keyword ``begin``, anything else is left to ASE).
        require: labels every returned frame must carry (names from ``LABELS``); a
            missing one raises ValueError naming the frame index and the label.
        energy_key, forces_key, stress_key, virial_key, total_charge_key, dipole_key,
            charges_key, bec_key, polarizability_key, quadrupole_key: key specs (see module docstring):
            a name, names tried in order, a callable ``f(atoms)``, or None to skip.
            Frame-level labels are looked up in ``atoms.calc.results`` then
            ``atoms.info``; per-atom labels in ``atoms.calc.results`` then
            ``atoms.arrays``.  Prediction keys (``MACE_*`` ...) are refused.
        bec_file_order: ``"displacement-major"`` (les_fit: number 3b+a of an atom is
            dP_a/dr_b) or ``"polarization-major"`` (number 3a+b is dP_a/dr_b).
        units: optional factors into internal units, applied after reading, keyed by
            ``positions`` (also scales the cell), ``energy``, ``forces``, ``stress``,
            ``dipole``, ``charges``, ``total_charge``, ``bec``, ``polarizability``,
            ``quadrupole``.
        left_handed: what to do with a cell whose det < 0 (two of the five MAPbI3
            v-sim cells are): ``"flip"`` (default) negates every lattice vector, which
            describes the same lattice with the same Cartesian positions and pbc axes
            and makes det > 0 (``info["cell_negated"] = True`` records it);
            ``"error"`` raises ValueError.

    Returns:
        list of ``Frame`` in eV, A, e: positions (N, 3) A, cell (3, 3) A or None,
        energy eV, forces (N, 3) eV/A, stress (3, 3) eV/A^3, total_charge e, dipole (3,)
        e*A, charges (N,) e, bec (N, 3, 3) e, polarizability (3, 3) A^3, quadrupole
        (3, 3) e*A^2; unused header
        entries in ``info``, unused per-atom columns in ``info["arrays"]``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unknown format, an empty file, an unknown element symbol or a
            dummy atom (``X``), a truncated or malformed frame (the message names the
            file and the frame), a label of the wrong shape, NaN/inf in positions or
            labels, a singular or left-handed cell, or a frame lacking a required label.
    """
    path = _check_path(path)
    if bec_file_order not in _BEC_ORDERS:
        raise ValueError(
            f"bec_file_order must be one of {_BEC_ORDERS}, got {bec_file_order!r}"
        )
    if left_handed not in ("flip", "error"):
        raise ValueError(f"left_handed must be 'flip' or 'error', got {left_handed!r}")
    units = dict(units or {})
    allowed_units = {
        "positions",
        "energy",
        "forces",
        "stress",
        "dipole",
        "charges",
        "total_charge",
        "bec",
        "polarizability",
        "quadrupole",
    }
    if set(units) - allowed_units:
        raise ValueError(f"unknown units keys {sorted(set(units) - allowed_units)}")

    fmt = format.lower() if isinstance(format, str) else None
    if fmt in _RUNNER_FORMATS or (fmt is None and _looks_like_runner(path)):
        frames, found = _read_runner(path)
        frames, found = select_frames(frames, index), select_frames(found, index)
        if units:
            frames = [_scale(f, units) for f in frames]
        _check_require(frames, require, found, path)
        return frames

    images = _read_images(path, index, format)

    specs = {
        "energy": _normalize_spec(energy_key, "energy_key"),
        "forces": _normalize_spec(forces_key, "forces_key"),
        "stress": _normalize_spec(stress_key, "stress_key"),
        "virial": _normalize_spec(virial_key, "virial_key"),
        "total_charge": _normalize_spec(total_charge_key, "total_charge_key"),
        "dipole": _normalize_spec(dipole_key, "dipole_key"),
        "charges": _normalize_spec(charges_key, "charges_key"),
        "bec": _normalize_spec(bec_key, "bec_key"),
        "polarizability": _normalize_spec(polarizability_key, "polarizability_key"),
        "quadrupole": _normalize_spec(quadrupole_key, "quadrupole_key"),
    }
    fragment_charges = total_charge_key is _DEFAULT_TOTAL_CHARGE
    frames, found = [], []
    for k, atoms in enumerate(images):
        frame, has = _atoms_to_frame(
            atoms,
            specs,
            bec_file_order,
            left_handed,
            _frame_where(path, index, k),
            fragment_charges,
        )
        if units:
            frame = _scale(frame, units)
        frames.append(frame)
        found.append(has)
    _check_require(frames, require, found, path)
    return frames


def _frame_where(path: str, index, k: int) -> str:
    """'path: frame k', naming the selection when ``index`` is not all frames."""
    if index in (":", None) or index == slice(None):
        return f"{path}: frame {k}"
    return f"{path}: frame {k} of the selection index={index!r}"


def _read_images(path: str, index, format: str | None) -> list:
    """ase.Atoms of the selected frames; errors name the file and the frame.

    Raises:
        ValueError: unknown format, an unknown element symbol (ASE raises a bare
            KeyError), a truncated or malformed frame, or a file with no frames.
    """
    import ase.io
    from ase.io.formats import UnknownFileTypeError

    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: empty file, no frames")
    images: list = []
    try:
        for atoms in ase.io.iread(path, index=index, format=format):
            images.append(atoms)
    except UnknownFileTypeError as err:
        raise ValueError(
            f"unknown or unsupported format {format!r} for {path}: {err}"
        ) from err
    except KeyError as err:
        where = _frame_where(path, index, len(images))
        raise ValueError(
            f"{where}: unknown element symbol {err.args[0]!r} (not a chemical symbol)"
        ) from err
    except Exception as err:  # ASE's parsers raise many types on bad input
        where = _frame_where(path, index, len(images))
        raise ValueError(
            f"{where}: cannot parse ({type(err).__name__}: {err}); "
            "the file is truncated or malformed"
        ) from err
    if not images and index in (":", None):
        raise ValueError(f"{path}: no frames found")
    for k, atoms in enumerate(images):
        dummy = np.flatnonzero(np.asarray(atoms.numbers) <= 0)
        if dummy.size:
            symbol = atoms.get_chemical_symbols()[int(dummy[0])]
            raise ValueError(
                f"{_frame_where(path, index, k)}: atom {int(dummy[0])} has symbol "
                f"{symbol!r}, a dummy atom (atomic number 0) and not an element; "
                f"{dummy.size} such atom(s) in this frame"
            )
    return images


def _fragment_charge(info: Mapping[str, Any]) -> float | None:
    """Sum of per-fragment charges ``chargeA``, ``chargeB``, ... in a header, or None.

    Files of charged molecular dimers state the charge of each monomer instead of the
    total (``chargeA=1 chargeB=-1``); the frame's total charge is their sum.
    """
    keys = [
        k for k in info if len(k) == 7 and k.startswith("charge") and k[-1].isupper()
    ]
    if len(keys) < 2:
        return None
    return float(sum(float(info[k]) for k in keys))


def _atoms_to_frame(
    atoms,
    specs: dict,
    bec_file_order: str,
    left_handed: str,
    where: str,
    fragment_charges: bool = False,
) -> tuple[Frame, dict]:
    """Convert one ase.Atoms into a Frame; ``has`` records which labels were found."""
    n = len(atoms)
    positions = validate_positions(
        np.array(atoms.positions, dtype=np.float64), name=f"{where}: positions"
    )
    numbers = np.array(atoms.numbers, dtype=np.int64)
    pbc = np.array(atoms.pbc, dtype=bool)
    cell, negated = None, False
    if pbc.any():
        cell = np.array(atoms.cell[:], dtype=np.float64)
        if left_handed == "flip" and np.linalg.det(cell) < 0:
            # -M spans the same lattice (a_i and -a_i are both lattice vectors).
            cell, negated = -cell, True
        try:
            cell = validate_cell(cell)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err

    scalar_stores, atom_stores = ("calc", "info"), ("calc", "arrays")
    used: set[tuple[str, str]] = set()  # (store, key) consumed as labels
    has: dict[str, bool] = {}

    def get(label, stores):
        store, key, value = _lookup(atoms, specs[label], stores)
        has[label] = store is not None
        if key is not None:
            used.add((store, key))
        return value

    def per_frame(label, value, size):
        arr = np.asarray(value, dtype=np.float64)
        if arr.size != size:
            raise ValueError(
                f"{where}: {label!r} has shape {arr.shape}, expected {size} numbers"
            )
        _check_finite(arr, label, where)
        return arr

    def per_atom(label, value, width):
        arr = np.asarray(value, dtype=np.float64)
        if arr.size != n * width or (arr.ndim >= 1 and arr.shape[0] != n):
            raise ValueError(
                f"{where}: {label!r} has shape {arr.shape}, "
                f"expected ({n}, {width}) for {n} atoms"
            )
        _check_finite(arr, label, where)
        return arr.reshape((n, width) if width > 1 else (n,))

    energy = get("energy", scalar_stores)
    if energy is not None:
        energy = float(per_frame("energy", energy, 1).reshape(()))

    forces = get("forces", atom_stores)
    if forces is not None:
        forces = per_atom("forces", forces, 3)

    stress = get("stress", scalar_stores)
    if stress is not None:
        stress = _as_3x3(
            per_frame("stress", stress, np.size(stress)), f"{where}: stress"
        )
    else:
        virial = get("virial", scalar_stores)
        if virial is not None:
            if cell is None:
                raise ValueError(
                    f"{where}: a virial needs a periodic cell to give a stress"
                )
            virial = _as_3x3(
                per_frame("virial", virial, np.size(virial)), f"{where}: virial"
            )
            stress = -virial / abs(float(np.linalg.det(cell)))
            has["stress"] = True
    has.setdefault("stress", stress is not None)
    has.pop("virial", None)

    total_charge = get("total_charge", scalar_stores)
    if total_charge is None and fragment_charges:
        total_charge = _fragment_charge(atoms.info)
        has["total_charge"] = total_charge is not None
    total_charge = (
        0.0
        if total_charge is None
        else float(per_frame("total_charge", total_charge, 1).reshape(()))
    )

    dipole = get("dipole", scalar_stores)
    if dipole is not None:
        dipole = per_frame("dipole", dipole, 3).reshape(3)

    charges = get("charges", atom_stores)
    if charges is not None:
        charges = per_atom("charges", charges, 1)

    bec = get("bec", atom_stores)
    if bec is not None:
        bec = per_atom("bec", bec, 9).reshape(n, 3, 3)
        if bec_file_order == "displacement-major":
            bec = bec.transpose(0, 2, 1)  # file row = displacement b -> bec[i, a, b]
        bec = np.ascontiguousarray(bec)

    polarizability = get("polarizability", scalar_stores)
    if polarizability is not None:
        polarizability = _as_3x3(
            per_frame("polarizability", polarizability, np.size(polarizability)),
            f"{where}: polarizability",
        )

    quadrupole = get("quadrupole", scalar_stores)
    if quadrupole is not None:
        quadrupole = _as_3x3(
            per_frame("quadrupole", quadrupole, np.size(quadrupole)),
            f"{where}: quadrupole",
        )

    info = {k: v for k, v in atoms.info.items() if ("info", k) not in used}
    results = atoms.calc.results if atoms.calc is not None else {}
    for key, value in results.items():
        # Results not consumed as labels (free_energy, magmom, ...) are kept, not lost.
        if ("calc", key) in used:
            continue
        if key in ("forces", "charges") or (
            np.ndim(value) >= 1 and np.shape(value)[0] == n
        ):
            info.setdefault("arrays", {})[key] = np.asarray(value)
        else:
            info[key] = value
    extra = {
        k: np.asarray(v)
        for k, v in atoms.arrays.items()
        if k not in ("numbers", "positions") and ("arrays", k) not in used
    }
    if extra:
        info.setdefault("arrays", {}).update(extra)

    if negated:
        info["cell_negated"] = True
    frame = Frame(
        positions=positions,
        numbers=numbers,
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=forces,
        stress=stress,
        total_charge=total_charge,
        dipole=dipole,
        charges=charges,
        bec=bec,
        polarizability=polarizability,
        quadrupole=quadrupole,
        info=info,
    )
    return frame, has


def _scale(frame: Frame, units: Mapping[str, float]) -> Frame:
    """Multiply labels by unit factors (``positions`` also scales the cell)."""
    changes = {}
    for name, factor in units.items():
        if name == "positions":
            changes["positions"] = frame.positions * factor
            if frame.cell is not None:
                changes["cell"] = frame.cell * factor
            continue
        value = getattr(frame, name)
        if value is not None:
            changes[name] = (
                float(value) * factor
                if name in ("energy", "total_charge")
                else value * factor
            )
    return dataclasses.replace(frame, **changes)


# --------------------------------------------------------------------------- writer

_RESERVED_HEADER = {
    "Lattice",
    "Properties",
    "pbc",
    "energy",
    "stress",
    "total_charge",
    "dipole",
    "polarizability",
    "quadrupole",
}
_RESERVED_COLUMNS = {
    "species",
    "pos",
    "forces",
    "charges",
    "bec",
    "numbers",
    "positions",
}


def _fmt(values) -> str:
    return " ".join(repr(float(v)) for v in np.ravel(values))


def write_extxyz(
    path, frames: Sequence[Frame], *, bec_file_order: str = "displacement-major"
):
    """Write frames as extended XYZ that ``read_frames`` reads back (not jittable).

    Header: ``Lattice`` (periodic frames), ``Properties``, ``energy`` (eV), ``stress``
    (9 numbers, eV/A^3, ASE sign), ``total_charge`` (e), ``dipole`` (e*A),
    ``polarizability`` (9 numbers, A^3), the entries of ``frame.info`` and ``pbc``.
    Columns: species, pos (A), forces (eV/A), charges (e), bec (9 numbers, in
    ``bec_file_order``, displacement-major by default as in les_fit files) and the
    arrays of ``frame.info["arrays"]``.  Floats are written with ``repr``, so the round
    trip is exact.

    Args:
        path: output file name (overwritten).
        frames: sequence of ``Frame``.
        bec_file_order: layout of the 9 bec numbers (see ``read_frames``).

    Raises:
        ValueError: an info key that collides with a label key, or inconsistent shapes.
    """
    from ase.data import chemical_symbols
    from ase.io.extxyz import key_val_dict_to_str

    if bec_file_order not in _BEC_ORDERS:
        raise ValueError(
            f"bec_file_order must be one of {_BEC_ORDERS}, got {bec_file_order!r}"
        )
    lines: list[str] = []
    for k, frame in enumerate(frames):
        n = frame.num_atoms
        where = f"frame {k}"
        positions = validate_positions(frame.positions, name=f"{where}: positions")
        columns = [
            ("species", "S", 1, [chemical_symbols[int(z)] for z in frame.numbers])
        ]
        columns.append(("pos", "R", 3, positions))
        if frame.forces is not None:
            columns.append(("forces", "R", 3, np.asarray(frame.forces).reshape(n, 3)))
        if frame.charges is not None:
            columns.append(("charges", "R", 1, np.asarray(frame.charges).reshape(n)))
        if frame.bec is not None:
            bec = np.asarray(frame.bec).reshape(n, 3, 3)
            if bec_file_order == "displacement-major":
                bec = bec.transpose(0, 2, 1)
            columns.append(("bec", "R", 9, bec.reshape(n, 9)))
        info = dict(frame.info)
        arrays = info.pop("arrays", {}) or {}
        for name, arr in arrays.items():
            if name in _RESERVED_COLUMNS:
                raise ValueError(
                    f"{where}: info['arrays'] key {name!r} collides with a column"
                )
            arr = np.asarray(arr)
            if arr.shape[0] != n:
                raise ValueError(
                    f"{where}: info['arrays'][{name!r}] has {arr.shape[0]} rows, "
                    f"expected {n}"
                )
            kind = {"f": "R", "i": "I", "u": "I", "b": "L"}.get(arr.dtype.kind, "S")
            width = int(np.prod(arr.shape[1:], dtype=int)) if arr.ndim > 1 else 1
            columns.append(
                (name, kind, width, arr.reshape(n, width) if width > 1 else arr)
            )
        clash = _RESERVED_HEADER.intersection(info)
        if clash:
            raise ValueError(
                f"{where}: info keys {sorted(clash)} collide with label keys"
            )

        header = []
        if frame.cell is not None:
            header.append(f'Lattice="{_fmt(frame.cell)}"')
        header.append(
            "Properties="
            + ":".join(f"{name}:{kind}:{width}" for name, kind, width, _ in columns)
        )
        if frame.energy is not None:
            header.append(f"energy={float(frame.energy)!r}")
        if frame.stress is not None:
            header.append(f'stress="{_fmt(_as_3x3(frame.stress, "stress"))}"')
        header.append(f"total_charge={float(frame.total_charge)!r}")
        if frame.dipole is not None:
            header.append(f'dipole="{_fmt(np.asarray(frame.dipole).reshape(3))}"')
        if frame.polarizability is not None:
            header.append(
                'polarizability="'
                + _fmt(_as_3x3(frame.polarizability, "polarizability"))
                + '"'
            )
        if frame.quadrupole is not None:
            header.append(
                f'quadrupole="{_fmt(_as_3x3(frame.quadrupole, "quadrupole"))}"'
            )
        if info:
            header.append(key_val_dict_to_str(info))
        pbc = " ".join("T" if p else "F" for p in np.asarray(frame.pbc, bool))
        header.append(f'pbc="{pbc}"')

        lines.append(str(n))
        lines.append(" ".join(header))
        for i in range(n):
            row = []
            for _, kind, _width, data in columns:
                value = data[i]
                if kind == "R":
                    row.append(_fmt(value))
                elif kind == "L":
                    row.append(" ".join("T" if v else "F" for v in np.ravel(value)))
                else:
                    row.append(" ".join(str(v) for v in np.ravel(value)))
            lines.append(" ".join(row))
    with open(os.fspath(path), "w") as handle:
        handle.write("\n".join(lines) + "\n")
