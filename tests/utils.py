"""Helpers shared by tests (import as ``from tests.utils import ...``)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

#: ../shared/data relative to the repository root (override with POLMP_SHARED_DATA).
SHARED_DATA = pathlib.Path(
    os.environ.get(
        "POLMP_SHARED_DATA",
        pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data",
    )
)

#: Relative tolerances per dtype for checks that compare digits.
RTOL = {np.float32: 1e-4, np.float64: 1e-10}


def shared_path(*parts) -> pathlib.Path:
    """Path inside ../shared/data; skips the calling test cleanly if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not available: {path}")
    return path
