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

The peer, measured in the same run when ``torch`` and ``mace-torch`` are installed (the
``bench`` extra; skipped with a note otherwise): MACE (mace-torch, PyTorch, float32,
eval mode) at the same cutoff (4.5 A), Bessel basis (8) and envelope order (6), the same
hidden irreps (64x0e+64x1o+64x2e at ``peer`` width), spherical harmonics up to the same
l_max (2), one interaction layer, the same radial MLP widths and avg_num_neighbors, on
the same structures and neighbour pairs, energy + forces (``compute_force=True``: one
forward and one autograd backward).  MACE's many-body product is run at its default
correlation order 3 (``mace c3``) and at 1 (``mace c1``: no many-body product, the
closest to polmp's two-body message layer).  torch runs with ``torch.set_num_threads``
equal to the number of CPU cores, which is what XLA's CPU client uses, so both get the
same threads.  ``/ peer`` divides by the ``mace c3`` time of the same size and width.

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
NUM_BASIS = 8
ENVELOPE_P = 6
AVG_NUM_NEIGHBORS = 40.0
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


def compile_one(graph, data, variant, width, key):
    """(compile s, step callable) of one polmp variant and width."""
    config = ModelConfig(
        species=(1, 8),
        cutoff_A=CUTOFF,
        num_layers=1,
        num_basis=NUM_BASIS,
        envelope_p=ENVELOPE_P,
        avg_num_neighbors=AVG_NUM_NEIGHBORS,
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
    return compile_s, lambda: jax.block_until_ready(compiled(*args))


def mace_available() -> str | None:
    """None if torch and mace-torch import, else the reason they do not."""
    try:
        import mace.modules  # noqa: F401
        import torch  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return f"{type(err).__name__}: {err}"
    return None


def mace_model(width: str, correlation: int):
    """MACE at the polmp benchmark's cutoff, basis, irreps, l_max and layer count."""
    import mace  # noqa: F401  (before e3nn: lets e3nn torch.load its constants)
    import torch
    from e3nn import o3
    from mace.modules import (
        MACE,
        RealAgnosticInteractionBlock,
        RealAgnosticResidualInteractionBlock,
    )

    w = WIDTHS[width]
    c, l_max = w["num_channels"], w["l_max"]
    hidden = " + ".join(
        f"{c}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(l_max + 1)
    )
    torch.manual_seed(0)
    model = MACE(
        r_max=CUTOFF,
        num_bessel=NUM_BASIS,
        num_polynomial_cutoff=ENVELOPE_P,
        max_ell=l_max,
        interaction_cls=RealAgnosticResidualInteractionBlock,
        interaction_cls_first=RealAgnosticInteractionBlock,
        num_interactions=1,
        num_elements=2,
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps(f"{w['readout_hidden']}x0e"),
        atomic_energies=np.zeros(2),
        avg_num_neighbors=AVG_NUM_NEIGHBORS,
        atomic_numbers=[1, 8],
        correlation=correlation,
        gate=torch.nn.functional.silu,
        radial_MLP=list(w["radial_mlp"]),
    )
    return model.float().eval()


def mace_inputs(frame: Frame):
    """MACE's input dict for one periodic frame (same pairs as polmp's graph)."""
    import torch

    from polmp.geometry.neighbors import neighbor_pairs

    idx_i, idx_j, shifts = neighbor_pairs(frame.positions, frame.cell, True, CUTOFF)
    onehot = np.stack([frame.numbers == 1, frame.numbers == 8], axis=1)
    cell = torch.tensor(frame.cell, dtype=torch.float32)
    unit_shifts = torch.tensor(shifts, dtype=torch.float32)
    n = frame.num_atoms
    # MACE: vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts,
    # i.e. edge_index = (i, j) for polmp's r_ij = R_j - R_i + shifts @ cell.
    return dict(
        positions=torch.tensor(frame.positions, dtype=torch.float32),
        node_attrs=torch.tensor(onehot, dtype=torch.float32),
        edge_index=torch.tensor(np.stack([idx_i, idx_j]), dtype=torch.int64),
        unit_shifts=unit_shifts,
        shifts=unit_shifts @ cell,
        cell=cell,
        batch=torch.zeros(n, dtype=torch.int64),
        ptr=torch.tensor([0, n]),
        head=torch.zeros(1, dtype=torch.int64),
    )


def compile_mace(frame: Frame, width: str, correlation: int):
    """(setup s, step callable) of the MACE peer: energy + forces, float32."""
    import torch

    torch.set_num_threads(os.cpu_count())  # XLA's CPU client uses every core too
    t0 = time.perf_counter()
    model = mace_model(width, correlation)
    data = mace_inputs(frame)
    model(data, training=False, compute_force=True)  # warm-up
    setup_s = time.perf_counter() - t0

    def step():
        out = model(data, training=False, compute_force=True)
        return out["forces"].sum().item()  # forces computed, synchronised

    return setup_s, step


def interleaved_medians(steps: dict, repeats: int) -> dict:
    """Median wall time (s) of each callable, timed round-robin ``repeats`` times.

    Round-robin rather than one after the other so that load from other jobs on a
    shared machine hits every contender alike.
    """
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="192 atoms only")
    parser.add_argument("--sizes", default=None, help="replicas per side, e.g. 1,2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", type=float, default=1e-5)
    parser.add_argument("--widths", default="peer,small")
    parser.add_argument(
        "--variants", default="sr,q,full6,full8", help="sr, q, full6, full8"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip MACE")
    args = parser.parse_args(argv)
    sizes = (1,) if args.quick else (1, 2)
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    widths = args.widths.split(",")
    chosen = args.variants.split(",")
    variants = [
        (v, o) for v, o in VARIANTS if (v if v != "full" else f"full{o}") in chosen
    ]
    key = jax.random.PRNGKey(0)
    peer_missing = "--no-peer" if args.no_peer else mace_available()
    print(f"# {machine()}")
    if peer_missing is None:
        import mace
        import torch

        print(
            f"# peer: mace-torch {getattr(mace, '__version__', '?')}, torch "
            f"{torch.__version__}, {os.cpu_count()} torch threads"
        )
    else:
        print(f"# peer skipped ({peer_missing}); install the bench extra to run it")
    print(f"# command: python {' '.join(sys.argv)}")
    print(
        f"# float32, cutoff {CUTOFF} A, 1 layer, sigma 1 A, "
        f"accuracy {args.accuracy:g}, median of {args.repeats} interleaved rounds"
    )
    print(
        "| atoms | width | model | E_lr method | compile (s) | step (ms) | / sr | "
        "/ peer |"
    )
    print("|" + "---:|" * 8)
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
            for variant, order in variants
            if variant != "sr"
        }
        n = frame.num_atoms
        for width in widths:
            steps, rows = {}, {}
            if peer_missing is None:
                for corr in (3, 1):
                    setup_s, steps[f"mace c{corr}"] = compile_mace(frame, width, corr)
                    rows[f"mace c{corr}"] = ("-", setup_s)
            for variant, order in variants:
                data = datas.get((variant, order))
                compile_s, step = compile_one(graph, data, variant, width, key)
                if data is None:
                    method = "-"
                elif data.method == "pme":
                    mesh = "x".join(map(str, data.pme_spec.mesh_shape))
                    method = f"pme p={data.pme_spec.order} {mesh}"
                else:
                    method = f"ewald M={data.periodic.kvectors.shape[1]}"
                name = variant if variant != "full" else f"full p{order}"
                steps[name] = step
                rows[name] = (method, compile_s)
            medians = interleaved_medians(steps, args.repeats)
            sr_time = medians.get("sr")
            peer = medians.get("mace c3")
            for name, (method, compile_s) in rows.items():
                t = medians[name]
                ratio_sr = f"{t / sr_time:.2f}" if sr_time else "-"
                ratio_peer = f"{t / peer:.2f}" if peer else "-"
                print(
                    f"| {n} | {width} | {name} | {method} | {compile_s:.1f} | "
                    f"{1e3 * t:.1f} | {ratio_sr} | {ratio_peer} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
