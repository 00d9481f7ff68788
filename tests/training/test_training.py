"""End-to-end training tests on tiny Morse molecules (variant "sr", l_max 1, 8 ch).

One training configuration is shared by most tests so that the jitted steps compile
once per session (``polmp.training.steps.compiled_steps`` caches them).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from polmp.config.loader import ConfigError, load_config
from polmp.config.schema import RunConfig, TrainingConfig
from polmp.data.schema import Frame
from polmp.training.loop import evaluate, fit_model_reference_energies, train
from polmp.training.trained import export_trained, load_trained
from tests.training.morse import REFERENCE, molecules, tiny_model

EPOCHS = 8
TRAIN = molecules(8, seed=1)
VALID = molecules(2, seed=2)
TEST = molecules(2, seed=3)


def make_config(output_dir, **training) -> RunConfig:
    base = dict(
        batch_size=4,
        num_epochs=EPOCHS,
        learning_rate=1e-2,
        warmup_steps=2,
        stage2_energy_weight=5.0,
        stage2_start_epoch=6,
        progress_bar=False,
    )
    base.update(training)
    return RunConfig(
        model=tiny_model(), training=TrainingConfig(**base), output_dir=str(output_dir)
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("run") / "a")
    return config, train(config, datasets=(TRAIN, VALID, TEST))


def test_loss_decreases(run):
    _, result = run
    stage1 = [h for h in result.history if h["stage"] == 1]
    assert len(stage1) == 6
    assert stage1[-1]["train_loss"] < 0.85 * stage1[0]["train_loss"]
    assert stage1[-1]["valid_loss"] < stage1[0]["valid_loss"]
    assert np.isfinite(result.step_losses).all()
    assert len(result.step_losses) == EPOCHS * 2 == result.num_steps


def test_second_stage_raises_energy_weight(run):
    _, result = run
    weights = [h["energy_weight"] for h in result.history]
    assert weights == [1.0] * 6 + [5.0] * 2
    assert [h["stage"] for h in result.history] == [1] * 6 + [2] * 2


def test_run_directory(run):
    config, result = run
    run_dir = pathlib.Path(result.run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == EPOCHS
    first = json.loads(lines[0])
    for key in (
        "valid_energy_rmse_meV_per_atom",
        "valid_energy_mae_meV_per_atom",
        "valid_forces_rmse_meV_per_A",
        "valid_forces_mae_meV_per_A",
        "valid_stress_rmse_meV_per_A3",
        "train_loss",
        "valid_loss",
        "learning_rate",
        "num_compiled_shapes",
    ):
        assert key in first
    assert first["valid_stress_rmse_meV_per_A3"] is None  # no stress labels
    for name in ("parity_energy.png", "parity_forces.png"):
        data = (run_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    provenance = json.loads((run_dir / "provenance.json").read_text())
    for package in ("jax", "flax", "optax", "e3nn-jax", "polmp"):
        assert provenance["versions"][package]
    assert "git_hash" in provenance
    resolved = load_config(RunConfig, run_dir / "config.yaml")
    assert resolved.model == result.model_config
    assert resolved.model.reference_energies_eV is not None
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert set(summary["tables"]) == {"train", "valid", "test"}
    assert (run_dir / "best").exists()


def test_compiled_shapes_reported(run):
    _, result = run
    # 8 frames of 3-6 atoms in batches of 4: at most two bucket shapes
    assert 1 <= result.num_compiled_shapes <= 2
    assert result.history[-1]["num_compiled_shapes"] == result.num_compiled_shapes
    assert 1 <= result.num_eval_shapes <= 8


def test_reference_energies(run):
    _, result = run
    # Morse pair energies shift the fit a little; the offsets dominate
    fitted = dict(
        zip(
            result.model_config.species,
            result.model_config.reference_energies_eV,
            strict=True,
        )
    )
    for z, e in REFERENCE.items():
        assert abs(fitted[z] - e) < 1.0
    # energies exactly linear in the counts are recovered to round-off
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(6):
        numbers = rng.choice([1, 8], size=int(rng.integers(2, 7)))
        e = sum({1: -1.25, 8: -7.5}[int(z)] for z in numbers)
        frames.append(
            Frame(
                positions=rng.normal(size=(len(numbers), 3)), numbers=numbers, energy=e
            )
        )
    model = fit_model_reference_energies(tiny_model(), frames)
    np.testing.assert_allclose(model.reference_energies_eV, (-1.25, -7.5), rtol=1e-10)


def test_same_config_same_loss_curve(run, tmp_path):
    config, result = run
    again = train(
        dataclasses.replace(config, output_dir=str(tmp_path / "b")),
        datasets=(TRAIN, VALID, TEST),
    )
    assert again.step_losses == result.step_losses
    assert [h["valid_loss"] for h in again.history] == [
        h["valid_loss"] for h in result.history
    ]


def _saved_state(run_dir):
    manager_dir = pathlib.Path(run_dir) / "checkpoints"
    step = max(int(p.name) for p in manager_dir.iterdir() if p.name.isdigit())
    with ocp.PyTreeCheckpointer() as checkpointer:
        return step, checkpointer.restore(manager_dir / str(step) / "state")


def test_resume_is_bit_identical(run, tmp_path):
    config, _ = run
    steps = 3  # stops inside epoch 1 (2 steps per epoch)
    first = dataclasses.replace(
        config,
        output_dir=str(tmp_path / "resumed"),
        training=dataclasses.replace(config.training, max_steps=steps),
    )
    part1 = train(first, datasets=(TRAIN, VALID, TEST))
    second = dataclasses.replace(
        first, training=dataclasses.replace(first.training, max_steps=2 * steps)
    )
    part2 = train(second, datasets=(TRAIN, VALID, TEST), resume=True)
    straight = train(
        dataclasses.replace(second, output_dir=str(tmp_path / "straight")),
        datasets=(TRAIN, VALID, TEST),
    )
    assert part2.num_steps == straight.num_steps == 2 * steps
    assert part1.step_losses + part2.step_losses == straight.step_losses
    step_a, state_a = _saved_state(second.output_dir)
    step_b, state_b = _saved_state(straight.run_dir)
    assert step_a == step_b == 2 * steps
    leaves_a = jax.tree.leaves(state_a)
    leaves_b = jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b) > 5
    for a, b in zip(leaves_a, leaves_b, strict=True):
        assert np.array_equal(
            np.asarray(a), np.asarray(b)
        )  # params, EMA, opt state, key
    # and the run did move away from the initial parameters
    assert part2.step_losses[-1] != part1.step_losses[0]


def test_evaluate_matches_training_tables(run):
    _, result = run
    evaluation = evaluate(result.run_dir, VALID)
    metrics, table = evaluation
    for key in (
        "energy_rmse_meV_per_atom",
        "forces_rmse_meV_per_A",
        "forces_mae_meV_per_A",
    ):
        np.testing.assert_allclose(
            metrics[key], result.metrics["valid"][key], rtol=1e-5
        )
    assert "E RMSE" in table and "meV/atom" in table
    # a checkpoint path works too (EMA params of the final step)
    checkpoint = sorted((pathlib.Path(result.run_dir) / "checkpoints").iterdir())[-1]
    metrics_ckpt, _ = evaluate(checkpoint, VALID)
    assert np.isfinite(metrics_ckpt["forces_rmse_meV_per_A"])
    with pytest.raises(ValueError, match="species"):
        evaluate(
            result.run_dir,
            [dataclasses.replace(VALID[0], numbers=np.full(VALID[0].num_atoms, 6))],
        )


def test_load_and_export_trained(run, tmp_path):
    """load_trained gives the run's best parameters; an exported copy is identical."""
    _, result = run
    trained = load_trained(result.run_dir)
    assert trained.config.model == result.model_config
    for a, b in zip(
        jax.tree.leaves(trained.params), jax.tree.leaves(result.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    exported = load_trained(export_trained(trained, tmp_path / "model"))
    assert exported.config == trained.config
    for a, b in zip(
        jax.tree.leaves(exported.params), jax.tree.leaves(trained.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and its energy function reproduces the evaluation of the run
    metrics, _ = evaluate(tmp_path / "model", VALID)
    np.testing.assert_allclose(
        metrics["forces_rmse_meV_per_A"],
        result.metrics["valid"]["forces_rmse_meV_per_A"],
        rtol=1e-5,
    )
    with pytest.raises(FileNotFoundError, match="shipped models"):
        load_trained(tmp_path / "nothing-here")


# ----------------------------------------------------------------- clear errors


def test_missing_forces_label(tmp_path):
    frames = list(TRAIN)
    frames[3] = dataclasses.replace(frames[3], forces=None)
    with pytest.raises(ValueError, match="training frame 3 has no forces"):
        train(make_config(tmp_path / "x"), datasets=(frames, VALID, []))
    # fine with forces_weight 0 (checked only up to the data checks here)


def test_unseen_species_in_validation(tmp_path):
    valid = [dataclasses.replace(VALID[0], numbers=np.full(VALID[0].num_atoms, 1))]
    only_o = [dataclasses.replace(f, numbers=np.full(f.num_atoms, 8)) for f in TRAIN]
    with pytest.raises(
        ValueError, match=r"validation data contain species \[1\] not seen"
    ):
        train(make_config(tmp_path / "x"), datasets=(only_o, valid, []))


def test_species_unknown_to_model(tmp_path):
    frames = [dataclasses.replace(TRAIN[0], numbers=np.full(TRAIN[0].num_atoms, 6))]
    with pytest.raises(ValueError, match="does not list"):
        train(make_config(tmp_path / "x"), datasets=(frames, [], []))


def test_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train(make_config(tmp_path / "x"), datasets=([], [], []))
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    config = dataclasses.replace(
        make_config(tmp_path / "y"),
        data=load_config(
            RunConfig, {"model": {"species": [1]}, "data": {"train_path": str(empty)}}
        ).data,
    )
    with pytest.raises(ValueError):
        train(config)


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_config(
            RunConfig,
            {"model": {"species": [1, 8]}, "training": {"lerning_rate": 1e-3}},
        )


def test_float64_needs_x64(tmp_path):
    if jax.config.jax_enable_x64:
        pytest.skip("x64 is on in this session")
    config = dataclasses.replace(make_config(tmp_path / "x"), precision="float64")
    with pytest.raises(ValueError, match="jax_enable_x64"):
        train(config, datasets=(TRAIN, VALID, []))


def test_resume_needs_checkpoint_and_fresh_run_needs_empty_dir(run, tmp_path):
    config, _ = run
    with pytest.raises(ValueError, match="no checkpoint"):
        train(make_config(tmp_path / "none"), datasets=(TRAIN, VALID, []), resume=True)
    with pytest.raises(ValueError, match="already holds a run"):
        train(config, datasets=(TRAIN, VALID, TEST))


def test_data_from_files(tmp_path):
    """DataConfig paths: extxyz written by ASE, seeded split, unknown key errors."""
    ase_io = pytest.importorskip("ase.io")
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from polmp.training.loop import load_datasets

    atoms = []
    for f in molecules(10, seed=5):
        a = Atoms(numbers=f.numbers, positions=f.positions)
        a.calc = SinglePointCalculator(a, energy=f.energy, forces=f.forces)
        atoms.append(a)
    path = tmp_path / "data.xyz"
    ase_io.write(path, atoms, format="extxyz")
    data = load_config(
        RunConfig,
        {
            "model": {"species": [1, 8]},
            "data": {
                "train_path": str(path),
                "valid_fraction": 0.2,
                "test_fraction": 0.1,
            },
        },
    ).data
    train_set, valid_set, test_set = load_datasets(data)
    assert (len(train_set), len(valid_set), len(test_set)) == (7, 2, 1)
    again = load_datasets(data)
    assert [f.energy for f in again[1]] == [f.energy for f in valid_set]
    other = load_datasets(dataclasses.replace(data, split_seed=1))
    assert [f.energy for f in other[1]] != [f.energy for f in valid_set]
    # a glob and a list of paths concatenate files (sorted within a glob)
    ase_io.write(tmp_path / "data2.xyz", atoms[:3], format="extxyz")
    energies = [a.get_potential_energy() for a in atoms + atoms[:3]]
    for paths in (
        str(tmp_path / "data*.xyz"),
        [str(path), str(tmp_path / "data2.xyz")],
    ):
        both = load_config(
            RunConfig,
            {
                "model": {"species": [1, 8]},
                "data": {"train_path": paths, "valid_fraction": 0.0},
            },
        ).data
        frames = load_datasets(both)[0]
        np.testing.assert_allclose([f.energy for f in frames], energies)
    # pbc: "none" reads periodic frames as isolated molecules
    boxed = [a.copy() for a in atoms[:2]]
    for a in boxed:
        a.set_cell(np.eye(3) * 30.0)
        a.pbc = True
        a.calc = SinglePointCalculator(a, energy=1.0, forces=np.zeros((len(a), 3)))
    ase_io.write(tmp_path / "boxed.xyz", boxed, format="extxyz")
    as_read = dataclasses.replace(both, train_path=str(tmp_path / "boxed.xyz"))
    assert all(f.periodic for f in load_datasets(as_read)[0])
    free = load_datasets(dataclasses.replace(as_read, pbc="none"))[0]
    assert len(free) == 2 and not any(f.periodic for f in free)
    with pytest.raises(ValueError, match="data.pbc"):
        dataclasses.replace(as_read, pbc="vacuum")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_datasets(dataclasses.replace(both, train_path=str(tmp_path / "none*.xyz")))


@pytest.mark.slow  # its own compile (another learning rate)
def test_early_stopping(tmp_path):
    """With a learning rate below float32 resolution nothing improves: stop after
    ``patience`` epochs without improvement."""
    config = make_config(
        tmp_path / "stop",
        learning_rate=1e-12,
        patience=2,
        stage2_energy_weight=None,
        stage2_start_epoch=None,
        ema_decay=None,
    )
    result = train(config, datasets=(TRAIN, VALID, []))
    assert result.stopped_early
    assert len(result.history) == 3 and result.best_epoch == 0
