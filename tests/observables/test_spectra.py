"""Spectrum estimators recover known frequencies and relative intensities."""

import json
import math

import numpy as np
import pytest

from polmp import units
from polmp.observables import report, spectra
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


def _noisy_oscillation(wavenumbers, num_samples, dt, seed, noise=1.0):
    """(T, 3) noise plus unit oscillations at ``wavenumbers`` (random phases)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) * dt
    signal = noise * rng.normal(size=(num_samples, 3))
    for nu in wavenumbers:
        phase = rng.uniform(0, 2 * np.pi, size=3)
        signal += np.sin(_omega(nu) * t[:, None] + phase)
    return signal


def test_isotropic_polarizability_has_a_zero_anisotropic_signal():
    """alpha_sys = a(t) I: the anisotropic part is float32 rounding, reported as zero,
    neither normalised nor given peaks."""
    rng = np.random.default_rng(0)
    t = np.arange(2000) * 2.0
    a = 1.5 + 0.01 * np.sin(_omega(1640.0) * t) + 0.002 * rng.normal(size=t.size)
    alpha = (a[:, None, None] * np.eye(3)).astype(np.float32)
    iso, aniso = spectra.raman_spectra(alpha, 2.0, block_length=200)
    assert aniso.zero and not iso.zero
    assert not np.any(aniso.intensity)
    assert report.band_peaks(aniso) == {}
    assert abs(report.band_peaks(iso)["bend"] - 1640.0) < 30
    assert spectra.ir_spectrum(np.zeros((400, 3)), 2.0).zero  # no Pdot at all


def test_only_peaks_above_the_noise_are_reported():
    dt, num_samples = 2.0, 4000
    noise = spectra.ir_spectrum(
        _noisy_oscillation([], num_samples, dt, seed=1), dt, block_length=200,
        smoothing_fwhm_cm=20.0,
    )  # fmt: skip
    assert noise.error is not None and np.all(noise.error > 0)
    assert report.band_peaks(noise) == {}  # featureless: no bend, no stretch
    peaked = spectra.ir_spectrum(
        _noisy_oscillation([1640.0, 3400.0], num_samples, dt, seed=1), dt,
        block_length=200, smoothing_fwhm_cm=20.0,
    )  # fmt: skip
    found = report.band_peaks(peaked)
    assert set(found) == {"bend", "stretch"}
    assert abs(found["bend"] - 1640.0) < 30 and abs(found["stretch"] - 3400.0) < 30
    # a maximum on the edge of a band is a slope, not a peak
    assert spectra.significant_peak(peaked, 1700.0, 2500.0) is None


def test_write_spectra_reports_zero_signals_and_draws_the_shipped_overlay(tmp_path):
    dt, num_samples = 2.0, 2000
    pdot = _noisy_oscillation([1640.0], num_samples, dt, seed=2, noise=0.3)
    alpha = np.broadcast_to(1.5 * np.eye(3), (num_samples, 3, 3)).astype(np.float32)
    alpha = (
        alpha
        * (1 + 0.001 * np.sin(_omega(1640.0) * np.arange(num_samples) * dt))[
            :, None, None
        ]
    )
    np.savez(
        tmp_path / "observables.npz", pdot=pdot, alpha_sys=alpha,
        sampling_interval_fs=dt,
    )  # fmt: skip
    (tmp_path / "config.yaml").write_text("temperature_K: 300.0\n")
    from polmp.cli.main import default_water_ir

    if default_water_ir() is None:
        pytest.skip("the experimental water IR of ../shared/data is absent")
    peaks = report.write_spectra(tmp_path, experimental_ir=default_water_ir())
    assert peaks[report.ZERO_SIGNAL] == ["raman_aniso"]
    assert peaks["raman_aniso"] == {}
    assert set(peaks["ir"]) == {"bend"}  # no libration or stretch table entries
    assert abs(peaks["experiment_ir"]["bend"] - 1639) < 40
    assert json.loads((tmp_path / "peaks.json").read_text()) == peaks
    arrays = np.load(tmp_path / "spectra.npz")
    assert not np.any(arrays["raman_aniso"]) and "experiment_ir" in arrays
