"""NPT water with the shipped model: 2 ps at 1 bar, 300 K (slow; run by hand)."""

import json

import numpy as np
import pytest

from polmp.config.schema import MDConfig
from polmp.md.simulate import run_md
from polmp.training.trained import load_trained


@pytest.mark.slow
def test_npt_water_shipped_model_keeps_density(tmp_path):
    try:
        trained = load_trained("water-gfn2-full")
    except FileNotFoundError:
        pytest.skip("shipped model not installed")
    config = MDConfig(
        structure="water-box:4",  # 192 atoms, 0.997 g/cm^3
        ensemble="npt",
        temperature_K=300.0,
        pressure_bar=1.0,
        barostat_time_fs=500.0,
        timestep_fs=0.5,
        num_steps=4000,  # 2 ps
        chunk_steps=200,
        record_every=20,
        trajectory_every=0,
        observables=False,
        skin_A=0.5,
        precision="float32",
        progress_bar=False,
        output_dir=str(tmp_path / "npt"),
    )
    result = run_md(config, trained=trained)
    records = result.records
    assert all(np.isfinite(v).all() for v in records.values())
    summary = json.loads((tmp_path / "npt" / "md.json").read_text())
    start = summary["initial_density_g_per_cm3"]
    mass = 192 / 3 * 18.015 * 1.66053906660
    density = mass / records["volume_A3"]
    print(
        f"NPT 2 ps: density start {start:.4f}, mean {density.mean():.4f}, "
        f"min {density.min():.4f}, max {density.max():.4f} g/cm^3; "
        f"mean T {records['temperature_K'].mean():.1f} K; "
        f"{result.timings['steps_per_s']:.1f} steps/s; "
        f"{result.num_reallocations} reallocations"
    )
    assert np.all(np.abs(density / start - 1) < 0.10)
