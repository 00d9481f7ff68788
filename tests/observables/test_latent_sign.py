"""A trained model's latent sign: flipping negates every latent, not the energy."""

import jax
import numpy as np
import pytest

from polmp.data.batching import frames_to_graph
from polmp.data.water import water_box
from polmp.models.long_range import graph_long_range, prepare_long_range
from polmp.models.potential import make_energy_fn
from polmp.training.trained import choose_latent_sign, flip_latent_sign
from tests.training.morse import tiny_latent_model


def test_flip_negates_latents_and_keeps_energy(x64):
    config = tiny_latent_model(cutoff_A=3.0, avg_num_neighbors=4.0)
    fns = make_energy_fn(config, long_range_fn=graph_long_range)
    graph = frames_to_graph([water_box(1, seed=0)], cutoff=config.cutoff_A)
    data = prepare_long_range(graph, sigma=1.0, accuracy=1e-8, method="ewald")
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    a = fns.outputs_fn(params, graph, long_range=data)
    b = fns.outputs_fn(flip_latent_sign(params), graph, long_range=data)
    for name in ("q", "mu", "dq", "dmu"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert np.abs(x).max() > 1e-4
        np.testing.assert_allclose(y, -x, rtol=1e-12, atol=1e-14)
    for name in ("kappa", "alpha", "energy"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12)
    e_a = fns.energy_fn(params, graph, long_range=data)
    e_b = fns.energy_fn(flip_latent_sign(params), graph, long_range=data)
    np.testing.assert_allclose(e_b, e_a, rtol=1e-12)


def test_chemistry_rule():
    numbers = [np.array([8, 1, 1])]
    assert choose_latent_sign([np.array([-0.6, 0.3, 0.3])], numbers)[0] == 1
    assert choose_latent_sign([np.array([0.28, -0.14, -0.14])], numbers)[0] == -1
    with pytest.raises(ValueError, match="undetermined"):
        choose_latent_sign([np.zeros(3)], numbers)
