"""Model step benchmark: energy + forces of E_sr (+ E_lr) on liquid water, float32.

One command (from the repository root, venv active)::

    python benchmarks/models.py            # 192 and 1536 atoms, widths peer and small
    python benchmarks/models.py --quick    # 192 atoms only

For each size, backbone width and variant (``sr``: short range only; ``q``: latent
charges; ``full``: q + mu + Theta + induced dq + dmu) it jits
``value_and_grad(sum(energy_fn))`` of ``polmp.models.make_energy_fn`` with the
long-range adapter ``polmp.models.long_range.graph_long_range`` (method ``auto``:
Ewald or PME by the electrostatics cost model; ``full`` is run with PME spline order 6
and 8), and reports the compile time (``lower().compile()``) and the step time (median
of ``--repeats`` calls after compilation, ``block_until_ready``).

The peer is the issue's MACE+LES PyTorch run at cutoff 4.5 A, 64x0e+64x1o, l_max 3, one
layer on the same 2-core CPU (not re-run here: it is not part of this repository):
sr 83 / 1389 ms, with 1o features 216 / 3526 ms, with charges, dipoles and induced
terms 284 / 3475 ms at 192 / 1536 atoms.

Structures: the first frame of
``../shared/data/lesfit_water_rpbe_d3/test-H2O_RPBE-D3.xyz`` (192 atoms) and its 2x2x2
replica (1536 atoms); ``polmp.data.water.water_box`` when the data is absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from machine import machine  # the script directory is on sys.path

from polmp.data.batching import frames_to_graph
from polmp.data.schema import Frame
from polmp.models import ModelConfig, make_energy_fn
from polmp.models.long_range import graph_long_range, prepare_long_range

CUTOFF = 4.5
#: The issue's peer (MACE+LES, PyTorch, 2-core CPU), energy + forces, ms.
PEER_MS = {
    "sr": {192: 83.0, 1536: 1389.0},
    "sr+1o": {192: 216.0, 1536: 3526.0},
    "full": {192: 284.0, 1536: 3475.0},
}
#: Backbone widths: "peer" is comparable to the peer's (64 channels per irrep, one
#: layer, cutoff 4.5 A; l_max 2 because Theta needs 2e features); "small" is a cheaper
#: default.
WIDTHS = {
    "peer": dict(num_channels=64, l_max=2, radial_mlp=(64, 64), readout_hidden=16),
    "small": dict(num_channels=16, l_max=2, radial_mlp=(32,), readout_hidden=16),
}
#: rows per width: (variant, PME spline order of the long-range data)
VARIANTS = (("sr", 6), ("q", 6), ("full", 6), ("full", 8))


def water_frame(replicate: int) -> Frame:
    """First water frame of the reference set (or water_box), replicated n x n x n."""
    path = os.path.join(
        os.path.dirname(__file__),
        "..",
        "..",
        "shared",
        "data",
        "lesfit_water_rpbe_d3",
        "test-H2O_RPBE-D3.xyz",
    )
    if os.path.exists(path):
        import ase.io

        atoms = ase.io.read(path, index=0)
    else:
        import ase

        from polmp.data.water import water_box

        box = water_box(4)
        atoms = ase.Atoms(box.numbers, box.positions, cell=box.cell, pbc=True)
    atoms = atoms.repeat((replicate,) * 3)
    return Frame(
        positions=atoms.positions.copy(),
        numbers=atoms.numbers.copy(),
        cell=atoms.cell.array.copy(),
        pbc=np.ones(3, bool),
    )


def bench_one(graph, data, variant, width, repeats, key):
    """(compile s, median step s, method) for one variant and width."""
    config = ModelConfig(
        species=(1, 8),
        cutoff_A=CUTOFF,
        num_layers=1,
        avg_num_neighbors=40.0,
        variant=variant,
        **WIDTHS[width],
    )
    fns = make_energy_fn(
        config, long_range_fn=None if variant == "sr" else graph_long_range
    )
    params = jax.jit(fns.model.init)(key, graph)
    lr = None if variant == "sr" else data

    # params, graph and long-range data are arguments, not closure constants: XLA
    # would otherwise constant-fold parameter gathers and flatter the step time
    def total(positions, params, graph, lr):
        return jnp.sum(fns.energy_fn(params, graph, positions, long_range=lr))

    step = jax.jit(jax.value_and_grad(total))
    args = (graph.positions, params, graph, lr)
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="192 atoms only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", type=float, default=1e-5)
    parser.add_argument("--widths", default="peer,small")
    args = parser.parse_args(argv)
    sizes = (1,) if args.quick else (1, 2)
    widths = args.widths.split(",")
    key = jax.random.PRNGKey(0)
    print(f"# {machine()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(
        f"# float32, cutoff {CUTOFF} A, 1 layer, sigma 1 A, "
        f"accuracy {args.accuracy:g}, median of {args.repeats}"
    )
    header = (
        "| atoms | width | variant | E_lr method | compile (s) | step (ms) | "
        "/ sr | peer (ms) | / peer |"
    )
    print(header)
    print("|" + "---:|" * 9)
    for rep in sizes:
        frame = water_frame(rep)
        graph = frames_to_graph([frame], CUTOFF)  # float32 (x64 off)
        # k-space sizes follow the highest multipole each variant has
        datas = {
            (variant, order): prepare_long_range(
                graph,
                accuracy=args.accuracy,
                method="auto",
                max_multipole_order=0 if variant == "q" else 2,
                pme_order=order,
            )
            for variant, order in VARIANTS
            if variant != "sr"
        }
        n = frame.num_atoms
        for width in widths:
            sr_time = None
            for variant, order in VARIANTS:
                data = datas.get((variant, order))
                compile_s, step_s = bench_one(
                    graph, data, variant, width, args.repeats, key
                )
                sr_time = step_s if variant == "sr" else sr_time
                peer = PEER_MS.get(variant, {}).get(n)
                if data is None:
                    method = "-"
                elif data.method == "pme":
                    mesh = "x".join(map(str, data.pme_spec.mesh_shape))
                    method = f"pme p={data.pme_spec.order} {mesh}"
                else:
                    method = f"ewald M={data.periodic.kvectors.shape[1]}"
                ratio_peer = f"{1e3 * step_s / peer:.2f}" if peer else "-"
                print(
                    f"| {n} | {width} | {variant} | {method} | {compile_s:.1f} | "
                    f"{1e3 * step_s:.1f} | {step_s / sr_time:.2f} | "
                    f"{peer if peer else '-'} | {ratio_peer} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
