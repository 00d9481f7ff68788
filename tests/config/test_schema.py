"""Run config schema: YAML round trip, strict keys, validation, reuse of ModelConfig."""

from __future__ import annotations

import pytest
import yaml

from polmp.config.loader import ConfigError, load_config, to_dict
from polmp.config.schema import DataConfig, RunConfig, TrainingConfig
from polmp.models import ModelConfig


def test_defaults_and_round_trip(tmp_path):
    config = load_config(
        RunConfig,
        {
            "model": {"species": [1, 8], "cutoff_A": 4.5},
            "training": {"learning_rate": "1e-3"},
        },
        ["training.batch_size=2", "data.valid_fraction=0.2"],
    )
    assert isinstance(config.model, ModelConfig)
    assert config.training.learning_rate == 1e-3 and config.training.batch_size == 2
    assert config.data.valid_fraction == 0.2
    assert config.cutoff_A == 4.5
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(RunConfig, path) == config


def test_unknown_and_misspelled_keys():
    with pytest.raises(ConfigError, match="training.lerning_rate"):
        load_config(
            RunConfig, {"model": {"species": [1]}, "training": {"lerning_rate": 1}}
        )
    with pytest.raises(ConfigError, match="data.cutoff_nm"):
        load_config(RunConfig, {"model": {"species": [1]}, "data": {"cutoff_nm": 0.5}})
    with pytest.raises(ConfigError, match="model"):
        load_config(RunConfig, {})


@pytest.mark.parametrize(
    "section, values, match",
    [
        ("training", {"optimizer": "sgd"}, "unknown optimizer"),
        ("training", {"schedule": "step"}, "unknown schedule"),
        ("training", {"batch_size": 0}, "batch_size"),
        ("training", {"ema_decay": 1.0}, "ema_decay"),
        ("training", {"stage2_start_epoch": 3}, "go together"),
        ("data", {"valid_fraction": 0.6, "test_fraction": 0.5}, "leave training"),
        ("data", {"cutoff_A": 2.0}, "smaller than the model cutoff"),
        ("long_range", {"method": "p3m"}, "unknown method"),
    ],
)
def test_invalid_values(section, values, match):
    with pytest.raises(ConfigError, match=match):
        load_config(
            RunConfig, {"model": {"species": [1], "cutoff_A": 4.0}, section: values}
        )


def test_precision():
    with pytest.raises(ConfigError, match="precision"):
        load_config(RunConfig, {"model": {"species": [1]}, "precision": "bfloat16"})
    assert (
        RunConfig(model=ModelConfig(species=(1,)), precision="float64").precision
        == "float64"
    )


def test_plain_construction():
    config = RunConfig(
        model=ModelConfig(species=(1, 8)),
        data=DataConfig(cutoff_A=6.0),
        training=TrainingConfig(stage2_energy_weight=10.0, stage2_start_epoch=50),
    )
    assert config.cutoff_A == 6.0
