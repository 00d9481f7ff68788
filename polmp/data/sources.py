"""Data sets named by a path: files, glob patterns and shipped sets -> frames.

Host side, not jittable.  A *source* is what a config or the command line names:

* a file any polmp reader reads (``polmp.data.io.read_frames``);
* a glob pattern (``train-id*.xyz``): every match, in sorted order;
* a shipped set, ``embedded:<name>`` (``polmp.data.embedded``);
* a list of these, concatenated in order.

``pbc="none"`` treats every frame as an isolated molecule or cluster (pbc False,
stress dropped): for molecules that a DFT code computed in a large vacuum box.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence

import numpy as np

from polmp.data.embedded import EMBEDDED_PREFIX, load_embedded
from polmp.data.io import read_frames, select_frames
from polmp.data.schema import Frame

__all__ = ["PBC_MODES", "expand_sources", "read_source", "read_sources"]

#: accepted ``pbc`` values: keep the file's periodicity, or make every frame isolated
PBC_MODES = ("file", "none")


def expand_sources(sources: str | Sequence[str]) -> list[str]:
    """Paths and ``embedded:`` names of ``sources``, glob patterns expanded (sorted).

    Raises:
        FileNotFoundError: a pattern that matches no file.
    """
    out = []
    for pattern in (sources,) if isinstance(sources, str) else sources:
        pattern = os.fspath(pattern)
        if glob.has_magic(pattern) and not pattern.startswith(EMBEDDED_PREFIX):
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise FileNotFoundError(f"no file matches {pattern!r}")
            out += matches
        else:
            out.append(pattern)
    return out


def read_source(
    path: str,
    index=":",
    format: str | None = None,
    *,
    pbc: str = "file",
    **keys,
) -> list[Frame]:
    """Frames of one file or shipped set (``embedded:<name>``).

    Args:
        path: a file name or ``embedded:<name>``.
        index: ASE-style frame selection (``":"``, ``"0:100"``, ``-1``).
        format: reader format, None guesses (files only).
        pbc: ``"file"`` or ``"none"`` (module docstring).
        **keys: label key specs passed to ``read_frames`` (``energy_key`` ...).

    Raises:
        ValueError: an unknown ``pbc``, or a selection with no frames.
    """
    if pbc not in PBC_MODES:
        raise ValueError(f"pbc must be one of {PBC_MODES}, got {pbc!r}")
    if path.startswith(EMBEDDED_PREFIX):
        frames = select_frames(load_embedded(path.removeprefix(EMBEDDED_PREFIX)), index)
    else:
        frames = read_frames(path, index, format, **keys)
    if not frames:
        raise ValueError(f"{path}: no frames (index {index!r})")
    if pbc == "none":
        frames = [
            dataclasses.replace(f, pbc=np.zeros(3, bool), stress=None) for f in frames
        ]
    return frames


def read_sources(
    sources: str | Sequence[str],
    index=":",
    format: str | None = None,
    *,
    pbc: str = "file",
    **keys,
) -> list[Frame]:
    """Frames of every source in ``sources`` (module docstring), in order."""
    frames = []
    for path in expand_sources(sources):
        frames += read_source(path, index, format, pbc=pbc, **keys)
    return frames
