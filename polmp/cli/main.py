"""Command-line entry point: ``polmp <verb> [options]``.

The CLI holds no physics: it parses options, sets jax precision (x64, matmul
precision) *before* anything is built, and calls library functions.

Verbs:
    demo      the embedded default job: build a 64-molecule water box, give it fixed
              point-charge-like latents, and print its long-range energy, forces and
              timings from every electrostatics method (Ewald, PME, the reference
              implementation's truncated k-set), plus the cluster (direct-sum) limit.
    train     polmp train CONFIG.yaml [dotted.key=value ...] [--resume]
    sweep     polmp sweep CONFIG.yaml --grid key=[a,b] [--grid ...] [key=value ...]
    evaluate  polmp evaluate RUN_DIR_OR_CHECKPOINT DATA [--format FMT]
"""

from __future__ import annotations

import argparse
import sys
import time


def _set_precision(precision: str) -> None:
    """Set jax's global dtype switches; must run before any jax array is created."""
    import jax

    jax.config.update("jax_enable_x64", precision == "float64")
    jax.config.update("jax_default_matmul_precision", "highest")


def _timed(fn, *args, repeats=3):
    """Run ``fn`` once to compile, then return (result, best wall time in ms)."""
    import jax

    result = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return result, best * 1e3


def run_demo(args: argparse.Namespace) -> int:
    """Long-range energy of the embedded water box with every method; prints a table."""
    _set_precision(args.precision)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from polmp.data.water import water_box
    from polmp.electrostatics import long_range

    frame = water_box(args.molecules_per_side, seed=args.seed)
    dtype = jnp.float64 if args.precision == "float64" else jnp.float32
    positions = jnp.asarray(frame.positions, dtype)
    cell = jnp.asarray(frame.cell, dtype)
    # Fixed, physically sized latents: TIP3P-like charges and small random dipoles.
    q = jnp.asarray(np.where(frame.numbers == 8, -0.834, 0.417), dtype)
    rng = np.random.default_rng(args.seed)
    mu = jnp.asarray(0.05 * rng.normal(size=(frame.num_atoms, 3)), dtype)
    kappa = jnp.full((frame.num_atoms,), 0.01, dtype)
    alpha = jnp.full((frame.num_atoms,), 0.01, dtype)

    print(
        f"polmp demo: {frame.num_atoms}-atom water box, cell {float(frame.cell[0, 0]):.3f} A, "
        f"sigma {args.sigma} A, {args.precision}"
    )
    print(f"{'method':<28}{'E_lr (eV)':>16}{'max |F| (eV/A)':>18}{'time (ms)':>12}")
    rows = [
        ("ewald (converged)", dict(method="ewald")),
        ("pme (converged)", dict(method="pme")),
        ("ewald, les_compat k-set", dict(method="ewald", les_compat=True)),
    ]
    for label, options in rows:

        def energy(r, options=options):
            out = long_range(
                r,
                q,
                mu,
                kappa=kappa,
                alpha=alpha,
                cell=cell,
                sigma=args.sigma,
                accuracy=args.accuracy,
                **options,
            )
            return out.energy

        energy_and_forces = jax.jit(jax.value_and_grad(energy))
        (e, grad), ms = _timed(energy_and_forces, positions)
        print(
            f"{label:<28}{float(e):>16.8f}{float(jnp.abs(grad).max()):>18.6f}{ms:>12.2f}"
        )

    # The cluster limit: one molecule's neighbourhood cut out, summed directly.
    centre = frame.positions[:3].mean(0)
    keep = np.linalg.norm(frame.positions - centre, axis=1) < 6.0
    keep = np.repeat(keep.reshape(-1, 3).all(1), 3)  # whole molecules only
    cluster = jax.jit(
        lambda r: long_range(r, q[keep], mu[keep], cell=None, sigma=args.sigma).energy
    )
    e_cluster, ms = _timed(cluster, positions[keep])
    print(
        f"{f'direct, {keep.sum()}-atom cluster':<28}{float(e_cluster):>16.8f}{'':>18}{ms:>12.2f}"
    )
    return 0


def _load_run_config(path, overrides):
    from polmp.config.loader import load_config
    from polmp.config.schema import RunConfig

    return load_config(RunConfig, path, overrides)


def run_train(args: argparse.Namespace) -> int:
    """Train from a YAML config with dotted overrides; prints the final error tables."""
    config = _load_run_config(args.config, args.overrides)
    _set_precision(config.precision)
    from polmp.training.loop import train
    from polmp.training.metrics import format_table

    result = train(config, resume=args.resume)
    print(f"run directory: {result.run_dir}")
    print(format_table(result.metrics))
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Train every point of a grid over config keys; print a summary table."""
    import dataclasses

    import yaml

    from polmp.config.loader import expand_sweep, parse_override, set_dotted
    from polmp.config.schema import RunConfig

    with open(args.config) as handle:
        base = yaml.safe_load(handle) or {}
    for text in args.overrides:
        key, value = parse_override(text)
        base = set_dotted(base, key, value)
    grid = dict(parse_override(text) for text in args.grid)
    points = expand_sweep(RunConfig, base, grid)
    _set_precision(points[0][1].precision)
    from polmp.training.loop import train

    rows = []
    for point, config in points:
        name = ",".join(f"{k}={v}" for k, v in point.items())
        run_dir = f"{config.output_dir}/{name.replace('/', '_')}"
        result = train(dataclasses.replace(config, output_dir=run_dir))
        split = (
            "test"
            if "test" in result.metrics
            else "valid"
            if "valid" in result.metrics
            else "train"
        )
        m = result.metrics[split]
        rows.append(
            (
                name,
                split,
                m.get("energy_rmse_meV_per_atom"),
                m.get("forces_rmse_meV_per_A"),
            )
        )
    print(f"\n{'point':<40}{'set':>7}{'E RMSE (meV/atom)':>20}{'F RMSE (meV/A)':>17}")
    for name, split, e, f in rows:
        e_text = "-" if e is None else f"{e:.3f}"
        f_text = "-" if f is None else f"{f:.2f}"
        print(f"{name:<40}{split:>7}{e_text:>20}{f_text:>17}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Error table of a trained run (or one checkpoint) on a labelled data file."""
    _set_precision(args.precision)
    from polmp.data.io import read_frames
    from polmp.training.loop import evaluate

    frames = read_frames(args.data, format=args.format)
    result = evaluate(args.run_dir, frames)
    print(result.table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polmp", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    demo = verbs.add_parser(
        "demo", help="long-range electrostatics of the embedded water box"
    )
    demo.add_argument("--precision", choices=("float32", "float64"), default="float64")
    demo.add_argument(
        "--molecules-per-side", type=int, default=4, help="box holds n^3 H2O"
    )
    demo.add_argument("--sigma", type=float, default=1.0, help="Gaussian smearing, A")
    demo.add_argument("--accuracy", type=float, default=1e-6, help="relative accuracy")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)

    train = verbs.add_parser("train", help="train a model from a YAML run config")
    train.add_argument(
        "config", help="YAML file (schema: polmp.config.schema.RunConfig)"
    )
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    train.add_argument(
        "--resume", action="store_true", help="resume from the last checkpoint"
    )
    train.set_defaults(handler=run_train)

    sweep = verbs.add_parser(
        "sweep", help="train a grid of configs and tabulate errors"
    )
    sweep.add_argument("config")
    sweep.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        help="key=[v1, v2] (repeat for a product)",
    )
    sweep.set_defaults(handler=run_sweep)

    evaluate = verbs.add_parser("evaluate", help="error table of a trained run on data")
    evaluate.add_argument(
        "run_dir", metavar="RUN", help="run directory or checkpoint directory"
    )
    evaluate.add_argument(
        "data", help="labelled structures (extxyz, RuNNer input.data, ...)"
    )
    evaluate.add_argument("--format", default=None, help="file format (default: guess)")
    evaluate.add_argument(
        "--precision", choices=("float32", "float64"), default="float32"
    )
    evaluate.set_defaults(handler=run_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
