"""Strict config loading: unknown keys, types, overrides, sweeps, YAML round trip."""

import dataclasses

import pytest
import yaml

from polmp.config.loader import (
    ConfigError,
    expand_sweep,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    cutoff_A: float = 5.0
    layers: int = 2
    widths: tuple[int, ...] = (16, 16)
    variant: str = "full"

    def __post_init__(self):
        if self.cutoff_A <= 0:
            raise ValueError("cutoff_A must be positive")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    model: Inner = dataclasses.field(default_factory=Inner)
    seed: int = 0
    learning_rate: float | None = None


def test_defaults_nesting_and_coercion():
    cfg = from_dict(Outer, {"name": "w", "model": {"cutoff_A": 4, "widths": [8, 8, 8]}})
    assert cfg.model.cutoff_A == 4.0 and isinstance(cfg.model.cutoff_A, float)
    assert cfg.model.widths == (8, 8, 8) and cfg.model.layers == 2 and cfg.seed == 0


@pytest.mark.parametrize(
    "data, match",
    [
        ({"name": "w", "model": {"cutoff_nm": 0.5}}, r"model\.cutoff_nm"),
        ({"name": "w", "sed": 1}, "unknown key"),
        ({"model": {}}, "missing required"),
        ({"name": "w", "seed": 1.5}, "expected an integer"),
        ({"name": "w", "model": {"layers": True}}, "expected an integer"),
        ({"name": "w", "model": {"cutoff_A": -1.0}}, "cutoff_A must be positive"),
        ({"name": "w", "model": {"widths": 3}}, "expected a list"),
    ],
)
def test_bad_configs_are_named(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_yaml_file_with_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: water\nmodel:\n  cutoff_A: 5.5\n")
    cfg = load_config(
        Outer, path, ["model.layers=3", "learning_rate=1e-3", "model.widths=[4, 4]"]
    )
    assert cfg.model == Inner(cutoff_A=5.5, layers=3, widths=(4, 4))
    assert cfg.learning_rate == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Outer, path, ["model.lyaers=3"])
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("model.layers")


def test_round_trip_through_yaml():
    cfg = from_dict(
        Outer, {"name": "x", "model": {"widths": [1, 2]}, "learning_rate": 0.01}
    )
    again = from_dict(Outer, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert again == cfg


def test_sweep_grid():
    points = expand_sweep(
        Outer, {"name": "s"}, {"model.variant": ["sr", "full"], "seed": [0, 1, 2]}
    )
    assert len(points) == 6
    assert {(c.model.variant, c.seed) for _, c in points} == {
        (v, s) for v in ("sr", "full") for s in (0, 1, 2)
    }
    with pytest.raises(ConfigError, match="non-empty"):
        expand_sweep(Outer, {"name": "s"}, {"seed": []})
