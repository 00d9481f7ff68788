"""ModelConfig validation and variant -> heads mapping."""

from __future__ import annotations

import pytest

from polmp.models.config import VARIANTS, ModelConfig


def test_unknown_variant_and_alpha_kind_raise():
    with pytest.raises(ValueError, match="variant"):
        ModelConfig(species=(1, 8), variant="q+theta")
    with pytest.raises(ValueError, match="alpha_kind"):
        ModelConfig(species=(1, 8), alpha_kind="tensor")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(species=()),
        dict(species=(1, 1)),
        dict(species=(0, 1)),
        dict(species=(1,), cutoff_A=0.0),
        dict(species=(1,), num_layers=0),
        dict(species=(1,), variant="full", l_max=1),
        dict(species=(1,), variant="q+mu", l_max=0),
        dict(species=(1,), variant="q", alpha_kind="anisotropic", l_max=0, q_scale=0),
        dict(species=(1, 8), reference_energies_eV=(1.0,)),
        dict(species=(1,), envelope_p=1),
    ],
)
def test_invalid_configs_raise(kwargs):
    with pytest.raises(ValueError):
        ModelConfig(**kwargs)


def test_variant_flags():
    flags = {
        v: (c.use_q, c.use_mu, c.use_theta, c.use_kappa, c.use_alpha)
        for v in VARIANTS
        for c in [ModelConfig(species=(1,), variant=v)]
    }
    assert flags["sr"] == (False,) * 5
    assert flags["full"] == (True,) * 5
    assert flags["q+mu+dq"] == (True, True, False, True, False)
    assert flags["q+mu+dmu"] == (True, True, False, False, True)
    assert flags["q+mu+theta"] == (True, True, True, False, False)


def test_config_is_hashable_and_normalised():
    c = ModelConfig(species=[8, 1], radial_mlp=[4], reference_energies_eV=[1, 2])
    assert c.species == (8, 1) and c.radial_mlp == (4,)
    assert c.reference_energies_eV == (1.0, 2.0)
    hash(c)
    # l_max 0 is fine when no head needs vectors.
    ModelConfig(species=(1,), variant="q", l_max=0)
