"""Data sources named by a path: files, glob patterns, shipped sets, the pbc override."""

from __future__ import annotations

import numpy as np
import pytest

from polmp.data import write_extxyz
from polmp.data.embedded import load_embedded
from polmp.data.sources import expand_sources, read_source, read_sources
from tests.training.morse import molecules


def test_globs_files_and_embedded_sets(tmp_path):
    frames = molecules(6, seed=0)
    for k in range(3):
        write_extxyz(tmp_path / f"part-{k}.xyz", frames[2 * k : 2 * k + 2])
    pattern = str(tmp_path / "part-*.xyz")
    assert expand_sources(pattern) == [
        str(tmp_path / f"part-{k}.xyz") for k in range(3)
    ]
    read = read_sources([pattern, str(tmp_path / "part-0.xyz")])
    assert len(read) == 8  # sorted matches, then the file again
    np.testing.assert_array_equal(read[2].positions, frames[2].positions)
    assert len(read_sources(pattern, index="0")) == 3  # index applies per file
    with pytest.raises(FileNotFoundError, match="no file matches"):
        read_sources(str(tmp_path / "none-*.xyz"))
    clusters = read_source("embedded:water-gfn2-clusters", index="0:5")
    assert len(clusters) == 5
    assert clusters[0].energy == load_embedded("water-gfn2-clusters")[0].energy
    with pytest.raises(ValueError, match="pbc must be"):
        read_source(pattern, pbc="off")


def test_pbc_none_makes_isolated_frames():
    boxes = read_source("embedded:water-gfn2-bulk", index="0:2")
    assert all(f.periodic and f.stress is not None for f in boxes)
    isolated = read_source("embedded:water-gfn2-bulk", index="0:2", pbc="none")
    for box, free in zip(boxes, isolated, strict=True):
        assert not free.periodic and free.stress is None
        np.testing.assert_array_equal(free.positions, box.positions)
        assert free.energy == box.energy
