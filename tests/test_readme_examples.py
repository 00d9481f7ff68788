"""README's jax-md and ASE examples run as written.

The examples load the shipped model by name; here ``load_trained`` hands them a tiny
untrained model of the same species instead, so the test is fast and does not need
the shipped parameters.  Everything else is the README's code, executed verbatim.
"""

import pathlib
import re

import jax
import numpy as np
import pytest

from polmp.config.schema import LongRangeConfig, RunConfig
from polmp.data.batching import frames_to_graph
from polmp.data.water import water_box
from polmp.training import trained as trained_module
from tests.training.morse import tiny_latent_model

README = pathlib.Path(__file__).parents[1] / "README.md"


def _example(name: str) -> str:
    text = README.read_text()
    match = re.search(
        rf"<!-- readme-test: {name} -->\s*```python\n(.*?)```", text, re.DOTALL
    )
    assert match, f"README has no example marked {name!r}"
    return match.group(1)


@pytest.fixture
def tiny_shipped_model(monkeypatch):
    model = tiny_latent_model()
    fns = trained_module.energy_fns_of(model)
    graph = frames_to_graph([water_box(2)], cutoff=model.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    config = RunConfig(
        model=model, long_range=LongRangeConfig(sigma_A=1.0, accuracy=1e-5)
    )
    tiny = trained_module.TrainedModel(config, params, fns, "tiny")
    real = trained_module.load_trained

    def load_trained(path_or_name="water-gfn2-full"):
        return tiny if path_or_name == "water-gfn2-full" else real(path_or_name)

    monkeypatch.setattr(trained_module, "load_trained", load_trained)


@pytest.mark.parametrize("name", ["jax-md", "ase"])
def test_readme_example_runs(tiny_shipped_model, name):
    namespace: dict = {}
    exec(compile(_example(name), f"README[{name}]", "exec"), namespace)
    if name == "jax-md":
        assert np.isfinite(np.asarray(namespace["state"].position)).all()
        assert np.isfinite(np.asarray(namespace["stress"])).all()
    else:
        assert np.isfinite(namespace["energy"])
        assert namespace["bec"].shape == (3, 3, 3)
        assert namespace["alpha"].shape == (3, 3)
