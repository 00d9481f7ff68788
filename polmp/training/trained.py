"""Load a trained model for inference (MD, observables, spectra, the ASE calculator).

A trained model is a resolved ``RunConfig`` (``config.yaml``, with the fitted
reference energies) plus parameters.  Three places hold one:

* a run directory of ``polmp train`` (``<run>/config.yaml`` + ``<run>/best/``, orbax);
* a checkpoint step of a run (``<run>/checkpoints/<step>``: its EMA parameters);
* an exported model directory (``config.yaml`` + ``params.msgpack``, one portable
  file written by ``export_trained``), which is how polmp ships its default model
  (``SHIPPED_MODELS``, loaded by name: ``load_trained("water-gfn2-full")``).

Host side, not jittable.  The returned ``TrainedModel`` carries the jittable
``EnergyFns`` and the keyword arguments of ``prepare_long_range`` the model was
trained with, so inference uses the same sigma, accuracy and solver choice.
"""

from __future__ import annotations

import dataclasses
import pathlib
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import serialization

from polmp.config.loader import load_config, to_dict
from polmp.config.schema import RunConfig
from polmp.models import EnergyFns, ModelConfig, make_energy_fn

__all__ = [
    "SHIPPED_MODELS",
    "TrainedModel",
    "energy_fns_of",
    "export_trained",
    "load_trained",
    "long_range_options_of",
]

#: Name -> folder (inside ``polmp/data/models``) of the models shipped with polmp.
SHIPPED_MODELS = {"water-gfn2-full": "water_gfn2_full"}
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.yaml"


def energy_fns_of(model: ModelConfig) -> EnergyFns:
    """``make_energy_fn`` of ``model``, with the long-range adapter when it has latents."""
    if model.variant == "sr":
        return make_energy_fn(model)
    from polmp.models.long_range import graph_long_range

    return make_energy_fn(model, long_range_fn=graph_long_range)


def long_range_options_of(config: RunConfig) -> dict | None:
    """Keyword arguments of ``prepare_long_range`` for ``config`` (None for "sr")."""
    if config.model.variant == "sr":
        return None
    lr = config.long_range
    return dict(
        sigma=lr.sigma_A,
        accuracy=lr.accuracy,
        method=lr.method,
        les_compat=lr.les_compat,
    )


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained model ready for inference.

    Attributes:
        config: the run's resolved ``RunConfig`` (model with fitted references).
        params: the parameters (best EMA parameters of the run), a flax dict of arrays.
        energy_fns: ``EnergyFns`` of ``config.model``.
        source: where it was loaded from (a path, or ``shipped:<name>``).
    """

    config: RunConfig
    params: Any
    energy_fns: EnergyFns
    source: str

    @property
    def model_config(self) -> ModelConfig:
        return self.config.model

    @property
    def long_range_options(self) -> dict | None:
        """``prepare_long_range`` keyword arguments (None for an "sr" model)."""
        return long_range_options_of(self.config)

    def cast(self, dtype) -> TrainedModel:
        """The same model with floating parameters cast to ``dtype``."""
        params = jax.tree.map(
            lambda x: (
                jnp.asarray(x, dtype)
                if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
                else jnp.asarray(x)
            ),
            self.params,
        )
        return dataclasses.replace(self, params=params)


def _shipped_dir(name: str):
    folder = resources.files("polmp.data").joinpath("models", SHIPPED_MODELS[name])
    return pathlib.Path(str(folder))


def _template(config: RunConfig, fns: EnergyFns):
    """Parameter template of ``config.model`` (shapes only; one jitted init)."""
    from polmp.data.batching import frames_to_batch
    from polmp.data.schema import Frame

    species = np.asarray(config.model.species, np.int32)
    positions = 1.5 * np.arange(len(species) * 3, dtype=float).reshape(-1, 3)
    frame = Frame(positions=positions, numbers=species)
    graph = frames_to_batch([frame], config.cutoff_A).graph
    return jax.eval_shape(fns.model.init, jax.random.PRNGKey(0), graph)


def _from_orbax(run_dir: pathlib.Path, step: int | None, config, fns):
    from polmp.training import checkpoints
    from polmp.training.optim import make_optimizer
    from polmp.training.state import TrainState

    template = _template(config, fns)
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    best = run_dir / "best"
    if step is None and best.exists():
        return checkpoints.load_params(best, template)
    tx = make_optimizer(config.training, 1)
    state_template = TrainState.create(template, tx, jax.random.PRNGKey(0))
    manager = checkpoints.make_manager(run_dir / "checkpoints")
    state, _, _ = checkpoints.restore_checkpoint(manager, state_template, step)
    return state.ema_params


def _resolve(path) -> tuple[pathlib.Path, int | None]:
    """(directory with config.yaml, checkpoint step or None) of ``path``."""
    path = pathlib.Path(path).resolve()
    if (path / CONFIG_FILE).exists():
        return path, None
    for parent in (path.parent, path.parent.parent):
        if (parent / CONFIG_FILE).exists():
            try:
                return parent, int(path.name)
            except ValueError:
                break
    raise FileNotFoundError(
        f"{path} is neither a run directory, a checkpoint of one, nor an exported "
        f"model (no {CONFIG_FILE}); shipped models: {sorted(SHIPPED_MODELS)}"
    )


def load_trained(path_or_name="water-gfn2-full") -> TrainedModel:
    """Load a trained model (module docstring).  Not jittable.

    Args:
        path_or_name: a run directory, a checkpoint step directory, an exported model
            directory, or the name of a shipped model (``SHIPPED_MODELS``).

    Returns:
        ``TrainedModel`` (parameters in the dtype they were saved in).

    Raises:
        FileNotFoundError: nothing loadable at the path.
    """
    if str(path_or_name) in SHIPPED_MODELS:
        directory, step = _shipped_dir(str(path_or_name)), None
        source = f"shipped:{path_or_name}"
        if not (directory / PARAMS_FILE).is_file():
            raise FileNotFoundError(
                f"shipped model {path_or_name!r} is not installed ({directory})"
            )
    else:
        directory, step = _resolve(path_or_name)
        source = str(directory if step is None else directory / str(step))
    config = load_config(RunConfig, directory / CONFIG_FILE)
    fns = energy_fns_of(config.model)
    if step is None and (directory / PARAMS_FILE).is_file():
        params = serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes())
        params = jax.tree.map(jnp.asarray, params)
    else:
        params = _from_orbax(directory, step, config, fns)
    return TrainedModel(config, params, fns, source)


def export_trained(model: TrainedModel, directory) -> pathlib.Path:
    """Write ``model`` as ``config.yaml`` + ``params.msgpack`` into ``directory``.

    The result loads with ``load_trained(directory)`` without orbax or a template.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / CONFIG_FILE, "w") as handle:
        yaml.safe_dump(to_dict(model.config), handle, sort_keys=False)
    host = jax.tree.map(np.asarray, jax.device_get(model.params))
    (directory / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(host))
    return directory
