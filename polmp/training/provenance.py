"""What a run directory records about where it came from: ``provenance.json``.

Host side.  ``provenance(precision, devices)`` returns the git hash of the source tree
(if it is a git checkout), the versions of the packages that decide the numbers, the
Python version, the devices and the precision.
"""

from __future__ import annotations

import importlib.metadata
import json
import pathlib
import subprocess
import sys

import jax

__all__ = ["PACKAGES", "provenance", "write_provenance"]

#: packages whose versions go into provenance.json
PACKAGES = (
    "polmp",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "e3nn-jax",
    "orbax-checkpoint",
    "numpy",
)


def git_hash() -> str | None:
    """HEAD of the git checkout polmp runs from, or None (not a checkout, no git)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    """Installed version of each of ``PACKAGES`` (None if absent)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(precision: str, devices) -> dict:
    """JSON-able record of the code, packages, devices and precision of a run."""
    return {
        "git_hash": git_hash(),
        "versions": versions(),
        "python": sys.version.split()[0],
        "devices": [str(d) for d in devices],
        "precision": precision,
        "x64": bool(jax.config.jax_enable_x64),
    }


def write_provenance(path, precision: str, devices) -> None:
    """Write ``provenance(precision, devices)`` to ``path`` as indented JSON."""
    with open(path, "w") as handle:
        json.dump(provenance(precision, devices), handle, indent=2)
