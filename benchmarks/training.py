"""Training throughput benchmark: structures/s and compiled shapes of whole epochs.

One command (from the repository root, venv active)::

    python benchmarks/training.py            # the whole water-gfn2 set (550 frames)
    python benchmarks/training.py --quick    # every 4th frame (138 frames)
    python benchmarks/training.py --rows sr:8,full:8,sr:1,full:1,mace --epochs 3
    python benchmarks/training.py --shapes-only --epochs 10   # shape counts, no training

Each row trains ``experiments/water_gfn2/full.yaml`` (float32, batch size 4, the
experiment's width) for ``--epochs`` epochs through ``polmp.training.loop.train`` in a
subprocess of its own (fresh jit caches, so every compile is counted; ``ru_maxrss`` is
that run's peak memory) and reads the per-epoch ``time_s`` of ``RunResult.history``
(the loop's timer: host batch building, the optimiser steps and the validation pass of
the EMA parameters of one epoch, and the save of the best parameters).  Epoch 0
compiles every train and validation shape; later epochs run compiled code only (the
printed train-shape count after each epoch shows when they do not):

* ``epoch (s)``: median ``time_s`` of epochs 1 .. epochs-1 (steady state);
* ``structures/s``: training frames / ``epoch (s)``;
* ``compile (s)``: ``time_s`` of epoch 0 minus ``epoch (s)``;
* ``train shapes`` / ``eval shapes``: ``RunResult.num_compiled_shapes`` /
  ``num_eval_shapes`` (distinct batch signatures, long-range data included, seen by
  the jitted train step and by the validation step);
* ``pad atoms``: the padded fraction of the atom slots of the last epoch's steps (host
  replay of the loop's plans, ``pipeline.make_step_plans`` with its shape pool); the
  comment line of each row adds the edge padding and what ``plan_buckets``' own bucket
  shapes would pad before the shape pool reassigns them.

Rows ``variant:max_shapes`` (variants ``sr``: E_sr only, ``full``: q + mu + Theta +
induced dq + dmu, same backbone; ``data.max_shapes`` 8 is the default shape bucketing,
1 pads every batch to one shape) and the peers measured in the same run:

* ``/ sr``: epoch time of the row / epoch time of ``sr`` at the same ``max_shapes``
  (for ``full``: the cost of the long-range terms in training);
* ``x bucketing``: structures/s of the row / structures/s of the same variant at
  ``max_shapes`` 1 (what bucketing buys).

The peer, row ``mace`` (needs the ``bench`` extra: torch and mace-torch; the row
reports an error and the others go on without them): MACE (mace-torch, PyTorch,
float32) at the experiment's width (cutoff, channels, l_max, layers, Bessel basis,
radial MLP, avg_num_neighbors; correlation order 3, MACE's default), trained on the
same train/valid frames, batch size 4, AMSGrad at the experiment's learning rate, loss
per-atom energy MSE + 10 x force MSE (forces by autograd with ``create_graph``, as MACE
trains); each epoch also evaluates the validation frames (energies and forces), as
polmp's epoch does.  Host graphs (vesin pairs, the same as polmp's) are built once
before the timed epochs, as polmp's batch cache does from epoch 0.  polmp's loss also
has the stress term (weight 10) that the peer's has not.  torch uses as many threads as
there are cores (what XLA uses).  ``/ peer`` divides the row's epoch time by the
``mace`` row's.

Data: ``embedded:water-gfn2`` (300 periodic 96-atom water boxes with energy, forces,
stress; 250 water clusters of 12-36 atoms with energy, forces), split 80/10/10 with the
experiment's seed; the test split is not passed (``train`` would evaluate it after the
timed epochs; it still evaluates the training set there, which is in the ``train()``
wall time but not in the table).  Periodic checkpoints, progress bar, parity plots and
early stopping are off.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from machine import machine  # noqa: E402  (the script directory is on sys.path)

EXPERIMENT = REPO / "experiments" / "water_gfn2" / "full.yaml"
#: default rows "variant:max_shapes"; "full:1" (the slowest to compile) is opt-in
DEFAULT_ROWS = "sr:8,full:8,sr:1,mace"


def run_config(variant: str, max_shapes: int, epochs: int, output_dir: str):
    """The experiment's RunConfig with the benchmark's overrides."""
    from polmp.config.loader import load_config
    from polmp.config.schema import RunConfig

    overrides = [
        f"model.variant={variant}",
        f"data.max_shapes={max_shapes}",
        f"training.num_epochs={epochs}",
        "training.patience=null",
        "training.checkpoint_every_epochs=0",
        "training.progress_bar=false",
        "training.parity_plots=false",
        "precision=float32",
        f"output_dir={output_dir}",
    ]
    return load_config(RunConfig, EXPERIMENT, overrides)


def split_data(config, stride: int):
    """(train, valid) frames: every ``stride``-th water-gfn2 frame, split as configured."""
    from polmp.data.embedded import load_embedded
    from polmp.training import pipeline

    frames = load_embedded("water-gfn2")[::stride]
    data = config.data
    train, valid, _ = pipeline.split_frames(
        frames, data.valid_fraction, data.test_fraction, data.split_seed
    )
    return train, valid


def padding_fractions(config, train, epochs: int) -> dict:
    """Padding of the last epoch's batches, as trained and as ``plan_buckets`` cut them.

    Replays the loop's planning (same seeds, one ``ShapePool`` over all epochs) and
    returns the padded fraction of atom and edge slots of the steps the loop ran
    (``pad_atoms``, ``pad_edges``), and of ``plan_buckets``' own bucket shapes before
    the shape pool assigns them (``bucket_pad_atoms``, ``bucket_shapes``).
    """
    import numpy as np

    from polmp.data.batching import plan_buckets
    from polmp.training import pipeline

    t = config.training
    cutoff = config.cutoff_A
    max_shapes = config.data.max_shapes
    edges = pipeline.edge_counts_of(train, cutoff)
    # as the loop: periodic and cluster frames are planned apart when E_lr is on
    kinds = None if config.model.variant == "sr" else pipeline.frame_kinds(train)
    pool = pipeline.ShapePool()
    for epoch in range(epochs):
        steps = pipeline.make_step_plans(
            train,
            cutoff,
            t.batch_size,
            t.num_devices,
            pool,
            edge_counts=edges,
            rng=np.random.default_rng([t.seed, epoch]),
            max_shapes=max_shapes,
            kinds=kinds,
        )
    buckets = plan_buckets(
        train,
        cutoff,
        t.batch_size,
        max_shapes,
        rng=np.random.default_rng([t.seed, epochs - 1]),
        edge_counts=edges,
        kinds=kinds,
    )
    real_atoms = sum(f.num_atoms for f in train)
    real_edges = int(np.sum(edges))
    return {
        "pad_atoms": 1 - real_atoms / sum(s.shape[0] * len(s.chunks) for s in steps),
        "pad_edges": 1 - real_edges / sum(s.shape[1] * len(s.chunks) for s in steps),
        "bucket_pad_atoms": 1 - real_atoms / sum(b.num_atoms for b in buckets),
        "bucket_shapes": len({(b.kind, b.num_atoms, b.num_edges) for b in buckets}),
    }


def count_shapes(variant: str, max_shapes: int, stride: int, epochs: int) -> dict:
    """Compiled shapes of ``epochs`` epochs and of the validation pass, without
    training: replays the loop's planning and builds every batch (long-range data
    included) through ``BatchCache``, whose signatures are what the jitted steps
    compile for.  Host only; minutes, not hours."""
    import numpy as np

    from polmp.training import pipeline, sharding
    from polmp.training.loop import _long_range_prepare

    config = run_config(variant, max_shapes, epochs, tempfile.gettempdir())
    train, valid = split_data(config, stride)
    t = config.training
    cutoff = config.cutoff_A
    prepare = _long_range_prepare(config, [*train, *valid])
    mesh = sharding.make_mesh(1)

    def signatures(frames, rngs):
        kinds = None if prepare is None else pipeline.frame_kinds(frames)
        edges = pipeline.edge_counts_of(frames, cutoff)
        pool = pipeline.ShapePool()
        cache = pipeline.BatchCache(frames, cutoff, np.float32, mesh, prepare)
        for rng in rngs:
            for step in pipeline.make_step_plans(
                frames,
                cutoff,
                t.batch_size,
                1,
                pool,
                edge_counts=edges,
                rng=rng,
                max_shapes=max_shapes,
                kinds=kinds,
            ):
                cache.get(step)
        return len(cache.signatures)

    rngs = [np.random.default_rng([t.seed, epoch]) for epoch in range(epochs)]
    return {
        "train_frames": len(train),
        "valid_frames": len(valid),
        "train_shapes": signatures(train, rngs),
        "eval_shapes": signatures(valid, [None]),
        **padding_fractions(config, train, epochs),
    }


def run_one(variant: str, max_shapes: int, stride: int, epochs: int) -> dict:
    """Train one row in this process; its figures as a JSON-able dict."""
    from polmp.training.loop import train

    with tempfile.TemporaryDirectory(prefix="polmp-bench-train-") as output_dir:
        config = run_config(variant, max_shapes, epochs, output_dir)
        train_frames, valid_frames = split_data(config, stride)
        start = time.perf_counter()
        result = train(config, datasets=(train_frames, valid_frames, []))
        wall = time.perf_counter() - start
    return {
        "train_frames": len(train_frames),
        "valid_frames": len(valid_frames),
        "epoch_times": [record["time_s"] for record in result.history],
        # train shapes seen after each epoch: a rise after epoch 0 means a later
        # epoch compiled too (its time is then not steady state)
        "epoch_shapes": [record["num_compiled_shapes"] for record in result.history],
        "train_shapes": result.num_compiled_shapes,
        "eval_shapes": result.num_eval_shapes,
        **padding_fractions(config, train_frames, epochs),
        "wall_s": wall,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def mace_batches(frames, cutoff: float, batch_size: int, shuffle_rng=None):
    """MACE input dicts (float32 torch tensors) of consecutive frame batches."""
    import numpy as np
    import torch

    from polmp.geometry.neighbors import neighbor_pairs

    order = np.arange(len(frames))
    if shuffle_rng is not None:
        shuffle_rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [frames[k] for k in order[start : start + batch_size]]
        pos, attrs, edges, units, cells, batch, ptr = [], [], [], [], [], [], [0]
        energies, forces, counts = [], [], []
        for g, f in enumerate(chunk):
            pbc = bool(np.any(f.pbc))
            cell = np.asarray(f.cell) if pbc else np.zeros((3, 3))
            i, j, shifts = neighbor_pairs(
                f.positions, cell if pbc else None, pbc, cutoff
            )
            edges.append(np.stack([i, j]) + ptr[-1])
            units.append(shifts)
            cells.append(cell)
            pos.append(f.positions)
            attrs.append(np.stack([f.numbers == 1, f.numbers == 8], axis=1))
            batch.append(np.full(f.num_atoms, g))
            ptr.append(ptr[-1] + f.num_atoms)
            energies.append(f.energy)
            forces.append(f.forces)
            counts.append(f.num_atoms)
        cell_t = torch.tensor(np.concatenate(cells), dtype=torch.float32)
        unit_t = torch.tensor(np.concatenate(units), dtype=torch.float32)
        edge_graph = np.concatenate(
            [np.full(e.shape[1], g) for g, e in enumerate(edges)]
        )
        shifts_t = torch.einsum(
            "ea,eab->eb", unit_t, cell_t.view(-1, 3, 3)[torch.tensor(edge_graph)]
        )
        f32 = torch.float32
        batches.append(
            dict(
                positions=torch.tensor(np.concatenate(pos), dtype=f32),
                node_attrs=torch.tensor(np.concatenate(attrs), dtype=f32),
                edge_index=torch.tensor(
                    np.concatenate(edges, axis=1), dtype=torch.int64
                ),
                unit_shifts=unit_t,
                shifts=shifts_t,
                cell=cell_t,
                batch=torch.tensor(np.concatenate(batch), dtype=torch.int64),
                ptr=torch.tensor(ptr, dtype=torch.int64),
                head=torch.zeros(len(chunk), dtype=torch.int64),
                energy=torch.tensor(energies, dtype=f32),
                forces=torch.tensor(np.concatenate(forces), dtype=f32),
                num_atoms=torch.tensor(counts, dtype=f32),
            )
        )
    return batches


def run_mace(stride: int, epochs: int) -> dict:
    """Train the MACE peer on the experiment's data and width; figures as a dict."""
    import os

    import mace  # noqa: F401  (before e3nn: lets e3nn torch.load its constants)
    import numpy as np
    import torch
    from e3nn import o3
    from mace.modules import (
        MACE,
        RealAgnosticInteractionBlock,
        RealAgnosticResidualInteractionBlock,
    )

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="polmp-bench-mace-") as output_dir:
        config = run_config("sr", 8, epochs, output_dir)
    train_frames, valid_frames = split_data(config, stride)
    m, t = config.model, config.training
    # per-species reference energies by least squares, as polmp fits them
    counts = np.array([[np.sum(f.numbers == z) for z in (1, 8)] for f in train_frames])
    e0 = np.linalg.lstsq(
        counts, np.array([f.energy for f in train_frames]), rcond=None
    )[0]
    hidden = " + ".join(
        f"{m.num_channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(m.l_max + 1)
    )
    model = MACE(
        r_max=m.cutoff_A,
        num_bessel=m.num_basis,
        num_polynomial_cutoff=m.envelope_p,
        max_ell=m.l_max,
        interaction_cls=RealAgnosticResidualInteractionBlock,
        interaction_cls_first=RealAgnosticInteractionBlock,
        num_interactions=m.num_layers,
        num_elements=2,
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps(f"{m.readout_hidden}x0e"),
        atomic_energies=e0,
        avg_num_neighbors=m.avg_num_neighbors,
        atomic_numbers=[1, 8],
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=list(m.radial_mlp),
    ).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate, amsgrad=True)
    cutoff = m.cutoff_A
    valid = mace_batches(valid_frames, cutoff, t.batch_size)
    rng = np.random.default_rng(t.seed)
    plans = [
        mace_batches(train_frames, cutoff, t.batch_size, rng) for _ in range(epochs)
    ]

    def loss_of(out, b):
        e = (out["energy"] - b["energy"]) / b["num_atoms"]
        return torch.mean(e**2) + t.forces_weight * torch.mean(
            (out["forces"] - b["forces"]) ** 2
        )

    epoch_times, start = [], time.perf_counter()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for b in plans[epoch]:
            optimizer.zero_grad()
            loss = loss_of(model(b, training=True, compute_force=True), b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_norm or 1e9)
            optimizer.step()
        model.eval()
        for b in valid:
            loss_of(model(b, training=False, compute_force=True), b).item()
        epoch_times.append(time.perf_counter() - t0)
    return {
        "train_frames": len(train_frames),
        "valid_frames": len(valid_frames),
        "epoch_times": epoch_times,
        "wall_s": time.perf_counter() - start,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def run_subprocess(variant: str, max_shapes: int, stride: int, epochs: int) -> dict:
    """``run_one`` in a fresh Python process (own jit caches and peak memory)."""
    command = [
        sys.executable,
        __file__,
        "--_one",
        variant,
        str(max_shapes),
        str(stride),
        str(epochs),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"error": proc.stderr.strip()[-300:] or f"exit {proc.returncode}"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def steady_epoch_s(row: dict) -> float:
    """Median epoch time after the compiling epoch 0."""
    return statistics.median(row["epoch_times"][1:])


def parse_rows(text: str) -> list[tuple[str, int]]:
    """``"sr:8,full:8"`` -> ``[("sr", 8), ("full", 8)]``."""
    rows = []
    for item in text.split(","):
        variant, _, max_shapes = item.strip().partition(":")
        rows.append((variant, int(max_shapes or 8)))
    return rows


def format_rows(results: dict) -> list[str]:
    """Markdown table lines of the benchmark (header included), rows in run order."""
    lines = [
        "| variant | max_shapes | train / valid frames | train shapes | eval shapes "
        "| pad atoms | compile (s) | epoch (s) | structures/s | / sr | x bucketing "
        "| / peer | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def epoch_of(key):
        row = results.get(key, {})
        return steady_epoch_s(row) if "epoch_times" in row else None

    peer_s = next(
        (epoch_of(key) for key in results if key[0] == "mace" and epoch_of(key)), None
    )
    for (variant, max_shapes), row in results.items():
        if "error" in row:
            lines.append(f"| {variant} | {max_shapes} | error: {row['error']} |")
            continue
        epoch_s = epoch_of((variant, max_shapes))
        ratio_peer = f"{epoch_s / peer_s:.2f}" if peer_s else "-"
        if variant == "mace":
            lines.append(
                f"| mace | - | {row['train_frames']} / {row['valid_frames']} | - | - "
                f"| - | - | {epoch_s:.1f} | {row['train_frames'] / epoch_s:.2f} | - | "
                f"- | {ratio_peer} | {row['peak_mb']:.0f} |"
            )
            continue
        sr_s = epoch_of(("sr", max_shapes))
        unbucketed_s = epoch_of((variant, 1))
        ratio_sr = f"{epoch_s / sr_s:.2f}" if sr_s else "-"
        speedup = (
            f"{unbucketed_s / epoch_s:.2f}" if max_shapes > 1 and unbucketed_s else "-"
        )
        lines.append(
            f"| {variant} | {max_shapes} | {row['train_frames']} / "
            f"{row['valid_frames']} | {row['train_shapes']} | {row['eval_shapes']} | "
            f"{100 * row['pad_atoms']:.0f} % | "
            f"{row['epoch_times'][0] - epoch_s:.0f} | {epoch_s:.1f} | "
            f"{row['train_frames'] / epoch_s:.2f} | {ratio_sr} | {speedup} | "
            f"{ratio_peer} | {row['peak_mb']:.0f} |"
        )
    return lines


def describe(variant: str, max_shapes: int, row: dict, seconds: float) -> str:
    """One comment line with a row's raw figures (printed as soon as it finishes)."""
    if "error" in row:
        return f"# {variant}:{max_shapes}: error {row['error']}"
    times = " ".join(f"{t:.1f}" for t in row["epoch_times"])
    if variant == "mace":
        return f"# mace: epoch times {times} s, process {seconds:.0f} s"
    shapes = " ".join(map(str, row["epoch_shapes"]))
    return (
        f"# {variant}:{max_shapes}: epoch times {times} s, train shapes after each "
        f"epoch {shapes}, pad edges {100 * row['pad_edges']:.0f} %, plan_buckets "
        f"alone {row['bucket_shapes']} shapes / pad atoms "
        f"{100 * row['bucket_pad_atoms']:.0f} %, train() {row['wall_s']:.0f} s, "
        f"process {seconds:.0f} s"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="every 4th frame of the data set"
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per row (>= 2)")
    parser.add_argument(
        "--rows",
        default=DEFAULT_ROWS,
        help=f"variant:max_shapes list (default {DEFAULT_ROWS}; add full:1)",
    )
    parser.add_argument(
        "--shapes-only",
        action="store_true",
        help="count compiled shapes and padding of --epochs epochs without training",
    )
    parser.add_argument("--_one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.shapes_only:
        stride = 4 if args.quick else 1
        print(f"# shapes of {args.epochs} epochs, embedded:water-gfn2[::{stride}]")
        print(
            "| variant | max_shapes | train / valid frames | train shapes "
            "| eval shapes | pad atoms | pad edges |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for variant, max_shapes in parse_rows(args.rows):
            row = count_shapes(variant, max_shapes, stride, args.epochs)
            print(
                f"| {variant} | {max_shapes} | {row['train_frames']} / "
                f"{row['valid_frames']} | {row['train_shapes']} | {row['eval_shapes']} "
                f"| {100 * row['pad_atoms']:.0f} % | {100 * row['pad_edges']:.0f} % |",
                flush=True,
            )
        return
    if args._one:
        variant, max_shapes, stride, epochs = args._one
        try:
            if variant == "mace":
                out = run_mace(int(stride), int(epochs))
            else:
                out = run_one(variant, int(max_shapes), int(stride), int(epochs))
        except Exception as exc:  # reported as the row's error, the others go on
            out = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print("RESULT " + json.dumps(out), flush=True)
        return
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (epoch 0 compiles)")
    stride = 4 if args.quick else 1
    print(f"# {machine()}")
    print(f"# command: python {' '.join(sys.argv)}")
    print(
        f"# {EXPERIMENT.relative_to(REPO)}, float32, embedded:water-gfn2[::{stride}], "
        f"{args.epochs} epochs per row, epoch (s) = median of epochs "
        f"1..{args.epochs - 1}"
    )
    results = {}
    for variant, max_shapes in parse_rows(args.rows):
        start = time.perf_counter()
        row = run_subprocess(variant, max_shapes, stride, args.epochs)
        results[(variant, max_shapes)] = row
        print(
            describe(variant, max_shapes, row, time.perf_counter() - start), flush=True
        )
    for line in format_rows(results):
        print(line)


if __name__ == "__main__":
    main()
