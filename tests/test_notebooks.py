"""Notebooks run end to end (smoke mode) on the public API."""

import os
import pathlib
import subprocess
import sys

import pytest

#: notebooks whose smoke run compiles the shipped model several times (minutes on
#: 2 cores): run with ``-m slow``
SLOW = {"md_and_spectra"}
NOTEBOOKS = [
    pytest.param(path, marks=pytest.mark.slow) if path.stem in SLOW else path
    for path in sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.py"))
]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    env = dict(os.environ, POLMP_SMOKE="1", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
