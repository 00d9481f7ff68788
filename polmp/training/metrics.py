"""Error tables from ``ErrorSums`` (host side) and parity plots.

``summarize(sums)`` turns accumulated masked sums into a flat dict (JSON-able floats):

    energy_rmse_meV_per_atom, energy_mae_meV_per_atom   per-atom energy E/N_atoms
    forces_rmse_meV_per_A,    forces_mae_meV_per_A      per force component
    stress_rmse_meV_per_A3,   stress_mae_meV_per_A3     per stress component
    num_energy, num_forces, num_stress                  how many terms entered

A metric whose label is absent everywhere is ``None`` (never a misleading 0).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from polmp.training.losses import ErrorSums

#: (metric prefix, ErrorSums field prefix, unit suffix); values reported in meV units
_TERMS = (
    ("energy", "energy", "meV_per_atom"),
    ("forces", "forces", "meV_per_A"),
    ("stress", "stress", "meV_per_A3"),
)


def to_host(sums: ErrorSums) -> dict[str, float]:
    """``ErrorSums`` as a dict of Python floats (float64)."""
    return {
        f.name: float(np.asarray(getattr(sums, f.name)))
        for f in dataclasses.fields(sums)
    }


def summarize(sums: ErrorSums | dict) -> dict[str, float | int | None]:
    """RMSE and MAE in meV units from accumulated error sums (module docstring).

    Args:
        sums: ``ErrorSums`` (reduced to scalars) or its ``to_host`` dict.

    Returns:
        dict of floats (or None where the label is absent) and integer counts.
    """
    s = sums if isinstance(sums, dict) else to_host(sums)
    out: dict[str, float | int | None] = {}
    for name, field, unit in _TERMS:
        count = s[f"{field}_count"]
        if count > 0:
            out[f"{name}_rmse_{unit}"] = 1e3 * math.sqrt(s[f"{field}_se"] / count)
            out[f"{name}_mae_{unit}"] = 1e3 * s[f"{field}_ae"] / count
        else:
            out[f"{name}_rmse_{unit}"] = None
            out[f"{name}_mae_{unit}"] = None
        out[f"num_{name}"] = int(round(count))
    return out


def format_table(tables: dict[str, dict]) -> str:
    """A printable table: one row per data set (e.g. "train", "valid", "test").

    Args:
        tables: name -> ``summarize`` dict.

    Returns:
        str, fixed-width columns; "-" where a metric is absent.
    """
    columns = (
        ("E RMSE", "energy_rmse_meV_per_atom"),
        ("E MAE", "energy_mae_meV_per_atom"),
        ("F RMSE", "forces_rmse_meV_per_A"),
        ("F MAE", "forces_mae_meV_per_A"),
        ("S RMSE", "stress_rmse_meV_per_A3"),
    )
    head = f"{'set':<8}" + "".join(f"{c:>12}" for c, _ in columns)
    units = f"{'':<8}" + "".join(
        f"{u:>12}" for u in ("meV/atom", "meV/atom", "meV/A", "meV/A", "meV/A^3")
    )
    lines = [head, units]
    for name, table in tables.items():
        cells = []
        for _, key in columns:
            value = table.get(key)
            cells.append(f"{'-':>12}" if value is None else f"{value:>12.3f}")
        lines.append(f"{name:<8}" + "".join(cells))
    return "\n".join(lines)


def parity_plot(reference, predicted, path, *, label: str, unit: str) -> None:
    """Write a parity (predicted vs reference) scatter plot as PNG.  Host only.

    Args:
        reference: (M,) array of reference values.
        predicted: (M,) array of predictions, same unit.
        path: output file (.png).
        label: quantity name for the axes.
        unit: unit string for the axes.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call repeatedly
    import matplotlib.pyplot as plt

    reference = np.asarray(reference, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    fig, ax = plt.subplots(figsize=(4.0, 4.0), dpi=100)
    if reference.size:
        lo = float(min(reference.min(), predicted.min()))
        hi = float(max(reference.max(), predicted.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.scatter(reference, predicted, s=6, alpha=0.6)
        rmse = float(np.sqrt(np.mean((predicted - reference) ** 2)))
        ax.set_title(f"{label}: RMSE {rmse:.4g} {unit}")
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"predicted {label} ({unit})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
