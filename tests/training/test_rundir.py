"""Run directories and checkpoints never fail silently: a lock against a second writer,
no overwrite of a run without asking, verified checkpoints, resume past a damaged one
without duplicating a metrics line."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from polmp.training import checkpoints
from polmp.training.checkpoints import CorruptCheckpointError
from polmp.training.loop import evaluate, train
from polmp.training.rundir import RunDirectoryBusy, claim_run_dir
from polmp.training.trained import load_trained
from tests.training.test_training import TEST, TRAIN, VALID, make_config

DATA = (TRAIN, VALID, TEST)


def _config(path, max_steps):
    config = make_config(path)  # the compiled steps of test_training are reused
    return dataclasses.replace(
        config, training=dataclasses.replace(config.training, max_steps=max_steps)
    )


def _garble(directory: pathlib.Path) -> pathlib.Path:
    """Overwrite the middle of the largest data file of an orbax directory."""
    files = [
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name != checkpoints.MANIFEST and p.suffix != ".json"
    ]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = b"\x7f" * 16
    target.write_bytes(bytes(data))
    return target


def _epochs(run_dir) -> list[int]:
    lines = (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Two epochs (4 steps): checkpoints at steps 2 and 4, best/ params."""
    config = _config(tmp_path_factory.mktemp("short") / "run", 4)
    return config, train(config, datasets=DATA)


def test_second_writer_is_refused_with_the_owner_named(tmp_path):
    config = _config(tmp_path / "busy", 2)
    with claim_run_dir(config.output_dir):
        with pytest.raises(RunDirectoryBusy, match=rf"process {os.getpid()} on"):
            train(config, datasets=DATA)
    assert not (tmp_path / "busy" / "config.yaml").exists()  # nothing written


def test_finished_run_is_not_overwritten_without_asking(short_run):
    config, result = short_run
    run_dir = pathlib.Path(result.run_dir)
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(ValueError, match="already holds a run .*--overwrite"):
        train(config, datasets=DATA)
    assert (run_dir / "config.yaml").read_text() == before
    with pytest.raises(ValueError, match="exclude each other"):
        train(config, datasets=DATA, resume=True, overwrite=True)


def test_overwrite_replaces_the_run(tmp_path):
    config = _config(tmp_path / "over", 2)
    first = train(config, datasets=DATA)
    again = train(config, datasets=DATA, overwrite=True)
    assert again.step_losses == first.step_losses
    assert _epochs(again.run_dir) == [0]


def test_garbled_best_checkpoint_is_named(short_run):
    _, result = short_run
    best = pathlib.Path(result.run_dir) / "best"
    assert (best / checkpoints.MANIFEST).exists()
    load_trained(result.run_dir)  # intact: loads
    target = _garble(best)
    try:
        with pytest.raises(CorruptCheckpointError, match=str(target)):
            load_trained(result.run_dir)
        with pytest.raises(CorruptCheckpointError, match="checksum mismatch"):
            evaluate(result.run_dir, VALID)
    finally:
        checkpoints.save_params(best, result.params)  # restore for other tests


def test_non_finite_parameters_are_refused(tmp_path, short_run):
    _, result = short_run
    params = jax.tree.map(np.array, result.params)
    leaf = jax.tree.leaves(params)[0]
    leaf.flat[0] = np.nan
    checkpoints.save_params(tmp_path / "nan", params)
    with pytest.raises(CorruptCheckpointError, match="holds NaN or inf"):
        checkpoints.load_params(tmp_path / "nan", result.params)


def test_resume_falls_back_past_a_corrupted_checkpoint(tmp_path):
    part1 = train(_config(tmp_path / "a", 4), datasets=DATA)
    steps = sorted(int(p.name) for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert steps == [2, 4] and _epochs(part1.run_dir) == [0, 1]
    _garble(tmp_path / "a" / "checkpoints" / "4" / "state")
    with pytest.warns(RuntimeWarning, match="resuming from step 2"):
        part2 = train(_config(tmp_path / "a", 6), datasets=DATA, resume=True)
    straight = train(_config(tmp_path / "b", 6), datasets=DATA)
    # steps 3-4 are taken again, bit-identical to the uninterrupted run
    assert part1.step_losses[:2] + part2.step_losses == straight.step_losses
    assert _epochs(part2.run_dir) == [0, 1, 2]  # epoch 1 once, not twice


def test_kill_during_checkpoint_write_duplicates_no_metrics_line(tmp_path):
    """A SIGKILL while the checkpoint of epoch 1 is written leaves its metrics line
    and no committed checkpoint; resuming runs epoch 1 again and records it once."""
    part1 = train(_config(tmp_path / "k", 4), datasets=DATA)
    ckpt = tmp_path / "k" / "checkpoints"
    for p in ckpt.iterdir():
        if p.name == "4":
            p.rename(ckpt / "4.orbax-checkpoint-tmp-0")  # an uncommitted write
    assert _epochs(part1.run_dir) == [0, 1]
    train(_config(tmp_path / "k", 4), datasets=DATA, resume=True)
    assert _epochs(part1.run_dir) == [0, 1]


def test_short_reprs(short_run):
    _, result = short_run
    text = repr(result)
    assert "\n" not in text and len(text) < 400
    assert result.run_dir in text and "parameters" in text and "RMSE" in text
    frame = repr(TRAIN[0])
    assert "\n" not in frame and len(frame) < 200 and "atoms" in frame


def test_evaluate_warns_when_an_energy_offset_dominates(short_run):
    _, result = short_run
    metrics, _ = evaluate(result.run_dir, VALID)
    assert abs(metrics["energy_mean_error_meV_per_atom"]) < 1e3
    shifted = [
        dataclasses.replace(f, energy=f.energy - 2.0 * f.num_atoms) for f in VALID
    ]  # another level of theory: 2 eV/atom lower reference energies
    with pytest.warns(UserWarning, match="another level of theory"):
        metrics, _ = evaluate(result.run_dir, shifted)
    assert metrics["energy_mean_error_meV_per_atom"] > 1900
