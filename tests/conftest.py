"""Shared fixtures: x64 switch, PRNG keys, reference-data paths, dtype tolerances.

Library code never touches ``jax.config``; tests do it only through the ``x64``
fixture, which restores the previous setting afterwards.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.utils import shared_path


@pytest.fixture
def x64():
    """Run the test with jax_enable_x64 on, restoring the previous value afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def debug_nans():
    """Fail on the first NaN/inf produced inside jax (restored afterwards)."""
    prev_nan, prev_inf = jax.config.jax_debug_nans, jax.config.jax_debug_infs
    jax.config.update("jax_debug_nans", True)
    jax.config.update("jax_debug_infs", True)
    try:
        yield
    finally:
        jax.config.update("jax_debug_nans", prev_nan)
        jax.config.update("jax_debug_infs", prev_inf)


@pytest.fixture
def key():
    """A fixed PRNG key so every test is deterministic."""
    return jax.random.PRNGKey(20260524)


@pytest.fixture
def rng():
    """A fixed numpy Generator for host-side random structures."""
    return np.random.default_rng(20260524)


@pytest.fixture
def shared_data():
    """The ../shared/data folder (skips when absent)."""
    return shared_path()
