"""The CLI's main job (README's first command) runs and its numbers agree."""

import subprocess
import sys

import pytest

from polmp.cli.main import build_parser


def _run(*args, timeout=900):
    result = subprocess.run(
        [sys.executable, "-m", "polmp.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_demo_prints_consistent_long_range_energies():
    out = _run("electrostatics", "--molecules-per-side", "3", "--precision", "float64")
    rows = {
        line[:28].strip(): line[28:].split()
        for line in out.splitlines()[2:]
        if line.strip()
    }
    ewald = float(rows["ewald (converged)"][0])
    pme = float(rows["pme (converged)"][0])
    compat = float(rows["ewald, les_compat k-set"][0])
    # converged methods agree to the requested accuracy; the truncated k-set does not
    assert pme == pytest.approx(ewald, rel=1e-6)
    assert abs(compat - ewald) / abs(ewald) > 1e-4
    assert any(key.startswith("direct") for key in rows)


def test_parser_rejects_unknown_verbs_and_bad_options():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["fly"])
    with pytest.raises(SystemExit):
        parser.parse_args(["electrostatics", "--precision", "float16"])


def _write_run(tmp_path):
    from polmp.data.io import write_extxyz
    from tests.training.morse import molecules

    data = tmp_path / "morse.xyz"
    write_extxyz(data, molecules(count=10, seed=1))
    config = tmp_path / "run.yaml"
    config.write_text(
        f"""
model: {{species: [1, 8], cutoff_A: 3.0, l_max: 1, num_channels: 4, num_layers: 1,
        num_basis: 4, radial_mlp: [8], readout_hidden: 8, avg_num_neighbors: 3.0,
        variant: sr}}
data: {{train_path: {data}, valid_fraction: 0.2}}
training: {{batch_size: 4, num_epochs: 2, progress_bar: false, parity_plots: false}}
output_dir: {tmp_path / "run"}
"""
    )
    return data, config


def test_train_and_evaluate_from_yaml(tmp_path):
    data, config = _write_run(tmp_path)
    out = _run("train", str(config), "training.learning_rate=1e-2")
    assert "run directory" in out and "valid" in out
    assert (tmp_path / "run" / "config.yaml").exists()
    table = _run("evaluate", str(tmp_path / "run"), str(data))
    row = [line for line in table.splitlines() if line.startswith("eval")][0]
    assert float(row.split()[1]) > 0  # an energy RMSE in meV/atom
    # a typo in an override is a clear error, not a silent default
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "polmp.cli.main",
            "train",
            str(config),
            "training.lerning_rate=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "lerning_rate" in bad.stderr


@pytest.mark.slow
def test_sweep_tabulates_every_grid_point(tmp_path):
    data, config = _write_run(tmp_path)
    out = _run("sweep", str(config), "--grid", "training.seed=[0, 1]")
    assert "training.seed=0" in out and "training.seed=1" in out


def test_overrides_may_follow_options():
    from polmp.cli.main import parse_arguments

    args = parse_arguments(
        ["sweep", "c.yaml", "a.b=1", "--grid", "model.variant=[sr, q]", "output_dir=x"]
    )
    assert args.overrides == ["a.b=1", "output_dir=x"]
    assert args.grid == ["model.variant=[sr, q]"]
    with pytest.raises(SystemExit):
        parse_arguments(["sweep", "c.yaml", "--grid", "k=[1]", "--bogus"])
    with pytest.raises(SystemExit):
        parse_arguments(["spectra", "runs/md", "output_dir=x"])  # takes no overrides


@pytest.mark.slow
def test_demo_main_job_writes_spectra(tmp_path):
    """README's first command, shortened: shipped model -> MD -> spectra files."""
    out = _run(
        "demo",
        "--steps",
        "200",
        "--equilibration",
        "0",
        "--output",
        str(tmp_path / "d"),
        timeout=1200,
    )
    assert "libration" in out and "ir" in out
    for name in ("observables.npz", "spectra.npz", "peaks.json", "ir.png", "raman.png"):
        assert (tmp_path / "d" / name).stat().st_size > 0
