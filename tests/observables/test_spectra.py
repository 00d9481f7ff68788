"""Spectrum estimators recover known frequencies and relative intensities."""

import math

import numpy as np
import pytest

from polmp import units
from polmp.observables import spectra
from tests.utils import shared_path

DT = 0.5  # fs
T = 2**14


def _omega(wavenumber_cm):
    """Angular frequency in rad/fs of a wavenumber in cm^-1."""
    return 2 * math.pi * units.SPEED_OF_LIGHT_CM_PER_FS * wavenumber_cm


def _band_area(spectrum, centre, half_width=60.0):
    sel = np.abs(spectrum.wavenumber - centre) < half_width
    return np.trapezoid(spectrum.intensity[sel], spectrum.wavenumber[sel])


def test_ir_peak_positions_and_relative_intensities(rng):
    t = np.arange(T) * DT
    amplitudes = {1640.0: 1.0, 3400.0: 2.0}
    pdot = np.zeros((T, 3))
    for w, a in amplitudes.items():
        phase = rng.uniform(0, 2 * np.pi, size=3)
        pdot += a * np.cos(_omega(w) * t[:, None] + phase)
    pdot += 0.01 * rng.normal(size=pdot.shape)
    s = spectra.ir_spectrum(pdot, DT, block_length=2048)
    peaks = s.wavenumber[np.argsort(s.intensity)[-1]]
    assert abs(peaks - 3400.0) < 10.0
    ratio = _band_area(s, 3400.0) / _band_area(s, 1640.0)
    assert ratio == pytest.approx(4.0, rel=0.05)  # power ~ amplitude^2
    assert np.trapezoid(s.intensity, s.wavenumber) == pytest.approx(1.0, rel=1e-10)


def test_raman_iso_and_aniso_separate_and_carry_omega_squared():
    t = np.arange(T) * DT
    alpha = np.tile(np.eye(3) * 1.5, (T, 1, 1))
    # isotropic modulations at two frequencies with equal amplitude
    for w in (1000.0, 3000.0):
        alpha += 0.01 * np.cos(_omega(w) * t)[:, None, None] * np.eye(3)
    # a traceless (anisotropic) modulation at 2000 cm^-1
    shear = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], float)
    alpha += 0.02 * np.cos(_omega(2000.0) * t)[:, None, None] * shear
    iso, aniso = spectra.raman_spectra(alpha, DT, block_length=2048)
    # anisotropic part carries no isotropic signal and vice versa
    assert _band_area(aniso, 2000.0) > 1e3 * _band_area(aniso, 1000.0)
    assert _band_area(iso, 1000.0) > 1e3 * _band_area(iso, 2000.0)
    # equal amplitudes -> intensities in the ratio (w2/w1)^2 = 9
    assert _band_area(iso, 3000.0) / _band_area(iso, 1000.0) == pytest.approx(
        9.0, rel=0.05
    )


def test_smoothing_preserves_area_and_quantum_correction_is_named(rng):
    t = np.arange(4096) * DT
    pdot = np.cos(_omega(1500.0) * t)[:, None] * np.ones(3) + 0.01 * rng.normal(
        size=(4096, 3)
    )
    raw = spectra.ir_spectrum(pdot, DT, normalize=False, max_wavenumber=None)
    smooth = spectra.ir_spectrum(
        pdot, DT, normalize=False, max_wavenumber=None, smoothing_fwhm_cm=40.0
    )
    assert np.trapezoid(smooth.intensity, smooth.wavenumber) == pytest.approx(
        np.trapezoid(raw.intensity, raw.wavenumber), rel=1e-3
    )
    assert smooth.intensity.max() < raw.intensity.max()
    # harmonic correction at 300 K: Q(w) = x / (1 - exp(-x)), x = hbar w / kT
    q = spectra.quantum_correction_factor(np.array([0.0, 1500.0]), 300.0, "harmonic")
    x = 1500.0 * units.INVCM / (units.KB * 300.0)
    np.testing.assert_allclose(q, [1.0, x / (1 - np.exp(-x))], rtol=1e-12)
    with pytest.raises(ValueError, match="unknown quantum correction"):
        spectra.quantum_correction_factor(np.ones(2), 300.0, "magic")


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        spectra.ir_spectrum(np.zeros((100, 2)), DT)
    with pytest.raises(ValueError, match="NaN"):
        spectra.ir_spectrum(np.full((100, 3), np.nan), DT)
    with pytest.raises(ValueError, match="block_length"):
        spectra.ir_spectrum(np.zeros((100, 3)), DT, block_length=200)
    with pytest.raises(ValueError, match="shape"):
        spectra.raman_spectra(np.zeros((100, 3)), DT)


def test_experimental_water_ir_has_the_known_bands():
    path = shared_path(
        "water_ir_optical_constants", "refractiveindex_info", "H2O_Segelstein.yml"
    )
    exp = spectra.experimental_water_ir(path)
    for lo, hi, expected in [(3000, 3800, 3390), (1500, 1800, 1639)]:
        sel = (exp.wavenumber > lo) & (exp.wavenumber < hi)
        peak = exp.wavenumber[sel][np.argmax(exp.intensity[sel])]
        assert abs(peak - expected) < 40, (lo, hi, peak)
