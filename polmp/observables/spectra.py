"""Vibrational spectra from MD time series (host-side post-processing, numpy).

Estimators (docs/method.md#spectra), from arrays an MD run saves at a fixed interval:

IR (dipole-derivative autocorrelation, Pdot(t) = sum_i Z*_i(t) v_i(t) in e*A/fs):
    I(w) ~ 1/3 sum_a FT[ < Pdot_a(0) Pdot_a(t) > ](w)
Raman from the system polarizability alpha_sys(t) (3x3, A^3):
    a = tr(alpha_sys)/3,  beta = alpha_sys - a I
    R_iso(w)   ~ w^2 FT[ < da(0) da(t) > ]
    R_aniso(w) ~ w^2 sum_ab FT[ < dbeta_ab(0) dbeta_ab(t) > ]

The autocorrelation is estimated by Wiener-Khinchin: the series is cut into blocks
that overlap by 50 % (by default), each block's mean is removed (the "d" above), an
optional window is applied, the block is zero-padded to twice its length (so the
periodogram is that of the linear, not circular, correlation) and |FFT|^2 is averaged
over blocks and components.  Frequencies are returned as wavenumbers in cm^-1
(nu~ = w / (2 pi c)).  Spectra are area-normalised over the returned range unless
``normalize=False``.

Statistical error and zero signals: each spectrum carries ``error``, the standard error
of its mean over blocks (the scatter of the per-block spectra, put through the same
prefactor, smoothing and normalisation, divided by sqrt(blocks)), so a feature can be
judged against its noise (``significant_peak``).  A series whose fluctuation is below
``ZERO_RTOL`` of its scale (e.g. the anisotropic part of an isotropic polarizability:
rounding noise only) gives a spectrum with ``zero=True`` and zero intensity, never a
normalised spectrum of rounding noise.

Quantum correction factors multiply the classical line shape; they are named options,
off by default (``quantum_correction=None``):
    "harmonic":   beta hbar w / (1 - exp(-beta hbar w))
    "standard":   2 / (1 + exp(-beta hbar w))
    "schofield":  exp(beta hbar w / 2)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from polmp import units

_QUANTUM_CORRECTIONS = ("harmonic", "standard", "schofield")

#: a series whose rms fluctuation is below this fraction of its scale carries no
#: signal (float32 rounding of a constant is ~1e-7 of it; thermal fluctuations of a
#: water box's dipole or polarizability are >1e-4 of their scale)
ZERO_RTOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """A spectrum on a wavenumber axis.

    Attributes:
        wavenumber: (F,) cm^-1, from 0 to the Nyquist frequency.
        intensity: (F,) arbitrary units (area 1 over ``wavenumber`` when normalised).
        error: (F,) standard error of ``intensity`` from the scatter over blocks, or
            None (one block, or not estimated).
        zero: the series carries no signal (fluctuation below ``ZERO_RTOL`` of its
            scale); ``intensity`` is then all zero.
        blocks: (B, F) per-block spectra behind ``intensity`` (internal: what
            ``error`` is computed from), or None.
    """

    wavenumber: np.ndarray
    intensity: np.ndarray
    error: np.ndarray | None = None
    zero: bool = False
    blocks: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def with_values(self, transform, wavenumber=None) -> Spectrum:
        """The spectrum with ``transform`` applied to the intensity and every block."""
        blocks = (
            None
            if self.blocks is None
            else np.stack([transform(b) for b in self.blocks])
        )
        intensity = transform(self.intensity)
        error = None
        if blocks is not None and len(blocks) > 1:
            error = blocks.std(axis=0, ddof=1) / np.sqrt(len(blocks))
        return Spectrum(
            self.wavenumber if wavenumber is None else wavenumber,
            intensity,
            error,
            self.zero,
            blocks,
        )


def _blocks(signal: np.ndarray, block_length: int, overlap: float) -> np.ndarray:
    """Cut (T, D) into (B, L, D) blocks that start every (1 - overlap) * L steps."""
    num_steps = signal.shape[0]
    step = max(1, int(round(block_length * (1.0 - overlap))))
    starts = np.arange(0, num_steps - block_length + 1, step)
    return np.stack([signal[s : s + block_length] for s in starts])


def _window(kind: str | None, length: int) -> np.ndarray:
    if kind is None:
        return np.ones(length)
    if kind == "hann":
        return np.hanning(length)
    if kind == "blackman":
        return np.blackman(length)
    raise ValueError(f"unknown window {kind!r}; use None, 'hann' or 'blackman'")


def power_spectrum(
    signal,
    timestep_fs: float,
    *,
    block_length: int | None = None,
    overlap: float = 0.5,
    window: str | None = "hann",
    scale: float | None = None,
) -> Spectrum:
    """Block-averaged power spectrum FT<x(0) x(t)> of a (multi-component) series.

    Args:
        signal: (T,) or (T, D) array sampled every ``timestep_fs``; components are summed.
        timestep_fs: sampling interval in fs.
        block_length: samples per block (default: T // 4, at least 16).
        overlap: fraction of overlap between consecutive blocks, in [0, 1).
        window: None, "hann" or "blackman".
        scale: magnitude against which the fluctuation is judged for ``zero``
            (default: max |signal|); e.g. the whole tensor for its anisotropic part.

    Returns:
        ``Spectrum`` with the un-normalised, block- and component-summed periodogram,
        its per-block spectra and their standard error; ``zero`` (and zero
        intensity) when the rms fluctuation is below ``ZERO_RTOL * scale``.
    """
    x = np.asarray(signal, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise ValueError("signal contains NaN or inf")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be positive, got {timestep_fs}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    num_steps = x.shape[0]
    if block_length is None:
        block_length = max(16, num_steps // 4)
    if block_length > num_steps or block_length < 4:
        raise ValueError(
            f"block_length {block_length} must be between 4 and the series length {num_steps}"
        )
    blocks = _blocks(x, block_length, overlap)  # (B, L, D)
    blocks = blocks - blocks.mean(axis=1, keepdims=True)
    nfft = 2 * block_length
    frequency = np.fft.rfftfreq(nfft, d=timestep_fs)  # cycles per fs
    wavenumber = frequency / units.SPEED_OF_LIGHT_CM_PER_FS
    scale = float(np.abs(x).max()) if scale is None else float(scale)
    fluctuation = float(np.sqrt(np.mean(blocks**2)))
    if fluctuation <= ZERO_RTOL * scale:
        zeros = np.zeros_like(wavenumber)
        return Spectrum(wavenumber, zeros, zeros, True, np.zeros((1, len(zeros))))
    blocks = blocks * _window(window, block_length)[None, :, None]
    power = np.abs(np.fft.rfft(blocks, n=nfft, axis=1)) ** 2  # (B, F, D)
    per_block = power.sum(axis=-1) * timestep_fs / block_length  # (B, F)
    spectrum = Spectrum(wavenumber, per_block.mean(axis=0), blocks=per_block)
    return spectrum.with_values(lambda v: v)


def quantum_correction_factor(wavenumber, temperature_K: float, kind: str):
    """Named quantum correction factor Q(w) multiplying a classical line shape.

    Args:
        wavenumber: (F,) cm^-1.
        temperature_K: temperature of the run, K.
        kind: "harmonic", "standard" or "schofield" (see module docstring).
    """
    if kind not in _QUANTUM_CORRECTIONS:
        raise ValueError(
            f"unknown quantum correction {kind!r}; choose from {_QUANTUM_CORRECTIONS}"
        )
    if not temperature_K > 0:
        raise ValueError("a quantum correction needs a positive temperature_K")
    x = np.asarray(wavenumber) * units.INVCM / (units.KB * temperature_K)  # beta hbar w
    if kind == "harmonic":
        safe = np.where(x > 1e-12, x, 1.0)
        return np.where(x > 1e-12, safe / -np.expm1(-safe), 1.0)
    if kind == "standard":
        return 2.0 / (1.0 + np.exp(-x))
    return np.exp(0.5 * x)


def _gaussian_smooth(spectrum: Spectrum, fwhm_cm: float) -> np.ndarray:
    """Convolve with a unit-area Gaussian of the given FWHM (cm^-1)."""
    dw = spectrum.wavenumber[1] - spectrum.wavenumber[0]
    sigma = fwhm_cm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / dw
    half = int(np.ceil(5 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(spectrum.intensity, half, mode="reflect")
    return np.convolve(padded, kernel, mode="valid")


def _finish(
    spectrum: Spectrum,
    *,
    prefactor,
    smoothing_fwhm_cm,
    normalize,
    max_wavenumber,
    quantum_correction,
    temperature_K,
) -> Spectrum:
    factor = np.broadcast_to(np.asarray(prefactor, float), spectrum.wavenumber.shape)
    if quantum_correction is not None:
        factor = factor * quantum_correction_factor(
            spectrum.wavenumber, temperature_K, quantum_correction
        )
    result = spectrum.with_values(lambda v: v * factor)
    if smoothing_fwhm_cm:
        axis = result.wavenumber
        result = result.with_values(
            lambda v: _gaussian_smooth(Spectrum(axis, v), smoothing_fwhm_cm)
        )
    if max_wavenumber is not None:
        keep = result.wavenumber <= max_wavenumber
        result = result.with_values(lambda v: v[keep], result.wavenumber[keep])
    if normalize and not result.zero:
        area = np.trapezoid(result.intensity, result.wavenumber)
        if area > 0:
            result = result.with_values(lambda v: v / area)
    return result


def significant_peak(
    spectrum: Spectrum, low: float, high: float, *, num_sigma: float = 3.0
) -> float | None:
    """Wavenumber of the strongest peak in [low, high] that stands above the noise.

    A peak is a local maximum inside the band (a maximum on the band's edge is a slope,
    not a peak) whose prominence (height above the higher of the lowest points on its
    left and right within the band) exceeds ``num_sigma`` standard errors of that
    difference (the errors of the peak and of the base added in quadrature; relative
    error: its median over the band).  Without an error
    estimate the prominence must exceed 5 % of the peak height.

    Returns:
        the peak's wavenumber (cm^-1), or None (zero signal, no peak, or only noise).
    """
    if spectrum.zero:
        return None
    inside = np.flatnonzero(
        (spectrum.wavenumber >= low) & (spectrum.wavenumber <= high)
    )
    if inside.size < 3:
        return None
    values = spectrum.intensity[inside]
    # relative standard error: the scatter of a few blocks is a noisy estimate at any
    # one wavenumber, so take its median over the band
    relative = 0.05 / num_sigma
    if spectrum.error is not None:
        ratio = spectrum.error[inside] / np.maximum(values, np.finfo(float).tiny)
        relative = float(np.median(ratio))
    best = None
    for k in range(1, len(values) - 1):
        if not (values[k] >= values[k - 1] and values[k] > values[k + 1]):
            continue
        base = max(values[: k + 1].min(), values[k:].min())
        # the prominence is a difference of two noisy values: its error adds theirs
        noise = num_sigma * relative * float(np.hypot(values[k], base))
        prominence = values[k] - base
        if prominence > noise and (best is None or values[k] > values[best]):
            best = k
    return None if best is None else float(spectrum.wavenumber[inside[best]])


def ir_spectrum(
    dipole_derivative,
    timestep_fs: float,
    *,
    block_length: int | None = None,
    overlap: float = 0.5,
    window: str | None = "hann",
    smoothing_fwhm_cm: float | None = None,
    normalize: bool = True,
    max_wavenumber: float | None = 5000.0,
    quantum_correction: str | None = None,
    temperature_K: float | None = None,
) -> Spectrum:
    """IR spectrum I(w) ~ 1/3 sum_a FT<Pdot_a(0) Pdot_a(t)>.

    Args:
        dipole_derivative: (T, 3) Pdot = sum_i Z*_i v_i, e*A/fs, every ``timestep_fs``.
        timestep_fs: sampling interval, fs.
        block_length, overlap, window: see ``power_spectrum``.
        smoothing_fwhm_cm: optional Gaussian smoothing (FWHM, cm^-1).
        normalize: area-normalise over [0, max_wavenumber].
        max_wavenumber: upper end of the returned axis, cm^-1 (None: Nyquist).
        quantum_correction: None (default) or a named factor (module docstring).
        temperature_K: needed only with a quantum correction.
    """
    pdot = np.asarray(dipole_derivative)
    if pdot.ndim != 2 or pdot.shape[1] != 3:
        raise ValueError(f"dipole_derivative must have shape (T, 3), got {pdot.shape}")
    raw = power_spectrum(
        pdot, timestep_fs, block_length=block_length, overlap=overlap, window=window
    )
    return _finish(
        raw,
        prefactor=1.0 / 3.0,
        smoothing_fwhm_cm=smoothing_fwhm_cm,
        normalize=normalize,
        max_wavenumber=max_wavenumber,
        quantum_correction=quantum_correction,
        temperature_K=temperature_K,
    )


def raman_spectra(
    polarizability,
    timestep_fs: float,
    *,
    block_length: int | None = None,
    overlap: float = 0.5,
    window: str | None = "hann",
    smoothing_fwhm_cm: float | None = None,
    normalize: bool = True,
    max_wavenumber: float | None = 5000.0,
    quantum_correction: str | None = None,
    temperature_K: float | None = None,
) -> tuple[Spectrum, Spectrum]:
    """Isotropic and anisotropic Raman spectra from alpha_sys(t).

    Args:
        polarizability: (T, 3, 3) system polarizability, A^3, every ``timestep_fs``.
        (other arguments as in ``ir_spectrum``)

    Returns:
        ``(isotropic, anisotropic)``: R_iso ~ w^2 FT<da da>, R_aniso ~ w^2 sum_ab FT<dbeta_ab dbeta_ab>.
    """
    alpha = np.asarray(polarizability, dtype=np.float64)
    if alpha.ndim != 3 or alpha.shape[1:] != (3, 3):
        raise ValueError(f"polarizability must have shape (T, 3, 3), got {alpha.shape}")
    iso = np.trace(alpha, axis1=1, axis2=2) / 3.0  # (T,)
    aniso = alpha - iso[:, None, None] * np.eye(3)
    common = dict(block_length=block_length, overlap=overlap, window=window)
    finish = dict(
        smoothing_fwhm_cm=smoothing_fwhm_cm,
        normalize=normalize,
        max_wavenumber=max_wavenumber,
        quantum_correction=quantum_correction,
        temperature_K=temperature_K,
    )
    # zero signals are judged against the whole tensor: the anisotropic part of an
    # isotropic alpha is rounding noise of alpha, not a (tiny) spectrum
    scale = float(np.abs(alpha).max())
    raw_iso = power_spectrum(iso, timestep_fs, scale=scale, **common)
    raw_aniso = power_spectrum(
        aniso.reshape(len(aniso), 9), timestep_fs, scale=scale, **common
    )
    w2 = raw_iso.wavenumber**2
    return (
        _finish(raw_iso, prefactor=w2, **finish),
        _finish(raw_aniso, prefactor=w2, **finish),
    )


def experimental_water_ir(path) -> Spectrum:
    """Experimental liquid-water IR absorption n(w)*alpha(w) from optical constants.

    Reads a refractiveindex.info YAML file (tabulated "wavelength_um n k") and returns
    n * alpha with alpha = 4 pi nu~ k (cm^-1), sorted by wavenumber.  Host only.

    Args:
        path: a refractiveindex.info file of liquid water (e.g.
            ``water_ir_optical_constants/refractiveindex_info/H2O_Segelstein.yml`` of the
            reference data, CC0).
    """
    import yaml

    with open(path) as handle:
        text = handle.read()
    document = yaml.safe_load(text)
    tables = [d for d in document["DATA"] if d.get("type") == "tabulated nk"]
    if not tables:
        raise ValueError(f"{path}: no 'tabulated nk' table found")
    data = np.loadtxt(tables[0]["data"].splitlines())
    wavelength_um, n, k = data.T
    wavenumber = 1e4 / wavelength_um
    absorption = 4.0 * np.pi * wavenumber * k
    order = np.argsort(wavenumber)
    return Spectrum(wavenumber[order], (n * absorption)[order])
