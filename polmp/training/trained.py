"""Load a trained model for inference (MD, observables, spectra, the ASE calculator).

A trained model is a resolved ``RunConfig`` (``config.yaml``, with the fitted
reference energies) plus parameters.  Three places hold one:

* a run directory of ``polmp train`` (``<run>/config.yaml`` + ``<run>/best/``, orbax);
* a checkpoint step of a run (``<run>/checkpoints/<step>``: its EMA parameters);
* an exported model directory (``config.yaml`` + ``params.msgpack``, one portable
  file written by ``export_trained``), which is how polmp ships its default model
  (``SHIPPED_MODELS``, loaded by name: ``load_trained("water-gfn2-full")``).

The global sign of the latents (q, mu, Theta and so dq, dmu, phi, field) is arbitrary
in training: the energy is even in them without an external field.  A model's sign
is fixed once (``choose_latent_sign``: against reference dipoles / Born charges when
the data have them, else chemistry: electronegative elements negative) and stored
beside it in ``latents.yaml`` (``sign: -1`` or ``1``, and how it was chosen);
``load_trained`` applies it to the parameters (the output weights of the q, mu and
Theta heads), so every path that evaluates ``TrainedModel.params`` (the ASE
calculator, MD records, validation) gets the chemical sign.  The parameters on disk
stay as trained.

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
    "choose_latent_sign",
    "flip_latent_sign",
    "with_latent_sign",
    "energy_fns_of",
    "export_trained",
    "load_trained",
    "long_range_options_of",
    "save_latent_sign",
]

#: Name -> folder (inside ``polmp/data/models``) of the models shipped with polmp.
SHIPPED_MODELS = {"water-gfn2-full": "water_gfn2_full"}
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.yaml"
LATENTS_FILE = "latents.yaml"
#: Pauling electronegativities for the chemistry rule of ``choose_latent_sign``.
ELECTRONEGATIVITY = {
    1: 2.20, 3: 0.98, 5: 2.04, 6: 2.55, 7: 3.04, 8: 3.44, 9: 3.98, 11: 0.93,
    12: 1.31, 14: 1.90, 15: 2.19, 16: 2.58, 17: 3.16, 19: 0.82, 20: 1.00, 35: 2.96,
    53: 2.66, 55: 0.79, 82: 2.33,
}  # fmt: skip


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
        latent_sign: +1 or -1, already applied to ``params`` relative to the trained
            parameters (module docstring); ``latent_sign_note`` says how it was chosen
            (None: never fixed, the training sign).
    """

    config: RunConfig
    params: Any
    energy_fns: EnergyFns
    source: str
    latent_sign: int = 1
    latent_sign_note: str | None = None

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


def _latent_head_paths(params) -> list[tuple[str, ...]]:
    """Paths of the output weights of the q, mu and Theta heads in ``params``.

    They are the heads' unnamed bias-free e3nn linear maps to 0e (q), 1o (mu) and 2e
    (Theta); kappa has a bias, alpha and the energy MLP are named / dense.
    """
    heads = params["params"]["heads"]
    paths = []
    for name, leaf in heads.items():
        if not name.startswith("Linear_") or any(k.startswith("b[") for k in leaf):
            continue
        for key in leaf:
            paths.append(("params", "heads", name, key))
    return paths


def flip_latent_sign(params):
    """``params`` with every latent (q, mu, Theta; so dq, dmu, phi, field) negated.

    The energy without an external field, kappa and alpha are unchanged.
    """
    import copy

    flipped = copy.copy(params)
    flipped["params"] = dict(params["params"])
    flipped["params"]["heads"] = {
        k: dict(v) for k, v in params["params"]["heads"].items()
    }
    for path in _latent_head_paths(params):
        leaf = flipped["params"]["heads"][path[2]]
        leaf[path[3]] = -leaf[path[3]]
    return flipped


def with_latent_sign(model: TrainedModel, sign: int, note: str) -> TrainedModel:
    """``model`` with its latent sign set to ``sign`` (+1/-1, relative to training)."""
    if sign not in (1, -1):
        raise ValueError(f"latent sign must be +1 or -1, got {sign!r}")
    params = model.params
    if sign != model.latent_sign:
        params = flip_latent_sign(params)
    return dataclasses.replace(
        model, params=params, latent_sign=sign, latent_sign_note=note
    )


def choose_latent_sign(charges, numbers, *, predicted=None, reference=None):
    """+1 or -1 so that a model's latents have the chemical sign.  Host side.

    With reference data: the sign of sum(predicted * reference) over every array
    (Born charges (N, 3, 3) or dipoles (3,), e or e*A, per frame).  Without: the sign
    that makes the charges anti-correlated with the Pauling electronegativity
    (electronegative elements negative): -sign(sum_i q_i (chi_i - mean chi)) over
    all atoms of all frames.

    Args:
        charges: list of (N_f,) predicted charges, e, in the model's current sign.
        numbers: list of (N_f,) atomic numbers.
        predicted, reference: optional lists of matching arrays (Born charges or
            dipoles) predicted by the model and from the reference data.

    Returns:
        (sign, note): +1 keeps the current sign, -1 flips it; note says how.

    Raises:
        ValueError: the chosen statistic is exactly zero (no information).
    """
    if predicted is not None and reference is not None:
        dot = sum(
            float(np.sum(np.asarray(p) * np.asarray(r)))
            for p, r in zip(predicted, reference, strict=True)
        )
        how = f"reference: sum(predicted * reference) = {dot:+.4g}"
    else:
        q = np.concatenate([np.asarray(c, float).ravel() for c in charges])
        z = np.concatenate([np.asarray(n).ravel() for n in numbers])
        unknown = sorted(set(z.tolist()) - set(ELECTRONEGATIVITY))
        if unknown:
            raise ValueError(f"no electronegativity for elements {unknown}")
        chi = np.array([ELECTRONEGATIVITY[int(k)] for k in z])
        dot = -float(np.sum(q * (chi - chi.mean())))
        how = f"chemistry: -sum(q (chi - mean chi)) = {dot:+.4g}"
    if dot == 0.0:
        raise ValueError(f"latent sign undetermined ({how})")
    return (1 if dot > 0 else -1), how


def _read_latents(directory: pathlib.Path) -> tuple[int, str | None]:
    path = directory / LATENTS_FILE
    if not path.is_file():
        return 1, None
    meta = yaml.safe_load(path.read_text()) or {}
    sign = int(meta.get("sign", 1))
    if sign not in (1, -1):
        raise ValueError(f"{path}: sign must be 1 or -1, got {sign}")
    return sign, meta.get("note")


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
    sign, note = _read_latents(directory)
    model = TrainedModel(config, params, fns, source)
    return model if note is None and sign == 1 else with_latent_sign(model, sign, note)


def save_latent_sign(directory, sign: int, note: str) -> pathlib.Path:
    """Store a model's latent sign beside it (``latents.yaml``; module docstring)."""
    path = pathlib.Path(directory) / LATENTS_FILE
    with open(path, "w") as handle:
        yaml.safe_dump({"sign": int(sign), "note": str(note)}, handle, sort_keys=False)
    return path


def export_trained(model: TrainedModel, directory) -> pathlib.Path:
    """Write ``model`` as ``config.yaml`` + ``params.msgpack`` into ``directory``.

    The result loads with ``load_trained(directory)`` without orbax or a template.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / CONFIG_FILE, "w") as handle:
        yaml.safe_dump(to_dict(model.config), handle, sort_keys=False)
    # parameters as trained, the sign beside them (applied again on load)
    params = model.params if model.latent_sign == 1 else flip_latent_sign(model.params)
    host = jax.tree.map(np.asarray, jax.device_get(params))
    (directory / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(host))
    if model.latent_sign_note is not None or model.latent_sign != 1:
        save_latent_sign(directory, model.latent_sign, model.latent_sign_note or "")
    elif (directory / LATENTS_FILE).exists():
        (directory / LATENTS_FILE).unlink()
    return directory
