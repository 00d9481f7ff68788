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


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "polmp.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_train_and_evaluate_from_yaml(tmp_path):
    data, config = _write_run(tmp_path)
    out = _run("train", str(config), "training.learning_rate=1e-2")
    assert "run directory" in out and "valid" in out
    assert (tmp_path / "run" / "config.yaml").exists()
    plots = tmp_path / "plots"
    result = _cli("evaluate", str(tmp_path / "run"), str(data), "--output", str(plots))
    assert result.returncode == 0, result.stderr
    row = [line for line in result.stdout.splitlines() if line.startswith("eval")][0]
    assert float(row.split()[1]) > 0  # an energy RMSE in meV/atom
    assert "level of theory" not in result.stderr
    for name in ("parity_energy.png", "parity_forces.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG"
    # a shipped set by the name `train` accepts; GFN2 water energies are another level
    # of theory than the Morse toy data: the offset is named, not silently tabulated
    other = _cli("evaluate", str(tmp_path / "run"), "embedded:water-gfn2-clusters",
                 "--index", "0:8", "--output", str(plots))  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert "another level of theory" in other.stderr
    # a finished run is not overwritten without --overwrite (config.yaml kept)
    before = (tmp_path / "run" / "config.yaml").read_text()
    again = _cli("train", str(config), "training.learning_rate=2e-2")
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert (tmp_path / "run" / "config.yaml").read_text() == before
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


def test_errors_are_one_line_and_debug_gives_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    plain = _cli("train", missing, timeout=120)
    assert plain.returncode == 1
    lines = plain.stderr.strip().splitlines()
    assert lines[0].startswith("polmp train: error: ") and missing in lines[0]
    assert "Traceback" not in plain.stderr and "--debug" in lines[-1]
    debug = _cli("train", missing, "--debug", timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_md_overrides_without_yaml_and_no_silent_overwrite(tmp_path, capsys):
    from polmp.cli.main import main, parse_arguments

    args = parse_arguments(["md", "num_steps=200", "seed=1"])
    assert args.config is None and args.overrides == ["num_steps=200", "seed=1"]
    out = tmp_path / "md"
    # num_steps 0 is refused before anything is written
    assert main(["md", "num_steps=0", f"output_dir={out}"]) == 1
    assert "num_steps must be >= 1" in capsys.readouterr().err
    assert not out.exists()
    # a finished MD run is not overwritten without --overwrite
    out.mkdir()
    (out / "md.json").write_text("{}")
    (out / "config.yaml").write_text("kept")
    assert main(["md", f"output_dir={out}"]) == 1
    assert "already holds an MD run" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == "kept"


def test_float32_runs_hide_only_the_float64_request_notice():
    import warnings

    import jax
    import jax.numpy as jnp
    from jax_md import util

    from polmp.cli.main import quiet_float64_requests

    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on: no float64 request is truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        util.high_precision_sum(jnp.ones(3, jnp.float32))  # jax-md's request
    assert any("truncated" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_float64_requests()
        util.high_precision_sum(jnp.ones(3, jnp.float32))
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another warning"]
