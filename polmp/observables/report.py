"""Spectra of an MD run directory: arrays, peak table and plots (host side, numpy).

``write_spectra(md_dir)`` is what ``polmp spectra RUN_DIR`` runs.  It reads
``<md_dir>/observables.npz`` (written by ``polmp.md.simulate.run_md``), computes the
IR spectrum from ``pdot`` and the isotropic/anisotropic Raman spectra from
``alpha_sys`` (``polmp.observables.spectra``), and writes

* ``spectra.npz``: ``wavenumber_cm`` and ``ir``, ``raman_iso``, ``raman_aniso``
  (area-normalised on the same axis), plus the experimental curve when given;
* ``ir.png`` / ``raman.png`` (matplotlib, Agg backend), the IR overlaid on the
  experimental water spectrum n(w) alpha(w) when a file is given (both scaled to
  the same area over the plotted range);
* ``peaks.json``: per spectrum, the position of the strongest peak in each band where
  water has one (libration 300-1000, bend 1400-1900, stretch 2800-4000 cm^-1), only
  where the spectrum has a peak that stands above its noise
  (``polmp.observables.spectra.significant_peak``), and under ``"zero_signal"`` the
  spectra whose signal is identically zero (e.g. the anisotropic Raman spectrum of a
  model with isotropic polarizabilities).  A zero signal is neither normalised nor
  plotted as a curve.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from polmp.observables.spectra import (
    Spectrum,
    experimental_water_ir,
    ir_spectrum,
    raman_spectra,
    significant_peak,
)

__all__ = ["WATER_BANDS_CM", "ZERO_SIGNAL", "band_peaks", "write_spectra"]

#: key of ``peaks.json`` listing the spectra whose signal is identically zero
ZERO_SIGNAL = "zero_signal"

#: Bands (cm^-1) in which the peak of a water spectrum is reported.
WATER_BANDS_CM = {
    "libration": (300.0, 1000.0),
    "bend": (1400.0, 1900.0),
    "stretch": (2800.0, 4000.0),
}


def band_peaks(
    spectrum: Spectrum, bands=WATER_BANDS_CM, *, num_sigma: float = 3.0
) -> dict[str, float]:
    """Wavenumber (cm^-1) of the significant peak of ``spectrum`` in each band.

    Bands without a peak standing ``num_sigma`` standard errors above its
    surroundings (``significant_peak``) are left out: an empty dict for a featureless
    or zero spectrum.
    """
    peaks = {}
    for name, (low, high) in bands.items():
        peak = significant_peak(spectrum, low, high, num_sigma=num_sigma)
        if peak is not None:
            peaks[name] = peak
    return peaks


def _on_axis(spectrum: Spectrum, axis: np.ndarray) -> np.ndarray:
    """``spectrum`` interpolated on ``axis`` and area-normalised there."""
    values = np.interp(axis, spectrum.wavenumber, spectrum.intensity, left=0, right=0)
    area = np.trapezoid(values, axis)
    return values / area if area > 0 else values


def write_spectra(
    md_dir,
    *,
    experimental_ir=None,
    smoothing_fwhm_cm: float | None = 20.0,
    block_length_fs: float | None = None,
    max_wavenumber: float = 4500.0,
    quantum_correction: str | None = None,
) -> dict:
    """Write the spectra of an MD run (module docstring).  Host only.

    Args:
        md_dir: directory with ``observables.npz`` and ``config.yaml`` of ``run_md``.
        experimental_ir: optional path of a refractiveindex.info file of liquid water
            (``experimental_water_ir``) to overlay on the IR spectrum.
        smoothing_fwhm_cm: Gaussian smoothing of all spectra (FWHM, cm^-1), or None.
        block_length_fs: correlation block length, fs (default: half the run, so
            that two 50 %-overlapping blocks at least are averaged).
        max_wavenumber: upper end of the axis, cm^-1.
        quantum_correction: None or a named factor of ``ir_spectrum``.

    Returns:
        dict spectrum name -> {band: peak wavenumber} (significant peaks only), and
        ``ZERO_SIGNAL`` -> list of the spectra that are identically zero (also in
        ``peaks.json``).

    Raises:
        FileNotFoundError: no observables.npz.
        ValueError: the run recorded no ``pdot`` (variant "sr" or observables off).
    """
    import yaml

    md_dir = pathlib.Path(md_dir)
    path = md_dir / "observables.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `polmp md` first")
    data = np.load(path)
    if "pdot" not in data:
        raise ValueError(
            f"{path} has no pdot: the model has no latents (variant 'sr') or the run "
            "had observables: false"
        )
    with open(md_dir / "config.yaml") as handle:
        temperature = float(yaml.safe_load(handle).get("temperature_K", 300.0))
    dt = float(data["sampling_interval_fs"])
    num_samples = len(data["pdot"])
    block = (
        max(num_samples // 2, 8)
        if block_length_fs is None
        else max(int(round(block_length_fs / dt)), 8)
    )
    options = dict(
        block_length=block,
        smoothing_fwhm_cm=smoothing_fwhm_cm,
        max_wavenumber=max_wavenumber,
        quantum_correction=quantum_correction,
        temperature_K=temperature,
    )
    ir = ir_spectrum(data["pdot"], dt, **options)
    axis = ir.wavenumber
    arrays = dict(wavenumber_cm=axis, ir=ir.intensity)
    peaks = {"ir": band_peaks(ir)}
    computed = {"ir": ir}
    raman = None
    if "alpha_sys" in data:
        raman = raman_spectra(data["alpha_sys"], dt, **options)
        arrays["raman_iso"] = raman[0].intensity
        arrays["raman_aniso"] = raman[1].intensity
        peaks["raman_iso"] = band_peaks(raman[0])
        peaks["raman_aniso"] = band_peaks(raman[1])
        computed.update(raman_iso=raman[0], raman_aniso=raman[1])
    peaks[ZERO_SIGNAL] = [name for name, sp in computed.items() if sp.zero]
    experiment = None
    if experimental_ir is not None:
        experiment = experimental_water_ir(experimental_ir)
        inside = experiment.wavenumber <= max_wavenumber
        experiment = Spectrum(
            experiment.wavenumber[inside], experiment.intensity[inside]
        )
        arrays["experiment_ir"] = _on_axis(experiment, axis)
        peaks["experiment_ir"] = band_peaks(experiment)
    np.savez(md_dir / "spectra.npz", **arrays)
    with open(md_dir / "peaks.json", "w") as handle:
        json.dump(peaks, handle, indent=2)

    title = f"{num_samples * dt / 1000:.1f} ps, {temperature:.0f} K"
    ir_curves = [(_on_axis(ir, axis), _label("polmp (Pdot autocorrelation)", ir))]
    if experiment is not None:
        ir_curves.append(
            (
                arrays["experiment_ir"],
                {"fmt": "k--", "label": "experiment n(w) alpha(w)"},
            )
        )
    _plot_spectrum(
        md_dir / "ir.png", axis, ir_curves, f"IR, {title}", "IR", max_wavenumber
    )
    if raman is not None:
        raman_curves = [
            (_on_axis(raman[0], axis), _label("isotropic", raman[0])),
            (_on_axis(raman[1], axis), _label("anisotropic", raman[1])),
        ]
        _plot_spectrum(
            md_dir / "raman.png",
            axis,
            raman_curves,
            f"Raman, {title}",
            "Raman",
            max_wavenumber,
        )
    return peaks


def _label(name: str, spectrum: Spectrum) -> dict:
    """Plot style of a spectrum: a zero signal is drawn flat and says so."""
    if spectrum.zero:
        return {"label": f"{name}: zero signal", "fmt": ":"}
    return {"label": name}


def _plot_spectrum(path, axis, curves, title, kind, max_wavenumber):
    """One spectrum figure: ``curves`` = [(values on axis, {"label", "fmt"?}), ...]."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for values, style in curves:
        ax.plot(axis, values, style.get("fmt", "-"), label=style["label"])
    ax.set(xlabel="wavenumber (cm$^{-1}$)", ylabel=f"{kind} intensity (area 1)")
    ax.set_title(title)
    ax.set_xlim(0, max_wavenumber)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
