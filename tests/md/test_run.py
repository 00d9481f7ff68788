"""Chunked MD driver: energy conservation, observables in the scan, overflow -> redo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import energy, partition, quantity, simulate, space

from polmp.md.run import MDBlowUp, run_chunked


def _kinetic(state):
    return quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)


def _lj_system(dtype, density=0.8, n_side=4, seed=0):
    """A Lennard-Jones liquid-like start: a jittered simple cubic lattice (reduced units)."""
    n = n_side**3
    box_size = (n / density) ** (1 / 3)
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(
        -1, 3
    )
    rng = np.random.default_rng(seed)
    r = (grid + 0.5 + 0.05 * rng.normal(size=grid.shape)) * box_size / n_side
    displacement, shift = space.periodic(box_size)
    neighbor_fns, energy_fn = energy.lennard_jones_neighbor_list(
        displacement,
        box_size,
        r_onset=2.0,
        r_cutoff=2.5,
        dr_threshold=0.3,
        format=partition.OrderedSparse,
        disable_cell_list=True,
    )
    return jnp.asarray(r, dtype), box_size, shift, neighbor_fns, energy_fn


@pytest.mark.parametrize("precision, bound", [("float64", 1e-4), ("float32", 1e-3)])
def test_nve_energy_drift_bounded_over_10k_steps(precision, bound, request):
    if precision == "float64":
        request.getfixturevalue("x64")
    dtype = jnp.float64 if precision == "float64" else jnp.float32
    r, box, shift, neighbor_fns, energy_fn = _lj_system(dtype)
    nbrs = neighbor_fns.allocate(r)
    init, step = simulate.nve(energy_fn, shift, dt=0.001)
    state = init(jax.random.PRNGKey(0), r, kT=0.8, neighbor=nbrs)

    def total(state, nbrs):
        return energy_fn(state.position, neighbor=nbrs) + _kinetic(state)

    result = run_chunked(
        step,
        state,
        neighbor_fns,
        nbrs,
        num_steps=10_000,
        chunk_steps=1000,
        record_fn=total,
        record_every=10,
    )
    e = result.records
    assert e.shape == (1000,)
    # relative drift of the total energy over 10^4 steps (bounded, stated in the docs)
    scale = np.abs(e).mean()
    assert np.abs(e - e[0]).max() / scale < bound
    assert e.dtype == np.dtype(precision)


def test_energy_error_scales_as_timestep_squared(x64):
    errors = []
    for dt in (0.002, 0.0005):
        r, box, shift, neighbor_fns, energy_fn = _lj_system(jnp.float64)
        nbrs = neighbor_fns.allocate(r)
        init, step = simulate.nve(energy_fn, shift, dt=dt)
        state = init(jax.random.PRNGKey(0), r, kT=0.8, neighbor=nbrs)
        record = lambda s, n, f=energy_fn: f(s.position, neighbor=n) + _kinetic(s)  # noqa: E731
        steps = int(round(2.0 / dt))  # same simulated time
        e = run_chunked(
            step,
            state,
            neighbor_fns,
            nbrs,
            num_steps=steps,
            chunk_steps=steps // 2,
            record_fn=record,
            record_every=10,
        ).records
        errors.append(np.abs(e - e[0]).max())
    # velocity Verlet: O(dt^2) -> up to 16x for 4x smaller dt
    assert errors[0] / errors[1] > 5  # measured ~8 (transient from the lattice start)


def test_recording_observables_does_not_change_the_trajectory(x64):
    r, box, shift, neighbor_fns, energy_fn = _lj_system(jnp.float64)
    nbrs = neighbor_fns.allocate(r)
    init, step = simulate.nvt_nose_hoover(energy_fn, shift, dt=0.002, kT=1.0)
    state = init(jax.random.PRNGKey(1), r, neighbor=nbrs)
    bare = run_chunked(step, state, neighbor_fns, nbrs, num_steps=200, chunk_steps=100)
    heavy = run_chunked(
        step,
        state,
        neighbor_fns,
        nbrs,
        num_steps=200,
        chunk_steps=100,
        record_fn=lambda s, n: (
            jax.grad(energy_fn)(s.position, neighbor=n),
            quantity.temperature(momentum=s.momentum, mass=s.mass),
        ),
    )
    np.testing.assert_array_equal(
        np.asarray(bare.state.position), np.asarray(heavy.state.position)
    )
    assert heavy.records[0].shape == (200, len(r), 3)


def test_overflow_triggers_reallocation_and_same_result(x64):
    r, box, shift, neighbor_fns, energy_fn = _lj_system(jnp.float64)
    init, step = simulate.nve(energy_fn, shift, dt=0.002)
    good = neighbor_fns.allocate(r)
    # A buffer with too few slots (as if allocated for a more dilute configuration):
    # the first update inside the chunk must overflow and force a reallocation.
    half = good.idx.shape[1] // 2
    small = good.set(idx=good.idx[:, :half], max_occupancy=half)
    state = init(jax.random.PRNGKey(2), r, kT=0.8, neighbor=good)
    ref = run_chunked(step, state, neighbor_fns, good, num_steps=200, chunk_steps=100)
    redo = run_chunked(step, state, neighbor_fns, small, num_steps=200, chunk_steps=100)
    assert redo.num_reallocations >= 1
    np.testing.assert_allclose(
        np.asarray(redo.state.position), np.asarray(ref.state.position), atol=1e-10
    )


def test_bad_chunking_is_rejected():
    with pytest.raises(ValueError, match="multiple"):
        run_chunked(None, None, None, None, num_steps=150, chunk_steps=100)


def test_blow_up_stops_with_the_step_and_keeps_earlier_records(x64):
    """A runaway integrator: MDBlowUp names the step, earlier records survive."""
    r, box, shift, neighbor_fns, energy_fn = _lj_system(jnp.float64)
    nbrs = neighbor_fns.allocate(r)
    init, good_step = simulate.nve(energy_fn, shift, dt=0.001)

    def bad_step(state, **kwargs):  # runaway heating: momenta overflow within 2 steps
        return good_step(state.set(momentum=1e200 * state.momentum), **kwargs)

    state = init(jax.random.PRNGKey(0), r, kT=0.8, neighbor=nbrs)
    record = lambda s, n: energy_fn(s.position, neighbor=n)  # noqa: E731
    kw = dict(chunk_steps=20, record_fn=record, record_every=5)
    good = run_chunked(good_step, state, neighbor_fns, nbrs, num_steps=40, **kw)
    with pytest.raises(MDBlowUp, match="MD blew up") as info:
        run_chunked(
            bad_step,
            good.state,
            neighbor_fns,
            good.neighbor,
            num_steps=40,
            first_step=40,
            **kw,
        )
    error = info.value
    assert 40 < error.step <= 60
    assert 40 <= error.last_good_step < error.step
    assert error.records is None or np.isfinite(error.records).all()
