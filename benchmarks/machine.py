"""One line describing the machine a benchmark ran on (shared by the scripts here)."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    """Cores, CPU model (``lscpu``), jax version and default device."""
    import jax

    model = platform.processor()
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=False
        ).stdout
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if "Model name" in ln
            ),
            model,
        )
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), jax {jax.__version__}, {jax.devices()[0]}"
    )
