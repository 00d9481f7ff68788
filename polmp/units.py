"""Physical constants and unit conversions (the only place they are defined).

Internal units are eV, Angstrom (A), elementary charge (e), femtosecond (fs) for
user-facing times and atomic mass units (amu).  Every value below is derived from
ASE's CODATA constants (``ase.units``), never typed in by hand, so that polmp and ASE
agree to the last digit.

Conventions:
    * ``COULOMB`` is k_e = 1/(4 pi eps0) in eV*A/e^2 (14.399645...).
    * ``EPSILON0`` is eps0 in e^2/(eV*A) (5.526349...e-3).
    * Fields are in V/A (= eV/(e*A)); dipoles in e*A; quadrupoles in e*A^2;
      polarizabilities in e^2*A^2/eV (= e*A^2/V); multiply by ``COULOMB`` for A^3.
    * The natural time unit of (eV, A, amu) is sqrt(amu*A^2/eV) ~ 10.18 fs;
      ``FS`` converts fs into it (t_internal = t_fs * FS).
"""

from __future__ import annotations

import math

from ase import units as _ase

#: Elementary charge in Coulomb (CODATA, via ASE).
ELEMENTARY_CHARGE_C: float = float(_ase._e)
#: Vacuum permittivity eps0 in e^2 / (eV * A).
EPSILON0: float = float(_ase._eps0) / ELEMENTARY_CHARGE_C * 1e-10
#: Coulomb constant k_e = 1/(4 pi eps0) in eV * A / e^2 (= 14.399645...).
COULOMB: float = 1.0 / (4.0 * math.pi * EPSILON0)

#: One Hartree in eV.
HARTREE: float = float(_ase.Hartree)
#: One Bohr in A.
BOHR: float = float(_ase.Bohr)
#: One femtosecond in the internal time unit sqrt(amu A^2 / eV).
FS: float = float(_ase.fs)
#: One cm^-1 in eV (photon energy h c / 1 cm).
INVCM: float = float(_ase.invcm)
#: Boltzmann constant in eV/K.
KB: float = float(_ase.kB)
#: Speed of light in cm/fs (for angular frequency in rad/fs -> wavenumber in cm^-1).
SPEED_OF_LIGHT_CM_PER_FS: float = float(_ase._c) * 100.0 * 1e-15
#: One Debye in e*A.
DEBYE: float = float(_ase.Debye)
#: 1 GPa in eV/A^3.
GPA: float = float(_ase.GPa)
#: One V/A field in eV/(e*A) (identity: the internal field unit *is* V/A).
VOLT_PER_ANGSTROM: float = 1.0


def angular_frequency_to_wavenumber(omega_rad_per_fs):
    """Convert angular frequency (rad/fs) to wavenumber (cm^-1).

    nu~ = omega / (2 pi c), with c in cm/fs.
    """
    return omega_rad_per_fs / (2.0 * math.pi * SPEED_OF_LIGHT_CM_PER_FS)

