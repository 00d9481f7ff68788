"""MD throughput benchmark: water, float32, with and without in-scan observables.

Commands (from the repository root, venv active)::

    python benchmarks/md.py                  # 192 and 1536 atoms, record_every 1 4 8
    python benchmarks/md.py --quick          # 192 atoms, record_every 8, 3 x 8 steps
    python benchmarks/md.py --sizes 4 --record-every 1      # one slice of the table
    python benchmarks/md.py --sizes 8 --record-every 8 --chunk-steps 8 --chunks 3 \
        --runs full,full+obs --repeats 0                    # 1536 atoms, no sr row

On a loaded 2-core CPU the whole default command takes about an hour: run it in
slices (``--sizes``, ``--record-every``, ``--runs``; ratios are only formed within one
invocation).  The process CPU time per step is printed next to the wall time
(``run_md``'s chunk clock, read through a stand-in for ``time`` in
``polmp.md.simulate``): it is less sensitive to other jobs on the same cores.

What it runs: ``polmp.md.simulate.run_md`` (chunks of ``--chunk-steps`` steps in one
jitted ``lax.scan``, Langevin NVT at 300 K, 0.5 fs, float32, no trajectory file) on
``water-box:4`` (64 H2O, 192 atoms, 12.43 A cell) and ``water-box:8`` (512 H2O, 1536
atoms), for three configurations at each ``record_every`` in ``--record-every``:

* ``sr``: model variant ``sr`` (E_sr only), ``observables: false``;
* ``full``: variant ``full`` (q + mu + Theta + induced dq + dmu, E_lr by PME),
  ``observables: false``;
* ``full+obs``: the same model with ``observables: true``: Pdot = sum_i Z*_i v_i
  (forward-mode tangents, seven for a periodic cell) and alpha_sys recorded in the
  same scan every ``record_every`` steps.

Every configuration records E_pot, E_kin, T (and positions) every ``record_every``
steps, so the bare rows also pay one energy evaluation per record; ``full+obs`` adds
only the observables on top.  Throughput is ``run_md``'s steady state: all chunks after
the first (which holds the compilation), so ms/step excludes compilation.

Peer, measured in the same run: the ratios (full+obs)/full (the issue's target: at
most 1.5) and full/sr, and one jitted energy + forces call of the same bound model
(``jax.jit(jax.value_and_grad(energy_fn))`` of the front door ``polmp.md.jaxmd.bind``,
median of ``--repeats`` calls after compilation), so the MD step's overhead over a
force call shows.

Models: ``experiments/water_gfn2/full.yaml`` (cutoff 4.5 A, 16 channels, l_max 2, two
layers; ``model.variant=sr`` for sr) with *untrained* parameters
(``init(PRNGKey(0), graph)`` on the 192-atom box; parameters do not depend on N): fine
for timing, not for physics.  An untrained model need not keep liquid water for long,
so the runs are short (16-64 steps); <T> and neighbour-list reallocations are printed
per run to show that none went astray.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np
from machine import machine  # the script directory is on sys.path

from polmp.config.loader import load_config
from polmp.config.schema import MDConfig, RunConfig
from polmp.data.batching import frames_to_graph
from polmp.data.water import water_box
from polmp.md import jaxmd, simulate
from polmp.md.simulate import run_md
from polmp.training.trained import TrainedModel, energy_fns_of

CONFIG = os.path.join(
    os.path.dirname(__file__), "..", "experiments", "water_gfn2", "full.yaml"
)
#: (label, model variant, observables)
ROWS = (("sr", "sr", False), ("full", "full", False), ("full+obs", "full", True))


def make_model(variant: str) -> TrainedModel:
    """Untrained ``TrainedModel`` of ``experiments/water_gfn2/full.yaml`` at ``variant``."""
    config = load_config(RunConfig, CONFIG, [f"model.variant={variant}"])
    fns = energy_fns_of(config.model)
    graph = frames_to_graph([water_box(4)], cutoff=config.model.cutoff_A)
    params = jax.jit(fns.model.init)(jax.random.PRNGKey(0), graph)
    return TrainedModel(config, params, fns, f"untrained:{variant}")


def _bind(trained: TrainedModel, frame, skin: float):
    """The front door as ``run_md`` uses it for NVT (fixed box)."""
    return jaxmd.bind(
        trained.cast(jax.numpy.float32),
        frame.cell.T,
        frame.numbers,
        skin=skin,
        box_scale_range=(1.0, 1.0),
    )


def long_range_of(trained: TrainedModel, frame, skin: float) -> str:
    """E_lr solver that ``run_md`` prepares for ``frame`` (same options, same list)."""
    data = _bind(trained, frame, skin).long_range_data
    if data.method == "pme":
        mesh = "x".join(map(str, data.pme_spec.mesh_shape))
        return f"pme order {data.pme_spec.order} mesh {mesh}"
    return f"{data.method}"


def force_call_ms(trained: TrainedModel, frame, repeats: int, skin: float) -> float:
    """Median ms of one jitted energy + forces call of the bound model (after compile)."""
    bound = _bind(trained, frame, skin)
    positions = jax.numpy.asarray(frame.positions, jax.numpy.float32)
    nbrs = bound.neighbor_fn.allocate(positions)
    energy_fn = bound.energy_fn
    call = jax.jit(jax.value_and_grad(energy_fn))
    jax.block_until_ready(call(positions, nbrs))  # compile + warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(call(positions, nbrs))
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return 1e3 * statistics.median(walls), 1e3 * statistics.median(cpus)


class _Clock:
    """Stands in for ``time`` inside ``polmp.md.simulate``: returns the wall clock
    (``run_md``'s timings are unchanged) and also notes the process CPU time at each
    call (the start and each chunk end), for a load-robust CPU ms/step."""

    def __init__(self):
        self.marks = []

    def perf_counter(self):
        wall = time.perf_counter()
        self.marks.append((wall, time.process_time()))
        return wall


def md_timing(trained, size, observables, record_every, args, workdir):
    """``run_md`` timings dict (+ mean T, reallocations) of one configuration."""
    config = MDConfig(
        model="unused",
        structure=f"water-box:{size}",
        ensemble="nvt_langevin",
        temperature_K=300.0,
        timestep_fs=0.5,
        num_steps=args.chunks * args.chunk_steps,
        chunk_steps=args.chunk_steps,
        record_every=record_every,
        trajectory_every=0,
        observables=observables,
        skin_A=args.skin,
        progress_bar=False,
        precision="float32",
        output_dir=workdir,
    )
    # Each run compiles afresh anyway (its own bound model); clearing the caches
    # keeps the memory of earlier runs' executables from accumulating.
    jax.clear_caches()
    clock = _Clock()
    simulate.time = clock
    try:
        run = run_md(config, trained=trained)
    finally:
        simulate.time = time
    out = dict(run.timings)
    # marks: run start, then one per chunk; steady = chunk 1 end .. last chunk end
    out["cpu_ms_per_step"] = (
        1e3 * (clock.marks[-1][1] - clock.marks[1][1]) / run.timings["steady_steps"]
    )
    out["mean_T"] = float(np.mean(run.records["temperature_K"]))
    out["reallocations"] = run.num_reallocations
    out["has_pdot"] = "pdot" in run.records
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="192 atoms, fewer steps")
    parser.add_argument(
        "--sizes", default="4,8", help="water-box sizes n (n^3 H2O): 4 -> 192 atoms"
    )
    parser.add_argument(
        "--record-every", default=None, help="default 1,4,8 (--quick: 8)"
    )
    parser.add_argument("--chunk-steps", type=int, default=16)
    parser.add_argument(
        "--chunks",
        type=int,
        default=4,
        help=">= 3 advised; the first (compile) is untimed",
    )
    parser.add_argument(
        "--runs", default="sr,full,full+obs", help="subset of sr,full,full+obs"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="force-call repeats (0: skip)"
    )
    parser.add_argument("--skin", type=float, default=0.5, help="neighbour skin, A")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.chunk_steps, args.chunks = "4", 8, 3
        args.record_every = args.record_every or "8"
    args.record_every = args.record_every or "1,4,8"
    sizes = [int(s) for s in args.sizes.split(",")]
    record_everys = [int(r) for r in args.record_every.split(",")]
    if args.chunks < 2:
        parser.error("--chunks must be >= 2 (the first chunk holds the compilation)")

    print(f"# {machine()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(
        f"# float32, nvt_langevin 300 K, 0.5 fs, {args.chunks} chunks x "
        f"{args.chunk_steps} steps (timed: chunks 2..{args.chunks}), skin {args.skin} A, "
        "untrained experiments/water_gfn2/full.yaml (variant sr / full)"
    )
    models = {variant: make_model(variant) for variant in ("sr", "full")}
    lr = models["full"].long_range_options
    print(f"# full: long range {lr}")

    runs = args.runs.split(",")
    force_rows = []
    md_rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in sizes:
            frame = water_box(size)
            n = frame.num_atoms
            print(
                f"# {n} atoms: full E_lr {long_range_of(models['full'], frame, args.skin)}",
                flush=True,
            )
            force = {}
            if args.repeats:
                for v in ("sr", "full"):
                    force[v] = force_call_ms(models[v], frame, args.repeats, args.skin)
                force_rows.append((n, force))
                print(
                    f"# {n} atoms: energy+forces call (wall / CPU ms) "
                    f"sr {force['sr'][0]:.1f} / {force['sr'][1]:.1f}, "
                    f"full {force['full'][0]:.1f} / {force['full'][1]:.1f}",
                    flush=True,
                )
            for every in record_everys:
                res = {}
                for label, variant, observables in ROWS:
                    if label not in runs:
                        continue
                    t0 = time.perf_counter()
                    res[label] = r = md_timing(
                        models[variant], size, observables, every, args, workdir
                    )
                    print(
                        f"#   {n} atoms re={every} {label}: "
                        f"{1e3 / r['steps_per_s']:.1f} ms/step "
                        f"(CPU {r['cpu_ms_per_step']:.1f}), first chunk "
                        f"{r['first_chunk_s']:.1f} s, <T> {r['mean_T']:.0f} K, "
                        f"realloc {r['reallocations']}, pdot {r['has_pdot']}, "
                        f"wall {time.perf_counter() - t0:.0f} s",
                        flush=True,
                    )
                md_rows.append((n, every, res, force))

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b is not None else "-"

    print()
    print(
        "| atoms | record_every | run | ms/step | atom-steps/s | CPU ms/step | "
        "first chunk (s) | realloc |"
    )
    print("|" + "---:|" * 8)
    for n, every, res, _ in md_rows:
        for label, r in res.items():
            print(
                f"| {n} | {every} | {label} | {1e3 / r['steps_per_s']:.1f} | "
                f"{r['atom_steps_per_s']:.0f} | {r['cpu_ms_per_step']:.1f} | "
                f"{r['first_chunk_s']:.1f} | {r['reallocations']} |"
            )
    print()
    print(
        "| atoms | record_every | full/sr | (full+obs)/full | full/sr (CPU) | "
        "(full+obs)/full (CPU) | full step / force call | same (CPU) |"
    )
    print("|" + "---:|" * 8)
    for n, every, res, force in md_rows:
        wall = {k: 1e3 / v["steps_per_s"] for k, v in res.items()}
        cpu = {k: v["cpu_ms_per_step"] for k, v in res.items()}
        call, call_cpu = force.get("full", (None, None))
        print(
            f"| {n} | {every} | {ratio(wall.get('full'), wall.get('sr'))} | "
            f"{ratio(wall.get('full+obs'), wall.get('full'))} | "
            f"{ratio(cpu.get('full'), cpu.get('sr'))} | "
            f"{ratio(cpu.get('full+obs'), cpu.get('full'))} | "
            f"{ratio(wall.get('full'), call)} | {ratio(cpu.get('full'), call_cpu)} |"
        )
    if force_rows:
        print()
        print(
            "| atoms | sr force call (ms) | full force call (ms) | full/sr | "
            "sr CPU (ms) | full CPU (ms) |"
        )
        print("|" + "---:|" * 6)
        for n, force in force_rows:
            print(
                f"| {n} | {force['sr'][0]:.1f} | {force['full'][0]:.1f} | "
                f"{force['full'][0] / force['sr'][0]:.2f} | {force['sr'][1]:.1f} | "
                f"{force['full'][1]:.1f} |"
            )


if __name__ == "__main__":
    main()
