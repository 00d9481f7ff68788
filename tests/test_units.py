"""Units come from ASE's CODATA values and match the method's stated constants."""

import math

from polmp import units


def test_coulomb_and_eps0_match_method_spec():
    assert abs(units.COULOMB - 14.399645) < 1e-6
    assert abs(units.EPSILON0 - 5.526349e-3) < 1e-9
    assert math.isclose(
        units.COULOMB * 4 * math.pi * units.EPSILON0, 1.0, rel_tol=1e-14
    )


def test_atomic_units_and_time():
    assert math.isclose(units.HARTREE, 27.211386, rel_tol=1e-7)
    assert math.isclose(units.BOHR, 0.52917721, rel_tol=1e-7)
    # natural time unit sqrt(amu A^2/eV) ~ 10.18 fs
    assert math.isclose(1.0 / units.FS, 10.180505, rel_tol=1e-6)


def test_wavenumber_conversion():
    # omega = 2 pi c nu~: 1000 cm^-1 <-> 2 pi * 2.99792458e-5 cm/fs * 1000 rad/fs
    omega = 2 * math.pi * 2.99792458e10 * 1e-15 * 1000.0
    assert math.isclose(
        units.angular_frequency_to_wavenumber(omega), 1000.0, rel_tol=1e-12
    )
    assert math.isclose(units.INVCM, 1.2398419843e-4, rel_tol=1e-8)
