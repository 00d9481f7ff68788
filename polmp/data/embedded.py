"""Small labelled data sets shipped inside polmp (host side, not jittable).

``load_water_gfn2(kind)`` returns water frames labelled with GFN2-xTB (tblite):

* ``kind="bulk"``: periodic boxes of 32 H2O (96 atoms) with energy (eV), forces (eV/A)
  and stress (eV/A^3, ASE sign).
* ``kind="clusters"``: non-periodic clusters of 4-12 H2O with energy (eV), forces
  (eV/A), dipole (e*A) and Born effective charges ``bec[i, a, b] = dP_a/dr_{i,b}`` (e).

Structures are from the MIT-licensed bulk-water set of V. Kapil
(venkatkapil24/ML-quantum-vibrational-spectroscopy); the labels are polmp's own and are
released under polmp's MIT licence.  Counts, settings and the command that regenerates
the files are in ``polmp/data/embedded/README.md``; the labelling script is
``experiments/data/label_water_gfn2.py``.  Every frame's ``info`` records the method,
the tblite version and the settings.

``load_nacl_gfn2()`` returns Na8Cl8 (Q = 0) and Na9Cl8+ (Q = +1) clusters labelled with
GFN2-xTB (``embedded:nacl-gfn2``; structures built by
``experiments/data/label_nacl_gfn2.py``, labels and structures MIT).
"""

from __future__ import annotations

import lzma
import os
import tempfile
from importlib import resources

from polmp.data.io import read_frames
from polmp.data.schema import Frame

__all__ = [
    "EMBEDDED_PREFIX",
    "EMBEDDED_SETS",
    "WATER_GFN2_FILES",
    "NACL_GFN2_FILE",
    "load_embedded",
    "load_nacl_gfn2",
    "load_water_gfn2",
    "water_gfn2_path",
]

#: Prefix that names a shipped data set wherever a data path is accepted
#: (``data.train_path: embedded:water-gfn2``).
EMBEDDED_PREFIX = "embedded:"
#: Shipped set name -> the ``load_water_gfn2`` kinds it concatenates, in order.
EMBEDDED_SETS = {
    "water-gfn2": ("bulk", "clusters"),
    "water-gfn2-bulk": ("bulk",),
    "water-gfn2-clusters": ("clusters",),
    "nacl-gfn2": ("nacl",),
}
#: File of the NaCl cluster set (kind "nacl" of ``EMBEDDED_SETS``).
NACL_GFN2_FILE = "nacl_gfn2.extxyz.xz"

#: File name of each kind, inside the ``polmp/data/embedded`` folder.
WATER_GFN2_FILES = {
    "bulk": "water_gfn2_bulk.extxyz.xz",
    "clusters": "water_gfn2_clusters.extxyz.xz",
}
_REQUIRE = {
    "bulk": ("energy", "forces", "stress"),
    "clusters": ("energy", "forces", "dipole", "bec"),
}


def water_gfn2_path(kind: str = "bulk"):
    """``importlib.resources`` path of the shipped file of ``kind`` (a Traversable)."""
    if kind not in WATER_GFN2_FILES:
        raise ValueError(
            f"kind must be one of {sorted(WATER_GFN2_FILES)}, got {kind!r}"
        )
    return resources.files("polmp.data").joinpath("embedded", WATER_GFN2_FILES[kind])


def load_water_gfn2(kind: str = "bulk") -> list[Frame]:
    """Load the shipped GFN2-xTB water set (not jittable).

    Args:
        kind: ``"bulk"`` (periodic, energy/forces/stress) or ``"clusters"``
            (non-periodic, energy/forces/dipole/bec).

    Returns:
        list of ``Frame`` in eV, A, e (see ``polmp.data.schema``).  ``info`` holds the
        method (``"GFN2-xTB"``), ``tblite_version``, settings and ``source_index`` (the
        frame of the source file the structure came from; clusters also
        ``cluster_id``, ``centre_molecule``, ``n_molecules``, ``cut_radius_A``).

    Raises:
        ValueError: unknown ``kind``.
        FileNotFoundError: the data file is missing from the installation.
    """
    return _read_shipped(water_gfn2_path(kind), _REQUIRE[kind])


def _read_shipped(resource, require) -> list[Frame]:
    """Frames of a shipped ``.extxyz.xz`` resource with the ``require``d labels."""
    if not resource.is_file():
        raise FileNotFoundError(f"{resource.name} is not installed with polmp")
    # ASE's extxyz reader seeks back in its input once per frame, which costs a full
    # re-decompression each time on an .xz stream: decompress once into a temp file.
    with resource.open("rb") as raw, lzma.open(raw) as xz:
        text = xz.read()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, resource.name.removesuffix(".xz"))
        with open(path, "wb") as handle:
            handle.write(text)
        return read_frames(path, format="extxyz", require=require)


def load_nacl_gfn2() -> list[Frame]:
    """Load the shipped GFN2-xTB NaCl cluster set (not jittable).

    Returns:
        list of non-periodic ``Frame`` with energy (eV), forces (eV/A), total_charge
        (0 for Na8Cl8, +1 for Na9Cl8+) and, for the neutral frames, the dipole (e*A).
        ``info["kind"]`` is "cuboid", "block", "block_minus" or "adatom"; adatom frames
        carry ``extra_na_index``, ``extra_na_site`` and ``extra_na_distance_A``
        (polmp/data/embedded/README.md).

    Raises:
        FileNotFoundError: the data file is missing from the installation.
    """
    resource = resources.files("polmp.data").joinpath("embedded", NACL_GFN2_FILE)
    return _read_shipped(resource, ("energy", "forces"))


def load_embedded(name: str) -> list[Frame]:
    """Frames of the shipped set ``name`` (a key of ``EMBEDDED_SETS``), not jittable.

    ``"water-gfn2"`` is the periodic boxes followed by the clusters.

    Raises:
        ValueError: unknown name.
    """
    if name not in EMBEDDED_SETS:
        raise ValueError(
            f"unknown embedded data set {name!r}; expected one of {sorted(EMBEDDED_SETS)}"
        )
    if EMBEDDED_SETS[name] == ("nacl",):
        return load_nacl_gfn2()
    return [frame for kind in EMBEDDED_SETS[name] for frame in load_water_gfn2(kind)]

