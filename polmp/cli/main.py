"""Command-line entry point: ``polmp <verb> [options]``.

The CLI holds no physics: it parses options, sets jax precision (x64, matmul
precision) *before* anything is built, and calls library functions.

Verbs:
    demo      the main job on the embedded default: load the shipped water model
              (GFN2-xTB water, variant "full"), run NVT MD of a 32-molecule box with
              Pdot and alpha_sys recorded in the scan, and write IR and Raman spectra
              (arrays, peak table, plots over the experimental IR) into ./polmp-demo.
    electrostatics
              a 64-molecule water box with fixed point-charge-like latents: long-range
              energy, forces and timings from every electrostatics method (Ewald, PME,
              the reference implementation's truncated k-set) and the cluster limit.
    train     polmp train CONFIG.yaml [dotted.key=value ...] [--resume]
    sweep     polmp sweep CONFIG.yaml --grid key=[a,b] [--grid ...] [key=value ...]
    evaluate  polmp evaluate RUN_DIR_OR_CHECKPOINT DATA [--format FMT]
    md        polmp md [CONFIG.yaml] [dotted.key=value ...]   (schema: MDConfig)
    spectra   polmp spectra MD_DIR [--experimental FILE]
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
    """Shipped model -> water MD with observables -> IR/Raman spectra and plots."""
    _set_precision(args.precision)
    from polmp.config.schema import MDConfig
    from polmp.md.simulate import run_md
    from polmp.observables.report import write_spectra

    steps = args.steps
    config = MDConfig(
        model=args.model,
        structure="embedded:water-gfn2-bulk",
        frame_index=0,
        ensemble="nvt_nose_hoover",
        temperature_K=300.0,
        timestep_fs=0.5,
        equilibration_steps=args.equilibration,
        num_steps=steps,
        chunk_steps=100,
        record_every=4,
        trajectory_every=100,
        thermostat_time_fs=50.0,
        skin_A=0.3,  # the 9.67 A box allows cutoff + skin < 4.84 A
        precision=args.precision,
        seed=args.seed,
        output_dir=args.output,
    )
    print(
        f"polmp demo: model {args.model}, 96-atom water box, NVT 300 K, dt 0.5 fs, "
        f"{args.equilibration} + {steps} steps -> {args.output}"
    )
    result = run_md(config)
    t = result.timings
    print(
        f"MD: mean T {result.records['temperature_K'].mean():.1f} K, "
        f"{t['steps_per_s']:.1f} steps/s with observables every 4 steps "
        f"(first chunk incl. compile {t['first_chunk_s']:.0f} s)"
    )
    import pathlib

    experimental = DEFAULT_WATER_IR if pathlib.Path(DEFAULT_WATER_IR).exists() else None
    peaks = write_spectra(args.output, experimental_ir=experimental)
    print(f"{'spectrum':<16}{'libration':>12}{'bend':>10}{'stretch':>10}   (cm^-1)")
    for name, bands in peaks.items():
        cells = "".join(
            f"{bands.get(b, float('nan')):>{w}.0f}"
            for b, w in (("libration", 12), ("bend", 10), ("stretch", 10))
        )
        print(f"{name:<16}{cells}")
    print(
        f"wrote observables.npz, trajectory.extxyz, spectra.npz, ir.png, raman.png in {args.output}"
    )
    return 0


def run_electrostatics(args: argparse.Namespace) -> int:
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
        f"polmp electrostatics: {frame.num_atoms}-atom water box, cell {float(frame.cell[0, 0]):.3f} A, "
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
    import gc

    from polmp.training.loop import clear_compiled, train

    rows = []
    for point, config in points:
        name = ",".join(f"{k}={v}" for k, v in point.items())
        run_dir = f"{config.output_dir}/{name.replace('/', '_')}"
        result = train(dataclasses.replace(config, output_dir=run_dir))
        # free the point's compiled code before the next model compiles its own
        clear_compiled()
        gc.collect()
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


def run_md_verb(args: argparse.Namespace) -> int:
    """MD of a trained model with Pdot and alpha_sys recorded in the scan."""
    from polmp.config.loader import load_config
    from polmp.config.schema import MDConfig

    config = load_config(MDConfig, args.config, args.overrides)
    _set_precision(config.precision)
    from polmp.md.simulate import run_md

    result = run_md(config)
    t = result.timings
    print(f"output directory: {result.output_dir}")
    print(
        f"{config.num_steps} steps, mean T {result.records['temperature_K'].mean():.1f} K, "
        f"{t['steps_per_s']:.1f} steps/s ({t['atom_steps_per_s']:.3g} atom-steps/s) "
        f"after a first chunk of {t['first_chunk_s']:.1f} s (compile), "
        f"{result.num_reallocations} neighbour-list reallocations"
    )
    if result.summary and "mean_density_g_per_cm3" in result.summary:
        print(f"mean density {result.summary['mean_density_g_per_cm3']:.4f} g/cm^3")
    return 0


def run_spectra(args: argparse.Namespace) -> int:
    """IR and Raman spectra (arrays, peaks, plots) of an MD output directory."""
    import pathlib

    from polmp.observables.report import write_spectra

    experimental = args.experimental
    if experimental is None and pathlib.Path(DEFAULT_WATER_IR).exists():
        experimental = DEFAULT_WATER_IR
    peaks = write_spectra(
        args.md_dir,
        experimental_ir=experimental,
        smoothing_fwhm_cm=args.smoothing,
        block_length_fs=args.block_fs,
    )
    print(f"wrote spectra.npz, peaks.json, ir.png, raman.png in {args.md_dir}")
    for name, bands in peaks.items():
        text = ", ".join(f"{band} {value:.0f}" for band, value in bands.items())
        print(f"{name:<16}peaks (cm^-1): {text}")
    return 0


#: Default length of the demo MD (0.5 fs steps): equilibration, then recorded steps.
DEMO_EQUILIBRATION = 200
DEMO_STEPS = 1200

#: Experimental liquid-water optical constants (shared data, CC0), if present.
DEFAULT_WATER_IR = (
    "../shared/data/water_ir_optical_constants/refractiveindex_info/H2O_Segelstein.yml"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polmp", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    demo = verbs.add_parser(
        "demo", help="shipped water model -> MD -> IR/Raman spectra (the main job)"
    )
    demo.add_argument("--model", default="water-gfn2-full", help="model to run")
    demo.add_argument(
        "--steps",
        type=int,
        default=DEMO_STEPS,
        help="recorded MD steps (a multiple of 100)",
    )
    demo.add_argument(
        "--equilibration",
        type=int,
        default=DEMO_EQUILIBRATION,
        help="unrecorded NVT steps first (a multiple of 100)",
    )
    demo.add_argument("--output", default="polmp-demo", help="output directory")
    demo.add_argument("--precision", choices=("float32", "float64"), default="float32")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)

    lr = verbs.add_parser(
        "electrostatics", help="long-range electrostatics of a water box, every method"
    )
    lr.add_argument("--precision", choices=("float32", "float64"), default="float64")
    lr.add_argument(
        "--molecules-per-side", type=int, default=4, help="box holds n^3 H2O"
    )
    lr.add_argument("--sigma", type=float, default=1.0, help="Gaussian smearing, A")
    lr.add_argument("--accuracy", type=float, default=1e-6, help="relative accuracy")
    lr.add_argument("--seed", type=int, default=0)
    lr.set_defaults(handler=run_electrostatics)

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

    md = verbs.add_parser("md", help="MD of a trained model, recording spectra inputs")
    md.add_argument(
        "config",
        nargs="?",
        default=None,
        help="YAML file (schema: polmp.config.schema.MDConfig); omitted: defaults",
    )
    md.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    md.set_defaults(handler=run_md_verb)

    spectra = verbs.add_parser("spectra", help="IR/Raman spectra of an MD directory")
    spectra.add_argument("md_dir", help="output directory of `polmp md`")
    spectra.add_argument(
        "--experimental",
        default=None,
        help="refractiveindex.info file of liquid water to overlay "
        f"(default: {DEFAULT_WATER_IR} if it exists)",
    )
    spectra.add_argument(
        "--smoothing", type=float, default=20.0, help="Gaussian FWHM, cm^-1"
    )
    spectra.add_argument(
        "--block-fs", type=float, default=None, help="correlation block length, fs"
    )
    spectra.set_defaults(handler=run_spectra)
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``key=value`` overrides may also follow options
    (``polmp sweep CONFIG --grid ... output_dir=runs/x``), which argparse alone
    rejects once an option has ended the positional list."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        takes_overrides = hasattr(args, "overrides")
        if not takes_overrides or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
