"""Labelled data: the ``Frame`` schema and readers/writers (host side, not jittable)."""

from polmp.data.io import read_frames, read_runner, write_extxyz
from polmp.data.schema import Frame

__all__ = ["Frame", "read_frames", "read_runner", "write_extxyz"]
