"""The run directory of ``train``: one writer at a time, never a silent overwrite.

Host side.  ``claim_run_dir(run_dir, resume=..., overwrite=...)`` is entered before
anything is written:

* it takes an exclusive lock (``fcntl.flock`` on ``<run>/.polmp.lock``, holding the
  owner's pid and host), so a second process on the same directory fails at once with
  an error naming the first, instead of interleaving metrics and checkpoints; the
  operating system releases the lock when the owner exits, even on SIGKILL;
* a directory that already holds a run (``RUN_FILES``) is refused unless the call
  resumes it or asks to overwrite it; ``overwrite`` removes only those files.

``truncate_history(path, epoch)`` keeps the lines of ``metrics.jsonl`` of the epochs
before ``epoch`` (once each): on resume, epochs after the restored checkpoint are run
again, so a line written before a crash is not duplicated.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import socket

__all__ = ["LOCK_FILE", "RUN_FILES", "RunDirectoryBusy", "claim_run_dir"]

LOCK_FILE = ".polmp.lock"
#: files and folders a training run writes (what ``overwrite`` removes)
RUN_FILES = (
    "checkpoints",
    "best",
    "metrics.jsonl",
    "metrics.json",
    "config.yaml",
    "provenance.json",
    "parity_energy.png",
    "parity_forces.png",
)


class RunDirectoryBusy(RuntimeError):
    """Another process holds the lock of a run directory."""


def existing_run_files(run_dir) -> list[str]:
    """The ``RUN_FILES`` present in ``run_dir`` (an empty ``checkpoints`` counts not)."""
    run_dir = pathlib.Path(run_dir)
    found = []
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not any(path.iterdir()):
            continue
        if path.exists():
            found.append(name)
    return found


@contextlib.contextmanager
def claim_run_dir(run_dir, *, resume: bool = False, overwrite: bool = False):
    """Lock ``run_dir`` for this process and check it may be written (module doc).

    Args:
        run_dir: the run directory (created if missing).
        resume: the caller continues the run in it.
        overwrite: the caller replaces the run in it (its ``RUN_FILES`` are removed).

    Yields:
        the resolved ``pathlib.Path`` of the directory.

    Raises:
        RunDirectoryBusy: another process holds the lock (message: its pid and host).
        ValueError: ``resume`` and ``overwrite`` together, or a directory that holds a
            run while neither is set.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    run_dir = pathlib.Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "an unknown process"
            raise RunDirectoryBusy(
                f"{run_dir} is in use by {owner}: wait for it to finish, stop it, or "
                "choose another output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        found = existing_run_files(run_dir)
        if found and not resume:
            if not overwrite:
                raise ValueError(
                    f"{run_dir} already holds a run ({', '.join(found)}): pass "
                    "resume=True (--resume) to continue it, overwrite=True "
                    "(--overwrite) to replace it, or choose a new output_dir"
                )
            for name in found:
                path = run_dir / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        yield run_dir
    finally:
        handle.close()  # releases the lock


def truncate_history(path, epoch: int) -> None:
    """Keep the lines of the JSON-lines file ``path`` with ``"epoch" < epoch``, once each."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    kept, seen = [], set()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        e = record.get("epoch")
        if isinstance(e, int) and e < epoch and e not in seen:
            seen.add(e)
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
