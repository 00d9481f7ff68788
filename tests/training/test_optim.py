"""Optimiser registry, schedules, clipping, EMA; pipeline split and shape planning."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from polmp.config import schema
from polmp.config.schema import TrainingConfig
from polmp.training import losses, optim, pipeline
from tests.training.morse import molecules


def test_registries_match_schema():
    assert tuple(sorted(optim.OPTIMIZERS)) == tuple(sorted(schema.OPTIMIZER_NAMES))
    assert tuple(sorted(optim.SCHEDULES)) == tuple(sorted(schema.SCHEDULE_NAMES))
    assert tuple(sorted(losses.PENALTIES)) == tuple(sorted(schema.LOSS_NAMES))


@pytest.mark.parametrize("name", ["cosine", "exponential", "constant"])
def test_schedules(name):
    config = TrainingConfig(
        learning_rate=1e-2, warmup_steps=10, schedule=name, final_lr_fraction=0.01
    )
    lr = optim.make_schedule(config, 110)
    assert float(lr(0)) == pytest.approx(0.0, abs=1e-12)
    assert float(lr(5)) == pytest.approx(5e-3, rel=1e-5)
    assert float(lr(10)) == pytest.approx(1e-2, rel=1e-5)
    end = float(lr(110))
    if name == "constant":
        assert end == pytest.approx(1e-2, rel=1e-6)
    else:
        assert end == pytest.approx(1e-4, rel=1e-3)
        assert 1e-4 < float(lr(60)) < 1e-2


@pytest.mark.parametrize("name", ["adam", "amsgrad"])
def test_optimizer_chain_clips_and_descends(name):
    config = TrainingConfig(
        optimizer=name, learning_rate=0.1, schedule="constant", clip_norm=1.0
    )
    tx = optim.make_optimizer(config, 100)
    params = {"w": jnp.array([3.0, -4.0])}
    state = tx.init(params)
    for _ in range(50):
        grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) * 1e4)(params)  # huge gradients
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(jnp.linalg.norm(params["w"])) < 1.0
    # clipping acts before the optimiser: a clipped gradient has norm 1
    clip = optax.clip_by_global_norm(1.0)
    g, _ = clip.update({"w": jnp.array([300.0, 400.0])}, clip.init(None))
    assert float(jnp.linalg.norm(g["w"])) == pytest.approx(1.0, rel=1e-6)


def test_ema_update():
    ema = {"a": jnp.zeros(3)}
    params = {"a": jnp.ones(3)}
    # early steps: decay ramps as (1+t)/(10+t)
    out = optim.ema_update(ema, params, jnp.asarray(0), 0.99)
    np.testing.assert_allclose(out["a"], 1 - 0.1, rtol=1e-6)
    out = optim.ema_update(ema, params, jnp.asarray(10_000), 0.99)
    np.testing.assert_allclose(out["a"], 0.01, rtol=1e-4)
    assert optim.ema_update(ema, params, jnp.asarray(3), None) is params


def test_split_is_seeded_and_complete():
    frames = molecules(20, seed=0)
    train, valid, test = pipeline.split_frames(frames, 0.2, 0.1, seed=3)
    assert (len(train), len(valid), len(test)) == (14, 4, 2)
    ids = {id(f) for f in train + valid + test}
    assert len(ids) == 20
    again = pipeline.split_frames(frames, 0.2, 0.1, seed=3)
    assert [id(f) for f in again[1]] == [id(f) for f in valid]
    with pytest.raises(ValueError, match="empty"):
        pipeline.split_frames([], 0.1, 0.0, 0)
    with pytest.raises(ValueError, match="non-empty training"):
        pipeline.split_frames(frames[:2], 0.5, 0.4, 0)


@pytest.mark.parametrize("devices", [1, 2, 3])
def test_step_plans_cover_data_and_bound_shapes(devices):
    frames = molecules(40, seed=4, min_atoms=3, max_atoms=12)
    edges = pipeline.edge_counts_of(frames, 3.0)
    pool = pipeline.ShapePool()
    seen = set()
    for epoch in range(4):
        steps = pipeline.make_step_plans(
            frames,
            3.0,
            5,
            devices,
            pool,
            edge_counts=edges,
            rng=np.random.default_rng([0, epoch]),
            max_shapes=4,
        )
        assert len(steps) == 8
        assert sorted(k for s in steps for k in s.indices) == list(range(40))
        for s in steps:
            assert len(s.chunks) == devices
            n, e, g = s.shape
            assert g == -(-5 // devices) + 1
            for chunk in s.chunks:
                assert len(chunk) <= g - 1
                assert sum(frames[k].num_atoms for k in chunk) + 1 <= n
                assert sum(int(edges[k]) for k in chunk) <= e
            seen.add(s.shape)
    assert len(seen) == len(pool.shapes) <= 6  # 4 bucket shapes + few later additions
    # the frames of each step do not depend on the number of devices
    one = pipeline.make_step_plans(
        frames,
        3.0,
        5,
        1,
        pipeline.ShapePool(),
        edge_counts=edges,
        rng=np.random.default_rng([0, 0]),
    )
    many = pipeline.make_step_plans(
        frames,
        3.0,
        5,
        devices,
        pipeline.ShapePool(),
        edge_counts=edges,
        rng=np.random.default_rng([0, 0]),
    )
    assert [s.indices for s in one] == [s.indices for s in many]


def test_batch_cache_builds_once(rng):
    frames = molecules(6, seed=1)
    from polmp.training import sharding

    cache = pipeline.BatchCache(frames, 3.0, np.float32, sharding.make_mesh(1))
    steps = pipeline.make_step_plans(
        frames,
        3.0,
        4,
        1,
        pipeline.ShapePool(),
        edge_counts=pipeline.edge_counts_of(frames, 3.0),
    )
    first = cache.get(steps[0])
    assert cache.get(steps[0]) is first
    assert (
        first.graph.positions.shape[0] == 1
        and first.graph.positions.dtype == np.float32
    )
    assert len(cache.signatures) == 1


def test_config_validation():
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainingConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="go together"):
        TrainingConfig(stage2_energy_weight=10.0)
    assert dataclasses.replace(
        TrainingConfig(), stage2_energy_weight=10.0, stage2_start_epoch=5
    )
